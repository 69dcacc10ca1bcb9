"""The transport-neutral handlers, called in-process over a real Store (LMDB, shared memory).

Both adapters (the gRPC servicer and the lane) only parse, call these, wait for a
write's ticket and map StoreError; what they answer is decided here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from improv_store.protocol import OLDEST_SEQUENCE_TRAILER, RESUME_SEQUENCE_TRAILER, Code, parse
from improv_store.service.config import ServerConfig
from improv_store.service.errors import StoreError
from improv_store.service.handlers import Handlers, Pending, StreamSlots, checked
from improv_store.service.store import Store
from improv_store.v1 import store_pb2 as pb

SETTLE_TIMEOUT = 30.0


@pytest.fixture
def make_handlers(tmp_path: Path) -> Iterator[Callable[..., Handlers]]:
    """Factory: Handlers over a fresh Store with these ServerConfig options; every store
    is closed (its shared memory unlinked) afterwards."""
    stores: list[Store] = []

    def make(**options: Any) -> Handlers:
        config = ServerConfig(
            data_dir=str(tmp_path / f"data{len(stores)}"), memory=64 << 20, **options
        )
        store = Store(config)
        stores.append(store)
        return Handlers(store)

    yield make
    for store in stores:
        store.close()


def ended_never(callback: Callable[[], None]) -> bool:
    """An ``on_end`` for a call that is still going on: the callback is not needed here."""
    return True


def settled(pending: Pending) -> StoreError | None:
    """Wait for a Pending's ticket the way the lane does (from the commit); its error."""
    assert pending.ticket is not None
    done = threading.Event()
    outcome: list[StoreError | None] = []

    def committed(error: StoreError | None) -> None:
        outcome.append(error)
        done.set()

    pending.ticket.when_done(committed)
    assert done.wait(SETTLE_TIMEOUT), "the commit never settled"
    return outcome[0]


def test_put_then_get_roundtrip(make_handlers: Callable[..., Handlers]) -> None:
    """A Put's response names the object; Get by ID and by name returns its bytes; in
    ``async`` mode a write has nothing to wait for."""
    handlers = make_handlers(durability="async")
    put = handlers.Put(pb.PutRequest(spec=pb.ObjectSpec(name="greeting"), data=b"hello"))
    assert isinstance(put, Pending) and put.ticket is None
    meta = put.response.meta
    assert meta.size == 5 and meta.name == "greeting" and meta.sequence == 1
    by_id = handlers.Get(pb.GetRequest(ref=pb.ObjectRef(id=meta.id)))
    by_name = handlers.Get(pb.GetRequest(ref=pb.ObjectRef(name="greeting")))
    assert by_id.data == by_name.data == b"hello"
    assert by_id.meta.id == meta.id
    listed = handlers.List(pb.ListRequest(prefix="greet"))
    assert [m.id for m in listed.objects] == [meta.id]


def test_bad_requests_raise_store_errors_with_their_code(
    make_handlers: Callable[..., Handlers],
) -> None:
    """Malformed bytes, a malformed ID, an unknown object, a duplicate ID and a session
    that is not open: each a StoreError with the contract's code."""
    handlers = make_handlers(durability="none")
    with pytest.raises(StoreError) as malformed:
        checked(parse(pb.PutRequest, b"\xff\xff\xff garbage"))
    assert malformed.value.code == Code.INVALID_ARGUMENT
    assert "malformed PutRequest" in malformed.value.message
    cases = [
        (Code.INVALID_ARGUMENT, lambda: handlers.Get(pb.GetRequest(ref=pb.ObjectRef(id=b"short")))),
        (Code.NOT_FOUND, lambda: handlers.Get(pb.GetRequest(ref=pb.ObjectRef(name="missing")))),
        (Code.FAILED_PRECONDITION,
         lambda: handlers.Create(pb.CreateRequest(session_id="none such", size=10))),
    ]
    for code, call in cases:
        with pytest.raises(StoreError) as raised:
            call()
        assert raised.value.code == code, raised.value.message
    spec = pb.ObjectSpec(id=bytes(20))
    handlers.Put(pb.PutRequest(spec=spec, data=b"first"))
    with pytest.raises(StoreError) as duplicate:
        handlers.Put(pb.PutRequest(spec=spec, data=b"second"))
    assert duplicate.value.code == Code.ALREADY_EXISTS


def test_history_gone_carries_the_oldest_sequence(make_handlers: Callable[..., Handlers]) -> None:
    """Subscribing from history that retention dropped is OUT_OF_RANGE, raised before any
    event, with the oldest retained sequence as a trailer value; from there it replays."""
    handlers = make_handlers(durability="none", event_retention=3)
    for i in range(6):
        handlers.Put(pb.PutRequest(spec=pb.ObjectSpec(name=f"n{i}"), data=b"x"))
    with pytest.raises(StoreError) as gone:
        handlers.Subscribe(pb.SubscribeRequest(since_sequence=1))
    assert gone.value.code == Code.OUT_OF_RANGE
    oldest = int(gone.value.trailers[OLDEST_SEQUENCE_TRAILER])
    assert oldest == handlers.Info(pb.InfoRequest()).oldest_sequence == 4
    events = handlers.Subscribe(pb.SubscribeRequest(since_sequence=oldest))
    try:
        replayed = iter(events)
        assert [next(replayed).event.sequence for _ in range(3)] == [4, 5, 6]
    finally:
        events.close()
    assert handlers.Info(pb.InfoRequest()).subscriber_count == 0


