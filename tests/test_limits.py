"""Every configurable limit is enforced wherever it applies, with the status the contract names.

A name or batch over its limit is a malformed request: INVALID_ARGUMENT. An object too large
and too many open streams or subscribers are capacity limits: RESOURCE_EXHAUSTED. Each limit is
set small by its flag and hit over gRPC (the raw stub) and, where it applies, over the
colocated path (a StoreClient with transfer="shm": the lane and shared-memory Create/Seal).

Not repeated here: the default limits and --max-object-size on Put, Replace and PutStream
(test_bad_input.py), Create beyond --max-object-size over gRPC (test_shm.py), and a subscriber
overflowing --subscriber-buffer being cut off with RESOURCE_EXHAUSTED (test_subscribe.py).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from conftest import ServerProcess
from google.protobuf.duration_pb2 import Duration
from test_bad_input import (
    CALL_TIMEOUT,
    Raw,
    assert_serving,
    check_cases,
    chunk,
    expect,
    header,
    put_three_ways,
    raw_servers,
    stored_ids,
    stream_of,
)
from test_lane import RawLane, subscription_path
from test_shm import RawSession

from improv_store.client import InvalidRequest, StoreClient, StoreFull
from improv_store.v1 import store_pb2 as pb

Code = grpc.StatusCode
KiB = 1 << 10
SETTLE_TIMEOUT = 20.0


@pytest.fixture
def limited(start_server: Callable[..., ServerProcess]) -> Iterator[Callable[..., Raw]]:
    """Start a server with the given flags; a Raw (stub + neighbour object) for it."""
    with raw_servers(start_server) as make:
        yield make


def colocated(raw: Raw) -> StoreClient:
    """A client of the server that moves payloads through shared memory and calls over the lane."""
    client = raw.server.client(transfer="shm", timeout=CALL_TIMEOUT)
    assert client.colocated
    return client


def batch_put(raw: Raw, *items: pb.PutRequest) -> list[int]:
    """The per-item status codes of one BatchPut."""
    response = raw.stub.BatchPut(pb.BatchPutRequest(items=items), timeout=CALL_TIMEOUT)
    return [result.code for result in response.results]


def settle(check: Callable[[], bool], what: str) -> None:
    """Wait until ``check()`` holds (the server releases a closed stream's slot on its own)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def test_limits_come_from_flags_and_environment_and_show_in_info(
    limited: Callable[..., Raw],
) -> None:
    """Each limit is set by its flag or IMPROV_STORE_* variable and reported by Info."""
    raw = limited(
        "--max-name-length",
        "40",
        "--max-batch-size",
        "7",
        "--max-object-size",
        "3M",
        "--max-subscribers",
        "5",
        "--subscriber-buffer",
        "77",
        env={"IMPROV_STORE_MAX_STREAMS": "6"},
    )
    with raw.server.client() as store:
        info = store.info()
    assert (info.max_name_length, info.max_batch_size, info.max_object_size) == (40, 7, 3 << 20)
    assert (info.max_subscribers, info.subscriber_buffer, info.max_streams) == (5, 77, 6)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--max-streams", "0"), "max_streams must be at least 1"),
        (("--max-name-length", "0"), "max_name_length must be at least 1"),
        (("--max-batch-size", "0"), "max_batch_size must be at least 1"),
        (("--max-streams", "64", "--max-subscribers", "64"), "must be below max_workers"),
    ],
)
def test_unusable_limits_are_refused_at_start(flags: tuple[str, ...], message: str) -> None:
    """Limits that would make the server useless stop it at start with exit 2 and a reason."""
    result = subprocess.run(
        [sys.executable, "-m", "improv_store.service", "--socket", "", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_name_length_limit_everywhere_a_name_is_read(limited: Callable[..., Raw]) -> None:
    """With --max-name-length 16, a 17-byte name is INVALID_ARGUMENT in every put (Put,
    Replace, PutStream, BatchPut item, Create), every reference (Get, GetStream, Delete,
    BatchGet item) and every prefix (List, Subscribe), over gRPC and over the lane; a
    16-byte name (in UTF-8 bytes, not characters) works everywhere."""
    raw = limited("--max-name-length", "16")
    stub = raw.stub
    long, fits = "n" * 17, "\u00e9" * 8
    assert len(fits.encode()) == 16
    long_ref = pb.ObjectRef(name=long)
    before = stored_ids(stub)
    session = RawSession(stub)
    try:
        create = pb.CreateRequest(
            session_id=session.session_id, spec=pb.ObjectSpec(name=long), size=16
        )
        cases: list[tuple[str, grpc.StatusCode, Callable[[], Any]]] = [
            (how, Code.INVALID_ARGUMENT, call)
            for how, call in put_three_ways(raw, pb.ObjectSpec(name=long), b"data")
        ]
        cases += [
            ("Create", Code.INVALID_ARGUMENT, lambda: stub.Create(create, timeout=CALL_TIMEOUT)),
            (
                "Get",
                Code.INVALID_ARGUMENT,
                lambda: stub.Get(pb.GetRequest(ref=long_ref), timeout=CALL_TIMEOUT),
            ),
            (
                "GetStream",
                Code.INVALID_ARGUMENT,
                lambda: stub.GetStream(pb.GetStreamRequest(ref=long_ref), timeout=CALL_TIMEOUT),
            ),
            (
                "Delete",
                Code.INVALID_ARGUMENT,
                lambda: stub.Delete(pb.DeleteRequest(ref=long_ref), timeout=CALL_TIMEOUT),
            ),
            (
                "List prefix",
                Code.INVALID_ARGUMENT,
                lambda: stub.List(pb.ListRequest(prefix=long), timeout=CALL_TIMEOUT),
            ),
            (
                "Subscribe prefix",
                Code.INVALID_ARGUMENT,
                lambda: stub.Subscribe(pb.SubscribeRequest(prefix=long), timeout=CALL_TIMEOUT),
            ),
        ]
        check_cases(cases)
    finally:
        session.close()
    error = expect(
        Code.INVALID_ARGUMENT,
        lambda: stub.Put(pb.PutRequest(spec=pb.ObjectSpec(name=long)), timeout=CALL_TIMEOUT),
    )
    assert "17 bytes" in error.details() and "16" in error.details()
    assert batch_put(
        raw,
        pb.PutRequest(spec=pb.ObjectSpec(name=long)),
        pb.PutRequest(spec=pb.ObjectSpec(name=fits)),
    ) == [3, 0]
    results = stub.BatchGet(
        pb.BatchGetRequest(refs=[long_ref, pb.ObjectRef(name=fits)]), timeout=CALL_TIMEOUT
    ).results
    assert [r.code for r in results] == [3, 0]
    assert stored_ids(stub) - before == {results[1].meta.id}  # only the BatchPut item that fit

    check_cases(
        [
            (f"{how} 16 bytes", Code.OK, call)
            for how, call in put_three_ways(raw, pb.ObjectSpec(name=fits), b"data")
        ]
    )
    with colocated(raw) as store:
        with pytest.raises(InvalidRequest, match="max_name_length"):
            store.put(bytes(100 * KiB), name=long)  # Create over the lane
        with pytest.raises(InvalidRequest):
            store.get(long)
        with pytest.raises(InvalidRequest):
            store.delete(long)
        with pytest.raises(InvalidRequest, match="item 0"):
            store.put_many([b"a", b"b"], names=[long, fits])
        object_id = store.put(bytes(100 * KiB), name=fits)
        assert store.get(fits) == bytes(100 * KiB)
        assert store.stat(object_id).name == fits
    with raw.server.client() as store:
        assert all(len(info.name.encode()) <= 16 for info in store.list())
    assert_serving(raw)


def test_batch_size_limit_on_batch_get_and_batch_put(limited: Callable[..., Raw]) -> None:
    """With --max-batch-size 4, a BatchGet of 5 refs or a BatchPut of 5 items is
    INVALID_ARGUMENT (nothing stored), over gRPC and over the lane; 4 are fine. The Python
    client's put_many splits its batches to fit the server's limit."""
    raw = limited("--max-batch-size", "4")
    stub = raw.stub
    ref = pb.ObjectRef(id=raw.neighbour.id)
    items = [pb.PutRequest(data=bytes([i])) for i in range(5)]
    before = stored_ids(stub)
    error = expect(
        Code.INVALID_ARGUMENT,
        lambda: stub.BatchGet(pb.BatchGetRequest(refs=[ref] * 5), timeout=CALL_TIMEOUT),
    )
    assert "5 refs" in error.details() and "max_batch_size" in error.details()
    error = expect(Code.INVALID_ARGUMENT, lambda: batch_put(raw, *items))
    assert "5 items" in error.details()
    assert stored_ids(stub) == before
    results = stub.BatchGet(pb.BatchGetRequest(refs=[ref] * 4), timeout=CALL_TIMEOUT).results
    assert [r.data for r in results] == [raw.neighbour_data] * 4
    assert batch_put(raw, *items[:4]) == [0] * 4

    payloads = [bytes([i]) * 10 for i in range(10)]
    with colocated(raw) as store:
        with pytest.raises(InvalidRequest, match="max_batch_size"):
            store.get_many([raw.neighbour.id] * 5)  # BatchGet over the lane
        ids = store.put_many(payloads)  # ten items: three BatchPuts over the lane
        assert store.get_many(ids[:4]) == payloads[:4]
    with raw.server.client(transfer="inline") as store:
        ids = store.put_many(payloads)  # over gRPC
        assert [store.get(object_id) for object_id in ids] == payloads
    assert_serving(raw)


def test_object_size_limit_on_batch_put_and_colocated_writes(limited: Callable[..., Raw]) -> None:
    """With --max-object-size 64K, a BatchPut item one byte over is RESOURCE_EXHAUSTED on its
    own (the others are stored), and a colocated put or create one byte over is StoreFull."""
    raw = limited("--max-object-size", "64K")
    over, exact = bytes(64 * KiB + 1), bytes(64 * KiB)
    assert batch_put(raw, pb.PutRequest(data=over), pb.PutRequest(data=exact)) == [8, 0]
    with colocated(raw) as store:
        with pytest.raises(StoreFull, match="max_object_size"):
            store.put(over)  # Create over the lane
        with pytest.raises(StoreFull), store.create(64 * KiB + 1, "uint8", name="big"):
            pytest.fail("a region beyond the limit was handed out")
        assert store.get(store.put(exact)) == exact
        with store.create(64 * KiB, "uint8", name="fits") as frame:
            frame[:] = 7
        assert (store.get("fits") == 7).all()
    assert_serving(raw)


def open_streams(raw: Raw) -> int:
    """How many PutStream, GetStream and Session streams hold a slot now."""
    return raw.stub.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT).stats.open_streams


def test_streams_that_end_at_once_give_back_their_slot_and_session(
    limited: Callable[..., Raw],
) -> None:
    """Sessions and GetStreams cancelled as they start (before or while the server
    registers what ends them) leave no stream slot and no session behind: the slots
    all come back, and a full set of streams can still be opened afterwards."""
    raw = limited("--max-streams", "4")
    stub = raw.stub
    waiting = pb.GetStreamRequest(ref=pb.ObjectRef(name="never"), wait=Duration(seconds=30))
    for _ in range(150):
        stub.Session(iter(())).cancel()
        stub.GetStream(waiting).cancel()

    def settled() -> bool:
        info = stub.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT)
        return info.stats.open_streams == 0 and info.arena.sessions == 0

    settle(settled, "every slot and session given back")
    sessions = [RawSession(stub) for _ in range(4)]  # the limit, all of it usable
    assert open_streams(raw) == 4
    for session in sessions:
        session.close()
    settle(settled, "the last sessions closed")


