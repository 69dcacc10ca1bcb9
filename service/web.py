"""The Connect face of the store: browsers and HTTP tools call the same handlers over HTTP/1.1.

Connect (https://connectrpc.com/docs/protocol) is what connect-web speaks by
default, and plain ``curl`` can use it with JSON. A unary RPC is a POST of one
message to ``/improv_store.v1.StoreService/<Method>`` as ``application/json``
(the protobuf JSON mapping) or ``application/proto``; its answer is one message,
or a Connect error (JSON, with the HTTP status the spec gives its code). The
server streams, Subscribe and GetStream, answer in Connect envelopes
(``application/connect+json`` or ``+proto``) ended by an end-of-stream message.
Client streams (PutStream, Session) need request streaming, which browsers do
not have over HTTP/1.1: they answer ``unimplemented``.

Like the gRPC servicer, this is a thin adapter: decode, call the handler of the
RPC's name, wait for a write's commit, encode, and map StoreError codes through
one table. Who may call is checked here the same way as on gRPC (the bearer
token), plus what a browser needs: CORS for the allowed origins, and, when the
store has no token, a refusal of host names that DNS rebinding could aim at it.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import select
import socket
import socketserver
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from improv_store.protocol import SERVICE_NAME, Code, parse
from improv_store.v1 import store_pb2 as pb

from .errors import StoreError, invalid
from .handlers import Handlers, OnEnd, as_store_error, checked

log = logging.getLogger(__name__)

# Connect's name and HTTP status for each code (the spec's "Error Codes" table).
CONNECT_CODES: dict[Code, tuple[str, int]] = {
    Code.CANCELLED: ("canceled", 499),
    Code.UNKNOWN: ("unknown", 500),
    Code.INVALID_ARGUMENT: ("invalid_argument", 400),
    Code.DEADLINE_EXCEEDED: ("deadline_exceeded", 504),
    Code.NOT_FOUND: ("not_found", 404),
    Code.ALREADY_EXISTS: ("already_exists", 409),
    Code.PERMISSION_DENIED: ("permission_denied", 403),
    Code.RESOURCE_EXHAUSTED: ("resource_exhausted", 429),
    Code.FAILED_PRECONDITION: ("failed_precondition", 400),
    Code.ABORTED: ("aborted", 409),
    Code.OUT_OF_RANGE: ("out_of_range", 400),
    Code.UNIMPLEMENTED: ("unimplemented", 501),
    Code.INTERNAL: ("internal", 500),
    Code.UNAVAILABLE: ("unavailable", 503),
    Code.DATA_LOSS: ("data_loss", 500),
    Code.UNAUTHENTICATED: ("unauthenticated", 401),
}

_END_STREAM = 0x02  # envelope flag: the end-of-stream message (JSON, whatever the codec)
_COMPRESSED = 0x01  # envelope flag: a compressed message, which we never accept
_ENVELOPE = struct.Struct(">BI")
_SMALL_WRITE = 64 << 10  # envelopes below this go out in one write (header and body joined)
_IDLE_TIMEOUT = 120.0  # seconds a connection may sit between requests or stall a read or write
_HANGUP_POLL_MS = 250  # how often a stream's hang-up watch checks whether the stream ended
_MAX_LINE = 65536
# The request headers a browser may send (CORS preflight): Connect's own, and the token's.
_ALLOWED_HEADERS = (
    "Content-Type, Connect-Protocol-Version, Connect-Timeout-Ms, Connect-Content-Encoding,"
    " Connect-Accept-Encoding, Authorization, X-User-Agent"
)
_PREFLIGHT_MAX_AGE = "7200"  # seconds; Chrome caps it there

_SERVICE = pb.DESCRIPTOR.services_by_name["StoreService"]
_PATH_PREFIX = f"/{SERVICE_NAME}/"


class Codec:
    """One of Connect's two message encodings: the protobuf JSON mapping, or binary."""

    def __init__(self, name: str) -> None:
        self.name = name

    def decode(self, message_type: type[Message], body: bytes) -> Any:
        """``body`` as a ``message_type``, or INVALID_ARGUMENT saying why not.

        JSON ignores unknown fields (a newer client's), as connect-go does; an
        empty JSON body is the empty message, so ``curl -d ''`` calls Info.
        """
        if self.name == "proto":
            return checked(parse(message_type, body))
        message = message_type()
        try:
            json_format.Parse(body or b"{}", message, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, RecursionError) as exc:
            raise invalid(f"malformed {message_type.__name__} JSON: {exc}") from None
        return message

    def encode(self, message: Message) -> bytes:
        if self.name == "proto":
            return message.SerializeToString()
        return json_format.MessageToJson(message, indent=None).encode()

    def encode_serialized(self, message_type: type[Message], raw: bytes) -> bytes:
        """A response the handler gave already serialized (GetStream's chunks)."""
        if self.name == "proto":
            return raw
        return self.encode(message_type.FromString(raw))


