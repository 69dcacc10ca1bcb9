"""The client end of the local lane: calls and subscriptions over a plain unix socket.

One connection per client, one call at a time on it. The connection is also
the client's session: leases taken through it (shared-memory views) are
released by one-way frames, queued by finalizers and sent in batches by a
small flusher thread (or with the next call when many are queued), so
dropping a view never waits and a call rarely carries them. Each
subscription has a connection of its own (LaneSubscription), which carries
nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import threading
import weakref
from collections.abc import Iterator
from typing import TypeVar

from google.protobuf.message import Message

from improv_store.protocol import LANE_HEADER as HEADER
from improv_store.protocol import ONE_WAY, read_lane_error, receive_exactly
from improv_store.protocol import lane_frame as frame
from improv_store.v1 import store_pb2 as pb

from .errors import StoreError, StoreUnavailable, error_for, status_code

log = logging.getLogger(__name__)

_FLUSH_INTERVAL = 0.05
# MSG_PEEK | MSG_DONTWAIT as a plain int: OR-ing the flags is an enum operation in Python.
_PEEK_NOW = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
# Releases ride along with a call once this many are queued; fewer wait (at most
# _FLUSH_INTERVAL) for the flusher thread, so a get loop does not pay for them. Few:
# each lease holds a large region, and a fast reader's queued ones can fill an arena.
_RELEASE_BATCH = 8

Response = TypeVar("Response", bound=Message)


class LaneClosed(StoreUnavailable):
    """The lane was closed before the request left: the server never saw it, so the
    call can be repeated on a new lane."""


class Lane:
    """An open lane connection; thread-safe (calls take turns)."""

    def __init__(self, path: str, token: str | None = None) -> None:
        """Connect and open the session, presenting ``token`` if the server wants one.

        ``opened`` is the server's answer: the session's ID and pin table."""
        self._socket, self.opened = _connect(path, token)
        self.session_id = self.opened.session_id
        self._lock = threading.Lock()
        self._releases: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._closed = threading.Event()
        # ``alive`` polls this first: a poll that finds nothing to read is a third of
        # the cost of a recv that raises BlockingIOError, and a colocated get_many asks
        # once per object.
        self._readable = select.poll()
        self._readable.register(self._socket, select.POLLIN)
        # The thread holds the lane weakly: a client dropped without close() (as Plasma's
        # clients were) lets its lane go, and the server ends the session when the socket
        # closes. A value read in place keeps the lane alive through its release callback.
        threading.Thread(target=_flush_periodically, args=(weakref.ref(self), self._closed),
                         name="improv-store-lane", daemon=True).start()

    @property
    def closed(self) -> bool:
        """Closed by this client or after an error; unlike ``alive``, asks no system call."""
        return self._closed.is_set()

    @property
    def alive(self) -> bool:
        """False once closed, or once the server has hung up (it sends nothing unasked)."""
        if self._closed.is_set():
            return False
        try:
            readable = bool(self._readable.poll(0))
        except RuntimeError:  # another thread is polling it right now: ask the socket
            readable = True
        if not readable:  # checked again: a closed socket's number may be another's now
            return not self._closed.is_set()
        try:
            hung_up = self._socket.recv(1, _PEEK_NOW) == b""
        except BlockingIOError:
            return True
        except OSError:
            hung_up = True
        if hung_up:
            self.close()
        return not hung_up

    def call(self, method: int, request: Message, response_type: type[Response]) -> Response:
        """Send one request and wait for its answer; a failure status raises its StoreError."""
        with self._lock:
            if self._closed.is_set():
                raise LaneClosed("the lane connection is closed")
            try:
                if self._releases.qsize() >= _RELEASE_BATCH:  # else the flusher sends them
                    self._send_releases()
                _write(self._socket, method, request.SerializeToString())
            except OSError as exc:  # the server hung up: nothing was taken
                self._close_locked()
                raise LaneClosed(f"lane connection lost: {exc}") from None
            try:
                status, body = _read(self._socket)
            except OSError as exc:
                self._close_locked()
                raise StoreUnavailable(f"lane connection lost: {exc}") from None
        if status:
            raise _failure(status, body)
        return response_type.FromString(body)

    def call_pipelined(
        self, method: int, first: Message, rest: Iterator[Message], response_type: type[Response]
    ) -> Iterator[Response]:
        """Calls of ``method`` with ``first``, then each of ``rest``, one after another:
        each next request is built (``rest`` runs) while the server handles the one
        before, and sent before that one's answer is yielded. A failure status raises
        its StoreError and nothing more is sent; LaneClosed if the lane was closed
        before ``first`` left. The lane is this caller's until the iteration ends.
        """
        with self._lock:
            if self._closed.is_set():
                raise LaneClosed("the lane connection is closed")
            try:
                if self._releases.qsize() >= _RELEASE_BATCH:
                    self._send_releases()
                _write(self._socket, method, first.SerializeToString())
            except OSError as exc:
                self._close_locked()
                raise LaneClosed(f"lane connection lost: {exc}") from None
            outstanding = True  # a request sent whose answer is not read yet
            try:
                while outstanding:
                    try:
                        following = next(rest, None)
                    finally:
                        outstanding = False
                        status, body = self._read_answer()
                    if status:
                        raise _failure(status, body)
                    if following is not None:
                        self._send_or_lose(method, following.SerializeToString())
                        outstanding = True
                    yield response_type.FromString(body)
            finally:
                if outstanding and not self._closed.is_set():
                    self._read_answer()  # the caller stopped early: keep the lane in step

    def _read_answer(self) -> tuple[int, bytes]:
        """The next answer's status and body (with the lock); StoreUnavailable if lost."""
        try:
            return _read(self._socket)
        except OSError as exc:
            self._close_locked()
            raise StoreUnavailable(f"lane connection lost: {exc}") from None

    def _send_or_lose(self, method: int, body: bytes) -> None:
        """Send a request after others on this lane (with the lock); StoreUnavailable if lost."""
        try:
            _write(self._socket, method, body)
        except OSError as exc:
            self._close_locked()
            raise StoreUnavailable(f"lane connection lost: {exc}") from None

    def release(self, lease_id: int) -> None:
        """Queue a lease for release; safe from finalizers and any thread."""
        self._releases.put(lease_id)

    def close(self) -> None:
        """Close the connection; the server drops this session's leases."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._socket.close()

    def _flush_releases(self) -> None:
        """Send queued releases unless a call is under way (it sends them itself)."""
        if not self._releases.empty() and self._lock.acquire(blocking=False):
            try:
                if not self._closed.is_set():
                    self._send_releases()
            except OSError:
                self._close_locked()
            finally:
                self._lock.release()

    def _send_releases(self) -> None:
        lease_ids = []
        while True:
            try:
                lease_ids.append(self._releases.get_nowait())
            except queue.Empty:
                break
        if lease_ids:
            request = pb.ReleaseRequest(session_id=self.session_id, lease_ids=lease_ids)
            _write(self._socket, pb.LANE_METHOD_RELEASE | ONE_WAY, request.SerializeToString())


class LaneSubscription:
    """A Subscribe on a lane connection of its own: iterate it for SubscribeResponses.

    The server sends one frame per event and ends with one frame of another
    status, raised here as its StoreError; a connection lost without it is
    StoreUnavailable. ``close`` ends the subscription from any thread, waking
    an iteration blocked on the socket, which then just stops.
    """

    def __init__(self, path: str, token: str | None, request: pb.SubscribeRequest) -> None:
        """Connect (presenting ``token``) and subscribe; the server registers it at once."""
        self._socket, _ = _connect(path, token)
        try:
            _write(self._socket, pb.LANE_METHOD_SUBSCRIBE, request.SerializeToString())
        except OSError as exc:
            self._socket.close()
            raise StoreUnavailable(f"lane {path}: {exc}") from None
        self._lock = threading.Lock()
        self._reading = False  # a thread is in _read: close() wakes it, and it closes
        self._closed = False

    def __iter__(self) -> Iterator[pb.SubscribeResponse]:
        while (frame := self._next_frame()) is not None:
            status, body = frame
            if status:
                self.close()  # the server hangs up after it
                raise _failure(status, body)
            yield pb.SubscribeResponse.FromString(body)

    def _next_frame(self) -> tuple[int, bytes] | None:
        """The next frame, or None once closed; StoreUnavailable if the connection is lost."""
        with self._lock:
            if self._closed:
                return None
            self._reading = True
        try:
            return _read(self._socket)
        except OSError as exc:
            if self._closed:
                return None
            lost = exc
        finally:
            with self._lock:
                self._reading = False
                if self._closed:
                    self._socket.close()
        self.close()
        raise StoreUnavailable(f"lane subscription lost: {lost}")

    def close(self) -> None:
        """End the subscription: the server sees the connection close and drops it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._reading:
                with contextlib.suppress(OSError):  # wakes the reader, which closes the socket
                    self._socket.shutdown(socket.SHUT_RDWR)
            else:
                self._socket.close()


