"""The commit policies in-process: AsyncCommitter and SyncCommitter (with and without the
write-ahead log) against a disk that fails writes or fills up, and against real LMDB.

The disk here is a test double of the LMDB backend (the committers' Backend interface): it
keeps what it commits in a list, and raises what LmdbBackend raises when its disk fails
(an lmdb.Error) or is full (RESOURCE_EXHAUSTED). The write-ahead log is the real one, in a
temporary file, except where a test needs a log that cannot be written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import lmdb
import pytest
from test_wal import delete_change
from test_wal import put_change as logged_put

from improv_store.protocol import Code
from improv_store.service import wal
from improv_store.service.backend import Backend, Change
from improv_store.service.commit_async import AsyncCommitter
from improv_store.service.commit_sync import SyncCommitter
from improv_store.service.committer import CommitHooks, Committer, Ticket
from improv_store.service.errors import StoreError
from improv_store.service.lmdb_backend import LmdbBackend, disk_full
from improv_store.v1 import store_pb2 as pb

SETTLE_TIMEOUT = 10.0
NEVER = 3600.0  # an interval that does not end during a test
LARGE = 300 << 10  # a payload too large for the write-ahead log
NO_SPACE = os.strerror(errno.ENOSPC)


class Disk:
    """A test double of LmdbBackend: commits land in ``committed`` (one list per write).

    ``fail_next(count, error)`` fails that many writes with ``error``; ``room`` (payload
    bytes, None for no limit) makes a write that needs more fail as a full disk does.
    """

    def __init__(self, path: str = "/disk") -> None:
        self.path = path
        self.writes: list[list[int]] = []  # the sequences of each successful write
        self.committed: list[Change] = []
        self.applied_log = 0
        self.room: int | None = None
        self.delay = 0.0
        self.gate = threading.Event()  # writes wait while it is clear
        self.gate.set()
        self.entered = threading.Event()  # set once a write has started
        self._failures: list[Exception] = []

    def fail_next(self, count: int, error: Exception) -> None:
        self._failures += [error] * count

    def write(self, changes: Sequence[Change], *, applied_log: int | None = None) -> None:
        assert changes, "a write of nothing"
        self.entered.set()
        self.gate.wait()
        time.sleep(self.delay)
        if self._failures:
            raise self._failures.pop(0)
        needed = sum(change.payload_bytes for change in changes)
        if self.room is not None:
            if needed > self.room:
                raise disk_full(self.path, lmdb.DiskError(f"mdb_txn_commit: {NO_SPACE}"))
            self.room -= needed
        self.writes.append(sequences(changes))
        self.committed += changes
        if applied_log is not None:
            self.applied_log = applied_log


def io_error() -> lmdb.Error:
    """What LmdbBackend lets through when a write fails for another reason than space."""
    return lmdb.Error("mdb_txn_commit: Input/output error")


@dataclass
class Told:
    """What a committer told the store through its hooks."""

    commits: list[int] = field(default_factory=list)
    failures: list[tuple[list[int], Code]] = field(default_factory=list)
    observed_by: list[str] = field(default_factory=list)  # the thread of each group commit

    def hooks(self) -> CommitHooks:
        return CommitHooks(on_commit=self.commits.append, on_failure=self._failed,
                           observe=self._observe)

    def _failed(self, changes: list[Change], error: StoreError) -> None:
        self.failures.append((sequences(changes), error.code))

    def _observe(self, count: int, seconds: float) -> None:
        self.observed_by.append(threading.current_thread().name)


def sequences(changes: Sequence[Change]) -> list[int]:
    return [change.event.sequence for change in changes]


def put_change(sequence: int, size: int = 16) -> Change:
    return logged_put(sequence, os.urandom(size))


def outcome(ticket: Ticket, timeout: float = SETTLE_TIMEOUT) -> StoreError | None:
    """How ``ticket`` settled: None when its batch is on disk, else the error."""
    settled = threading.Event()
    errors: list[StoreError | None] = []

    def record(error: StoreError | None) -> None:
        errors.append(error)
        settled.set()

    ticket.when_done(record)
    assert settled.wait(timeout), "the ticket never settled"
    return errors[0]


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.005)


@pytest.fixture
def log_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="committers-") as directory:
        yield os.path.join(directory, wal.WAL_FILE)


@contextlib.contextmanager
def running(committer: Committer) -> Iterator[Committer]:
    try:
        yield committer
    finally:
        committer.close()


def async_committer(disk: Backend, told: Told, interval: float = NEVER) -> AsyncCommitter:
    return AsyncCommitter(disk, interval=interval, hooks=told.hooks())


def sync_committer(
    disk: Backend, told: Told, log: wal.WriteAheadLog | None = None, apply_interval: float = NEVER
) -> SyncCommitter:
    return SyncCommitter(disk, wal=log, apply_interval=apply_interval, hooks=told.hooks())


# -- Ticket ---------------------------------------------------------------------------


def test_a_ticket_runs_its_callbacks_before_its_waiters_wake() -> None:
    ticket = Ticket()
    order: list[str] = []
    ticket.when_done(lambda error: order.append("callback"))
    ticket.when_done(lambda error: 1 / 0)  # a failing callback is logged, not raised
    waiter = threading.Thread(target=lambda: (ticket.wait(), order.append("waiter")))
    waiter.start()
    ticket.resolve()
    waiter.join(SETTLE_TIMEOUT)
    assert order == ["callback", "waiter"]
    late: list[StoreError | None] = []
    ticket.when_done(late.append)  # already settled: at once
    assert late == [None]
    failed = Ticket()
    failed.resolve(StoreError(Code.INTERNAL, "no"))
    with pytest.raises(StoreError):
        failed.wait()
    assert outcome(Ticket.settled()) is None


# -- both policies ------------------------------------------------------------------------

@pytest.fixture(params=["async", "sync", "sync-logged"])
def make(
    request: pytest.FixtureRequest, log_path: str
) -> Iterator[Callable[[Disk, Told], Committer]]:
    """Each policy as ``make(disk, told)``: async, sync without and with a write-ahead log."""
    if request.param == "async":
        yield async_committer
    elif request.param == "sync":
        yield sync_committer
    else:
        log = wal.WriteAheadLog(log_path, 1 << 20, generation=1)
        yield lambda disk, told: sync_committer(disk, told, log)
        log.close()


def test_a_removal_that_joins_its_put_s_batch_leaves_the_payload_unread(
    make: Callable[[Disk, Told], Committer],
) -> None:
    disk, told = Disk(), Told()
    with running(make(disk, told)) as committer:
        first = put_change(1, LARGE)  # to LMDB under every policy
        disk.gate.clear()
        committer.submit(first)
        committer.commit_now()
        assert disk.entered.wait(SETTLE_TIMEOUT)  # the first batch is being written
        second = put_change(2)
        assert committer.submit(second)[1] == set()
        assert committer.submit(delete_change(3, second.stored[0].id))[1] == {
            second.stored[0].id}
        assert committer.submit(delete_change(4, first.stored[0].id))[1] == set()
        disk.gate.set()
        assert outcome(committer.commit_now()) is None
    assert sequences(disk.committed) == [1, 2, 3, 4]


def test_every_policy_lands_every_change_once_in_order(
    make: Callable[[Disk, Told], Committer],
) -> None:
    disk, told = Disk(), Told()
    with running(make(disk, told)) as committer:
        tickets = [committer.submit(put_change(sequence))[0] for sequence in range(1, 6)]
        assert outcome(committer.commit_now()) is None
        assert all(outcome(t) is None for t in tickets)
        # Everything is durable now; the log's next application to LMDB takes it all.
        assert outcome(committer.commit_now()) is None
        assert sequences(disk.committed) == [1, 2, 3, 4, 5]
        assert committer.durable_sequence == 5
        assert told.commits[-1] == 5
        assert outcome(committer.commit_now()) is None  # nothing left: settled at once
    assert sequences(disk.committed) == [1, 2, 3, 4, 5]


def test_close_commits_what_is_queued(make: Callable[[Disk, Told], Committer]) -> None:
    disk, told = Disk(), Told()
    committer = make(disk, told)
    for sequence in range(1, 4):
        committer.submit(put_change(sequence))
    committer.close()
    assert sequences(disk.committed) == [1, 2, 3]
    assert told.commits[-1] == 3


@pytest.mark.parametrize(
    ("break_disk", "code"),
    [
        (lambda disk: disk.fail_next(1, io_error()), Code.INTERNAL),
        (lambda disk: setattr(disk, "room", 0), Code.RESOURCE_EXHAUSTED),
    ],
    ids=["failing", "full"],
)
def test_a_failed_commit_fails_its_ticket_and_lands_once_when_the_disk_recovers(
    make: Callable[[Disk, Told], Committer], break_disk: Callable[[Disk], None], code: Code
) -> None:
    disk, told = Disk(), Told()
    with running(make(disk, told)) as committer:
        first = committer.submit(put_change(1, LARGE))[0]
        committer.commit_now()
        assert outcome(first) is None
        break_disk(disk)
        refused = committer.submit(put_change(2, LARGE))[0]
        committer.commit_now()
        error = outcome(refused)
        assert error is not None and error.code == code
        if code == Code.RESOURCE_EXHAUSTED:
            assert "disk full" in error.message
        assert told.failures[0] == ([2], code)  # told before the writers hear of it
        disk.room = None
        later = committer.submit(put_change(3))[0]
        assert outcome(committer.commit_now()) is None
        assert outcome(later) is None
        wait_for(lambda: len(disk.committed) == 3, "the refused change retried")
    assert sequences(disk.committed) == [1, 2, 3]
    assert told.commits[-1] == 3


def test_close_gives_up_on_a_disk_that_keeps_failing(
    make: Callable[[Disk, Told], Committer],
) -> None:
    disk, told = Disk(), Told()
    committer = make(disk, told)
    disk.fail_next(100, io_error())
    ticket = committer.submit(put_change(1, LARGE))[0]
    started = time.monotonic()
    committer.close()
    assert time.monotonic() - started < SETTLE_TIMEOUT
    error = outcome(ticket)
    assert error is not None and error.code == Code.INTERNAL
    assert disk.committed == []


# -- async ---------------------------------------------------------------------------------


def test_async_commits_an_interval_s_changes_in_one_transaction() -> None:
    disk, told = Disk(), Told()
    with running(async_committer(disk, told, interval=1.0)) as committer:
        tickets = {committer.submit(put_change(sequence))[0] for sequence in range(1, 6)}
        assert len(tickets) == 1  # one batch, one ticket
        assert disk.writes == []  # nobody asked: the interval is not over
        assert outcome(tickets.pop()) is None
    assert disk.writes == [[1, 2, 3, 4, 5]]
    assert told.commits == [5]


# -- sync without a write-ahead log ----------------------------------------------------------


def test_sync_concurrent_writers_share_commits() -> None:
    disk, told = Disk(), Told()
    disk.delay = 0.005  # a commit takes a while: writers arriving meanwhile share the next
    sequence = iter(range(1, 10_000))
    submitting = threading.Lock()  # the store hands changes over in sequence order
    errors: list[StoreError | None] = []

    def writer(committer: Committer) -> None:
        for _ in range(20):
            with submitting:
                ticket = committer.submit(put_change(next(sequence)))[0]
            errors.append(outcome(ticket))

    with running(sync_committer(disk, told)) as committer:
        writers = [threading.Thread(target=writer, args=(committer,)) for _ in range(8)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join(SETTLE_TIMEOUT)
    assert errors == [None] * 160
    assert sequences(disk.committed) == list(range(1, 161))
    assert len(disk.writes) < 160
    assert told.commits == [written[-1] for written in disk.writes]


def test_sync_without_a_log_answers_each_write_from_lmdb() -> None:
    disk, told = Disk(), Told()
    with running(sync_committer(disk, told)) as committer:
        with committer.logging_in_this_thread() as logs_own:
            assert not logs_own  # without a log there is nothing for a thread to append to
        assert outcome(committer.submit(put_change(1))[0]) is None
        assert disk.writes == [[1]] and committer.durable_sequence == 1


# -- sync with the write-ahead log -------------------------------------------------------------


def logged_committer(
    disk: Disk, told: Told, log_path: str, size: int = 1 << 20
) -> tuple[SyncCommitter, wal.WriteAheadLog]:
    log = wal.WriteAheadLog(log_path, size, generation=1)
    return sync_committer(disk, told, log), log


def test_a_logged_change_is_durable_before_lmdb_has_it(log_path: str) -> None:
    disk, told = Disk(), Told()
    committer, log = logged_committer(disk, told, log_path)
    with running(committer):
        tickets = [committer.submit(put_change(sequence))[0] for sequence in (1, 2, 3)]
        assert all(outcome(ticket) is None for ticket in tickets)
        assert committer.durable_sequence == 3
        assert disk.committed == [] and told.commits == []
        assert sequences(wal.read(log_path, 1)) == [1, 2, 3]
        assert outcome(committer.commit_now()) is None  # applies the log to LMDB
        assert disk.writes == [[1, 2, 3]] and disk.applied_log == 1
        assert told.commits == [3]
        assert log.generation == 2  # appends moved on to the other half
    log.close()


def test_logged_changes_reach_lmdb_every_apply_interval(log_path: str) -> None:
    disk, told = Disk(), Told()
    log = wal.WriteAheadLog(log_path, 1 << 20, generation=1)
    with running(sync_committer(disk, told, log, apply_interval=0.05)) as committer:
        assert outcome(committer.submit(put_change(1))[0]) is None
        wait_for(lambda: disk.writes == [[1]], "the log applied without being asked")
    log.close()


def test_a_thread_that_logs_its_own_changes_answers_without_the_committer(
    log_path: str,
) -> None:
    disk, told = Disk(), Told()
    committer, log = logged_committer(disk, told, log_path)
    with running(committer):
        with committer.logging_in_this_thread() as logs_own:
            assert logs_own
            for sequence in range(1, 6):
                ticket = committer.submit(put_change(sequence))[0]
                committer.log_pending()
                assert outcome(ticket) is None
        # Unless the committer's thread was writing at that moment, this thread appended.
        assert threading.current_thread().name in told.observed_by
        assert sequences(wal.read(log_path, 1)) == [1, 2, 3, 4, 5]
    assert sequences(disk.committed) == [1, 2, 3, 4, 5]  # applied at close
    log.close()


def test_when_lmdb_fails_logged_changes_stay_durable_and_land_once(log_path: str) -> None:
    disk, told = Disk(), Told()
    committer, log = logged_committer(disk, told, log_path)
    with running(committer):
        assert all(outcome(committer.submit(put_change(s))[0]) is None for s in (1, 2))
        disk.fail_next(1, io_error())
        error = outcome(committer.commit_now())
        assert error is not None and error.code == Code.INTERNAL
        assert told.failures == [([], Code.INTERNAL)]  # nothing to withdraw: it is logged
        assert disk.committed == []
        # Appends go on in the other half meanwhile; both halves are there for a restart.
        assert outcome(committer.submit(put_change(3))[0]) is None
        assert [(g, sequences(c)) for g, c in wal.read_after(log_path, 0)] == [
            (1, [1, 2]), (2, [3])]
        assert outcome(committer.commit_now()) is None
        assert disk.writes == [[1, 2, 3]] and disk.applied_log == 2
    log.close()


def test_a_batch_the_log_cannot_take_goes_to_lmdb_after_everything_logged(
    log_path: str,
) -> None:
    disk, told = Disk(), Told()
    committer, log = logged_committer(disk, told, log_path, size=4096)
    with running(committer):
        assert outcome(committer.submit(put_change(1))[0]) is None  # logged
        assert outcome(committer.submit(put_change(2, 3000))[0]) is None  # no room in the log
        assert disk.writes == [[1, 2]] and disk.applied_log == 1
        assert outcome(committer.submit(put_change(3, LARGE))[0]) is None  # too large for it
        assert disk.writes == [[1, 2], [3]] and disk.applied_log == 2
        assert log.used == 0
    log.close()


class UnwritableLog(wal.WriteAheadLog):
    """A write-ahead log on a disk that has just filled up."""

    def append(self, changes: Sequence[Change]) -> bool:
        raise OSError(errno.ENOSPC, NO_SPACE)


def test_a_log_that_cannot_be_written_sends_batches_to_lmdb(log_path: str) -> None:
    disk, told = Disk(), Told()
    log = UnwritableLog(log_path, 1 << 20, generation=1)
    with running(sync_committer(disk, told, log)) as committer:
        with committer.logging_in_this_thread():
            ticket = committer.submit(put_change(1))[0]
            committer.log_pending()  # it hands the batch to the committer's thread
            assert outcome(ticket) is None
        assert outcome(committer.submit(put_change(2))[0]) is None
    assert sequences(disk.committed) == [1, 2] and told.failures == []
    log.close()


def test_close_leaves_what_lmdb_refuses_in_the_log_for_the_next_start(log_path: str) -> None:
    disk, told = Disk(), Told()
    committer, log = logged_committer(disk, told, log_path)
    assert all(outcome(committer.submit(put_change(s))[0]) is None for s in (1, 2))
    disk.fail_next(100, io_error())
    committer.close()
    log.close()
    assert disk.committed == []
    assert [(g, sequences(c)) for g, c in wal.read_after(log_path, 0)] == [(1, [1, 2])]


# -- real LMDB ---------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["async", "sync"])
def test_committed_changes_are_in_lmdb_after_a_restart(durability: str) -> None:
    with tempfile.TemporaryDirectory(prefix="committers-lmdb-") as data_dir:
        backend = LmdbBackend(data_dir, initial_map_size=8 << 20, event_retention=1000)
        told = Told()
        log = None
        if durability == "sync":
            log = wal.WriteAheadLog(os.path.join(data_dir, wal.WAL_FILE), 1 << 20, generation=1)
            committer: Committer = sync_committer(backend, told, log)
        else:
            committer = async_committer(backend, told, interval=0.05)
        puts = [put_change(sequence, 1000 * sequence) for sequence in range(1, 6)]
        large = put_change(6, LARGE)
        tickets = [committer.submit(change)[0] for change in [*puts, large]]
        removed = committer.submit(delete_change(7, puts[0].stored[0].id))[0]
        assert all(outcome(ticket) is None for ticket in [*tickets, removed])
        committer.close()
        if log is not None:
            log.close()
        backend.close(last_sequence=7)

        backend = LmdbBackend(data_dir, initial_map_size=8 << 20, event_retention=1000)
        try:
            recovered = backend.recover()
            assert recovered.last_sequence == 7
            kept = [*puts[1:], large]
            metas = sorted(map(pb.ObjectMeta.FromString, recovered.records),
                           key=lambda meta: meta.sequence)
            assert [meta.id for meta in metas] == [c.stored[0].id for c in kept]
            for meta, change in zip(metas, kept, strict=True):
                payload = bytearray(meta.size)
                assert backend.read_payload_into(meta, memoryview(payload))
                assert bytes(payload) == bytes(change.stored[1])
            assert [event.sequence for event in backend.read_events(1, 7)] == list(range(1, 8))
        finally:
            backend.close()