JSON, PROTO = Codec("json"), Codec("proto")
# Each Content-Type a call may have: whether it is a stream's, and its codec.
CONTENT_TYPES: dict[str, tuple[bool, Codec]] = {
    "application/json": (False, JSON),
    "application/proto": (False, PROTO),
    "application/connect+json": (True, JSON),
    "application/connect+proto": (True, PROTO),
}


@dataclass(frozen=True)
class Rpc:
    """One StoreService method as this adapter serves it."""

    name: str
    request_type: type[Message]
    response_type: type[Message]
    client_streaming: bool
    server_streaming: bool


RPCS: dict[str, Rpc] = {
    method.name: Rpc(
        method.name,
        getattr(pb, method.input_type.name),
        getattr(pb, method.output_type.name),
        method.client_streaming,
        method.server_streaming,
    )
    for method in _SERVICE.methods
}


def connect_error(error: StoreError) -> dict[str, Any]:
    """The Connect ``Error`` object of ``error``."""
    return {"code": CONNECT_CODES[error.code][0], "message": error.message, "details": []}


class CallEnd:
    """Callbacks to run once, when a call ends: the handlers' ``OnEnd`` for a stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self._ended = False

    def add(self, callback: Callable[[], None]) -> bool:
        """Run ``callback`` at the end; False (and never run it) if the call has ended."""
        with self._lock:
            if self._ended:
                return False
            self._callbacks.append(callback)
            return True

    def end(self) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


def watch_hangup(connection: socket.socket, on_hangup: Callable[[], None]) -> threading.Event:
    """Call ``on_hangup`` if the client closes ``connection``; set the event returned to stop.

    A Subscribe stream idles in its handler between events, so only the socket
    can tell that its client left (a write would, but only at the next event).
    A client that shuts down its sending side counts as gone: browsers, curl and
    Node never do that while they read a response.
    """
    stop = threading.Event()
    poller = select.poll()
    poller.register(connection, select.POLLRDHUP)

    def watch() -> None:
        while not stop.is_set():
            if poller.poll(_HANGUP_POLL_MS):
                log.debug("a streaming client hung up")
                on_hangup()
                return

    threading.Thread(target=watch, name="web-hangup", daemon=True).start()
    return stop


def _subscribe(
    handlers: Handlers, request: Any, time_left: float | None, on_end: OnEnd
) -> Iterator[Message]:
    events = handlers.Subscribe(request)
    if not on_end(events.close):
        events.close()  # the call ended as it started
        return iter(())
    return iter(events)


def _get_stream(
    handlers: Handlers, request: Any, time_left: float | None, on_end: OnEnd
) -> Iterator[bytes]:
    return handlers.GetStream(request, time_left, on_end)


# The server-streaming RPCs, tied to the call's end as StreamingRpcs does for gRPC.
SERVER_STREAMS: dict[str, Callable[[Handlers, Any, float | None, OnEnd], Iterator[Any]]] = {
    "Subscribe": _subscribe,
    "GetStream": _get_stream,
}


def _is_literal_host(host: str) -> bool:
    """Whether a Host header names an IP address or localhost (not a name DNS could move)."""
    try:
        name = urllib.parse.urlsplit("//" + host).hostname or ""
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class ClientGone(OSError):
    """The client hung up or stalled while we read its request: nobody to answer."""


class Refusal(Exception):
    """An answer given before any RPC is called: an HTTP status and a Connect error."""

    def __init__(self, status: int, error: StoreError, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(error.message)
        self.status = status
        self.error = error
        self.headers = headers


class WebServer:
    """Connect over HTTP/1.1 on ``address`` (host:port): bound when made, serving after start().

    ``token`` (if any) is required as ``Authorization: Bearer <token>``;
    ``allow_origin`` lists the origins (comma-separated, or ``*``) whose pages
    may call cross-origin; ``record(method, code, seconds)`` counts each call.
    """

    def __init__(
        self,
        address: str,
        handlers: Handlers,
        *,
        token: str = "",
        allow_origin: str = "",
        max_body: int,
        record: Callable[[str, Code, float], None] | None = None,
    ) -> None:
        host, _, port = address.rpartition(":")
        self.handlers = handlers
        self.token = token
        origins = {origin.strip().rstrip("/") for origin in allow_origin.split(",")}
        self.any_origin = "*" in origins
        self.origins = frozenset(origins - {"", "*"})
        self.max_body = max_body
        self.record = record
        self.closing = False
        self._connections: dict[socket.socket, bool] = {}  # open connection -> mid-request
        self._changed = threading.Condition()
        try:
            self._httpd = _HttpServer((host.strip("[]"), int(port)), self)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"cannot serve Connect on {address}: {exc}") from None
        bound_port = self._httpd.server_address[1]
        self.address = f"{host}:{bound_port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="web", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and end idle connections; calls in flight go on (see ``wait``)."""
        self.closing = True
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
        with self._changed:
            idle = [conn for conn, busy in self._connections.items() if not busy]
        for connection in idle:
            with contextlib.suppress(OSError):  # it may have closed by itself meanwhile
                connection.shutdown(socket.SHUT_RDWR)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every connection to end; whether they all did."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._connections, timeout)

    # -- what the request handler tells us ---------------------------------------------

    def opened(self, connection: socket.socket) -> None:
        with self._changed:
            self._connections[connection] = False

    def busy(self, connection: socket.socket, busy: bool) -> None:
        with self._changed:
            if connection in self._connections:
                self._connections[connection] = busy

    def closed(self, connection: socket.socket) -> None:
        with self._changed:
            self._connections.pop(connection, None)
            self._changed.notify_all()

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Whether a page of ``origin`` may call: listed, anything, or the same origin."""
        if self.any_origin or origin in self.origins:
            return True
        return bool(host) and urllib.parse.urlsplit(origin).netloc.lower() == host.lower()

    def count(self, method: str, code: Code, started: float) -> None:
        if self.record is not None:
            self.record(method, code, time.perf_counter() - started)


class _HttpServer(ThreadingHTTPServer):
    """The listening socket: a thread per connection, each running a ConnectRequest."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # a dashboard's page load opens several connections at once

    def __init__(self, address: tuple[str, int], web: WebServer) -> None:
        self.web = web
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ConnectRequest)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a call (reset while idle, say): a debug line,
        not socketserver's traceback on stderr."""
        log.debug("connection from %s failed", client_address, exc_info=True)

    def server_bind(self) -> None:
        # HTTPServer's own asks DNS for the host's full name, which can stall start-up.
        socketserver.TCPServer.server_bind(self)
        host, self.server_port = self.server_address[:2]
        self.server_name = str(host)


