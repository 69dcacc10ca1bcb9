"""The local lane: the store's unary calls over a plain unix socket, for colocated clients.

A unary gRPC call costs about ten times a request/response on a unix socket
between two Python processes, and small objects are all call overhead. The
lane carries the very same protobuf messages, length-prefixed (framing in
store.proto, ``LaneMethod``), and runs them through the same servicer code,
so validation, statuses and leases are identical. A connection opens with
LANE_METHOD_OPEN, which carries the server's token when it has one (the same
check gRPC calls pass), and is then a session: when it closes, for whatever
reason, its leases and unsealed creates are dropped, as when a gRPC Session
stream ends.

LANE_METHOD_SUBSCRIBE makes a connection one subscription: the servicer's
Subscribe runs as for gRPC, each response goes out as a frame, and the
stream ends with one frame of its closing status. The client says nothing
more; a watcher thread waits for it to hang up, to end the subscription
(and free its slot and buffer) while it is idle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from improv_store.laneframes import HEADER, ONE_WAY, receive_exactly
from improv_store.v1 import store_pb2 as pb

from .access import token_matches
from .errors import StoreError
from .servicer import StoreServicer
from .store import Store

log = logging.getLogger(__name__)

_MAX_OPEN_FRAME = 64 << 10

# method -> (servicer method name, request type)
METHODS: dict[int, tuple[str, type[Message]]] = {
    pb.LANE_METHOD_PUT: ("Put", pb.PutRequest),
    pb.LANE_METHOD_GET: ("Get", pb.GetRequest),
    pb.LANE_METHOD_BATCH_GET: ("BatchGet", pb.BatchGetRequest),
    pb.LANE_METHOD_DELETE: ("Delete", pb.DeleteRequest),
    pb.LANE_METHOD_REPLACE: ("Replace", pb.ReplaceRequest),
    pb.LANE_METHOD_CREATE: ("Create", pb.CreateRequest),
    pb.LANE_METHOD_SEAL: ("Seal", pb.SealRequest),
    pb.LANE_METHOD_ABORT: ("Abort", pb.AbortRequest),
    pb.LANE_METHOD_RELEASE: ("Release", pb.ReleaseRequest),
    pb.LANE_METHOD_INFO: ("Info", pb.InfoRequest),
    pb.LANE_METHOD_LIST: ("List", pb.ListRequest),
    pb.LANE_METHOD_BATCH_PUT: ("BatchPut", pb.BatchPutRequest),
}


class LaneAbort(Exception):
    """A call that ends with a status other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _LaneContext:
    """What the servicer needs of a gRPC context, for a lane call (no deadline)."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise LaneAbort(code, details)

    def time_remaining(self) -> None:
        return None

    def set_trailing_metadata(self, metadata: object) -> None:
        """The lane has no trailers: a lane subscriber resumes after the last event it
        received, and asks Info for the oldest sequence retained."""


class _StreamContext(_LaneContext):
    """A lane Subscribe's context: callbacks run when the stream ends, as gRPC runs
    them when a call terminates (the servicer closes its subscription in one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []
        self._ended = False

    def add_callback(self, callback: Callable[[], object]) -> bool:
        """Run ``callback`` when the stream ends; at once (and False) if it has ended."""
        with self._lock:
            if not self._ended:
                self._callbacks.append(callback)
                return True
        callback()
        return False

    def end(self) -> None:
        """The stream is over (the client left, or the server finished it)."""
        with self._lock:
            self._ended = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


class LaneServer:
    """Accepts lane connections on ``path``; a thread serves each one."""

    def __init__(
        self,
        path: str,
        store: Store,
        servicer: StoreServicer,
        record: Callable[[str, grpc.StatusCode, float], None] | None = None,
    ) -> None:
        self.path = path
        self._store = store
        self._servicer = servicer
        self._record = record
        self._max_frame = store.config.max_message_size
        self._token = store.config.token
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        if os.path.exists(path):
            os.unlink(path)  # the gRPC socket beside it was checked for a live server first
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        os.chmod(path, store.config.socket_mode)
        self._listener.listen(128)
        self._thread = threading.Thread(target=self._accept, name="lane-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and end every connection (their sessions close).

        Subscriptions are left to the store's shutdown, which follows: it ends
        them with UNAVAILABLE, a frame their clients read, as on gRPC.
        """
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            with self._lock:
                self._connections.add(connection)
            threading.Thread(
                target=self._serve, args=(connection,), name="lane", daemon=True
            ).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            session_id = self._open(connection)
        except OSError:
            session_id = None  # the client went away
        if session_id is None:
            self._forget(connection)
            return
        try:
            while (frame := self._read_frame(connection, self._max_frame)) is not None:
                method, body = frame
                if method == pb.LANE_METHOD_SUBSCRIBE:
                    self._store.close_session(session_id)  # a subscription holds no leases
                    self._subscribe(connection, body)
                    break
                self._answer(connection, method, body)
        except OSError:
            pass  # the client went away
        finally:
            self._forget(connection)
            self._store.close_session(session_id)

    def _open(self, connection: socket.socket) -> str | None:
        """Check the opening frame and start the session; None (answered) if refused."""
        frame = self._read_frame(connection, _MAX_OPEN_FRAME)
        if frame is None:
            return None
        method, body = frame
        if method != pb.LANE_METHOD_OPEN:
            self._send(connection, grpc.StatusCode.INVALID_ARGUMENT,
                       b"a lane connection must begin with LANE_METHOD_OPEN")
            return None
        try:
            request = pb.LaneOpenRequest.FromString(body)
        except DecodeError as exc:
            self._send(connection, grpc.StatusCode.INVALID_ARGUMENT,
                       f"malformed LaneOpenRequest: {exc}".encode())
            return None
        if self._token and not token_matches(self._token, request.token):
            message = "wrong token" if request.token else "this store requires a token"
            self._send(connection, grpc.StatusCode.UNAUTHENTICATED, message.encode())
            return None
        try:
            session_id, _ = self._store.open_session()
        except StoreError as exc:  # the store is stopping
            self._send(connection, exc.code, exc.message.encode())
            return None
        hello = pb.SessionResponse(session_id=session_id).SerializeToString()
        self._send(connection, grpc.StatusCode.OK, hello)
        return session_id

    def _forget(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)
        connection.close()

    def _answer(self, connection: socket.socket, method: int, body: bytearray) -> None:
        """Run one unary call and send its answer, unless it is one-way."""
        one_way = bool(method & ONE_WAY)
        method &= ~ONE_WAY
        started = time.perf_counter()
        name, status, reply = self._dispatch(method, body)
        self._count(name, status, started)
        if not one_way:
            self._send(connection, status, reply)

    def _count(self, name: str, status: grpc.StatusCode, started: float) -> None:
        """Record a call in the metrics, with the gRPC ones."""
        if self._record is not None:
            self._record(name, status, time.perf_counter() - started)

    def _subscribe(self, connection: socket.socket, body: bytearray) -> None:
        """Serve LANE_METHOD_SUBSCRIBE: its events, then its closing status, as frames."""
        with self._lock:
            self._connections.discard(connection)  # stop() leaves it to the store's shutdown
        context = _StreamContext()
        watcher = threading.Thread(
            target=_watch, args=(connection, context), name="lane-watch", daemon=True
        )
        watcher.start()
        started = time.perf_counter()
        try:
            status, message = self._stream(connection, body, context)
            self._send(connection, status, message)
        except OSError:
            status = grpc.StatusCode.CANCELLED  # the client went away
        finally:
            context.end()
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)  # wakes the watcher
            watcher.join()
        self._count("Subscribe", status, started)

    def _stream(
        self, connection: socket.socket, body: bytearray, context: _StreamContext
    ) -> tuple[grpc.StatusCode, bytes]:
        """Send each event of the subscription; return the status and message that end it."""
        try:
            request = _parse(pb.SubscribeRequest, body)
            with contextlib.closing(self._servicer.Subscribe(request, context)) as responses:
                for response in responses:
                    self._send(connection, grpc.StatusCode.OK, response.SerializeToString())
        except LaneAbort as exc:
            return exc.code, exc.message.encode()
        # Only the watcher ends a subscription without an error: the client left or spoke.
        return grpc.StatusCode.CANCELLED, b"the client ended the subscription"

    def _read_frame(
        self, connection: socket.socket, max_length: int
    ) -> tuple[int, bytearray] | None:
        """The next frame's method byte and body; None when the peer closed, or when the
        frame's length is outside 1..``max_length`` (answered RESOURCE_EXHAUSTED)."""
        header = receive_exactly(connection, HEADER.size)
        if header is None:
            return None
        length, method = HEADER.unpack(header)
        if not 1 <= length <= max_length:
            self._send(connection, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"frame of {length} bytes is outside 1..{max_length}".encode())
            return None
        body = receive_exactly(connection, length - 1)
        return None if body is None else (method, body)

    def _dispatch(self, method: int, body: bytearray) -> tuple[str, grpc.StatusCode, bytes]:
        entry = METHODS.get(method)
        if entry is None:
            return "unknown", grpc.StatusCode.UNIMPLEMENTED, f"no lane method {method}".encode()
        name, request_type = entry
        try:
            request = _parse(request_type, body)
            response: Any = getattr(self._servicer, name)(request, _LaneContext())
        except LaneAbort as exc:
            return name, exc.code, exc.message.encode()
        return name, grpc.StatusCode.OK, response.SerializeToString()

    @staticmethod
    def _send(connection: socket.socket, status: grpc.StatusCode, body: bytes) -> None:
        header = HEADER.pack(len(body) + 1, status.value[0])
        if len(body) < _SMALL:
            connection.sendall(header + body)  # one system call
        else:
            connection.sendall(header)  # no copy of a large body
            connection.sendall(body)


_SMALL = 64 << 10


def _parse(request_type: type[Message], body: bytearray) -> Any:
    """The request in ``body``; INVALID_ARGUMENT (LaneAbort) if it does not parse."""
    try:
        return request_type.FromString(body)
    except DecodeError as exc:
        message = f"malformed {request_type.__name__}: {exc}"
        raise LaneAbort(grpc.StatusCode.INVALID_ARGUMENT, message) from None


def _watch(connection: socket.socket, context: _StreamContext) -> None:
    """End a lane subscription when its client hangs up (or sends anything: it may not)."""
    with contextlib.suppress(OSError):
        connection.recv(1)
    context.end()