def test_stream_limit(limited: Callable[..., Raw]) -> None:
    """With --max-streams 2, two open streams of any kind (a GetStream waiting for its
    object, a PutStream still sending, Sessions) make a third one of any kind
    RESOURCE_EXHAUSTED naming the limit, while unary calls and Subscribe go on; a slot comes
    back when its stream ends: finished, cancelled, or its client process killed."""
    raw = limited("--max-streams", "2")
    stub = raw.stub
    release = threading.Event()

    def held_put() -> Iterator[pb.PutStreamRequest]:
        yield header(2, name="held")
        release.wait(CALL_TIMEOUT)
        yield chunk(b"ok")

    later = pb.ObjectRef(name="later")
    waiting = stub.GetStream(
        pb.GetStreamRequest(ref=later, wait=Duration(seconds=30)), timeout=CALL_TIMEOUT
    )
    settle(lambda: open_streams(raw) == 1, "the waiting GetStream holds a slot")
    putting = stub.PutStream.future(held_put(), timeout=CALL_TIMEOUT)
    try:
        settle(lambda: open_streams(raw) == 2, "the PutStream holds a slot")
        subscription = stub.Subscribe(pb.SubscribeRequest(prefix="later"), timeout=CALL_TIMEOUT)
        for label, third in (
            ("Session", lambda: RawSession(stub)),
            (
                "PutStream",
                lambda: stub.PutStream(stream_of(header(1), chunk(b"x")), timeout=CALL_TIMEOUT),
            ),
            (
                "GetStream",
                lambda: stub.GetStream(
                    pb.GetStreamRequest(ref=pb.ObjectRef(id=raw.neighbour.id)), timeout=CALL_TIMEOUT
                ),
            ),
        ):
            error = expect(Code.RESOURCE_EXHAUSTED, third)
            assert "max_streams" in error.details() and "2" in error.details(), label
        assert_serving(raw)  # unary calls are not limited

        release.set()
        assert putting.result(timeout=CALL_TIMEOUT).meta.name == "held"
        settle(lambda: open_streams(raw) == 1, "the finished PutStream's slot is back")
        stub.Put(pb.PutRequest(spec=pb.ObjectSpec(name="later"), data=b"now"), timeout=CALL_TIMEOUT)
        assert next(subscription).event.meta.name == "later"  # Subscribe has its own limit
        subscription.cancel()
        first, *rest = list(waiting)
        assert first.meta.name == "later" and b"".join(r.chunk for r in rest) == b"now"
        settle(lambda: open_streams(raw) == 0, "the finished GetStream's slot is back")
    finally:
        release.set()
        waiting.cancel()

    sessions = [RawSession(stub), RawSession(stub)]
    assert refused(stub)
    sessions.pop().close()  # cancelled by its client
    settle(lambda: open_streams(raw) == 1, "the cancelled Session's slot is back")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_SESSION, raw.server.unix_address],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        assert open_streams(raw) == 2 and refused(stub)
    finally:
        holder.kill()
        holder.wait(CALL_TIMEOUT)
    settle(lambda: open_streams(raw) == 1, "the killed client's slot is back")
    sessions.append(RawSession(stub))
    for session in sessions:
        session.close()
    settle(lambda: open_streams(raw) == 0, "every slot is back")


