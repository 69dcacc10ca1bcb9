"""The local lane: the store's unary calls over a plain unix socket, for colocated clients.

A unary gRPC call costs about ten times a request/response on a unix socket
between two Python processes, and small objects are all call overhead. The
lane carries the very same protobuf messages, length-prefixed (framing in
store.proto, ``LaneMethod``), to the same handlers as the gRPC servicer
(``service/handlers.py``), so validation, statuses, trailer values and leases
are identical. A connection opens with LANE_METHOD_OPEN, which carries the
server's token when it has one (the same check gRPC calls pass), and is then a
session: when it closes, for whatever reason, its leases and unsealed creates
are dropped, as when a gRPC Session stream ends.

LANE_METHOD_SUBSCRIBE makes a connection one subscription: each response of
the Subscribe handler goes out as a frame, and the stream ends with one frame
of its closing status. The client says nothing more; a watcher thread waits
for it to hang up, to end the subscription (and free its slot and buffer)
while it is idle.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from improv_store.protocol import LANE_CALLS, MAX_OPEN_FRAME, ONE_WAY, Code, lane_error, parse
from improv_store.protocol import LANE_HEADER as HEADER
from improv_store.protocol import lane_frame as frame
from improv_store.v1 import store_pb2 as pb

from .errors import StoreError
from .handlers import (
    EventStream,
    Handlers,
    Pending,
    UnaryHandler,
    as_store_error,
    checked,
    parsed,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Call:
    """A lane method served by a unary handler."""

    rpc: str
    request_type: type[Message]
    handler: UnaryHandler
    # Whether its request has a ``wait``: one that asks to wait runs on a worker thread.
    may_wait: bool


def _unary_calls(handlers: Handlers) -> dict[int, _Call]:
    """Every lane method but the two the lane serves itself (Open, Subscribe), bound to
    the handler of the RPC of its name."""
    return {
        method: _Call(call.rpc, call.request_type, getattr(handlers, call.rpc),
                      "wait" in call.request_type.DESCRIPTOR.fields_by_name)
        for method, call in LANE_CALLS.items()
        if method not in (pb.LANE_METHOD_OPEN, pb.LANE_METHOD_SUBSCRIBE)
    }


@dataclass(eq=False)
class _Connection:
    """One lane client: its socket, what it sent that is not yet handled, its session.

    While a call or an answer is with another thread (``elsewhere`` counts
    them) the connection's later frames wait, so calls are answered in order;
    the client sends none meanwhile anyway, as it waits for the answer.
    """

    sock: socket.socket
    session_id: str | None = None
    inbox: bytearray = field(default_factory=bytearray)
    elsewhere: int = 0
    hung_up: bool = False  # the client left while a call was elsewhere
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class LaneServer:
    """Serves every lane connection from one thread, ``lane-loop``.

    One thread instead of one per connection because the calls are short and
    Python runs one thread at a time: with a thread per connection every call
    changed hands of the interpreter lock several times, which cost more than
    the call itself.

    Calls that may wait run on a pool of threads: a Get or BatchGet that asks
    to wait. A ``sync`` write is made at once and answered when its commit is
    on disk (the handler's Pending ticket): the loop appends what each round
    of frames stored to the write-ahead log itself, then answers (as Redis
    does), unless the committer's thread is writing, which then answers them.
    An answer the client's socket cannot take now (it is not reading) is
    finished by a worker thread, so that neither the loop nor the committer
    ever waits for a client. A Subscribe takes its connection to a thread of
    its own.
    """

    def __init__(
        self,
        path: str,
        handlers: Handlers,
        record: Callable[[str, Code, float], None] | None = None,
    ) -> None:
        """``record(method, code, seconds)`` counts each call in the metrics."""
        self.path = path
        store = handlers.store
        self._store = store
        self._handlers = handlers
        self._calls = _unary_calls(handlers)
        self._record = record
        self._max_frame = store.config.max_message_size
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._resumed: collections.deque[_Connection] = collections.deque()
        self._stopping = False
        self._workers = futures.ThreadPoolExecutor(
            max_workers=store.config.max_workers, thread_name_prefix="lane-call"
        )
        if os.path.exists(path):
            os.unlink(path)  # the gRPC socket beside it was checked for a live server first
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        os.chmod(path, store.config.socket_mode)
        self._listener.listen(128)
        self._listener.setblocking(False)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        # epoll itself, not the selectors module: the loop's overhead is per call.
        self._epoll = select.epoll()
        self._epoll.register(self._listener.fileno(), select.EPOLLIN)
        self._epoll.register(self._wake_reader.fileno(), select.EPOLLIN)
        self._by_fd: dict[int, _Connection] = {}
        self._scratch = bytearray(_RECEIVE_SIZE)
        self._thread = threading.Thread(target=self._loop, name="lane-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and end every connection (their sessions close).

        Subscriptions are left to the store's shutdown, which follows: it ends
        them with UNAVAILABLE, a frame their clients read, as on gRPC.
        """
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join()
        else:
            self._close_all()
        self._workers.shutdown(wait=False)
        self._epoll.close()
        self._wake_reader.close()
        self._wake_writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    # -- the loop -------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            with self._store.logging_in_this_thread() as logs_own:
                self._serve(logs_own)
        except Exception:
            log.exception("the lane stopped on an unexpected error")
        finally:
            self._close_all()

    def _serve(self, logs_own: bool) -> None:
        """Take connections and frames as they come, until stop()."""
        while not self._stopping:
            self._handle_events(self._epoll.poll())
            if logs_own:
                # Frames that arrived while this round was handled join its append:
                # writers answered together come back at about the same time.
                for _ in range(_LOOKS_BEFORE_LOGGING):
                    events = self._epoll.poll(0)
                    if not events:
                        break
                    self._handle_events(events)
            # What this round stored becomes durable now, in one append, and its
            # writers are answered (Redis's way); then go on where calls ended.
            while True:
                if logs_own:
                    self._store.log_pending()
                if not self._resumed:
                    break
                self._take_resumed()

    def _handle_events(self, events: list[tuple[int, int]]) -> None:
        for fd, _ in events:
            connection = self._by_fd.get(fd)
            if connection is not None:
                self._receive(connection)
            elif fd == self._wake_reader.fileno():
                with contextlib.suppress(BlockingIOError):
                    self._wake_reader.recv(4096)
            elif fd == self._listener.fileno():
                self._accept()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("lane accept failed: %s", exc)
                return
            sock.setblocking(False)  # the loop reads only what is there
            connection = _Connection(sock)
            with self._lock:
                self._connections.add(connection)
            self._by_fd[sock.fileno()] = connection
            self._epoll.register(sock.fileno(), select.EPOLLIN)

    def _receive(self, connection: _Connection) -> None:
        if connection.closed:  # by an earlier event of the same round
            return
        try:
            count = connection.sock.recv_into(self._scratch)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            count = 0
        if not count:
            self._hang_up(connection)
            return
        with connection.lock:
            connection.inbox += memoryview(self._scratch)[:count]
            if connection.elsewhere:
                return
        self._handle_frames(connection)

    def _take_resumed(self) -> None:
        """Go on with connections whose call was answered elsewhere, or at a commit."""
        while self._resumed:
            connection = self._resumed.popleft()
            if connection.hung_up:
                self._close(connection)
            else:
                self._handle_frames(connection)

    def _hang_up(self, connection: _Connection) -> None:
        self._leave_loop(connection)
        with connection.lock:
            if connection.elsewhere:  # closed when its call is done
                connection.hung_up = True
                return
        self._close(connection)

    def _close(self, connection: _Connection) -> None:
        """Close a connection that has no call in progress, and end its session."""
        with connection.lock:
            if connection.closed:
                return
            connection.closed = True
        with self._lock:
            self._connections.discard(connection)
        self._leave_loop(connection)
        connection.sock.close()
        if connection.session_id is not None:
            self._store.close_session(connection.session_id)

    def _leave_loop(self, connection: _Connection) -> None:
        """Stop watching a connection (if the loop still does)."""
        fd = connection.sock.fileno()
        if self._by_fd.get(fd) is connection:
            del self._by_fd[fd]
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def _close_all(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
            with connection.lock:
                busy = connection.elsewhere > 0
                connection.hung_up = True
            if not busy:  # else the thread that has its call closes it
                self._close(connection)

    # -- frames and calls -------------------------------------------------------------

    def _handle_frames(self, connection: _Connection) -> None:
        """Handle the complete frames received, in order, until one goes elsewhere."""
        while not connection.elsewhere and not connection.closed:
            received = self._next_frame(connection)
            if received is None:
                return
            method, body = received
            try:
                if connection.session_id is None:
                    self._open(connection, method, body)
                elif method == pb.LANE_METHOD_SUBSCRIBE:
                    self._hand_to_subscription(connection, body)
                else:
                    self._call(connection, method, body)
            except OSError:  # the client went away
                self._close(connection)
            except Exception:
                log.exception("lane call failed unexpectedly; dropping its connection")
                self._close(connection)

    def _next_frame(self, connection: _Connection) -> tuple[int, bytes] | None:
        """The next complete frame's method byte and body, taken from the inbox; None if it
        has not all arrived, or if its length is outside 1..limit (answered
        RESOURCE_EXHAUSTED, and the connection closed)."""
        inbox = connection.inbox
        if len(inbox) < HEADER.size:
            return None
        length, method = HEADER.unpack_from(inbox)
        limit = self._max_frame if connection.session_id is not None else MAX_OPEN_FRAME
        if not 1 <= length <= limit:
            self._refuse(connection, StoreError(
                Code.RESOURCE_EXHAUSTED, f"frame of {length} bytes is outside 1..{limit}"))
            return None
        end = HEADER.size - 1 + length
        if len(inbox) < end:
            return None
        with memoryview(inbox) as view:
            body = bytes(view[HEADER.size:end])
        del inbox[:end]
        return method, body

    def _open(self, connection: _Connection, method: int, body: bytes) -> None:
        """Check the opening frame and start the session; refused, answer and hang up."""
        try:
            if method != pb.LANE_METHOD_OPEN:
                raise StoreError(Code.INVALID_ARGUMENT,
                                 "a lane connection must begin with LANE_METHOD_OPEN")
            opened = self._handlers.Open(parsed(pb.LaneOpenRequest, body))
        except StoreError as exc:
            self._refuse(connection, exc)
            return
        connection.session_id = opened.session_id
        self._send(connection, Code.OK, opened.SerializeToString())

    def _refuse(self, connection: _Connection, error: StoreError) -> None:
        """Say why, as far as the socket takes it now, and hang up."""
        with contextlib.suppress(OSError):
            _send_some(connection.sock, memoryview(frame(error.code, _error_body(error))))
        self._close(connection)

    def _call(self, connection: _Connection, method: int, body: bytes) -> None:
        """Run one unary call, here or elsewhere, and answer it unless it is one-way."""
        one_way = bool(method & ONE_WAY)
        method &= ~ONE_WAY
        started = time.perf_counter()
        call = self._calls.get(method)
        name = call.rpc if call is not None else "unknown"
        try:
            if call is None:
                raise StoreError(Code.UNIMPLEMENTED, f"no lane method {method}")
            request: Any = checked(parse(call.request_type, body))
            waits = (call.may_wait and request.HasField("wait")
                     and request.wait.ToNanoseconds() > 0)
            result = None if waits else call.handler(request, None)
        except Exception as exc:
            error = as_store_error(exc, name)
            self._answer(connection, name, started, one_way, error.code, _error_body(error))
            return
        if result is None:
            self._hand_off(connection)
            self._workers.submit(self._call_elsewhere, connection, call, request, started,
                                 one_way)
            return
        if isinstance(result, Pending):
            if result.ticket is not None:
                self._answer_at_commit(connection, name, result, started, one_way)
                return
            result = result.response
        self._answer(connection, name, started, one_way, Code.OK, result.SerializeToString())

    def _answer(self, connection: _Connection, name: str, started: float, one_way: bool,
                status: Code, reply: bytes, *, may_wait: bool = False) -> None:
        self._count(name, status, started)
        if not one_way:
            self._send(connection, status, reply, may_wait=may_wait)

    def _send(self, connection: _Connection, status: Code, body: bytes, *,
              may_wait: bool = False) -> None:
        """Send a frame on a connection's non-blocking socket. What does not fit now (the
        client is not reading) is handed to a worker thread: neither the loop nor the
        committer's thread ever waits for a client. A worker (``may_wait``) waits for
        room itself (TimeoutError after _SEND_TIMEOUT)."""
        whole = memoryview(frame(status, body))
        sent = _send_some(connection.sock, whole)
        if sent == len(whole):
            return
        if may_wait:
            _send_rest(connection.sock, whole[sent:])
            return
        self._hand_off(connection)
        self._workers.submit(self._send_elsewhere, connection, whole[sent:])

    def _send_elsewhere(self, connection: _Connection, rest: memoryview) -> None:
        try:
            _send_rest(connection.sock, rest)
        except OSError:
            self._give_up(connection)
        finally:
            self._done_elsewhere(connection)

    def _call_elsewhere(self, connection: _Connection, call: _Call, request: Any,
                        started: float, one_way: bool) -> None:
        """A worker thread's part: run a call that may wait, answer it, hand back."""
        try:
            try:
                response = self._handlers.settle(call.handler(request, None))
                status, reply = Code.OK, response.SerializeToString()
            except Exception as exc:
                error = as_store_error(exc, call.rpc)
                status, reply = error.code, _error_body(error)
            self._answer_or_give_up(connection, call.rpc, started, one_way, status, reply,
                                    may_wait=True)
        finally:
            self._done_elsewhere(connection)

    def _answer_at_commit(self, connection: _Connection, name: str, pending: Pending,
                          started: float, one_way: bool) -> None:
        """A ``sync`` write, made already: answered once its commit is on disk (or failed),
        by whichever thread settles it, so that no thread waits for it."""
        assert pending.ticket is not None
        response = pending.response
        self._hand_off(connection)

        def committed(error: StoreError | None) -> None:
            try:
                if error is None:  # serialized now: a BatchPut's is complete only now
                    self._answer_or_give_up(connection, name, started, one_way,
                                            Code.OK, response.SerializeToString())
                else:
                    self._answer_or_give_up(connection, name, started, one_way,
                                            error.code, _error_body(error))
            finally:
                self._done_elsewhere(connection)

        pending.ticket.when_done(committed)

    def _answer_or_give_up(self, connection: _Connection, name: str, started: float,
                           one_way: bool, status: Code, reply: bytes, *,
                           may_wait: bool = False) -> None:
        """Answer from a call that went elsewhere; a client that cannot be answered (it
        left, or read nothing for _SEND_TIMEOUT) is hung up on once the call is done."""
        try:
            self._answer(connection, name, started, one_way, status, reply, may_wait=may_wait)
        except OSError:
            self._give_up(connection)

    @staticmethod
    def _give_up(connection: _Connection) -> None:
        """Mark a connection for closing once nothing of it is elsewhere: part of an
        answer may be sent, so nothing more may follow on it."""
        with connection.lock:
            connection.hung_up = True
        with contextlib.suppress(OSError):
            connection.sock.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _hand_off(connection: _Connection) -> None:
        """A call or an answer goes to another thread: the connection's frames wait."""
        with connection.lock:
            connection.elsewhere += 1

    def _done_elsewhere(self, connection: _Connection) -> None:
        """A call or an answer that went elsewhere is done: the loop goes on with the
        connection if something is waiting there (frames sent meanwhile, or a hang-up)."""
        with connection.lock:
            connection.elsewhere -= 1
            resume = not connection.elsewhere and (bool(connection.inbox) or connection.hung_up)
        if not resume:
            return
        if self._stopping:
            if connection.hung_up:
                self._close(connection)
            return
        self._resumed.append(connection)
        if threading.current_thread() is not self._thread:
            self._wake()

    def _count(self, name: str, status: Code, started: float) -> None:
        """Record a call in the metrics, with the gRPC ones."""
        if self._record is not None:
            self._record(name, status, time.perf_counter() - started)

    # -- subscriptions ----------------------------------------------------------------

    def _hand_to_subscription(self, connection: _Connection, body: bytes) -> None:
        """LANE_METHOD_SUBSCRIBE: the connection leaves the loop for a thread of its own;
        stop() leaves it to the store's shutdown."""
        self._leave_loop(connection)
        with self._lock:
            self._connections.discard(connection)
        connection.closed = True
        session_id, connection.session_id = connection.session_id, None
        if session_id is not None:
            self._store.close_session(session_id)  # a subscription holds no leases
        connection.sock.setblocking(True)
        threading.Thread(target=self._subscribe, args=(connection.sock, body),
                         name="lane-subscription", daemon=True).start()

    def _subscribe(self, sock: socket.socket, body: bytes) -> None:
        """Serve LANE_METHOD_SUBSCRIBE: its events, then its closing status, as frames."""
        started = time.perf_counter()
        watcher = None
        try:
            try:
                events = self._handlers.Subscribe(parsed(pb.SubscribeRequest, body))
            except Exception as exc:
                status = _end_stream(sock, as_store_error(exc, "Subscribe"))
            else:
                # Started once there is a subscription to end: a client that hung up
                # before is seen at once, as its socket is at its end already.
                watcher = threading.Thread(
                    target=_watch, args=(sock, events), name="lane-watch", daemon=True
                )
                watcher.start()
                try:
                    status = _stream(sock, events)
                finally:
                    events.close()
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the watcher
            if watcher is not None:
                watcher.join()
            sock.close()
        self._count("Subscribe", status, started)


_RECEIVE_SIZE = 256 << 10
# In sync mode, how many more times the loop looks for frames before it appends a
# round to the log: a few more fill the append; looking longer delays it more than
# it fills it.
_LOOKS_BEFORE_LOGGING = 3
# A client that reads none of an answer for this long is dropped. Only a thread
# other than the loop waits that long (the loop hands the rest of an answer on).
_SEND_TIMEOUT = 30.0


def _send_some(sock: socket.socket, frame: memoryview) -> int:
    """Send what fits now; how many bytes went."""
    sent = 0
    while sent < len(frame):
        try:
            sent += sock.send(frame[sent:])
        except (BlockingIOError, InterruptedError):
            break
    return sent


def _send_rest(sock: socket.socket, rest: memoryview) -> None:
    """Send all of ``rest``, waiting for room up to _SEND_TIMEOUT each time."""
    room = select.poll()
    room.register(sock, select.POLLOUT)
    while rest:
        if not room.poll(_SEND_TIMEOUT * 1000):
            raise TimeoutError(f"the client read no answer for {_SEND_TIMEOUT} s")
        rest = rest[_send_some(sock, rest):]


def _send_on(sock: socket.socket, status: Code, body: bytes) -> None:
    header = HEADER.pack(len(body) + 1, status)
    if len(body) < _SMALL:
        sock.sendall(header + body)  # one system call
    else:
        sock.sendall(header)  # no copy of a large body
        sock.sendall(body)


_SMALL = 64 << 10


def _error_body(error: StoreError) -> bytes:
    """A failed answer's body: the message and the trailer values, as on gRPC."""
    return lane_error(error.message, error.trailers)


def _stream(sock: socket.socket, events: EventStream) -> Code:
    """Send each event of a lane subscription, then the status that ends it; return that
    status (CANCELLED if the client went away)."""
    try:
        for response in events:
            _send_on(sock, Code.OK, response.SerializeToString())
    except OSError:
        return Code.CANCELLED
    except Exception as exc:
        return _end_stream(sock, as_store_error(exc, "Subscribe"))
    # Only the watcher ends a subscription without an error: the client left or spoke.
    return _end_stream(sock, StoreError(Code.CANCELLED, "the client ended the subscription"))


def _end_stream(sock: socket.socket, error: StoreError) -> Code:
    """Send the frame that ends a lane subscription; its status (CANCELLED if the client
    went away first)."""
    try:
        _send_on(sock, error.code, _error_body(error))
    except OSError:
        return Code.CANCELLED
    return error.code


def _watch(connection: socket.socket, events: EventStream) -> None:
    """End a lane subscription when its client hangs up (or sends anything: it may not)."""
    with contextlib.suppress(OSError):
        connection.recv(1)
    events.close()
