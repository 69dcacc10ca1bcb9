"""``sync`` durability: a write is answered once its change is on disk.

Concurrent writers share commits (group commit): whatever arrives while one
batch is being made durable forms the next, so N writers pay far fewer than N
fsyncs. With a write-ahead log (wal.py) a batch of small changes is durable
once appended to the log, one fsync where an LMDB commit takes two, and the
log is applied to LMDB later, in one ordinary commit of many batches.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

from .backend import Backend, Change
from .committer import RETRY_DELAY, CommitHooks, Committer, Ticket
from .errors import StoreError
from .wal import WriteAheadLog

log = logging.getLogger(__name__)

# Longest a logged batch waits for the writers of the previous batches to come back.
_LINGER = 250e-6
# Batches with more payload than this skip the log: writing them twice costs more
# than the fsyncs it saves.
_LOGGED_PAYLOAD_LIMIT = 256 << 10


class _Backlog:
    """The write-ahead log, and the changes it holds that LMDB does not yet.

    ``changes`` are those of the generation being appended to, preceded,
    after a failed application to LMDB (``behind``), by the generation before.
    Changed only by the holder of the committer's ``_writing`` lock.
    """

    def __init__(self, wal: WriteAheadLog, interval: float) -> None:
        self.wal = wal
        self.changes: list[Change] = []
        self.behind = False
        self.interval = interval
        # When the oldest change logged is due in LMDB: set by whoever appends the first
        # (inline: the append is the lane's hot path).
        self.due_by = 0.0
        self._retry_at = 0.0  # after a failed application, not before this

    def due_at(self, urgent: bool) -> float | None:
        """When LMDB is to take the changes logged (monotonic); None if there are none.
        ``urgent``, or half the log's half used: as soon as a failure allows."""
        if not self.changes:
            return None
        urgent = urgent or self.wal.used * 2 >= self.wal.capacity
        return max(0.0 if urgent else self.due_by, self._retry_at)

    def close_generation(self) -> tuple[list[Change], int]:
        """The changes of the generation being appended to, and its number, for LMDB;
        appends go on as the next generation, in the log's other half."""
        changes, generation = list(self.changes), self.wal.generation
        self.wal.restart(generation + 1)
        return changes, generation

    def applied(self, count: int) -> None:
        """LMDB holds the first ``count`` changes (a generation closed for it)."""
        del self.changes[:count]
        if self.changes:  # appended meanwhile: due an interval from now
            self.due_by = time.monotonic() + self.interval

    def failed(self) -> None:
        """An application to LMDB failed: the next takes every change logged, after a pause."""
        self.behind = True
        self._retry_at = time.monotonic() + RETRY_DELAY

    def emptied(self) -> None:
        """LMDB holds every change logged (a commit carried them): start the log over."""
        self.wal.restart(self.wal.generation + 1)
        self.changes = []
        self.behind = False


