"""What goes to disk, and the interface of the disk the committers write it to.

A ``Change`` is one mutation as the store hands it to a committer; a
``Backend`` applies a batch of them in one durable transaction. LmdbBackend
(lmdb_backend.py) is the one the server uses; tests give the committers
backends that fail or fill up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from improv_store.v1 import store_pb2 as pb


@dataclass
class Change:
    """One mutation as it goes to disk: the event plus what it stores and removes."""

    event: pb.Event
    stored: tuple[pb.ObjectMeta, bytes | memoryview] | None = None
    removed: Sequence[bytes] = field(default_factory=tuple)

    @property
    def payload_bytes(self) -> int:
        return len(self.stored[1]) if self.stored else 0


def removed_later(changes: Sequence[Change]) -> set[int]:
    """Indexes of the puts in ``changes`` whose object a later change removes.

    Their payloads are never written, and their memory may already hold
    another object's: the store frees it when the removal joins the put's batch.
    """
    removed_at = {
        object_id: index for index, change in enumerate(changes) for object_id in change.removed
    }
    return {
        index
        for index, change in enumerate(changes)
        if change.stored is not None and removed_at.get(change.stored[0].id, -1) > index
    }


class Backend(Protocol):
    """The disk as the committers see it."""

    def write(self, changes: Sequence[Change], *, applied_log: int | None = None) -> None:
        """Apply ``changes`` (at least one) in one transaction and make it durable, or
        apply none of them and raise.

        A full disk raises StoreError(RESOURCE_EXHAUSTED); any other failure
        another exception. ``applied_log`` records that the disk now holds
        every change the write-ahead log logged in that generation and before
        (see wal.py).
        """
        ...
