"""Deleting what a store should no longer keep: objects past an age, or the oldest ones
when the stored payloads outgrow a limit (the job improv's harvester process did).

Each deletion is an ordinary DeleteMatching in the store, so subscribers see a DELETE
event for every object removed and durability applies as for any delete.
"""

from __future__ import annotations

import logging
import threading
import time

from .errors import StoreError
from .store import Store

log = logging.getLogger(__name__)

# Seconds between checks, at most: an object outlives its age by no more than this.
_CHECK_INTERVAL = 1.0
# Past the byte limit, the oldest objects go until the payloads take this share of it.
LOW_WATER = 0.75


class Reaper:
    """A thread that applies ``expire_after`` (seconds) and ``max_stored_bytes`` (0: off)."""

    def __init__(self, store: Store, *, expire_after: float, max_stored_bytes: int) -> None:
        self._store = store
        self._expire_after = expire_after
        self._max_stored_bytes = max_stored_bytes
        self._interval = min(_CHECK_INTERVAL, expire_after / 4) if expire_after else _CHECK_INTERVAL
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.reap()
            except StoreError as exc:  # the store is stopping, or the disk is full
                log.warning("cleanup skipped: %s", exc.message)

    def reap(self) -> int:
        """Delete what is too old, then the oldest objects while over the limit; return how
        many objects were deleted."""
        deleted = 0
        if self._expire_after:
            cutoff = time.time_ns() - int(self._expire_after * 1e9)
            count, _, _ = self._store.delete_matching("", 0, cutoff, wait=False)
            if count:
                log.info("deleted %d objects older than %g s", count, self._expire_after)
            deleted += count
        if self._max_stored_bytes:
            target = int(self._max_stored_bytes * LOW_WATER)
            bound = self._store.sequence_freeing_to(self._max_stored_bytes, target)
            if bound:
                count, _, _ = self._store.delete_matching("", bound, None, wait=False)
                log.info("deleted the %d oldest objects: the stored payloads were over %d bytes",
                         count, self._max_stored_bytes)
                deleted += count
        return deleted
