"""The shared-memory arena: object regions carved out of segments in /dev/shm.

Segments are created on demand (fallocated, so a full /dev/shm is a clean
error rather than a SIGBUS later), up to the arena's capacity, and are kept
once made: freed regions are reused while their pages are warm. Allocating
a segment's pages is far slower than a put, so when the newest segment is a
quarter full the next one is prepared by a background thread, and the put
that needs it finds it ready. Mappings are not pre-faulted: that would hold
the GIL as long, every process maps the segment anyway, and a page's first
touch in a mapping is a cheap minor fault. Every name carries the store's
prefix so a restarted server can remove what a crashed predecessor left
behind, and every file is owner-only.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import mmap
import os
import threading
from dataclasses import dataclass, field

from improv_store.protocol import SHM_DIR

log = logging.getLogger(__name__)


ALIGNMENT = 64
SEGMENT_SIZE = 64 << 20
_LARGE_ROUNDING = 1 << 20


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class ArenaFull(Exception):
    """No room for a region even after every reclaimable segment was dropped."""


@dataclass(eq=False, slots=True)  # one per resident object: no __dict__
class Region:
    """A live allocation: ``length`` bytes at ``offset`` in ``segment``."""

    segment: Segment
    offset: int
    length: int
    reserved: int

    def view(self) -> memoryview:
        """A writable view of the region in the server's own mapping."""
        return self.segment.view[self.offset : self.offset + self.length]


