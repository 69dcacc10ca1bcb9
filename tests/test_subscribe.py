"""Subscribe: every change once, in order, filtered, resumable across disconnects and restarts.

The server is always a real subprocess. Where it matters that the subscriber is
a different process from the writer (a disconnect is a process going away),
the subscriber runs as a child Python process printing events as JSON lines.
In-process subscribers are iterated on a daemon thread behind a queue, so a
bug shows up as a bounded failure, never a hung suite.

Each behaviour is checked on both of the Python client's paths (the ``lane``
fixture): a colocated client subscribes over a lane connection of its own,
one with the lane off over a gRPC stream.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import ServerProcess
from test_lane import RawLane, subscription_path

from improv_store.client import (
    Event,
    HistoryUnavailable,
    ObjectID,
    StoreClient,
    StoreUnavailable,
    Subscription,
)
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

StartServer = Callable[..., ServerProcess]

# (type, object ID hex, name, size, replaced IDs hex): what an event says, sequence aside.
Record = tuple[str, str, str, int, tuple[str, ...]]

EVENT_TIMEOUT = 30.0  # bound on waiting for events that should arrive at once
RESUME_TRAILER = "improv-store-resume-sequence"

SUBSCRIBER_SCRIPT = r"""
import json, sys
from improv_store.client import HistoryUnavailable, StoreClient, StoreError

address, prefix, since, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
since = None if since == "live" else int(since)
lane = sys.argv[5] == "lane"
seen = 0
try:
    with StoreClient(address, lane=lane) as store, store.subscribe(prefix, since=since) as events:
        for event in events:
            print(json.dumps({
                "sequence": event.sequence,
                "type": event.type,
                "id": event.object.id.hex(),
                "name": event.object.name,
                "size": event.object.size,
                "object_sequence": event.object.sequence,
                "replaced": [object_id.hex() for object_id in event.replaced],
            }), flush=True)
            seen += 1
            if seen >= count:
                break
except HistoryUnavailable as exc:
    print(json.dumps({"error": type(exc).__name__, "oldest": exc.oldest_sequence}), flush=True)