def refused(stub: Any) -> bool:
    """Whether a new Session is RESOURCE_EXHAUSTED (one that opens is closed again)."""
    try:
        session = RawSession(stub)
    except grpc.RpcError as error:
        return error.code() == Code.RESOURCE_EXHAUSTED
    session.close()
    return False


HOLD_A_SESSION = """
import sys, threading
import grpc
from improv_store.v1 import store_pb2_grpc
stub = store_pb2_grpc.StoreServiceStub(grpc.insecure_channel(sys.argv[1]))
forever = threading.Event()
def idle():
    forever.wait()
    yield from ()
call = stub.Session(idle())
next(call)
print("holding", flush=True)
forever.wait()
"""


def test_subscriber_limit(limited: Callable[..., Raw]) -> None:
    """With --max-subscribers 2, however many Subscribe calls arrive at once, two are served
    and the rest are RESOURCE_EXHAUSTED naming the limit (over gRPC and for the Python
    client); when one closes, a new subscriber is accepted."""
    raw = limited("--max-subscribers", "2")
    stub = raw.stub
    calls = [stub.Subscribe(pb.SubscribeRequest(), timeout=CALL_TIMEOUT) for _ in range(8)]
    try:
        settle(lambda: raw.stub.Info(pb.InfoRequest()).subscriber_count == 2, "two subscribed")
        stub.Put(pb.PutRequest(spec=pb.ObjectSpec(name="event"), data=b"x"), timeout=CALL_TIMEOUT)
        served, refusals = [], []
        for call in calls:
            try:
                served.append(next(call))
            except grpc.RpcError as error:
                refusals.append(error)
        assert len(served) == 2 and len(refusals) == 6
        for error in refusals:
            assert error.code() == Code.RESOURCE_EXHAUSTED
            assert "max_subscribers" in error.details()
        with raw.server.client() as store:
            assert store.info().subscriber_count == 2
            with pytest.raises(StoreFull, match="max_subscribers"), store.subscribe() as events:
                next(iter(events))
            for call in calls:
                call.cancel()
            settle(lambda: store.info().subscriber_count == 0, "subscribers unregistered")
            since = store.info().last_sequence + 1  # replayed: no race with the put
            with store.subscribe(since=since) as events:
                store.put(b"y", name="again")
                assert next(iter(events)).object.name == "again"
    finally:
        for call in calls:
            with contextlib.suppress(Exception):
                call.cancel()
    assert_serving(raw)


