"""A client with default settings and a subscriber that resumes, as any language sees them.

Store identity: a resume names the store its sequence came from, and a store
whose data started over (every start without durability, a wiped directory)
says so with FAILED_PRECONDITION instead of a silent wait. Response sizes:
every answer fits the 4 MiB receive limit gRPC clients have by default, so
these tests call through raw channels with no options set.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from conftest import ServerProcess

from improv_store.client import HistoryUnavailable, StoreClient, StoreReset
from improv_store.protocol import (
    INLINE_LIMIT,
    MAX_RESPONSE_SIZE,
    OLDEST_SEQUENCE_TRAILER,
    STORE_ID_TRAILER,
)
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

CALL_TIMEOUT = 30.0


@contextlib.contextmanager
def default_stub(server: ServerProcess) -> Iterator[store_pb2_grpc.StoreServiceStub]:
    """A stub on a channel with every setting at gRPC's default (4 MiB receive limit)."""
    with grpc.insecure_channel(server.tcp_address) as channel:
        yield store_pb2_grpc.StoreServiceStub(channel)


def first_events(store: StoreClient, count: int, **subscribe: object) -> list[int]:
    """The sequences of the first ``count`` events of a subscription (made by puts here)."""
    with store.subscribe(**subscribe) as events:  # type: ignore[arg-type]
        for i in range(count):
            store.put(b"after", name=f"resume/{i}")
        return [event.sequence for _, event in zip(range(count), events, strict=False)]


# -- store identity --------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_a_restart_keeps_the_store_and_a_resume_goes_on(
    start_server: Callable[..., ServerProcess], durability: str
) -> None:
    server = start_server(durability=durability)
    with server.client() as store:
        store.put(b"before", name="resume/before")
        info = store.info()
    server.stop()
    again = start_server(durability=durability, data_dir=server.data_dir)
    with again.client() as store:
        assert store.info().store_id == info.store_id
        since = info.last_sequence + 1
        assert first_events(store, 2, since=since, store_id=info.store_id) == [since, since + 1]


@pytest.mark.parametrize("durability", ["none", "sync", "async"])
@pytest.mark.parametrize("tcp", [False, True])
def test_a_store_that_started_over_refuses_a_resume(
    start_server: Callable[..., ServerProcess], durability: str, tcp: bool
) -> None:
    """Without durability every start is a new store; with it, a wiped data directory is.
    Either way a resume naming the old store is StoreReset (FAILED_PRECONDITION, the new
    store's ID in the trailer), over the lane and over gRPC."""
    server = start_server(durability=durability)
    with server.client() as store:
        for i in range(3):
            store.put(b"old", name=f"old/{i}")
        old = store.info()
    server.stop()
    if durability != "none":
        shutil.rmtree(server.data_dir)
    again = start_server(durability=durability, data_dir=server.data_dir)
    with again.client(tcp=tcp) as store:
        new_id = store.info().store_id
        assert new_id != old.store_id
        with (pytest.raises(StoreReset) as reset,
              store.subscribe(since=old.last_sequence + 1, store_id=old.store_id) as events):
            next(iter(events))
        assert reset.value.store_id == new_id
        assert new_id in str(reset.value) and old.store_id in str(reset.value)
        # The sequence restarted: one past the old store's last is one this store never issued.
        with (pytest.raises(HistoryUnavailable) as future,
              store.subscribe(since=old.last_sequence + 2) as events):
            next(iter(events))
        assert "never issued" in str(future.value)


def test_the_resume_statuses_carry_the_store_and_its_oldest_sequence(
    server: ServerProcess,
) -> None:
    """What a client in another language sees: the codes and trailing metadata."""
    with server.client() as store:
        store.put(b"x", name="trailers/1")
        info = store.info()
    with default_stub(server) as stub:
        cases = {
            grpc.StatusCode.FAILED_PRECONDITION: pb.SubscribeRequest(
                since_sequence=1, store_id="another-store"
            ),
            grpc.StatusCode.OUT_OF_RANGE: pb.SubscribeRequest(
                since_sequence=info.last_sequence + 2
            ),
        }
        for code, request in cases.items():
            with pytest.raises(grpc.RpcError) as refused:
                next(stub.Subscribe(request, timeout=CALL_TIMEOUT))
            error = refused.value
            assert error.code() == code, error.details()
            trailers = dict(error.trailing_metadata() or ())
            assert trailers[STORE_ID_TRAILER] == info.store_id
            assert int(trailers[OLDEST_SEQUENCE_TRAILER]) == info.oldest_sequence


