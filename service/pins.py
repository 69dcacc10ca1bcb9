"""Pin tables: which listed objects colocated clients are reading in place.

The object index lets a client read a large object as a view on shared
memory with no call at all, so the server cannot count those readers as it
counts leases. Each session gets a small table in /dev/shm instead, where
its client writes the ID of every object it reads in place, and zeroes it
when the view is gone (``SessionResponse.pin_table`` in store.proto). The
server looks there before freeing the memory of an object it has withdrawn
from the index; a pinned one is freed later, once no table names it.

Both sides write, then look at the other's memory, so each puts a full
memory barrier in between (Dekker's handshake): the client pins, then checks
the slot's version; the server withdraws the slot, then looks for pins. At
least one of them sees the other's write.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading

from improv_store.layouts import NO_ID, PIN_SLOT_SIZE
from improv_store.protocol import ID_LENGTH, SHM_DIR

PIN_SLOTS = 1024


class PinTables:
    """The pin table of every open session. Not thread-safe: the store's lock covers it."""

    def __init__(self, prefix: str, slots: int = PIN_SLOTS) -> None:
        self._prefix = prefix
        self.slots = slots
        self._tables: dict[str, tuple[str, mmap.mmap]] = {}
        self._numbers = iter(range(1, 1 << 62))
        self._barrier = threading.Lock()

    def open(self, session_id: str) -> str:
        """Create the session's table (owner-only, zeroed); return its file name."""
        name = f"{self._prefix}pins-{next(self._numbers)}"
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, self.slots * PIN_SLOT_SIZE)
            table = mmap.mmap(fd, self.slots * PIN_SLOT_SIZE, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self._tables[session_id] = (name, table)
        return name

    def close(self, session_id: str) -> None:
        """The session ended: its pins go with its table."""
        entry = self._tables.pop(session_id, None)
        if entry is not None:
            _remove(*entry)

    def close_all(self) -> None:
        for entry in self._tables.values():
            _remove(*entry)
        self._tables.clear()

    def holds(self, object_id: bytes) -> bool:
        """Whether any session has ``object_id`` pinned. Call after withdrawing the
        object from the index: the barrier makes that withdrawal visible to readers
        before the tables are read."""
        self._fence()
        for _, table in self._tables.values():
            at = table.find(object_id)
            while at != -1:
                if at % PIN_SLOT_SIZE == 0:
                    return True
                at = table.find(object_id, at + 1)
        return False

    def pinned(self) -> set[bytes]:
        """Every ID pinned in any table (one pass over each, with the same barrier as
        ``holds``): for checking many withdrawn objects at once."""
        self._fence()
        pinned: set[bytes] = set()
        for _, table in self._tables.values():
            pinned |= _pinned_in(table)
        return pinned

    def _fence(self) -> None:
        """A full memory barrier: a lock's locked instruction, on x86-64."""
        with self._barrier:
            pass


def _pinned_in(table: mmap.mmap) -> set[bytes]:
    raw = table[:]
    return {raw[at : at + ID_LENGTH] for at in range(0, len(raw), PIN_SLOT_SIZE)} - {NO_ID}



def _remove(name: str, table: mmap.mmap) -> None:
    table.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(SHM_DIR, name))
