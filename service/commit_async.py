"""``async`` durability (improv's ``commit_freq``): a put returns once it is in memory, and
what was submitted during an interval is committed to LMDB at its end."""

from __future__ import annotations

import time

from .backend import Backend, Change
from .committer import CommitHooks, Committer, Ticket


class AsyncCommitter(Committer):
    """Commits the changes of each interval in one LMDB transaction; nobody waits for it
    but ``commit_now``'s caller (the store, for memory that only a commit frees) and
    ticket callbacks.

    Besides the invariants of Committer:

    - Only this committer's thread writes, one batch per interval: an interval
      starts when the previous commit attempt ends, and ``commit_now`` ends it early.
    - A crash loses at most the changes of the interval under way and of the
      batch being written.
    - Submitting never wakes the thread, so a put costs no thread switch.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        interval: float,
        hooks: CommitHooks,
        durable_sequence: int = 0,
    ) -> None:
        """``interval`` in seconds; ``durable_sequence`` is the last sequence already on disk."""
        self._interval = interval
        self._commit_requested = False
        super().__init__(backend, hooks, durable_sequence)

    def submit(self, change: Change) -> tuple[Ticket, set[bytes]]:
        with self._cond:
            self._pending.append(change)
            if change.stored is not None:
                self._queued_puts.add(change.stored[0].id)
            return self._ticket, {i for i in change.removed if i in self._queued_puts}

    def commit_now(self) -> Ticket:
        with self._cond:
            if self._pending:
                self._commit_requested = True
                self._cond.notify()
            return self._awaited()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._wait_for_interval()
                if not self._pending and self._closing:
                    return
                batch, ticket = self._take()
                self._commit_requested = False
            if batch:
                self._commit(batch, ticket)

    def _wait_for_interval(self) -> None:
        """Until the interval ends, a commit is asked for, or the committer closes (with _cond)."""
        deadline = time.monotonic() + self._interval
        while not (self._closing or self._commit_requested):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)