@dataclass(eq=False)
class Segment:
    """One /dev/shm file, mapped once, with a first-fit free list."""

    name: str
    number: int
    size: int
    mapping: mmap.mmap
    view: memoryview
    free_blocks: list[list[int]] = field(default_factory=list)  # [offset, size], by offset
    used: int = 0

    @classmethod
    def create(cls, name: str, number: int, size: int) -> Segment:
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError:
                os.unlink(path)
                raise
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)
        return cls(
            name=name,
            number=number,
            size=size,
            mapping=mapping,
            view=memoryview(mapping),
            free_blocks=[[0, size]],
        )

    def allocate(self, size: int) -> int | None:
        """Offset of a free block of ``size`` bytes (already aligned), or None."""
        for index, (offset, block_size) in enumerate(self.free_blocks):
            if block_size >= size:
                if block_size == size:
                    del self.free_blocks[index]
                else:
                    self.free_blocks[index] = [offset + size, block_size - size]
                self.used += size
                return offset
        return None

    def release(self, offset: int, size: int) -> None:
        """Return a block, merging it with free neighbours."""
        self.used -= size
        blocks = self.free_blocks
        index = bisect.bisect_left(blocks, [offset, 0])
        if index > 0 and blocks[index - 1][0] + blocks[index - 1][1] == offset:
            index -= 1
            blocks[index][1] += size
        else:
            blocks.insert(index, [offset, size])
        following = index + 1
        if following < len(blocks) and blocks[index][0] + blocks[index][1] == blocks[following][0]:
            blocks[index][1] += blocks[following][1]
            del blocks[following]

    def close(self) -> None:
        """Unlink the file and unmap it; a mapping some stray view still uses stays mapped."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, self.name))
        try:
            self.view.release()
            self.mapping.close()
        except BufferError:
            log.debug("segment %s still has views; it is unmapped when they go", self.name)


class Arena:
    """Allocates object regions within ``capacity`` bytes of shared memory. Not thread-safe."""

    def __init__(self, prefix: str, capacity: int, segment_size: int = SEGMENT_SIZE) -> None:
        self.prefix = prefix
        self.capacity = capacity
        self._segment_size = min(segment_size, capacity)
        self._segments: list[Segment] = []
        self._next_segment = 0
        self._spare: Segment | None = None
        self._preparing: threading.Thread | None = None
        self._spare_lock = threading.Lock()
        self._closed = False

    @property
    def reserved(self) -> int:
        """Bytes of /dev/shm the arena holds (its segments, the spare and one in the making)."""
        ahead = self._segment_size if self._spare or self._preparing else 0
        return sum(segment.size for segment in self._segments) + ahead

    @property
    def used(self) -> int:
        """Bytes of the segments allocated to regions."""
        return sum(segment.used for segment in self._segments)

    @property
    def segment_count(self) -> int:
        """Segment files in /dev/shm, the spare included."""
        return len(self._segments) + (self._spare is not None)

    def allocate(self, length: int) -> Region:
        """A region of ``length`` bytes; ArenaFull when there is no room without evicting."""
        size = _round_up(max(length, 1), ALIGNMENT)
        for segment in self._segments:
            offset = segment.allocate(size)
            if offset is not None:
                if segment is self._segments[-1] and segment.used * 4 > segment.size:
                    self._prepare_spare()
                return Region(segment, offset, length, size)
        segment = self._new_segment(size)
        offset = segment.allocate(size)
        assert offset is not None
        return Region(segment, offset, length, size)

    def free(self, region: Region) -> None:
        region.segment.release(region.offset, region.reserved)

    def _new_segment(self, size: int) -> Segment:
        segment_size = max(self._segment_size, _round_up(size, _LARGE_ROUNDING))
        spare = self._take_spare()
        if spare is not None and spare.size >= segment_size:
            self._segments.append(spare)
            return spare
        if spare is not None:
            spare.close()  # too small for this object; its room is needed
        if self.reserved + segment_size > self.capacity:
            self._drop_empty_segments()
        if self.reserved + segment_size > self.capacity:
            raise ArenaFull(
                f"a new {segment_size}-byte segment would take the arena past its capacity"
            )
        try:
            segment = Segment.create(*self._next_name(), segment_size)
        except OSError as exc:
            raise ArenaFull(
                f"cannot create a {segment_size}-byte segment in {SHM_DIR}: {exc}"
            ) from None
        self._segments.append(segment)
        log.debug("created segment %s of %d bytes", segment.name, segment_size)
        return segment

    def _next_name(self) -> tuple[str, int]:
        number = self._next_segment
        self._next_segment += 1
        return f"{self.prefix}{number}", number

    def _prepare_spare(self) -> None:
        """Start making the next segment in the background, if there is room for it."""
        if self._spare or self._preparing or self.reserved + self._segment_size > self.capacity:
            return
        name, number = self._next_name()
        self._preparing = threading.Thread(
            target=self._make_spare, args=(name, number), name="arena-spare", daemon=True
        )
        self._preparing.start()

    def _make_spare(self, name: str, number: int) -> None:
        try:
            segment = Segment.create(name, number, self._segment_size)
        except OSError as exc:
            log.warning("could not prepare segment %s ahead of need: %s", name, exc)
            segment = None
        with self._spare_lock:
            if segment is not None and self._closed:
                segment.close()
            else:
                self._spare = segment

    def _take_spare(self) -> Segment | None:
        """The prepared segment, waiting for it if it is still being made."""
        if self._preparing is not None:
            self._preparing.join()
            self._preparing = None
        with self._spare_lock:
            spare, self._spare = self._spare, None
        return spare

    def _drop_empty_segments(self) -> None:
        for segment in [s for s in self._segments if s.used == 0]:
            self._segments.remove(segment)
            segment.close()

    def close(self) -> None:
        """Unmap and unlink every segment, the spare too."""
        with self._spare_lock:
            self._closed = True
        spare = self._take_spare()
        if spare is not None:
            spare.close()
        for segment in self._segments:
            segment.close()
        self._segments.clear()


def remove_stale_segments(prefix: str, keep: tuple[str, ...] = ()) -> list[str]:
    """Unlink /dev/shm files with ``prefix`` left by a crashed server of the same store."""
    removed = []
    for name in os.listdir(SHM_DIR):
        if name.startswith(prefix) and name not in keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, name))
                removed.append(name)
    return removed


def shm_free_bytes() -> int:
    """Bytes free in /dev/shm."""
    stats = os.statvfs(SHM_DIR)
    return stats.f_bavail * stats.f_frsize
