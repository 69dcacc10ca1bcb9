"""The background writer: batches changes into LMDB transactions (group commit).

In ``sync`` mode a writer waits on the ticket of the batch its change joined;
whatever arrives while one transaction is being fsynced forms the next batch,
so N concurrent writers pay far fewer than N fsyncs. In ``async`` mode the
batch is committed every interval and nobody waits.

A batch that fails (a full disk) fails its ticket and is retried, together
with whatever arrived since, until it lands: LMDB is left unchanged by a
failed transaction, and later changes are never committed before it.

With a write-ahead log (``sync`` mode, wal.py) a batch of small changes is
durable once appended to the log, and the log is applied to LMDB every
interval, when half of its half is written, or when the store needs the
memory of uncommitted objects; ``on_commit`` follows those LMDB commits,
since only then may objects be evicted. Appends go on while the log is
applied (into the log's other half): writers never wait for that LMDB
commit, which takes tens of milliseconds. A batch too large for the log
goes straight to LMDB, together with everything logged before it. A thread that submits
many changes (the lane's loop) may append them to the log itself, as Redis
does before it answers, instead of handing them to the committer's thread:
see ``logging_in_this_thread``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from improv_store.protocol import Code

from .errors import StoreError
from .lmdb_backend import Change, LmdbBackend
from .wal import WriteAheadLog

log = logging.getLogger(__name__)

_RETRY_DELAY = 0.5
# Longest a logged batch waits for the writers of the previous batches to come back.
_LINGER = 250e-6
# Batches with more payload than this skip the log: writing them twice costs more
# than the fsyncs it saves.
_LOGGED_PAYLOAD_LIMIT = 256 << 10


class Ticket:
    """Completion of one batch: set when it is on disk, or failed with the reason."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: StoreError | None = None
        self._callbacks: list[Callable[[StoreError | None], object]] = []
        self._resolved = False
        self._lock = threading.Lock()

    def resolve(self, error: StoreError | None = None) -> None:
        """Settle the batch: callbacks first, then the waiters wake (so that what the
        callbacks undo, such as a failed object's lease, is undone when they do)."""
        with self._lock:
            self._error = error
            self._resolved = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(error)
            except Exception:
                log.exception("a commit callback failed")
        self._done.set()

    def when_done(self, callback: Callable[[StoreError | None], object]) -> None:
        """Call ``callback(error)`` once the batch is on disk (error None) or failed: at
        once if it is, else from the thread that settles it, which it must not hold up."""
        with self._lock:
            if not self._resolved:
                self._callbacks.append(callback)
                return
        callback(self._error)

    def wait(self) -> None:
        """Block until the batch is committed; raise the commit's error if it failed."""
        self._done.wait()
        if self._error is not None:
            raise self._error


