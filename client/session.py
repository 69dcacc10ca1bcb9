"""The client's Session stream: it owns the leases of this process's shared-memory views.

Releases from garbage-collected views are queued and sent in batches on the
stream, so dropping a view costs no round trip. If the stream ends (server
restart), the next shared-memory call opens a new one.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

import grpc

from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

log = logging.getLogger(__name__)

_CLOSE = object()


class Session:
    """One open Session stream; thread-safe."""

    def __init__(self, stub: store_pb2_grpc.StoreServiceStub) -> None:
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._call = stub.Session(self._requests())
        try:
            first = next(self._call)
        except grpc.RpcError:
            self._call.cancel()
            raise
        self.session_id: str = first.session_id
        self._ended = threading.Event()
        threading.Thread(target=self._drain, name="improv-store-session", daemon=True).start()

    @property
    def alive(self) -> bool:
        """False once the stream has ended (closed here, or by the server)."""
        return not self._ended.is_set()

    @property
    def closed(self) -> bool:
        """The same as ``not alive``: knowing it costs no system call either."""
        return self._ended.is_set()

    def release(self, lease_id: int) -> None:
        """Queue a lease for release; safe from finalizers and any thread."""
        self._outbox.put(lease_id)

    def close(self) -> None:
        """End the stream; the server drops whatever leases are left."""
        self._outbox.put(_CLOSE)
        self._call.cancel()

    def _requests(self) -> Iterator[pb.SessionRequest]:
        while True:
            item = self._outbox.get()
            if item is _CLOSE:
                return
            lease_ids = [item]
            while True:
                try:
                    more = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if more is _CLOSE:
                    yield pb.SessionRequest(release_lease_ids=lease_ids)
                    return
                lease_ids.append(more)
            yield pb.SessionRequest(release_lease_ids=lease_ids)

    def _drain(self) -> None:
        """Wait for the stream's end so ``alive`` turns false when the server goes away."""
        try:
            for _ in self._call:
                pass
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                log.info("session %s ended: %s", self.session_id[:8], exc.code().name)
        finally:
            self._ended.set()