class ConnectRequest(BaseHTTPRequestHandler):
    """One connection: Connect calls by POST, CORS preflights by OPTIONS."""

    protocol_version = "HTTP/1.1"
    server_version = "improv-store"
    disable_nagle_algorithm = True  # a Subscribe event should leave as soon as it is written
    timeout = _IDLE_TIMEOUT
    server: _HttpServer

    # -- connection lifecycle -----------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self._cors: list[tuple[str, str]] = []
        self._body_read = True
        self.server.web.opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.web.closed(self.connection)

    def parse_request(self) -> bool:
        """A request has begun (its first line is in): the connection is busy until answered."""
        self.server.web.busy(self.connection, True)
        self._cors = []
        self._body_read = False
        return super().parse_request()

    def handle_one_request(self) -> None:
        """One request; then unread body bytes or a stopping server end the connection."""
        try:
            super().handle_one_request()
        finally:
            if not self._body_read or self.server.web.closing:
                self.close_connection = True
            self.server.web.busy(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- HTTP methods -------------------------------------------------------------------

    def do_POST(self) -> None:
        try:
            self._post()
        except OSError as exc:  # the client went away mid-answer
            log.debug("%s: %s", self.path, exc)
            self.close_connection = True

    def do_OPTIONS(self) -> None:
        """A CORS preflight: allowed origins may POST with Connect's headers and the token."""
        web = self.server.web
        origin = self.headers.get("Origin", "")
        self._body_read = not self._has_body()
        if not (origin and self._host_ok() and web.origin_allowed(origin, self._host())):
            self._send_plain(403, b"origin not allowed (see --web-allow-origin)\n")
            return
        headers = [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Methods", "POST"),
            ("Access-Control-Allow-Headers", _ALLOWED_HEADERS),
            ("Access-Control-Max-Age", _PREFLIGHT_MAX_AGE),
            ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ]
        if self.headers.get("Access-Control-Request-Private-Network") == "true":
            headers.append(("Access-Control-Allow-Private-Network", "true"))
        self.send_response(204)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self._end_headers()

    def do_GET(self) -> None:
        self._body_read = not self._has_body()
        self._send_plain(405, b"Connect calls are POSTs\n", (("Allow", "POST, OPTIONS"),))

    # -- a Connect call -------------------------------------------------------------------

    def _post(self) -> None:
        started = time.perf_counter()
        name = self.path.split("?", 1)[0].removeprefix(_PATH_PREFIX)
        rpc = RPCS.get(name) if self.path.startswith(_PATH_PREFIX) else None
        content_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        streamed, codec = CONTENT_TYPES.get(content_type, (False, None))
        try:
            self._admit()
            if rpc is None:
                raise Refusal(404, StoreError(Code.UNIMPLEMENTED, f"no such method: {self.path}"))
            if codec is None:
                raise Refusal(
                    415,
                    invalid(f"unsupported Content-Type {content_type!r}: use application/json"
                            " or application/proto (application/connect+json or +proto for"
                            " streams)"),
                    (("Accept-Post", "application/json, application/proto"),),
                )
            if streamed != rpc.server_streaming and not rpc.client_streaming:
                kind = "a server-streaming" if rpc.server_streaming else "a unary"
                wanted = "application/connect+" if rpc.server_streaming else "application/"
                raise Refusal(415, invalid(
                    f"{name} is {kind} RPC: send {wanted}json or {wanted}proto"))
        except Refusal as refusal:
            self._refuse(refusal, rpc.name if rpc else None, started)
            return
        assert rpc is not None and codec is not None
        if streamed:
            self._stream(rpc, codec, started)
        else:
            self._unary(rpc, codec, started)

    def _admit(self) -> None:
        """Refusals that come before the path means anything: host and origin."""
        web = self.server.web
        if not self._host_ok():
            raise Refusal(403, StoreError(
                Code.PERMISSION_DENIED,
                "this store has no token, so it answers only requests addressed to an IP"
                " address or localhost (a host name could be DNS rebinding)"))
        origin = self.headers.get("Origin")
        if origin is not None:
            if not web.origin_allowed(origin, self._host()):
                raise Refusal(403, StoreError(
                    Code.PERMISSION_DENIED,
                    f"origin {origin} may not call this store (see --web-allow-origin)"))
            self._cors = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]

    def _check_call(self, stream: bool) -> float | None:
        """The checks every call passes, in its answer's shape; returns the seconds left."""
        token = self.server.web.token
        if token:
            presented = self.headers.get("Authorization")
            if presented is None:
                raise StoreError(
                    Code.UNAUTHENTICATED,
                    "this store requires a token (Authorization: Bearer ...)")
            if not hmac.compare_digest(presented.encode(), f"Bearer {token}".encode()):
                raise StoreError(Code.UNAUTHENTICATED, "wrong token")
        version = self.headers.get("Connect-Protocol-Version")
        if version is not None and version != "1":
            raise invalid(f"Connect-Protocol-Version {version!r} is not supported: send 1")
        header = "Connect-Content-Encoding" if stream else "Content-Encoding"
        encoding = self.headers.get(header, "identity").strip().lower()
        if encoding != "identity":
            raise StoreError(
                Code.UNIMPLEMENTED, f"{header} {encoding!r} is not supported: send identity")
        timeout = self.headers.get("Connect-Timeout-Ms")
        if timeout is None:
            return None
        if not (timeout.isdigit() and len(timeout) <= 10):
            raise invalid(f"Connect-Timeout-Ms {timeout!r} is not a positive integer")
        return int(timeout) / 1000

    def _unary(self, rpc: Rpc, codec: Codec, started: float) -> None:
        try:
            time_left = self._check_call(stream=False)
            if rpc.client_streaming:
                raise _client_stream_refused(rpc.name)
            request = codec.decode(rpc.request_type, self._read_body())
            handlers = self.server.web.handlers
            response = handlers.settle(getattr(handlers, rpc.name)(request, time_left))
        except ClientGone:
            raise
        except Exception as exc:
            error = as_store_error(exc, rpc.name)
            self._refuse(Refusal(CONNECT_CODES[error.code][1], error), rpc.name, started)
            return
        self._send(200, f"application/{codec.name}", codec.encode(response))
        self.server.web.count(rpc.name, Code.OK, started)

    def _stream(self, rpc: Rpc, codec: Codec, started: float) -> None:
        """A server stream (or a refused client stream): 200, envelopes, end of stream."""
        self.send_response(200)
        self.send_header("Content-Type", f"application/connect+{codec.name}")
        self.send_header("Transfer-Encoding", "chunked")
        error: StoreError | None = None
        call = CallEnd()
        try:
            try:
                time_left = self._check_call(stream=True)
                if rpc.client_streaming:
                    raise _client_stream_refused(rpc.name)
                request = codec.decode(rpc.request_type, self._read_message())
            except StoreError as exc:
                error = exc
            self._end_headers()
            if error is None:
                error = self._relay(rpc, codec, request, time_left, call)
            self._end_stream(error)
            self.server.web.count(rpc.name, error.code if error else Code.OK, started)
        except OSError:  # the client left (ClientGone among them)
            self.server.web.count(rpc.name, Code.CANCELLED, started)
            raise
        finally:
            call.end()

    def _relay(
        self, rpc: Rpc, codec: Codec, request: Any, time_left: float | None, call: CallEnd
    ) -> StoreError | None:
        """Send the handler's responses as envelopes; its error, if it ends with one.

        An OSError from writing (the client left) propagates; the handler's end here.
        """
        stop_watching = watch_hangup(self.connection, call.end)
        responses: Iterator[Any] = iter(())
        try:
            try:
                responses = SERVER_STREAMS[rpc.name](
                    self.server.web.handlers, request, time_left, call.add)
            except Exception as exc:
                return as_store_error(exc, rpc.name)
            while True:
                try:
                    item = next(responses)
                except StopIteration:
                    return None
                except Exception as exc:
                    return as_store_error(exc, rpc.name)
                if isinstance(item, bytes):
                    message = codec.encode_serialized(rpc.response_type, item)
                else:
                    message = codec.encode(item)
                self._write_envelope(0, message)
        finally:
            stop_watching.set()
            close = getattr(responses, "close", None)
            if close is not None:
                close()

    # -- reading --------------------------------------------------------------------------

    def _has_body(self) -> bool:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        return chunked or self.headers.get("Content-Length", "0").strip() not in ("", "0")

    def _read_body(self) -> bytes:
        """The request's content (Content-Length or chunked), at most ``max_body`` bytes;
        ClientGone if the connection fails meanwhile."""
        try:
            return self._read_content(self.server.web.max_body)
        except OSError as exc:
            raise ClientGone(f"reading the request: {exc}") from exc

    def _read_content(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise invalid("Content-Length is not a number") from None
        if length < 0:
            raise invalid("Content-Length is negative")
        if length > limit:
            raise _too_large(limit)
        body = self.rfile.read(length)
        if len(body) != length:
            raise invalid(f"the request ended after {len(body)} of {length} bytes")
        self._body_read = True
        return body

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(_MAX_LINE)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                size = -1
            if size < 0:
                raise invalid("malformed chunked request body")
            if size == 0:
                while self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass  # trailers: nothing we read
                self._body_read = True
                return b"".join(parts)
            total += size
            if total > limit:
                raise _too_large(limit)
            part = self.rfile.read(size)
            if len(part) != size:
                raise invalid("the request ended mid-chunk")
            parts.append(part)
            self.rfile.readline(_MAX_LINE)

    def _read_message(self) -> bytes:
        """The one enveloped message of a server stream's request."""
        body = self._read_body()
        if len(body) < _ENVELOPE.size:
            raise invalid("a streaming request must hold one enveloped message")
        flags, length = _ENVELOPE.unpack_from(body)
        if flags & _COMPRESSED:
            raise StoreError(Code.UNIMPLEMENTED, "compressed messages are not supported")
        if len(body) != _ENVELOPE.size + length:
            raise invalid("a server stream's request must be exactly one enveloped message")
        return body[_ENVELOPE.size :]

    # -- writing --------------------------------------------------------------------------

    def _host(self) -> str:
        return self.headers.get("Host", "")

    def _host_ok(self) -> bool:
        return bool(self.server.web.token) or _is_literal_host(self._host())

    def _end_headers(self) -> None:
        for name, value in self._cors:
            self.send_header(name, value)
        if not self._body_read or self.server.web.closing:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send(
        self, status: int, content_type: str, body: bytes,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self._end_headers()
        self.wfile.write(body)

    def _send_plain(
        self, status: int, text: bytes, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._send(status, "text/plain; charset=utf-8", text, headers)

    def _refuse(self, refusal: Refusal, method: str | None, started: float) -> None:
        """A unary-shaped Connect error: its HTTP status, JSON body, trailers as headers."""
        error = refusal.error
        headers = list(refusal.headers)
        trailers = [(f"Trailer-{key}", value) for key, value in error.trailers.items()]
        headers += trailers
        if trailers and self._cors:
            exposed = ", ".join(name for name, _ in trailers)
            headers.append(("Access-Control-Expose-Headers", exposed))
        if error.code == Code.UNAUTHENTICATED:
            headers.append(("WWW-Authenticate", "Bearer"))
        body = json.dumps(connect_error(error)).encode()
        self._send(refusal.status, "application/json", body, tuple(headers))
        if method is not None:
            self.server.web.count(method, error.code, started)

    def _write_chunk(self, *parts: bytes) -> None:
        """One HTTP/1.1 chunk of ``parts``; small ones in a single write."""
        size = sum(len(part) for part in parts)
        head = b"%x\r\n" % size
        if size < _SMALL_WRITE:
            self.wfile.write(b"".join((head, *parts, b"\r\n")))
            return
        self.wfile.write(head + parts[0])
        for part in parts[1:]:
            self.wfile.write(part)
        self.wfile.write(b"\r\n")

    def _write_envelope(self, flags: int, message: bytes) -> None:
        self._write_chunk(_ENVELOPE.pack(flags, len(message)), message)

    def _end_stream(self, error: StoreError | None) -> None:
        """The end-of-stream message (the error and its trailers, if any), then the last chunk."""
        end: dict[str, Any] = {}
        if error is not None:
            end["error"] = connect_error(error)
            if error.trailers:
                end["metadata"] = {key: [value] for key, value in error.trailers.items()}
        self._write_envelope(_END_STREAM, json.dumps(end).encode())
        self.wfile.write(b"0\r\n\r\n")


def _client_stream_refused(name: str) -> StoreError:
    return StoreError(
        Code.UNIMPLEMENTED,
        f"{name} streams from the client, which Connect over HTTP/1.1 cannot carry: put objects"
        " up to the inline limit with Put, and use gRPC for larger ones",
    )


def _too_large(limit: int) -> StoreError:
    return StoreError(
        Code.RESOURCE_EXHAUSTED, f"request body above {limit} bytes (the server's message limit)")