def _connect(path: str, token: str | None) -> tuple[socket.socket, pb.SessionResponse]:
    """A lane connection with its session open (LANE_METHOD_OPEN), and the session's ID."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
        opening = pb.LaneOpenRequest(token=token or "")
        _write(connection, pb.LANE_METHOD_OPEN, opening.SerializeToString())
        status, body = _read(connection)
    except OSError as exc:
        connection.close()
        raise StoreUnavailable(f"lane {path}: {exc}") from None
    if status:
        connection.close()
        raise _failure(status, body)
    return connection, pb.SessionResponse.FromString(body)


def _flush_periodically(lane_ref: weakref.ref[Lane], closed: threading.Event) -> None:
    """Every _FLUSH_INTERVAL, send the lane's queued releases; ends when the lane is
    closed or no longer used."""
    while not closed.wait(_FLUSH_INTERVAL):
        lane = lane_ref()
        if lane is None:
            return
        lane._flush_releases()
        del lane


def _write(connection: socket.socket, method: int, body: bytes) -> None:
    connection.sendall(frame(method, body))


def _read(connection: socket.socket) -> tuple[int, bytes]:
    """One response frame: its status (a Code's number) and body."""
    length, status = HEADER.unpack(_receive(connection, HEADER.size))
    return status, _receive(connection, length - 1)


def _failure(status: int, body: bytes) -> StoreError:
    """The typed exception of an answer whose status is not OK (its body a LaneError)."""
    error = read_lane_error(body)
    return error_for(status_code(status), error.message, error.trailing_metadata)


def _receive(connection: socket.socket, size: int) -> bytes:
    """``size`` bytes; a large body stays the bytearray it was received into (not copied),
    which protobuf parses as it does bytes."""
    received = receive_exactly(connection, size)
    if received is None:
        raise ConnectionResetError("the store closed the lane")
    return bytes(received) if size < (64 << 10) else received  # type: ignore[return-value]