def test_a_subscriber_that_falls_behind_learns_where_to_resume(
    make_handlers: Callable[..., Handlers],
) -> None:
    """A subscriber whose buffer overflows gets what it holds, then RESOURCE_EXHAUSTED with
    the first sequence it missed as a trailer value."""
    handlers = make_handlers(durability="none", subscriber_buffer=2)
    events = handlers.Subscribe(pb.SubscribeRequest())
    for i in range(5):
        handlers.Put(pb.PutRequest(spec=pb.ObjectSpec(name=f"n{i}"), data=b"x"))
    received = []
    with pytest.raises(StoreError) as behind:
        for response in events:
            received.append(response.event.sequence)
    assert received == [1, 2]
    assert behind.value.code == Code.RESOURCE_EXHAUSTED
    assert behind.value.trailers == {RESUME_SEQUENCE_TRAILER: "3"}


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_a_write_waits_only_in_sync_mode(
    make_handlers: Callable[..., Handlers], durability: str
) -> None:
    """In ``sync`` mode a write returns the ticket of its commit, which settles without
    error once the commit is on disk; a BatchPut's ticket settles once all its items' do.
    In ``async`` mode there is nothing to wait for."""
    handlers = make_handlers(durability=durability)
    put = handlers.Put(pb.PutRequest(spec=pb.ObjectSpec(name="durable"), data=b"payload"))
    batch = handlers.BatchPut(pb.BatchPutRequest(items=[
        pb.PutRequest(data=b"a"), pb.PutRequest(data=b"b", spec=pb.ObjectSpec(id=b"short")),
    ]))
    results = batch.response.results
    assert results[0].code == Code.OK and results[1].code == Code.INVALID_ARGUMENT
    delete = handlers.Delete(pb.DeleteRequest(ref=pb.ObjectRef(name="durable")))
    if durability == "async":
        assert put.ticket is batch.ticket is delete.ticket is None
        return
    assert settled(put) is None
    assert settled(batch) is None and results[0].code == Code.OK
    assert settled(delete) is None
    assert list(delete.response.deleted_ids) == [put.response.meta.id]
    handlers.store.await_durable(put.ticket)  # the gRPC servicer's way: settled, so at once
    assert handlers.Info(pb.InfoRequest()).committed_sequence >= 3  # put, item, delete


def test_open_checks_the_token(make_handlers: Callable[..., Handlers], tmp_path: Path) -> None:
    """The lane's Open: without the server's token UNAUTHENTICATED, with it a session."""
    token_file = tmp_path / "token"
    token_file.write_text("secret\n")
    token_file.chmod(0o600)
    handlers = make_handlers(durability="none", token_file=str(token_file))
    for token, message in (("", "this store requires a token"), ("wrong", "wrong token")):
        with pytest.raises(StoreError) as refused:
            handlers.Open(pb.LaneOpenRequest(token=token))
        assert (refused.value.code, refused.value.message) == (Code.UNAUTHENTICATED, message)
    opened = handlers.Open(pb.LaneOpenRequest(token="secret"))
    assert handlers.Info(pb.InfoRequest()).arena.sessions == 1
    handlers.store.close_session(opened.session_id)
    assert handlers.Info(pb.InfoRequest()).arena.sessions == 0


def test_stream_slots_are_given_back_when_the_call_ends() -> None:
    """A slot is held while its block runs and given back at its end or at the call's,
    whichever is first; past the limit RESOURCE_EXHAUSTED; a call that ended already
    is CANCELLED and holds nothing."""
    slots = StreamSlots(1)
    ends: list[Callable[[], None]] = []

    def on_end(callback: Callable[[], None]) -> bool:
        ends.append(callback)
        return True

    held = slots.hold(on_end)
    held.__enter__()
    assert slots.open == 1
    with pytest.raises(StoreError) as full, slots.hold(ended_never):
        pass
    assert full.value.code == Code.RESOURCE_EXHAUSTED
    ends[0]()  # the call ended (cancelled) while its handler never resumed
    assert slots.open == 0
    held.__exit__(None, None, None)
    assert slots.open == 0
    with pytest.raises(StoreError) as ended, slots.hold(lambda callback: False):
        pass
    assert ended.value.code == Code.CANCELLED and slots.open == 0


def test_get_stream_yields_the_payload_in_chunks(make_handlers: Callable[..., Handlers]) -> None:
    """GetStream: serialized messages, the metadata first, then the payload in order; the
    stream slot is back when it is done."""
    handlers = make_handlers(durability="none")
    payload = bytes(range(256)) * 40
    handlers.Put(pb.PutRequest(spec=pb.ObjectSpec(name="big"), data=payload))
    request = pb.GetStreamRequest(ref=pb.ObjectRef(name="big"), chunk_size=1000)
    messages = [pb.GetStreamResponse.FromString(raw)
                for raw in handlers.GetStream(request, None, ended_never)]
    assert messages[0].meta.size == len(payload)
    assert b"".join(m.chunk for m in messages[1:]) == payload
    assert len(messages) == 1 + 11
    assert handlers.streams.open == 0
