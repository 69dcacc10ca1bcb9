"""The background writer: batches changes into LMDB transactions (group commit).

In ``sync`` mode a writer waits on the ticket of the batch its change joined;
whatever arrives while one transaction is being fsynced forms the next batch,
so N concurrent writers pay far fewer than N fsyncs. In ``async`` mode the
batch is committed every interval and nobody waits.

A batch that fails (a full disk) fails its ticket and is retried, together
with whatever arrived since, until it lands: LMDB is left unchanged by a
failed transaction, and later changes are never committed before it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc

from .durability import Change, LmdbBackend
from .errors import StoreError

log = logging.getLogger(__name__)

_RETRY_DELAY = 0.5


class Ticket:
    """Completion of one batch: set when it is on disk, or failed with the reason."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: StoreError | None = None

    def resolve(self, error: StoreError | None = None) -> None:
        self._error = error
        self._done.set()

    def wait(self) -> None:
        """Block until the batch is committed; raise the commit's error if it failed."""
        self._done.wait()
        if self._error is not None:
            raise self._error


class Committer:
    """Owns the one thread that writes to LMDB."""

    def __init__(
        self,
        backend: LmdbBackend,
        *,
        group_commit: bool,
        interval: float,
        on_commit: Callable[[int], None],
        on_failure: Callable[[list[Change], StoreError], None] | None = None,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        """``on_commit(sequence)`` follows each commit, ``on_failure(changes, error)`` each
        failed one (before its ticket fails); ``observe(changes, seconds)`` times commits."""
        self._backend = backend
        self._on_failure = on_failure
        self._observe = observe
        self._group_commit = group_commit
        self._interval = interval
        self._on_commit = on_commit
        self._cond = threading.Condition()
        self._pending: list[Change] = []
        self._ticket = Ticket()
        self._closing = False
        self._commit_requested = False
        self._in_flight: Ticket | None = None
        self._thread = threading.Thread(target=self._run, name="lmdb-committer", daemon=True)
        self._thread.start()

    def submit(self, change: Change) -> Ticket:
        """Queue a change (in sequence order) and return the ticket of its batch."""
        with self._cond:
            self._pending.append(change)
            if self._group_commit:
                self._cond.notify()
            return self._ticket

    def commit_now(self) -> Ticket:
        """Commit what is queued without waiting for the interval; return its ticket."""
        with self._cond:
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
                    return
                batch, self._pending = self._pending, []
                ticket, self._ticket = self._ticket, Ticket()
                self._commit_requested = False
                self._in_flight = ticket if batch else None
            if batch:
                self._commit(batch, ticket)
                with self._cond:
                    self._in_flight = None

    def _wait_for_batch(self) -> None:
        if self._group_commit:
            while not self._pending and not self._closing:
                self._cond.wait()
            return
        deadline = time.monotonic() + self._interval
        while not (self._closing or self._commit_requested):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _commit(self, batch: list[Change], ticket: Ticket) -> None:
        """Write one batch; on failure tell its waiters and queue it to be retried first."""
        started = time.perf_counter()
        try:
            self._backend.write(batch)
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, StoreError)
                else StoreError(grpc.StatusCode.INTERNAL, f"commit to disk failed: {exc}")
            )
            # A full disk is reported by the store when it starts and ends, not every retry.
            level = (
                logging.DEBUG if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED else logging.ERROR
            )
            log.log(level, "commit of %d changes failed (retrying): %s", len(batch), exc)
            if self._on_failure is not None:
                self._on_failure(batch, error)
            ticket.resolve(error)
            self._retry_later(batch)
            return
        if self._observe is not None:
            self._observe(len(batch), time.perf_counter() - started)
        self._on_commit(batch[-1].event.sequence)  # before waiters wake: they may evict
        ticket.resolve()

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