def test_from_oldest_replays_what_is_retained(
    start_server: Callable[..., ServerProcess],
) -> None:
    """With history trimmed, from_oldest starts at the oldest event kept; it and
    since_sequence together are INVALID_ARGUMENT."""
    server = start_server("--event-retention", "5", durability="none")
    with server.client() as store:
        for i in range(12):
            store.put(b"x", name=f"oldest/{i}")
        info = store.info()
    assert info.oldest_sequence > 1
    with default_stub(server) as stub:
        stream = stub.Subscribe(pb.SubscribeRequest(from_oldest=True), timeout=CALL_TIMEOUT)
        replayed = [next(stream).event.sequence for _ in range(info.last_sequence
                                                              - info.oldest_sequence + 1)]
        stream.cancel()
        assert replayed == list(range(info.oldest_sequence, info.last_sequence + 1))
        with pytest.raises(grpc.RpcError) as both:
            next(stub.Subscribe(pb.SubscribeRequest(from_oldest=True, since_sequence=1),
                                timeout=CALL_TIMEOUT))
        assert both.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_info_publishes_the_identity_and_the_response_limits(server: ServerProcess) -> None:
    with server.client() as store:
        info = store.info()
    assert len(info.store_id) == 32
    assert info.max_response_size == MAX_RESPONSE_SIZE == 4 << 20
    assert info.inline_limit == INLINE_LIMIT < MAX_RESPONSE_SIZE
    assert info.max_chunk_size <= MAX_RESPONSE_SIZE - 64


# -- responses within a default client's receive limit ----------------------------------


