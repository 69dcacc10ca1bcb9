"""The history Subscribe replays: recent events in memory, older ones in LMDB.

The memory tail holds every event not yet committed plus a short run of
committed ones; LMDB holds the committed history up to the retention limit.
Without LMDB (durability ``none``) the tail alone is the history, bounded by
the same limit.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator

from improv_store.v1 import store_pb2 as pb

from .errors import history_gone
from .lmdb_backend import LmdbBackend

_COMMITTED_TAIL = 1024


class EventLog:
    """Append-only, trimmed from the front; replays any retained range in order."""

    def __init__(self, backend: LmdbBackend | None, retention: int, trimmed_through: int) -> None:
        self._backend = backend
        self._retention = retention
        self._lock = threading.Lock()
        self._tail: deque[pb.Event] = deque()
        self._committed = 0
        self._trimmed_through = trimmed_through

    def append(self, event: pb.Event) -> None:
        """Add the newest event (the caller hands them over in sequence order)."""
        with self._lock:
            self._tail.append(event)
            if self._backend is None and len(self._tail) > self._retention:
                self._trimmed_through = self._tail.popleft().sequence

    def committed(self, sequence: int) -> None:
        """Everything through ``sequence`` is on disk; let the memory tail shrink."""
        with self._lock:
            self._committed = sequence
            while len(self._tail) > _COMMITTED_TAIL and self._tail[0].sequence <= self._committed:
                self._tail.popleft()

    def oldest_sequence(self, last_sequence: int) -> int:
        """The oldest sequence still replayable; ``last_sequence + 1`` when none is."""
        trimmed = self._backend.trimmed_through if self._backend else self._trimmed_through
        return min(trimmed + 1, last_sequence + 1)

    def check_retained(self, since: int, last_sequence: int) -> None:
        """Raise OUT_OF_RANGE when history from ``since`` has been trimmed away."""
        oldest = self.oldest_sequence(last_sequence)
        if since < oldest:
            raise history_gone(since, oldest)

    def snapshot(self) -> list[pb.Event]:
        """The memory tail as it is now; pair it with ``replay``."""
        with self._lock:
            return list(self._tail)

    def replay(self, since: int, through: int, tail: list[pb.Event]) -> Iterator[pb.Event]:
        """Events with sequence in [since, through], oldest first.

        ``tail`` must be a snapshot taken before this call: whatever it does
        not cover was committed before it was taken, so LMDB has it.
        """
        tail_start = tail[0].sequence if tail else through + 1
        if since < tail_start and self._backend is not None:
            yield from self._backend.read_events(since, min(through, tail_start - 1))
        for event in tail:
            if since <= event.sequence <= through:
                yield event
