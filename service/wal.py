"""The write-ahead log of ``sync`` mode: one fsync per group commit instead of LMDB's two.

A durable LMDB commit writes the pages of every tree it touched, fsyncs,
writes a meta page and fsyncs again. Appending the same changes to a file
whose blocks already exist takes one data flush, several times cheaper. So
in ``sync`` mode a group of small changes is durable once it is in this
log; the committer (commit_sync.py) applies the log to LMDB (one ordinary
durable commit) every log apply interval, or sooner when it fills, and then
starts the log again.

The log is one preallocated file in two halves. Generation ``g`` is written
from the start of half ``g % 2``; when the committer applies it to LMDB,
appends go on at once into the other half as generation ``g + 1``, so no
writer waits for the (much longer) LMDB commit. A record is ``generation
(u64), body length (u32), CRC32C (u32)`` and a body of encoded changes;
the CRC covers the generation, the length and the body. LMDB remembers the
last generation it has applied, and recovery replays the generations after
it, each from the start of its half up to the first record that does not
check out (a torn write, or an older generation's record never
overwritten). At most two are there: a generation is only started when the
one before the previous is in LMDB.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence

import crc32c

from improv_store.v1 import store_pb2 as pb

from .backend import Change, removed_later

WAL_FILE = "wal"

_RECORD = struct.Struct("<QII")  # generation, body length, CRC32C
_CHANGE = struct.Struct("<IIII")  # event, meta (0: nothing stored), payload, removed-ID count
_ID_LENGTH = struct.Struct("<H")
_ZEROS = bytes(1 << 20)


def encode(changes: Sequence[Change]) -> bytes:
    """The body of one record; a put removed later in it keeps no payload (see
    backend.removed_later)."""
    skipped = removed_later(changes)
    parts: list[bytes | memoryview] = []
    for index, change in enumerate(changes):
        event = change.event.SerializeToString()
        meta = b""
        payload: bytes | memoryview = b""
        if change.stored is not None:
            meta = change.stored[0].SerializeToString()
            payload = b"" if index in skipped else change.stored[1]
        parts += [_CHANGE.pack(len(event), len(meta), len(payload), len(change.removed)),
                  event, meta, payload]
        for object_id in change.removed:
            parts += [_ID_LENGTH.pack(len(object_id)), object_id]
    return b"".join(parts)


def decode(body: bytes) -> Iterator[Change]:
    """The changes of one record's body (which its CRC has vouched for)."""
    view = memoryview(body)
    at = 0
    while at < len(view):
        event_length, meta_length, payload_length, removed_count = _CHANGE.unpack_from(view, at)
        at += _CHANGE.size
        event = pb.Event.FromString(bytes(view[at:at + event_length]))
        at += event_length
        stored = None
        if meta_length:
            meta = pb.ObjectMeta.FromString(bytes(view[at:at + meta_length]))
            at += meta_length
            stored = (meta, bytes(view[at:at + payload_length]))
            at += payload_length
        removed = []
        for _ in range(removed_count):
            (length,) = _ID_LENGTH.unpack_from(view, at)
            at += _ID_LENGTH.size
            removed.append(bytes(view[at:at + length]))
            at += length
        yield Change(event=event, stored=stored, removed=removed)


def _checksum(generation: int, body: bytes) -> int:
    return crc32c.crc32c(body, crc32c.crc32c(struct.pack("<QI", generation, len(body))))


def read(path: str, generation: int) -> list[Change]:
    """The changes logged in ``generation``, in order; none if there is no log."""
    try:
        with open(path, "rb") as file:
            half = os.fstat(file.fileno()).st_size // 2
            file.seek((generation % 2) * half)
            data = file.read(half)
    except FileNotFoundError:
        return []
    changes: list[Change] = []
    at = 0
    while at + _RECORD.size <= len(data):
        record_generation, length, checksum = _RECORD.unpack_from(data, at)
        body = data[at + _RECORD.size:at + _RECORD.size + length]
        if (record_generation != generation or len(body) != length
                or _checksum(generation, body) != checksum):
            break
        changes.extend(decode(body))
        at += _RECORD.size + length
    return changes


def read_after(path: str, applied: int) -> list[tuple[int, list[Change]]]:
    """The generations logged after ``applied`` (the last one LMDB holds), oldest first,
    each with its changes."""
    logged = []
    generation = applied + 1
    while changes := read(path, generation):
        logged.append((generation, changes))
        generation += 1
    return logged


def _preallocate(path: str, size: int) -> None:
    """Create ``path`` owner-only if need be, and write its blocks up to ``size`` bytes;
    if the disk cannot take them, leave the file as it was (a full disk keeps its room
    for LMDB)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        existing = written = os.fstat(fd).st_size
        try:
            while written < size:
                written += os.pwrite(fd, _ZEROS[:size - written], written)
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, existing)
            raise
    finally:
        os.close(fd)


class WriteAheadLog:
    """The log file, open for appending the changes of ``generation`` to its half.

    Used by one thread at a time (the holder of the sync committer's ``_writing`` lock).
    """

    def __init__(self, path: str, size: int, generation: int) -> None:
        """Open (creating it owner-only) and preallocate ``path`` to ``size`` bytes.

        The blocks are written once here, so an append changes no file
        metadata and flushes the record alone. Appends go through a
        descriptor opened ``O_DSYNC``: each write returns once its data is
        on disk, one system call where write and ``fdatasync`` were two.
        """
        self.path = path
        self.generation = generation
        self._offset = 0
        _preallocate(path, size)
        self._fd = os.open(path, os.O_WRONLY | os.O_DSYNC | os.O_CLOEXEC)
        # What read() takes for a half: half the file as it is (larger than ``size``
        # if an earlier start made it so).
        self.capacity = os.fstat(self._fd).st_size // 2

    def append(self, changes: Sequence[Change]) -> bool:
        """Write one record of ``changes`` and flush it to disk; False (nothing written)
        if it does not fit in what is left of the file."""
        body = encode(changes)
        end = self._offset + _RECORD.size + len(body)
        if end > self.capacity:
            return False
        header = _RECORD.pack(self.generation, len(body), _checksum(self.generation, body))
        at = (self.generation % 2) * self.capacity + self._offset
        os.pwritev(self._fd, [header, body], at)  # O_DSYNC: on disk on return
        self._offset = end
        return True

    @property
    def used(self) -> int:
        """Bytes of this generation written (of ``capacity``)."""
        return self._offset

    def restart(self, generation: int) -> None:
        """Log ``generation`` from the start of its half: LMDB has every generation before
        ``generation - 1``, whose half this is not."""
        self.generation = generation
        self._offset = 0

    def close(self) -> None:
        os.close(self._fd)