def test_every_answer_fits_a_default_client(server: ServerProcess) -> None:
    """Get of a payload of exactly inline_limit with the largest metadata, GetStream in the
    largest chunks, a BatchGet of many large objects and a List of objects with many large
    labels: each through a channel with default settings."""
    labels = {f"label{i:02d}": "v" * 1000 for i in range(64)}
    at_limit = bytes(range(256)) * (INLINE_LIMIT // 256)
    name = "n" * 256
    with server.client() as store:
        info = store.info()
    with default_stub(server) as stub:
        put = stub.Put(pb.PutRequest(spec=pb.ObjectSpec(name=name, labels=labels), data=at_limit),
                       timeout=CALL_TIMEOUT)
        got = stub.Get(pb.GetRequest(ref=pb.ObjectRef(id=put.meta.id)), timeout=CALL_TIMEOUT)
        assert got.data == at_limit and not got.payload_omitted and got.ByteSize() <= (4 << 20)

        large = [stub.Put(pb.PutRequest(spec=pb.ObjectSpec(name=f"big/{i}"),
                                        data=bytes([i]) * (1 << 20)), timeout=CALL_TIMEOUT)
                 for i in range(12)]
        batch = stub.BatchGet(pb.BatchGetRequest(refs=[pb.ObjectRef(id=p.meta.id) for p in large]),
                              timeout=CALL_TIMEOUT)
        assert all(result.code == 0 for result in batch.results)
        sent = [r for r in batch.results if not r.payload_omitted]
        assert sent and all(r.data == bytes([i]) * (1 << 20)
                            for i, r in enumerate(batch.results) if not r.payload_omitted)

        stream = stub.GetStream(pb.GetStreamRequest(ref=pb.ObjectRef(id=put.meta.id),
                                                    chunk_size=(1 << 32) - 1),
                                timeout=CALL_TIMEOUT)
        chunks = [response.chunk for response in stream][1:]
        assert b"".join(chunks) == at_limit and max(map(len, chunks)) <= info.max_chunk_size

        for i in range(80):  # ~5 MiB of metadata: more than one answer holds
            stub.Put(pb.PutRequest(spec=pb.ObjectSpec(name=f"labelled/{i}", labels=labels)),
                     timeout=CALL_TIMEOUT)
        listed, token = [], ""
        while True:
            page = stub.List(pb.ListRequest(prefix="labelled/", page_size=1000,
                                            page_token=token), timeout=CALL_TIMEOUT)
            listed.extend(meta.name for meta in page.objects)
            token = page.next_page_token
            if not token:
                break
        assert listed == [f"labelled/{i}" for i in range(80)]


def test_get_stream_reads_a_range_to_resume_a_download(server: ServerProcess) -> None:
    payload = np.random.default_rng(7).integers(0, 255, 3 << 20, dtype=np.uint8).tobytes()
    with server.client() as store:
        object_id = store.put(payload, name="range/object")
    with default_stub(server) as stub:

        def read(offset: int, length: int = 0) -> bytes:
            request = pb.GetStreamRequest(ref=pb.ObjectRef(id=object_id.binary()),
                                          offset=offset, length=length, chunk_size=1 << 20)
            responses = list(stub.GetStream(request, timeout=CALL_TIMEOUT))
            assert responses[0].meta.size == len(payload)  # the whole object's metadata
            return b"".join(response.chunk for response in responses[1:])

        assert read(0) == payload
        assert read(1_500_000) == payload[1_500_000:]
        assert read(10, 100) == payload[10:110]
        assert read(len(payload) - 5, 100) == payload[-5:]
        assert read(len(payload)) == b""
        with pytest.raises(grpc.RpcError) as beyond:
            read(len(payload) + 1)
        assert beyond.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_a_subscription_learns_its_store(server: ServerProcess) -> None:
    """The Python client's Subscription knows the store's ID, and passes it on resumes."""
    with server.client() as store:
        info = store.info()
        with store.subscribe() as events:
            assert events.store_id == info.store_id
            store.put(b"one", name="named/1")
            assert next(iter(events)).object.name == "named/1"


def test_a_batch_of_long_missing_names_after_a_large_object_fits(server: ServerProcess) -> None:
    """Statuses and metadata are placed before payloads: a full batch of NOT_FOUNDs quoting
    the longest names still leaves the answer within a default client's limit."""
    with default_stub(server) as stub:
        limits = stub.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT).limits
        stub.Put(pb.PutRequest(spec=pb.ObjectSpec(name="batch/big"),
                               data=bytes(limits.inline_limit)), timeout=CALL_TIMEOUT)
        long = "m" * (limits.max_name_length - 8)
        refs = [pb.ObjectRef(name="batch/big")] + [
            pb.ObjectRef(name=f"{long}{i:08d}") for i in range(limits.max_batch_size - 1)]
        results = stub.BatchGet(pb.BatchGetRequest(refs=refs), timeout=CALL_TIMEOUT).results
    assert results[0].code == 0 and results[0].meta.name == "batch/big"
    assert results[0].payload_omitted or len(results[0].data) == limits.inline_limit
    assert all(result.code == grpc.StatusCode.NOT_FOUND.value[0] for result in results[1:])


def test_a_batch_put_of_long_names_answers_within_the_limit(
    start_server: Callable[..., ServerProcess],
) -> None:
    """With max_name_length raised, a BatchPut's answer keeps each object's ID, size and
    sequence when the full metadata would not fit a default client's limit."""
    server = start_server("--max-name-length", "8000")
    items = [pb.PutRequest(spec=pb.ObjectSpec(name=f"{i:04d}" + "n" * 7000), data=b"x")
             for i in range(700)]
    with default_stub(server) as stub:
        results = stub.BatchPut(pb.BatchPutRequest(items=items), timeout=CALL_TIMEOUT).results
        assert all(result.code == 0 and len(result.meta.id) == 20 and result.meta.size == 1
                   for result in results)
        assert [result.meta.sequence for result in results] == list(range(1, 701))
        got = stub.Get(pb.GetRequest(ref=pb.ObjectRef(id=results[5].meta.id)),
                       timeout=CALL_TIMEOUT)
        assert got.meta.name == items[5].spec.name and got.data == b"x"