class SyncCommitter(Committer):
    """Makes each batch durable before its ticket settles: in the write-ahead log when it
    is small and there is one, else in LMDB.

    The log is applied to LMDB every ``apply_interval``, when half of its
    half is used, when ``commit_now`` asks (only objects in LMDB may be
    evicted), and at close. A thread answering many writers (the lane's loop)
    may append to the log itself (``logging_in_this_thread``), as Redis does
    before it answers, sparing a hand-over to this thread and back.

    Besides the invariants of Committer:

    - Only the holder of ``_writing`` appends to the log or commits new
      changes to LMDB; only this committer's thread writes LMDB.
    - Everything logged reaches LMDB no later than the first change committed
      there directly: a direct commit carries the whole log, which then starts over.
    - The log's two halves: applying generation g to LMDB moves appends on to
      g + 1 in the other half, so writers never wait for that commit; g + 2
      (g's half) starts only once LMDB holds g. After a failed application,
      the next takes both generations while appends wait.
    - ``on_commit`` follows each LMDB commit, of logged changes too.
      ``commit_now``'s ticket settles after the next commit of the log to
      LMDB, which holds what was logged when it started: changes still
      queued then may reach LMDB only in a later one.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        wal: WriteAheadLog | None,
        apply_interval: float,
        hooks: CommitHooks,
        durable_sequence: int = 0,
    ) -> None:
        """``wal`` None commits every batch to LMDB; ``apply_interval`` is the longest a
        logged change waits for LMDB, in seconds."""
        self._log = _Backlog(wal, apply_interval) if wal is not None else None
        self._writing = threading.Lock()
        self._logging_threads: set[int] = set()  # they log their own changes (log_pending)
        self._expected = 0  # changes the next logged batch may linger for
        self._applied = Ticket()  # the next commit of the logged changes to LMDB
        self._apply_requested = False
        super().__init__(backend, hooks, durable_sequence)

    def submit(self, change: Change) -> tuple[Ticket, set[bytes]]:
        with self._cond:
            pending = self._pending
            pending.append(change)
            if change.stored is not None:
                self._queued_puts.add(change.stored[0].id)
            # While the thread lingers it waits for the count it expects, and is only
            # woken for that: each needless wake-up takes the interpreter from a writer.
            if (threading.get_ident() not in self._logging_threads
                    and (len(pending) == 1 or len(pending) >= self._expected)):
                self._cond.notify()
            return self._ticket, {i for i in change.removed if i in self._queued_puts}

    def commit_now(self) -> Ticket:
        with self._cond:
            if self._log is not None and (self._pending or self._in_flight or self._log.changes):
                self._apply_requested = True
                self._cond.notify()
                return self._applied
            return self._awaited()

    @contextlib.contextmanager
    def logging_in_this_thread(self) -> Iterator[bool]:
        """For its duration the calling thread makes its own changes durable: what it
        submits does not wake the committer's thread, and it calls ``log_pending`` once
        it has submitted what it has for now. Yields False (and changes nothing)
        without a write-ahead log."""
        if self._log is None:
            yield False
            return
        ident = threading.get_ident()
        self._logging_threads.add(ident)
        try:
            yield True
        finally:
            self._logging_threads.discard(ident)
            with self._cond:  # whatever it left queued is the committer's thread's now
                if self._pending:
                    self._cond.notify()

    def log_pending(self) -> None:
        """Append what is queued to the log, in the calling thread, if the log can take it
        and the committer's thread is not writing; else leave it to that thread."""
        if self._log is None or not self._writing.acquire(blocking=False):
            return  # a writing committer's thread takes what is queued next
        try:
            with self._cond:
                if not self._pending:
                    return
                if _payload(self._pending) > _LOGGED_PAYLOAD_LIMIT:
                    self._cond.notify()  # for LMDB: the committer's thread does that
                    return
                batch, ticket = self._take()
            starts_log = not self._log.changes
            appended = self._append(batch, ticket)
            with self._cond:
                self._in_flight = None
                if not appended:  # the log is full or failing: LMDB, by the committer
                    self._put_back(batch, ticket)
                # The committer's thread writes LMDB: now, or when this first record is due.
                if not appended or starts_log or self._apply_due():
                    self._cond.notify()
        finally:
            self._writing.release()

    # -- the committer's thread -------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._wait_for_batch()
                if not self._pending and self._closing:
                    break
            with self._writing:
                with self._cond:  # a thread logging its own may have taken them meanwhile
                    batch, ticket = self._take()
                if batch:
                    if self._append(batch, ticket):
                        with self._cond:
                            self._in_flight = None
                    else:
                        self._commit(batch, ticket)
            if self._apply_due():
                self._apply_logged()
        self._finish_log()

    def _wait_for_batch(self) -> None:
        """Until changes are queued (and their companions had a moment to join), the log
        is due in LMDB, or the committer closes (with _cond)."""
        while not self._pending and not self._closing:
            due = None if self._log is None else self._log.due_at(self._apply_requested)
            if due is not None and due <= time.monotonic():
                return
            self._cond.wait(None if due is None else due - time.monotonic())
        self._linger()

    def _linger(self) -> None:
        """Give writers just answered a moment to send their next change, so that
        concurrent writers share one fsync instead of taking turns in two groups."""
        if self._log is None:
            return
        deadline = time.monotonic() + _LINGER
        while (len(self._pending) < self._expected and not self._closing
               and (remaining := deadline - time.monotonic()) > 0):
            self._cond.wait(remaining)

    def _append(self, batch: list[Change], ticket: Ticket) -> bool:
        """Make a batch of small changes durable in the log (with _writing); False if it is
        not for the log (too large, no room, no log, or the log cannot be written)."""
        backlog = self._log
        if backlog is None or _payload(batch) > _LOGGED_PAYLOAD_LIMIT:
            return False
        started = time.perf_counter()
        try:
            if not backlog.wal.append(batch):
                return False
        except OSError as exc:
            log.warning("write-ahead log append failed, committing to LMDB instead: %s", exc)
            return False
        if not backlog.changes:
            backlog.due_by = time.monotonic() + backlog.interval
        backlog.changes += batch
        self._made_durable(batch, started)
        with self._cond:  # its writers, and those already waiting, will want the next fsync
            self._expected = len(batch) + len(self._pending)
        ticket.resolve()
        return True

    def _write(self, changes: list[Change]) -> None:
        """Commit ``changes`` to LMDB after everything logged (with _writing); the log
        then starts over."""
        backlog = self._log
        if backlog is None:
            super()._write(changes)
            return
        started = time.perf_counter()
        written = backlog.changes + changes
        self._backend.write(written, applied_log=backlog.wal.generation)
        backlog.emptied()
        if changes:
            self._made_durable(changes, started)
        self._hooks.on_commit(written[-1].event.sequence)
        self._answer_apply_requests()

    # -- applying the log to LMDB (by the committer's thread) ----------------------------

    def _apply_due(self) -> bool:
        """Whether the logged changes are due in LMDB now."""
        if self._log is None:
            return False
        due = self._log.due_at(self._closing or self._apply_requested)
        return due is not None and due <= time.monotonic()

    def _apply_logged(self) -> None:
        """Commit the logged changes to LMDB; on failure they stay logged (and durable).

        Only the switch to the log's other half holds up appends: LMDB then
        takes the generation just closed while the next one is written.
        """
        backlog = self._log
        assert backlog is not None
        with self._writing:
            if backlog.behind:
                self._apply_everything_logged()
                return
            changes, generation = backlog.close_generation()
            with self._cond:  # commit_now's callers from here on wait for the next apply
                applied, self._applied = self._applied, Ticket()
                self._apply_requested = False
        try:
            self._backend.write(changes, applied_log=generation)
        except Exception as exc:
            error = self._report(exc, [], f"{len(changes)} logged changes")
            with self._writing:
                backlog.failed()
            applied.resolve(error)
            return
        with self._writing:
            backlog.applied(len(changes))
        self._hooks.on_commit(changes[-1].event.sequence)  # before waiters wake: they may evict
        applied.resolve()

    def _apply_everything_logged(self) -> None:
        """Commit every logged change, of both generations, to LMDB (with _writing)."""
        assert self._log is not None
        try:
            self._write([])
        except Exception as exc:
            error = self._report(exc, [], f"{len(self._log.changes)} logged changes")
            self._log.failed()
            self._answer_apply_requests(error)

    def _answer_apply_requests(self, error: StoreError | None = None) -> None:
        """Tell commit_now's waiters that the logged changes reached LMDB, or failed to."""
        with self._cond:
            applied, self._applied = self._applied, Ticket()
            self._apply_requested = False
        applied.resolve(error)

    def _finish_log(self) -> None:
        """At close: apply what is logged to LMDB, or leave it for the next start."""
        if self._log is not None and self._log.changes:
            self._apply_logged()
            if self._log.changes:
                log.error("%d changes stay in the write-ahead log; they are applied to LMDB"
                          " when the store next starts", len(self._log.changes))


def _payload(changes: list[Change]) -> int:
    return sum(change.payload_bytes for change in changes)