class Committer:
    """Owns the one thread that writes to LMDB (and to the write-ahead log, if any)."""

    def __init__(
        self,
        backend: LmdbBackend,
        *,
        group_commit: bool,
        interval: float,
        on_commit: Callable[[int], None],
        on_failure: Callable[[list[Change], StoreError], None] | None = None,
        observe: Callable[[int, float], None] | None = None,
        wal: WriteAheadLog | None = None,
        durable_sequence: int = 0,
    ) -> None:
        """``on_commit(sequence)`` follows each LMDB commit, ``on_failure(changes, error)``
        each failed one (before its ticket fails; ``changes`` is empty when only logged
        changes failed to reach LMDB); ``observe(changes, seconds)`` times each group
        commit that makes changes durable (a log append, or an LMDB commit of new
        changes; not the log's later application). ``wal`` (with ``group_commit``
        only) makes batches durable in the log first. ``durable_sequence`` is the last
        sequence already on disk."""
        self.durable_sequence = durable_sequence  # the last sequence on disk, log or LMDB
        self._backend = backend
        self._on_failure = on_failure
        self._observe = observe
        self._group_commit = group_commit
        self._interval = interval
        self._on_commit = on_commit
        self._wal = wal if group_commit else None
        self._cond = threading.Condition()
        self._pending: list[Change] = []
        self._queued_puts: set[bytes] = set()  # IDs of the objects put by _pending
        self._ticket = Ticket()
        self._closing = False
        self._commit_requested = False
        self._in_flight: Ticket | None = None
        self._logged: list[Change] = []  # in the log, not yet in LMDB (oldest first)
        self._apply_failed = False  # the next attempt takes the whole log, appends waiting
        self._apply_by = 0.0  # when the logged changes are due in LMDB
        self._apply_retry_at = 0.0  # after a failed attempt, not before this
        self._applied = Ticket()  # the next commit of the logged changes to LMDB
        self._apply_requested = False
        self._expected = 0  # changes the next logged batch may wait for
        # Held by whichever thread writes the log or LMDB, so that batches land in order.
        self._writing = threading.Lock()
        self._logging_threads: set[int] = set()  # they log their own changes (log_pending)
        self._thread = threading.Thread(target=self._run, name="lmdb-committer", daemon=True)
        self._thread.start()

    def submit(self, change: Change) -> tuple[Ticket, set[bytes]]:
        """Queue a change (in sequence order); return the ticket of its batch, and which
        of the objects it removes were put in that same batch: their payloads will
        never be read (durability.removed_later), so their memory may be reused now."""
        with self._cond:
            self._pending.append(change)
            if change.stored is not None:
                self._queued_puts.add(change.stored[0].id)
            unread = {object_id for object_id in change.removed if object_id in self._queued_puts}
            # While the committer lingers it waits for the count it expects, and is only
            # woken for that: each needless wake-up takes the interpreter from a writer.
            if (self._group_commit and threading.get_ident() not in self._logging_threads
                    and (len(self._pending) == 1 or len(self._pending) >= self._expected)):
                self._cond.notify()
            return self._ticket, unread

    @contextlib.contextmanager
    def logging_in_this_thread(self) -> Iterator[bool]:
        """For its duration the calling thread makes its own changes durable: what it
        submits does not wake the committer's thread, and it calls ``log_pending`` once
        it has submitted what it has for now. Yields False (and changes nothing)
        without a write-ahead log.

        One thread answering many writers (the lane's loop) then works as Redis does:
        it takes what they sent, appends it to the log, and answers, with no hand-over
        to another thread and back, which cost more than the fsync here.
        """
        if self._wal is None:
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
        if not self._writing.acquire(blocking=False):
            return  # the committer's thread is writing, and takes what is queued next
        try:
            with self._cond:
                if not self._pending:
                    return
                if self._payload(self._pending) > _LOGGED_PAYLOAD_LIMIT:
                    self._cond.notify()  # for LMDB: the committer's thread does that
                    return
                batch, ticket = self._take()
            starts_log = not self._logged
            logged = self._log(batch, ticket)
            with self._cond:
                self._in_flight = None
                if not logged:  # the log is full or failing (rare): LMDB, by the committer
                    self._requeue(batch, ticket)
                # The committer's thread writes LMDB: now, or when this first record is due.
                if not logged or starts_log or self._apply_due():
                    self._cond.notify()
        finally:
            self._writing.release()

    def commit_now(self) -> Ticket:
        """Commit what is queued to LMDB without waiting for the interval; return its ticket."""
        with self._cond:
            if self._wal is not None and (self._pending or self._in_flight or self._logged):
                self._apply_requested = True
                self._cond.notify()
                return self._applied
            if self._pending:
                self._commit_requested = True
                self._cond.notify()
                return self._ticket  # batches commit in order: this covers one in flight
            if self._in_flight is not None:
                return self._in_flight
            done = Ticket()
            done.resolve()
            return done

    def close(self) -> None:
        """Commit what is queued and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

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
                    if not self._log(batch, ticket):
                        self._commit(batch, ticket)
                    with self._cond:
                        self._in_flight = None
            if self._apply_due():
                self._apply_logged()
        self._finish_log()

    def _take(self) -> tuple[list[Change], Ticket]:
        """The queued changes and their ticket, as the batch now in flight (with _cond)."""
        batch, self._pending = self._pending, []
        self._queued_puts = set()
        ticket, self._ticket = self._ticket, Ticket()
        self._commit_requested = False
        self._in_flight = ticket if batch else None
        return batch, ticket

    def _requeue(self, batch: list[Change], ticket: Ticket) -> None:
        """Put a batch taken but not written back in front of the queue; its waiters are
        answered with the batch it joins (with _cond)."""
        self._pending[:0] = batch
        self._queued_puts.update(c.stored[0].id for c in batch if c.stored is not None)
        self._ticket.when_done(ticket.resolve)

    def _finish_log(self) -> None:
        """At close: apply what is logged to LMDB, or leave it for the next start."""
        if self._logged:
            self._apply_retry_at = 0.0
            self._apply_logged()
            if self._logged:
                log.error("%d changes stay in the write-ahead log; they are applied to LMDB"
                          " when the store next starts", len(self._logged))

    def _wait_for_batch(self) -> None:
        if self._group_commit:
            while not self._pending and not self._closing:
                due = self._apply_time()
                if due is not None and due <= time.monotonic():
                    return
                self._cond.wait(None if due is None else due - time.monotonic())
            self._linger()
            return
        deadline = time.monotonic() + self._interval
        while not (self._closing or self._commit_requested):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _linger(self) -> None:
        """Give writers just answered a moment to send their next change, so that
        concurrent writers share one fsync instead of taking turns in two groups."""
        if self._wal is None:
            return
        deadline = time.monotonic() + _LINGER
        while (len(self._pending) < self._expected and not self._closing
               and (remaining := deadline - time.monotonic()) > 0):
            self._cond.wait(remaining)

    def _log(self, batch: list[Change], ticket: Ticket) -> bool:
        """Make a batch of small changes durable in the write-ahead log; False if it is
        not for the log (too large, no room, no log, or the log cannot be written)."""
        if self._wal is None or self._payload(batch) > _LOGGED_PAYLOAD_LIMIT:
            return False
        started = time.perf_counter()
        try:
            if not self._wal.append(batch):
                return False
        except OSError as exc:
            log.warning("write-ahead log append failed, committing to LMDB instead: %s", exc)
            return False
        self._made_durable(batch, started)
        if not self._logged:
            self._apply_by = time.monotonic() + self._interval
        self._logged += batch
        with self._cond:  # its writers, and those already waiting, will want the next fsync
            self._expected = len(batch) + len(self._pending)
        ticket.resolve()
        return True

    @staticmethod
    def _payload(changes: list[Change]) -> int:
        return sum(change.payload_bytes for change in changes)

    def _apply_time(self) -> float | None:
        """When the logged changes are due in LMDB (monotonic); None if nothing is logged."""
        if not self._logged:
            return None
        assert self._wal is not None
        urgent = (self._closing or self._apply_requested
                  or self._wal.used * 2 >= self._wal.capacity)
        return max(0.0 if urgent else self._apply_by, self._apply_retry_at)

    def _apply_due(self) -> bool:
        due = self._apply_time()
        return due is not None and due <= time.monotonic()

    def _write(self, changes: list[Change]) -> None:
        """Commit ``changes`` to LMDB, after everything logged; the log then starts over."""
        started = time.perf_counter()
        if self._wal is None:
            self._backend.write(changes)
            written = changes
        else:
            written = self._logged + changes
            self._backend.write(written, applied_log=self._wal.generation)
            self._wal.restart(self._wal.generation + 1)
            self._logged = []
            self._apply_failed = False
        if changes:
            self._made_durable(changes, started)
        self._on_commit(written[-1].event.sequence)  # before waiters wake: they may evict
        self._answer_apply_requests()

    def _made_durable(self, changes: list[Change], started: float) -> None:
        """Note a group commit (in the log, or in LMDB directly) of ``changes``."""
        self.durable_sequence = changes[-1].event.sequence
        if self._observe is not None:
            self._observe(len(changes), time.perf_counter() - started)

    def _apply_logged(self) -> None:
        """Commit the logged changes to LMDB; on failure they stay logged (and durable).

        Only the switch to the log's other half holds up appends: LMDB then takes
        the generation just closed while the next one is written. After a failed
        attempt the next one takes every logged change, and appends wait for it.
        """
        with self._writing:
            if self._apply_failed:
                self._apply_everything_logged()
                return
            changes, generation = list(self._logged), self._wal.generation
            self._wal.restart(generation + 1)
            with self._cond:  # commit_now's callers from here on wait for the next apply
                applied, self._applied = self._applied, Ticket()
                self._apply_requested = False
        try:
            self._backend.write(changes, applied_log=generation)
        except Exception as exc:
            error = self._report(exc, [], f"{len(changes)} logged changes")
            self._apply_failed = True
            self._apply_retry_at = time.monotonic() + _RETRY_DELAY
            applied.resolve(error)
            return
        with self._writing:
            del self._logged[:len(changes)]
            if self._logged:  # appended meanwhile: due an interval from now
                self._apply_by = time.monotonic() + self._interval
        self._on_commit(changes[-1].event.sequence)  # before waiters wake: they may evict
        applied.resolve()

    def _apply_everything_logged(self) -> None:
        """Commit every logged change, of both halves, to LMDB (with _writing)."""
        try:
            self._write([])
        except Exception as exc:
            error = self._report(exc, [], f"{len(self._logged)} logged changes")
            self._apply_retry_at = time.monotonic() + _RETRY_DELAY
            self._answer_apply_requests(error)

    def _answer_apply_requests(self, error: StoreError | None = None) -> None:
        """Tell commit_now's waiters that the logged changes reached LMDB, or failed to."""
        with self._cond:
            applied, self._applied = self._applied, Ticket()
            self._apply_requested = False
        applied.resolve(error)

    def _commit(self, batch: list[Change], ticket: Ticket) -> None:
        """Write one batch; on failure tell its waiters and queue it to be retried first."""
        try:
            self._write(batch)
        except Exception as exc:
            ticket.resolve(self._report(exc, batch, f"{len(batch)} changes"))
            self._retry_later(batch)
            return
        ticket.resolve()

    def _report(self, exc: Exception, batch: list[Change], what: str) -> StoreError:
        """Log a failed commit, tell ``on_failure``, and return the error as a StoreError."""
        error = (
            exc
            if isinstance(exc, StoreError)
            else StoreError(Code.INTERNAL, f"commit to disk failed: {exc}")
        )
        # A full disk is reported by the store when it starts and ends, not every retry.
        level = logging.DEBUG if error.code == Code.RESOURCE_EXHAUSTED else logging.ERROR
        log.log(level, "commit of %s failed (retrying): %s", what, exc)
        if self._on_failure is not None:
            self._on_failure(batch, error)
        return error

    def _retry_later(self, batch: list[Change]) -> None:
        """Put a failed batch back in front of the queue and pause before the next attempt."""
        with self._cond:
            if self._closing:
                log.error("giving up on %d uncommitted changes at shutdown", len(batch))
                return
            self._pending[:0] = batch
            deadline = time.monotonic() + _RETRY_DELAY
            while not self._closing and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