except StoreError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
"""


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["lane", "grpc"])
def lane(request: pytest.FixtureRequest) -> bool:
    """Whether the clients of a test take the lane (subscriptions included) or gRPC."""
    return request.param


@pytest.fixture
def store(server: ServerProcess, lane: bool) -> Iterator[StoreClient]:
    """A colocated client of ``server``, on the lane or not."""
    with server.client(lane=lane) as client:
        yield client



def record(event: Event) -> Record:
    """The comparable content of a client Event."""
    return (
        event.type,
        event.object.id.hex(),
        event.object.name,
        event.object.size,
        tuple(object_id.hex() for object_id in event.replaced),
    )


def json_record(line: dict[str, Any]) -> Record:
    """The comparable content of an event printed by the child subscriber."""
    return (line["type"], line["id"], line["name"], line["size"], tuple(line["replaced"]))


@dataclass
class Model:
    """Performs writes and tracks, alongside, the events the store must report for them."""

    store: StoreClient
    expected: list[Record] = field(default_factory=list)
    by_name: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    by_id: dict[str, tuple[str, int]] = field(default_factory=dict)

    def put(self, obj: bytes | np.ndarray, name: str = "") -> str:
        object_id = self.store.put(obj, name=name or None).hex()
        size = obj.nbytes if isinstance(obj, np.ndarray) else len(obj)
        self._add(object_id, name, size)
        self.expected.append(("put", object_id, name, size, ()))
        return object_id

    def replace(self, name: str, data: bytes) -> str:
        older = [object_id for object_id, _ in self.by_name.get(name, [])]
        for object_id in older:
            self._forget(object_id)
        object_id = self.store.replace(name, data).hex()
        self._add(object_id, name, len(data))
        self.expected.append(("replace", object_id, name, len(data), tuple(older)))
        return object_id

    def delete_name(self, name: str) -> list[str]:
        doomed = list(self.by_name.get(name, []))
        deleted = [object_id.hex() for object_id in self.store.delete(name)]
        assert sorted(deleted) == sorted(object_id for object_id, _ in doomed)
        for object_id, size in doomed:
            self._forget(object_id)
            self.expected.append(("delete", object_id, name, size, ()))
        return deleted

    def delete_id(self, object_id: str) -> None:
        name, size = self.by_id[object_id]
        assert [i.hex() for i in self.store.delete(ObjectID.from_hex(object_id))] == [object_id]
        self._forget(object_id)
        self.expected.append(("delete", object_id, name, size, ()))

    def _add(self, object_id: str, name: str, size: int) -> None:
        self.by_id[object_id] = (name, size)
        if name:
            self.by_name.setdefault(name, []).append((object_id, size))

    def _forget(self, object_id: str) -> None:
        name, _ = self.by_id.pop(object_id)
        if name:
            self.by_name[name] = [entry for entry in self.by_name[name] if entry[0] != object_id]


def mixed_operations(model: Model, tag: str = "") -> None:
    """Puts (named, unnamed, array), a replace of two, a delete by name of two, a delete by ID."""
    model.put(b"first" + tag.encode(), f"acq_frame{tag}")
    model.put(b"", "")
    model.put(np.arange(12, dtype="<f4").reshape(3, 4), f"acq_trace{tag}")
    model.put(b"x" * 1000, f"proc_model{tag}")
    model.put(b"y" * 77, f"proc_model{tag}")
    model.replace(f"proc_model{tag}", b"z" * 5)
    model.put(b"a" * 3, f"acq_roi{tag}")
    model.put(b"b" * 4, f"acq_roi{tag}")
    model.delete_name(f"acq_roi{tag}")
    unnamed = model.put(b"unnamed payload")
    model.delete_id(unnamed)
    model.replace(f"viz_new{tag}", b"nothing to replace")


class Collector:
    """Iterates events on a daemon thread; the test takes them with a bounded wait."""

    _END = object()

    def __init__(self, events: Iterable[Any], close: Callable[[], None] | None = None) -> None:
        self._events = events
        self._close = close
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @classmethod
    def of(cls, subscription: Subscription) -> Collector:
        return cls(subscription, subscription.close)

    def _run(self) -> None:
        try:
            for event in self._events:
                self._queue.put(event)
        except BaseException as exc:  # handed to the test thread
            self._queue.put(exc)
        else:
            self._queue.put(self._END)

    def _next(self, deadline: float, what: str) -> Any:
        remaining = deadline - time.monotonic()
        try:
            return self._queue.get(timeout=max(remaining, 0.001))
        except queue.Empty:
            pytest.fail(f"timed out waiting for {what}")

    def take(self, count: int, timeout: float = EVENT_TIMEOUT) -> list[Any]:
        """Exactly the next ``count`` events; fails if the stream ends or stalls first."""
        deadline = time.monotonic() + timeout
        events: list[Any] = []
        while len(events) < count:
            item = self._next(deadline, f"event {len(events) + 1} of {count}")
            if isinstance(item, BaseException):
                raise item
            assert item is not self._END, f"stream ended after {len(events)} of {count} events"
            events.append(item)
        return events

    def until(self, stop: Callable[[Any], bool], timeout: float = EVENT_TIMEOUT) -> list[Any]:
        """Events up to and including the first for which ``stop`` is true."""
        deadline = time.monotonic() + timeout
        events: list[Any] = []
        while not events or not stop(events[-1]):
            item = self._next(deadline, f"the stop event (after {len(events)} events)")
            if isinstance(item, BaseException):
                raise item
            assert item is not self._END, f"stream ended after {len(events)} events"
            events.append(item)
        return events

    def ending(self, timeout: float = EVENT_TIMEOUT) -> tuple[list[Any], BaseException | None]:
        """Whatever events remain and the error that ended the stream (None: ended cleanly)."""
        deadline = time.monotonic() + timeout
        events: list[Any] = []
        while True:
            item = self._next(deadline, "the stream to end")
            if item is self._END:
                return events, None
            if isinstance(item, BaseException):
                return events, item
            events.append(item)

    def close(self) -> None:
        if self._close is not None:
            self._close()
        self._thread.join(10)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = EVENT_TIMEOUT) -> None:
    """Poll until ``condition`` holds (a bound against hangs, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_subscribers(store: StoreClient, count: int) -> None:
    """Wait until the server has registered exactly ``count`` subscribers."""
    wait_for(lambda: store.info().subscriber_count == count, f"{count} subscribers")


def start_child(
    address: str, prefix: str, since: int | None, count: int, lane: bool
) -> subprocess.Popen:
    """A separate subscriber process printing ``count`` events as JSON lines, then exiting."""
    return subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER_SCRIPT, address, prefix,
         "live" if since is None else str(since), str(count), "lane" if lane else "grpc"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def child_events(child: subprocess.Popen, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Wait for the child subscriber and return the events it printed."""
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        pytest.fail(f"subscriber process did not finish; it printed:\n{out}\n{err}")
    assert child.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    errors = [line for line in lines if "error" in line]
    assert not errors, errors
    return lines


def assert_increasing(sequences: list[int]) -> None:
    assert all(a < b for a, b in itertools.pairwise(sequences)), sequences


# -- every change, once, in order ---------------------------------------------------------


def test_every_change_seen_once_in_order(
    server: ServerProcess, store: StoreClient, lane: bool
) -> None:
    """A live subscriber in another process sees each put, delete and replace exactly once,
    in order, with the right type, name, size and IDs, under consecutive sequences; a delete
    by name of k objects is k DELETE events; a replay from the first sequence is identical."""
    model = Model(store)
    mixed_operations(model)  # history a live-only subscriber must not see
    history = len(model.expected)
    count = history + 1  # the same operations again plus a sentinel: extras would show
    live = start_child(server.unix_address, "", None, count, lane)
    replay: subprocess.Popen | None = None
    try:
        wait_subscribers(store, 1)
        model.expected.clear()
        mixed_operations(model, "2")
        model.put(b"sentinel", "sentinel")
        seen = child_events(live)
        assert [json_record(line) for line in seen] == model.expected
        sequences = [line["sequence"] for line in seen]
        assert sequences == list(range(sequences[0], sequences[0] + count))
        for line in seen:
            if line["type"] in ("put", "replace"):
                assert line["object_sequence"] == line["sequence"]
            else:
                assert line["object_sequence"] < line["sequence"]
        assert seen[-1]["sequence"] == store.info().last_sequence

        assert sequences[0] == history + 1

        replay = start_child(server.unix_address, "", sequences[0], count, lane)
        assert child_events(replay) == seen
    finally:
        for child in (live, replay):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()


def test_prefix_filter(server: ServerProcess, store: StoreClient, lane: bool) -> None:
    """A prefix subscriber gets only events whose object name starts with it: not other
    names, not unnamed objects, including deletes and replaces of other names."""
    model = Model(store)
    child = start_child(server.tcp_address, "acq_", None, 7, lane)
    try:
        wait_subscribers(store, 1)
        mixed_operations(model)  # 6 acq_ events among 15
        model.put(b"last", "acq_sentinel")
        wanted = [event for event in model.expected if event[2].startswith("acq_")]
        assert len(wanted) == 7 < len(model.expected)
        seen = child_events(child)
        assert [json_record(line) for line in seen] == wanted
        assert_increasing([line["sequence"] for line in seen])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    # Replayed history is filtered the same way.
    with store.subscribe("proc_", since=1) as events:
        collector = Collector.of(events)
        replayed = collector.take(3)
        collector.close()
    assert [record(event) for event in replayed] == [
        event for event in model.expected if event[2].startswith("proc_")
    ]


# -- resuming -----------------------------------------------------------------------------


def test_resume_after_disconnect(server: ServerProcess, store: StoreClient, lane: bool) -> None:
    """A subscriber process reads k events and exits while the writer keeps going; a new
    subscription from its last sequence + 1 delivers the rest: no gap, no duplicate."""
    model = Model(store)
    child = start_child(server.unix_address, "", None, 5, lane)
    try:
        wait_subscribers(store, 1)
        for index in range(10):
            model.put(f"frame {index}".encode(), f"acq_{index % 3}")
        first_part = child_events(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert len(first_part) == 5
    mixed_operations(model)
    model.put(b"end", "sentinel")
    last = first_part[-1]["sequence"]

    with store.subscribe(since=last + 1) as events:
        collector = Collector.of(events)
        rest = collector.until(lambda event: event.object.name == "sentinel")
        collector.close()
    combined = [json_record(line) for line in first_part] + [record(event) for event in rest]
    assert combined == model.expected
    sequences = [line["sequence"] for line in first_part] + [event.sequence for event in rest]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))


def test_resume_across_clean_restart(start_server: StartServer, lane: bool) -> None:
    """Subscriber reads part of the history, the server stops on SIGTERM (exit 0) and
    restarts on the same data; resuming from last + 1 on the new server yields every
    remaining event, including those written after the restart, none twice."""
    old = start_server(durability="sync")
    with old.client(lane=lane) as store:
        model = Model(store)
        with store.subscribe() as events:
            collector = Collector.of(events)
            wait_subscribers(store, 1)
            for index in range(6):
                model.put(f"before {index}".encode(), f"acq_{index % 2}")
            seen = collector.take(4)  # two more were sent but not taken
            assert old.stop() == 0
            _, error = collector.ending()
            assert isinstance(error, StoreUnavailable)
        assert [record(event) for event in seen] == model.expected[:4]

    new = start_server(durability="sync", data_dir=old.data_dir)
    with new.client(lane=lane) as store:
        model.store = store
        mixed_operations(model)
        model.put(b"end", "sentinel")
        with store.subscribe(since=seen[-1].sequence + 1) as events:
            collector = Collector.of(events)
            rest = collector.until(lambda event: event.object.name == "sentinel")
            collector.close()
    assert [record(event) for event in seen + rest] == model.expected
    sequences = [event.sequence for event in seen + rest]
    assert_increasing(sequences)
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))  # clean: no gap


def test_resume_across_crash_sync(start_server: StartServer, lane: bool) -> None:
    """SIGKILL mid-write in sync mode: every acknowledged put is replayable after restart,
    every replayed event a subscriber saw before the crash keeps its sequence and object,
    and sequences after the restart are larger than any a subscriber ever saw."""
    old = start_server(durability="sync")
    acknowledged: list[str] = []
    with old.client(lane=lane) as store:
        events = store.subscribe(since=1)
        collector = Collector.of(events)
        stop_writing = threading.Event()

        def write() -> None:
            index = 0
            while not stop_writing.is_set():
                try:
                    acknowledged.append(store.put(f"frame {index}".encode(), "acq_f").hex())
                except StoreUnavailable:
                    return
                index += 1

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        before_kill = collector.take(50)
        old.kill()  # while the writer is still writing
        stop_writing.set()
        writer.join(EVENT_TIMEOUT)
        assert not writer.is_alive()
        more, error = collector.ending()
        assert isinstance(error, StoreUnavailable)
        events.close()
    seen = {event.sequence: record(event) for event in before_kill + more}
    assert_increasing([event.sequence for event in before_kill + more])
    assert len(acknowledged) >= 1

    new = start_server(durability="sync", data_dir=old.data_dir)
    with new.client(lane=lane) as store:
        sentinel = store.put(b"after the crash", "sentinel").hex()
        with store.subscribe(since=1) as replay:
            collector = Collector.of(replay)
            replayed = collector.until(lambda event: event.object.id.hex() == sentinel)
            collector.close()
        with store.subscribe(since=max(seen) + 1) as resumed:
            collector = Collector.of(resumed)
            after = collector.until(lambda event: event.object.id.hex() == sentinel)
            collector.close()

    assert_increasing([event.sequence for event in replayed])
    replayed_ids = [event.object.id.hex() for event in replayed]
    missing = [object_id for object_id in acknowledged if object_id not in replayed_ids]
    assert not missing, f"{len(missing)} acknowledged puts lost their events"
    for event in replayed[:-1]:
        if event.sequence in seen:
            assert seen[event.sequence] == record(event)
    assert replayed[-1].sequence > max(seen)
    assert [event.object.id.hex() for event in after] == [sentinel]


# -- retention ----------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["sync", "async", "none"])
def test_history_out_of_range(start_server: StartServer, durability: str, lane: bool) -> None:
    """With --event-retention 10, after 30 puts, history from sequence 1 is HistoryUnavailable
    naming the oldest retained sequence (> 1); subscribing from that sequence replays every
    retained event from it on, then follows live events."""
    server = start_server("--event-retention", "10", durability=durability)
    with server.client(lane=lane) as store:
        ids = [store.put(f"frame {index}".encode(), "acq_f").hex() for index in range(30)]
        # History is trimmed as changes reach LMDB, possibly over several commits (async
        # commits in the background, sync applies its log): wait for the last of them.
        wait_for(lambda: store.info().oldest_sequence == 21, "the commits to LMDB")
        info = store.info()
        assert info.last_sequence == 30

        with store.subscribe(since=1) as events, pytest.raises(HistoryUnavailable) as raised:
            Collector.of(events).take(1)
        assert raised.value.oldest_sequence == info.oldest_sequence

        with store.subscribe(since=info.oldest_sequence) as events:
            collector = Collector.of(events)
            replayed = collector.take(31 - info.oldest_sequence)
            live_id = store.put(b"live", "acq_f").hex()
            live = collector.take(1)
            collector.close()
    assert [event.sequence for event in replayed] == list(range(info.oldest_sequence, 31))
    assert [event.object.id.hex() for event in replayed] == ids[info.oldest_sequence - 1:]
    assert [(event.sequence, event.object.id.hex()) for event in live] == [(31, live_id)]


def test_replay_without_durability(start_server: StartServer, lane: bool) -> None:
    """With durability none the in-memory log alone replays history: every change from
    the start, then live ones, with no seam between them."""
    server = start_server(durability="none")
    with server.client(lane=lane) as store:
        model = Model(store)
        mixed_operations(model)
        history = len(model.expected)
        with store.subscribe(since=1) as events:
            collector = Collector.of(events)
            replayed = collector.take(history)
            mixed_operations(model, "b")
            model.put(b"end", "sentinel")
            live = collector.until(lambda event: event.object.name == "sentinel")
            collector.close()
    assert [record(event) for event in replayed + live] == model.expected
    sequences = [event.sequence for event in replayed + live]
    assert sequences == list(range(1, len(model.expected) + 1))


def test_replay_seam_under_concurrent_writes(start_server: StartServer, lane: bool) -> None:
    """History that spans LMDB and the in-memory tail, replayed while a writer keeps
    writing, joins the live events with no gap and no duplicate."""
    server = start_server()
    with server.client(lane=lane) as store:
        written = [store.put(f"old {index}".encode(), "acq_f").hex() for index in range(1500)]
        wait_for(lambda: store.info().committed_sequence == 1500, "the background commit")
        more: list[str] = []

        def write() -> None:
            for index in range(500):
                more.append(store.put(f"new {index}".encode(), "acq_f").hex())
            more.append(store.put(b"end", "sentinel").hex())

        writer = threading.Thread(target=write, daemon=True)
        with store.subscribe(since=1) as events:
            writer.start()
            collector = Collector.of(events)
            got = collector.until(lambda event: event.object.name == "sentinel", 60)
            collector.close()
        writer.join(EVENT_TIMEOUT)
    assert [event.object.id.hex() for event in got] == written + more
    assert [event.sequence for event in got] == list(range(1, len(got) + 1))


# -- slow subscribers ---------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_stalled_subscriber_does_not_block_writers(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With --subscriber-buffer 50, two subscribers stall after one event while 2000 puts
    complete. The raw stream then ends with RESOURCE_EXHAUSTED and a resume trailer naming
    the first undelivered sequence; the Python Subscription resumes by itself and yields
    every event exactly once, in order."""
    server = start_server("--subscriber-buffer", "50")
    # ~10 KiB events: gRPC itself buffers a few MiB of a stalled stream (flow-control windows)
    # before the server's send blocks and its own 50-event buffer can fill; 2000 of these
    # are several times that.
    labels = {f"padding{index}": "p" * 1000 for index in range(10)}
    with server.client(lane=False) as store, grpc.insecure_channel(server.unix_address) as channel:
        raw = store_pb2_grpc.StoreServiceStub(channel).Subscribe(pb.SubscribeRequest())
        subscription = store.subscribe()
        wait_subscribers(store, 2)
        ids = [store.put(b"first", "acq_f", labels=labels).hex()]
        first_raw = next(raw).event
        python_events = iter(subscription)
        first_python = next(python_events)
        assert first_raw.meta.id.hex() == first_python.object.id.hex() == ids[0]

        for index in range(2000):  # neither subscriber reads meanwhile
            ids.append(store.put(f"frame {index}".encode(), "acq_f", labels=labels).hex())
        assert len(set(ids)) == 2001
        last_sequence = store.info().last_sequence

        raw_collector = Collector(raw)
        rest_raw, error = raw_collector.ending(60)
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(error.trailing_metadata() or ())
        assert RESUME_TRAILER in trailers, trailers
        delivered = [first_raw.sequence] + [response.event.sequence for response in rest_raw]
        assert delivered == list(range(first_raw.sequence, first_raw.sequence + len(delivered)))
        assert int(trailers[RESUME_TRAILER]) == delivered[-1] + 1 <= last_sequence

        assert_resumed_by_itself(caplog, subscription, python_events, first_python, ids)
        wait_subscribers(store, 0)


@pytest.mark.timeout(180)
def test_stalled_lane_subscriber_does_not_block_writers(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The same on the lane, where only the socket's buffer (a few hundred KiB) holds a
    stalled stream: with --subscriber-buffer 50 and 500 puts of ~10 KiB, a raw lane
    subscription ends with one RESOURCE_EXHAUSTED frame after the events it was sent, with
    no gap, naming the first one it missed; the Python Subscription (resuming after its
    last event) yields every event exactly once, in order."""
    server = start_server("--subscriber-buffer", "50")
    labels = {f"padding{index}": "p" * 1000 for index in range(10)}
    with server.client() as store:
        raw = RawLane(server.socket_path + ".lane")
        raw.subscribe(pb.SubscribeRequest())
        subscription = store.subscribe()
        assert subscription_path(subscription) == "lane"
        wait_subscribers(store, 2)
        ids = [store.put(b"first", "acq_f", labels=labels).hex()]
        first_raw = raw.next_event()
        python_events = iter(subscription)
        first_python = next(python_events)
        assert first_raw.meta.id.hex() == first_python.object.id.hex() == ids[0]

        for index in range(500):  # neither subscriber reads meanwhile
            ids.append(store.put(f"frame {index}".encode(), "acq_f", labels=labels).hex())
        last_sequence = store.info().last_sequence

        rest_raw, (status, message) = raw.events()
        assert status == grpc.StatusCode.RESOURCE_EXHAUSTED, message
        delivered = [first_raw.sequence] + [event.sequence for event in rest_raw]
        assert delivered == list(range(first_raw.sequence, first_raw.sequence + len(delivered)))
        assert delivered[-1] < last_sequence
        assert f"since_sequence={delivered[-1] + 1}" in message
        assert raw.hung_up()

        assert_resumed_by_itself(caplog, subscription, python_events, first_python, ids)
        wait_subscribers(store, 0)


def assert_resumed_by_itself(
    caplog: pytest.LogCaptureFixture,
    subscription: Subscription,
    events: Iterator[Event],
    first: Event,
    ids: list[str],
) -> None:
    """Read on, the stalled ``subscription`` (its ``events`` after ``first``) yields every
    object of ``ids`` once, in order, under consecutive sequences: it fell behind and
    resumed by itself."""
    with caplog.at_level(logging.WARNING, logger="improv_store.client.subscription"):
        collector = Collector(events, subscription.close)
        rest = collector.until(lambda event: event.object.id.hex() == ids[-1], 60)
        collector.close()
    got = [first, *rest]
    assert [event.object.id.hex() for event in got] == ids
    assert [event.sequence for event in got] == list(range(got[0].sequence, got[-1].sequence + 1))
    assert any("fell behind" in message for message in caplog.messages), (
        "the subscription never overflowed, so auto-resume was not exercised"
    )


# -- lifecycle ----------------------------------------------------------------------------


def test_stalled_subscriber_that_leaves_is_unregistered(
    start_server: StartServer, lane: bool
) -> None:
    """A subscriber whose stream is backed up (the server blocked sending to it) and that
    then cancels (gRPC) or hangs up (lane) is unregistered, so dead subscribers do not pile
    up against the limit."""
    server = start_server("--subscriber-buffer", "100000")
    labels = {f"padding{index}": "p" * 1000 for index in range(10)}
    with server.client() as store, contextlib.ExitStack() as stack:
        leave = raw_subscription(server, lane, stack)
        wait_subscribers(store, 1)
        for index in range(1000):  # ~10 MB, more than gRPC or a socket buffers unread
            store.put(f"frame {index}".encode(), "acq_f", labels=labels)
        assert store.info().subscriber_count == 1
        leave()
        wait_subscribers(store, 0)


def raw_subscription(
    server: ServerProcess, lane: bool, stack: contextlib.ExitStack
) -> Callable[[], None]:
    """Subscribe to everything on a lane connection or a gRPC stream and read nothing;
    return how to leave (hang up, or cancel)."""
    if lane:
        connection = RawLane(server.socket_path + ".lane")
        connection.subscribe(pb.SubscribeRequest())
        stack.callback(connection.socket.close)
        return connection.socket.close
    channel = stack.enter_context(grpc.insecure_channel(server.unix_address))
    call = store_pb2_grpc.StoreServiceStub(channel).Subscribe(pb.SubscribeRequest())
    return call.cancel


def test_close_from_another_thread(server: ServerProcess, store: StoreClient, lane: bool) -> None:
    """close() from another thread ends an iteration blocked waiting for events, without
    an error, and the server lets the subscriber go; so does closing the client."""
    subscription = store.subscribe()
    assert subscription_path(subscription) == ("lane" if lane else "grpc")
    blocked = Collector(subscription)
    wait_subscribers(store, 1)
    subscription.close()
    assert blocked.ending() == ([], None)
    wait_subscribers(store, 0)

    with server.client(lane=lane) as other:
        blocked = Collector(other.subscribe())
        wait_subscribers(store, 1)
    assert blocked.ending() == ([], None)
    wait_subscribers(store, 0)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_shutdown_ends_subscription(start_server: StartServer, how: str, lane: bool) -> None:
    """When the server goes away, an open subscription (idle, waiting for live events)
    ends with StoreUnavailable rather than hanging."""
    server = start_server()
    with server.client(lane=lane) as store:
        with store.subscribe() as events:
            collector = Collector.of(events)
            wait_subscribers(store, 1)
            store.put(b"one", "acq_f")
            collector.take(1)
            if how == "sigterm":
                assert server.stop() == 0
            else:
                server.kill()
            remaining, error = collector.ending()
        assert remaining == []
        assert isinstance(error, StoreUnavailable), error
        if how == "sigterm":  # the server said why
            assert "shutting down" in str(error), error


def test_values_subscription_renews_a_lost_session(
    server: ServerProcess, store: StoreClient
) -> None:
    """subscribe(values=True) leases each value to the client's session; when that session
    is gone (its lane connection or Session stream closed), the stream ends with
    FAILED_PRECONDITION and the subscription opens a new session and goes on from the event
    it missed: every value arrives, once, in order."""
    arrays = [np.full(1 << 15, index, dtype="<f8") for index in range(3)]  # 256 KiB: shm
    with server.client(transfer="inline") as observer, \
            store.subscribe("v/", since=observer.info().last_sequence + 1, values=True) as sub:
        collector = Collector.of(sub)
        observer.put(arrays[0], "v/0")
        first = collector.take(1)
        sessions = observer.info().sessions
        store._route().transport.session().close()  # the session holding the values' leases ends
        wait_for(lambda: observer.info().sessions == sessions - 1, "the session to end")
        observer.put(arrays[1], "v/1")
        observer.put(arrays[2], "v/2")
        rest = collector.take(2)
        collector.close()
    got = first + rest
    assert [event.object.name for event in got] == ["v/0", "v/1", "v/2"]
    assert_increasing([event.sequence for event in got])
    for event, array in zip(got, arrays, strict=True):
        np.testing.assert_array_equal(event.value, array)
        assert not event.value.flags.owndata  # a view on the store's shared memory


def test_subscriber_count(server: ServerProcess, store: StoreClient, lane: bool) -> None:
    """Info.subscriber_count rises with each open subscription and falls back as they
    close: by close(), by the stream ending, and by the subscriber process being killed."""
    assert store.info().subscriber_count == 0
    first = store.subscribe()
    second = store.subscribe("acq_", since=1)
    wait_subscribers(store, 2)
    child = start_child(server.unix_address, "", None, 1000, lane)
    try:
        wait_subscribers(store, 3)
        store.put(b"data", "acq_f")
        child.send_signal(signal.SIGKILL)
        child.wait(EVENT_TIMEOUT)
        wait_subscribers(store, 2)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    collector = Collector.of(first)
    collector.take(1)
    collector.close()
    wait_subscribers(store, 1)
    second.close()
    wait_subscribers(store, 0)


def test_a_put_right_after_subscribe_is_seen(
    server: ServerProcess, store: StoreClient, lane: bool
) -> None:
    """A change made after subscribe() returns is delivered, however late the server
    registers the subscription (it is registered on another connection, or thread, than
    the put that follows): 100 times over, subscribe, put at once, and see that put."""
    for i in range(100):
        with store.subscribe("race_") as subscription:
            object_id = store.put(b"right after", name=f"race_{i}")
            collector = Collector.of(subscription)
            (event,) = collector.take(1, timeout=10)
            assert event.object.id == object_id
            collector.close()


def test_live_only_skips_history(server: ServerProcess, store: StoreClient) -> None:
    """Without since_sequence a subscription starts at the next change: nothing older."""
    store.put(b"old", "acq_f")
    with store.subscribe() as events:
        collector = Collector.of(events)
        wait_subscribers(store, 1)
        new_id = store.put(b"new", "acq_f").hex()
        got = collector.take(1)
        collector.close()
    assert [event.object.id.hex() for event in got] == [new_id]
    assert got[0].sequence == 2


def test_since_zero_means_from_the_beginning(server: ServerProcess, store: StoreClient) -> None:
    """since_sequence 0, like 1, replays from the first event (the contract says both)."""
    ids = [store.put(b"one", "acq_f").hex(), store.put(b"two").hex()]
    for since in (0, 1):
        with store.subscribe(since=since) as events:
            collector = Collector.of(events)
            got = collector.take(2)
            collector.close()
        assert [(event.sequence, event.object.id.hex()) for event in got] == [
            (1, ids[0]), (2, ids[1])
        ]



def lane_connection(path: str) -> RawLane:
    """A raw lane connection, waiting while the server's backlog is full (EAGAIN)."""
    deadline = time.monotonic() + EVENT_TIMEOUT
    while True:
        try:
            return RawLane(path, open_session=False)
        except BlockingIOError:
            assert time.monotonic() < deadline, "the lane accepted no connection"
            time.sleep(0.01)


def test_subscribers_that_leave_at_once_are_unregistered(
    server: ServerProcess, store: StoreClient, lane: bool
) -> None:
    """A subscriber that hangs up as its call starts (before or while the server registers
    the subscription) leaves nothing registered, on a lane connection and over gRPC."""
    request = pb.SubscribeRequest(prefix="gone_")
    if lane:
        for _ in range(300):
            connection = lane_connection(server.socket_path + ".lane")
            connection.subscribe(request)
            connection.socket.close()
    else:
        with grpc.insecure_channel(server.unix_address) as channel:
            stub = store_pb2_grpc.StoreServiceStub(channel)
            for _ in range(300):
                stub.Subscribe(request).cancel()
    wait_subscribers(store, 0)
    store.put(b"still served", "gone_after")  # and the server still publishes
    assert store.info().subscriber_count == 0


def test_batched_events_come_in_order_within_the_response_limit(server: ServerProcess) -> None:
    """SubscribeRequest.batch_size: the waiting events together (a follower's way), each
    response within the 4 MiB a default client accepts even when events carry large labels;
    not with a shared-memory transfer."""
    big_labels = {f"k{index}": "v" * 1000 for index in range(60)}  # about 60 KB per event
    with server.client() as store:
        store.put_many([b"x"] * 250)
        for index in range(100):
            store.put(b"y", name=f"labelled{index}", labels=big_labels)
    with grpc.insecure_channel(server.unix_address) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        call = stub.Subscribe(pb.SubscribeRequest(since_sequence=1, batch_size=100), timeout=30)
        sequences: list[int] = []
        sizes = []
        for response in call:
            assert not response.HasField("event") and response.events
            assert len(response.events) <= 100
            sizes.append(response.ByteSize())
            sequences += [event.sequence for event in response.events]
            if sequences[-1] == 350:
                call.cancel()
                break
        assert sequences == list(range(1, 351))
        assert max(sizes) <= 4 << 20 and len(sizes) >= 4  # 6 MB of labels: cut in two
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.Subscribe(pb.SubscribeRequest(batch_size=10, transfer=pb.TRANSFER_SHM,
                                                    session_id="x"), timeout=10))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_payloads_come_with_batched_events_up_to_the_limit(server: ServerProcess) -> None:
    """SubscribeRequest.payload_limit: each PUT or REPLACE payload up to the limit rides with
    its event; one above it, a deleted object's and a DELETE's do not (length differs from
    meta.size); payload_limit without batches is INVALID_ARGUMENT."""
    with server.client() as store:
        small = store.put(b"small payload")
        store.put(b"L" * 5000)  # above the limit below
        gone = store.put(b"deleted before it is read")
        store.delete(gone)
        store.replace("r", b"replacing")
    with grpc.insecure_channel(server.unix_address) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        call = stub.Subscribe(pb.SubscribeRequest(since_sequence=1, batch_size=100,
                                                  payload_limit=4096), timeout=30)
        pairs = []
        for response in call:
            assert len(response.payloads) == len(response.events)
            pairs += list(zip(response.events, response.payloads, strict=True))
            if pairs[-1][0].sequence == 5:
                call.cancel()
                break
        came = [data if len(data) == event.meta.size else None for event, data in pairs]
        assert came == [b"small payload", None, None, None, b"replacing"]
        assert pairs[0][0].meta.id == small.binary()
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.Subscribe(pb.SubscribeRequest(payload_limit=10), timeout=10))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
