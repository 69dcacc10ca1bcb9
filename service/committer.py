"""Committing the store's changes to disk: what the two commit policies share.

The store submits every change, in sequence order, to one committer and gets
back the ``Ticket`` of the batch it joined. ``async`` durability uses an
AsyncCommitter (commit_async.py), ``sync`` a SyncCommitter (commit_sync.py);
``none`` has no committer. Both write through a Backend (backend.py).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from improv_store.protocol import Code

from .backend import Backend, Change
from .errors import StoreError

log = logging.getLogger(__name__)

# Pause before a failed commit is tried again (a full disk rarely frees up at once).
RETRY_DELAY = 0.5


class Ticket:
    """Completion of one batch: set when it is on disk, or failed with the reason."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: StoreError | None = None
        self._callbacks: list[Callable[[StoreError | None], object]] = []
        self._resolved = False
        self._lock = threading.Lock()

    @classmethod
    def settled(cls) -> Ticket:
        """A ticket of nothing left to wait for."""
        ticket = cls()
        ticket.resolve()
        return ticket

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


@dataclass(frozen=True)
class CommitHooks:
    """What the store is told by its committer.

    ``on_commit(sequence)``: LMDB holds everything through ``sequence``; called
    before the waiters of that commit wake, since they may evict what it made
    durable. ``on_failure(changes, error)``: a commit failed and is retried;
    called before its waiters hear of it (``changes`` is empty when only
    changes already durable in the write-ahead log failed to reach LMDB).
    ``observe(count, seconds)``: one group commit made ``count`` changes durable.
    """

    on_commit: Callable[[int], None]
    on_failure: Callable[[list[Change], StoreError], None] | None = None
    observe: Callable[[int, float], None] | None = None


class Committer(abc.ABC):
    """The queue of submitted changes and the one thread that commits them.

    Shared by both policies, which decide when a batch is taken and where it
    goes. Every policy keeps these invariants:

    - Changes reach the disk in the order submitted, and a batch whole: a
      batch that is not written goes back in front of the queue.
    - A ticket settles once: after its batch is durable, or with the error
      after ``on_failure``; a failed batch is then retried first, after a
      pause, with whatever arrived meanwhile, until it lands or the committer
      closes.
    - ``durable_sequence`` is the last sequence on disk (log or LMDB).
    - ``_queued_puts`` holds the IDs of the objects put by the queued changes:
      a removal that joins its put's batch means the put's payload is never
      read (backend.removed_later), so the store may reuse its memory at once.

    Subclasses set their own fields before calling ``__init__``: it starts the thread.
    """

    def __init__(self, backend: Backend, hooks: CommitHooks, durable_sequence: int) -> None:
        self.durable_sequence = durable_sequence
        self._backend = backend
        self._hooks = hooks
        self._cond = threading.Condition()
        self._pending: list[Change] = []
        self._queued_puts: set[bytes] = set()
        self._ticket = Ticket()  # the queued changes'
        self._in_flight: Ticket | None = None  # the batch being written's
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="lmdb-committer", daemon=True)
        self._thread.start()

    @abc.abstractmethod
    def submit(self, change: Change) -> tuple[Ticket, set[bytes]]:
        """Queue a change (in sequence order); return the ticket of its batch, and which
        of the objects it removes were put in that same batch: their payloads will
        never be read, so their memory may be reused now."""

    @abc.abstractmethod
    def commit_now(self) -> Ticket:
        """Start a commit to LMDB without waiting for the interval; return the ticket of
        that commit. It covers what is queued, except where a policy says otherwise
        (SyncCommitter with a log): callers that need more ask again."""

    @contextlib.contextmanager
    def logging_in_this_thread(self) -> Iterator[bool]:
        """Let the calling thread make its own changes durable (see SyncCommitter); yields
        False: this committer cannot."""
        yield False

    def log_pending(self) -> None:
        """For a thread that makes its own changes durable: do so now (see SyncCommitter).
        Nothing to do here, where no thread does."""
        return

    def close(self) -> None:
        """Commit what is queued and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    @abc.abstractmethod
    def _run(self) -> None:
        """The committer's thread: take batches and write them until closed."""

    # -- the queue (with _cond) -------------------------------------------------------

    def _take(self) -> tuple[list[Change], Ticket]:
        """The queued changes and their ticket, as the batch now in flight."""
        batch, self._pending = self._pending, []
        self._queued_puts = set()
        ticket, self._ticket = self._ticket, Ticket()
        self._in_flight = ticket if batch else None
        return batch, ticket

    def _put_back(self, batch: list[Change], ticket: Ticket | None = None) -> None:
        """Queue a batch taken but not written in front of what is queued; the waiters of
        its ``ticket``, if still unsettled, are answered with the batch it joins."""
        self._pending[:0] = batch
        self._queued_puts.update(c.stored[0].id for c in batch if c.stored is not None)
        if ticket is not None:
            self._ticket.when_done(ticket.resolve)

    def _awaited(self) -> Ticket:
        """The ticket of the latest change submitted: the queue's, or the batch's in flight."""
        if self._pending:
            return self._ticket
        if self._in_flight is not None:
            return self._in_flight
        return Ticket.settled()

    # -- writing (by the committer's thread) ------------------------------------------

    def _commit(self, batch: list[Change], ticket: Ticket) -> None:
        """Write one batch to LMDB; on failure tell its waiters and queue it to be retried."""
        try:
            self._write(batch)
        except Exception as exc:
            ticket.resolve(self._report(exc, batch, f"{len(batch)} changes"))
            self._retry_later(batch)
        else:
            ticket.resolve()
        with self._cond:
            self._in_flight = None

    def _write(self, changes: list[Change]) -> None:
        """Commit ``changes`` to LMDB in one transaction."""
        started = time.perf_counter()
        self._backend.write(changes)
        self._made_durable(changes, started)
        self._hooks.on_commit(changes[-1].event.sequence)

    def _made_durable(self, changes: list[Change], started: float) -> None:
        """Note a group commit (in the log, or in LMDB directly) of ``changes``."""
        self.durable_sequence = changes[-1].event.sequence
        if self._hooks.observe is not None:
            self._hooks.observe(len(changes), time.perf_counter() - started)

    def _report(self, exc: Exception, changes: list[Change], what: str) -> StoreError:
        """Log a failed commit, tell ``on_failure``, and return the error as a StoreError."""
        error = (
            exc
            if isinstance(exc, StoreError)
            else StoreError(Code.INTERNAL, f"commit to disk failed: {exc}")
        )
        # A full disk is reported by the store when it starts and ends, not every retry.
        level = logging.DEBUG if error.code == Code.RESOURCE_EXHAUSTED else logging.ERROR
        log.log(level, "commit of %s failed (retrying): %s", what, exc)
        if self._hooks.on_failure is not None:
            self._hooks.on_failure(changes, error)
        return error

    def _retry_later(self, batch: list[Change]) -> None:
        """Put a failed batch back in front of the queue and pause before the next attempt."""
        with self._cond:
            if self._closing:
                log.error("giving up on %d uncommitted changes at shutdown", len(batch))
                return
            self._put_back(batch)
            deadline = time.monotonic() + RETRY_DELAY
            while not self._closing and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
