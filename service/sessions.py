"""Client sessions: who holds which leases and which unsealed creates.

A session lives as long as the client's Session stream. Each shared-memory
handle given to a session is a lease that pins the object's region; each
Create is a region the session is filling. When the stream ends — close,
crash, SIGKILL — everything the session held is handed back.
"""

from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass, field

from improv_store.protocol import Code
from improv_store.v1 import store_pb2 as pb

from .arena import Region
from .errors import StoreError, invalid, not_found
from .objects import StoredObject


@dataclass(eq=False)
class PendingCreate:
    """A region a session is filling, to become an object on Seal; ``spec`` is None for a
    region reserved by an earlier Seal, whose object is declared when it is sealed."""

    lease_id: int
    spec: pb.ObjectSpec | None
    region: Region
    replace: bool

    def handle(self) -> pb.ShmHandle:
        return pb.ShmHandle(
            segment=self.region.segment.name,
            offset=self.region.offset,
            length=self.region.length,
            lease_id=self.lease_id,
        )


@dataclass(eq=False)
class Session:
    """What one client holds."""

    session_id: str
    ended: threading.Event = field(default_factory=threading.Event)
    leases: dict[int, StoredObject] = field(default_factory=dict)
    creates: dict[int, PendingCreate] = field(default_factory=dict)


class Sessions:
    """Open sessions and their leases. Not thread-safe: the store's lock covers it."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._lease_ids = itertools.count(1)
        self.pending_bytes = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self) -> Session:
        session = Session(session_id=os.urandom(16).hex())
        self._sessions[session.session_id] = session
        return session

    def end_all(self) -> None:
        """Tell every session's stream to finish (the store is stopping)."""
        for session in self._sessions.values():
            session.ended.set()

    def get(self, session_id: str) -> Session:
        """The open session with this ID; FAILED_PRECONDITION when there is none."""
        session = self._sessions.get(session_id)
        if session is None:
            raise StoreError(
                Code.FAILED_PRECONDITION,
                f"shared-memory transfer needs an open Session; {session_id[:32]!r} is not one"
                if session_id
                else "shared-memory transfer needs the session_id of an open Session",
            )
        return session

    def lease(self, session: Session, obj: StoredObject) -> pb.ShmHandle:
        """Record a lease on a pinned, resident object and return its handle."""
        lease_id = next(self._lease_ids)
        session.leases[lease_id] = obj
        region = obj.region
        assert region is not None
        return pb.ShmHandle(
            segment=region.segment.name,
            offset=region.offset,
            length=region.length,
            lease_id=lease_id,
        )

    def release(self, session: Session, lease_ids: list[int]) -> list[StoredObject]:
        """Drop leases; return their objects to unpin.

        A lease of another session is PERMISSION_DENIED and an unknown one
        NOT_FOUND; either way nothing is released. A lease named twice is released once.
        """
        lease_ids = list(dict.fromkeys(lease_ids))
        for lease_id in lease_ids:
            if lease_id not in session.leases:
                if any(lease_id in other.leases for other in self._sessions.values()):
                    raise StoreError(
                        Code.PERMISSION_DENIED,
                        f"lease {lease_id} belongs to another session",
                    )
                raise not_found(f"no lease {lease_id} in this session")
        return [session.leases.pop(lease_id) for lease_id in lease_ids]

    def add_create(
        self, session: Session, spec: pb.ObjectSpec | None, region: Region, replace: bool
    ) -> PendingCreate:
        pending = PendingCreate(next(self._lease_ids), spec, region, replace)
        session.creates[pending.lease_id] = pending
        self.pending_bytes += region.length
        return pending

    def take_create(self, session: Session, handle: pb.ShmHandle) -> PendingCreate:
        """Remove and return the create a Seal or Abort names, checked against our record."""
        pending = session.creates.get(handle.lease_id)
        if pending is None:
            if any(handle.lease_id in other.creates for other in self._sessions.values()):
                raise StoreError(
                    Code.PERMISSION_DENIED,
                    f"create {handle.lease_id} belongs to another session",
                )
            raise not_found(f"no unsealed create {handle.lease_id} in this session")
        if handle != pending.handle():
            raise invalid(f"handle for create {handle.lease_id} does not match the one issued")
        del session.creates[handle.lease_id]
        self.pending_bytes -= pending.region.length
        return pending

    def close(self, session_id: str) -> tuple[list[StoredObject], list[Region]]:
        """End a session: the objects whose pins it held, and its unsealed regions."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return [], []
        session.ended.set()
        regions = [pending.region for pending in session.creates.values()]
        self.pending_bytes -= sum(region.length for region in regions)
        return list(session.leases.values()), regions