def test_subscriber_limit_on_the_lane(limited: Callable[..., Raw]) -> None:
    """With --max-subscribers 2 held by two lane subscriptions, a third (the Python client's
    or a raw lane connection's) gets RESOURCE_EXHAUSTED naming the limit as its first frame,
    and the client does not take it for falling behind; closing a lane subscription, even
    one never read, frees its slot for a new one."""
    raw = limited("--max-subscribers", "2")
    with colocated(raw) as store:
        first, second = store.subscribe(), store.subscribe()
        assert subscription_path(first) == "lane"
        settle(lambda: store.info().subscriber_count == 2, "two subscribed")
        with pytest.raises(StoreFull, match="max_subscribers"), store.subscribe() as refused:
            next(iter(refused))
        lane = RawLane(raw.server.socket_path + ".lane")
        lane.subscribe(pb.SubscribeRequest())
        events, (status, message) = lane.events()
        assert (events, status) == ([], Code.RESOURCE_EXHAUSTED)
        assert "max_subscribers" in message
        assert lane.hung_up()
        first.close()
        settle(lambda: store.info().subscriber_count == 1, "the closed subscriber left")
        since = store.info().last_sequence + 1  # replayed: no race with the put
        with store.subscribe(since=since) as third:
            store.put(b"z", name="third")
            assert next(iter(third)).object.name == "third"
        second.close()
        settle(lambda: store.info().subscriber_count == 0, "subscribers unregistered")
    assert_serving(raw)
