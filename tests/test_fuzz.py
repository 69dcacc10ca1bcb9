"""Fuzzing every RPC of one live server: whatever arrives, only the contract's statuses return.

Hypothesis generates requests for every StoreService method: well-formed messages with
random field values (IDs, names with NUL, huge and non-ASCII names, unknown enum numbers,
shapes, dtypes, sizes, offsets, lease IDs, sequences, page tokens), raw random bytes in
place of the serialized request, hand-encoded chunk streams, forged shared-memory handles
(a model of sessions, creates and leases predicts the exact status of each Seal, Abort and
Release), and random frames and bytes on the local lane. A refusal must be one of the
statuses the contract names, never UNKNOWN or INTERNAL; after each test the server is up,
logged no traceback, and still returns an object stored before any fuzzing byte for byte.
The last test deletes what fuzzing stored and checks that the arena is back at its
baseline, no pin, session or subscriber is left, and /dev/shm holds no segment beyond
those Info reports.

One server serves the whole module (restarting it per example would cost seconds each).
Hypothesis runs derandomized with no example database, so every run tries the same inputs.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from test_lane import HEADER, RawLane

from improv_store import chunks as chunk_codec
from improv_store.protocol import INLINE_LIMIT, LANE_CALLS, ONE_WAY, read_lane_error
from improv_store.service.arena import SHM_DIR
from improv_store.service.locality import LOCK_SUFFIX, TOKEN_SUFFIX, store_prefix
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

if TYPE_CHECKING:
    from conftest import ServerProcess

Code = grpc.StatusCode
MiB = 1 << 20
CALL_TIMEOUT = 30.0
# Calls that may wait (Get, GetStream, BatchGet with a wait; Subscribe) are cut off after
# this long; DEADLINE_EXCEEDED is then an allowed answer, and no other call may get it.
WAIT_BOUND = 0.5
SUBSCRIBE_BOUND = 0.2
SETTLE_TIMEOUT = 30.0
SERVER_FLAGS = ("--memory", "256M", "--max-object-size", "16M", "--event-retention", "200")

SERVICE = pb.DESCRIPTOR.services_by_name["StoreService"]
METHODS = {method.name: method for method in SERVICE.methods}

# Every refusal the contract names for bad input (PERMISSION_DENIED: a lease or create of
# another session; DATA_LOSS: a payload that does not match the crc32c the writer gave).
REFUSALS = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.ALREADY_EXISTS,
        Code.RESOURCE_EXHAUSTED,
        Code.FAILED_PRECONDITION,
        Code.OUT_OF_RANGE,
        Code.PERMISSION_DENIED,
        Code.DATA_LOSS,
    }
)

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Objects the generators refer to by ID and name (they may delete them: that is fine).
KNOWN = {
    "fz-known-small": (bytes([0xA1]) * 20, os.urandom(100)),
    "fz-known-large": (bytes([0xA2]) * 20, os.urandom(64 << 10)),  # shared memory under AUTO
}
NEIGHBOUR = b"stored before any fuzzing; never a target" * 100
OPEN_SESSION = "\x01open-session"  # replaced by the ID of the module's open session


# -- strategies ----------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
enums = st.one_of(st.integers(0, 5), st.integers(-(2**31), 2**31 - 1))
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
ids = st.one_of(
    st.sampled_from([object_id for object_id, _ in KNOWN.values()]),
    st.binary(min_size=20, max_size=20),
    st.binary(max_size=41),
)
names = st.one_of(
    st.sampled_from(list(KNOWN)),
    texts,
    st.tuples(texts, texts).map("\x00".join),
    st.integers(250, 300).map(lambda n: "é" * n),  # over 256 UTF-8 bytes from 129 on
    st.integers(4000, 70_000).map(lambda n: "n" * n),
)
dtypes = st.one_of(
    st.sampled_from(
        [
            "<f8",
            "<u2",
            "|u1",
            "|b1",
            "<c16",
            "<M8[ns]",
            "|S16",
            "<U0",
            "|V0",
            "O",
            "<f3",
            "float64",
            "",
            ">i8",
            "<m8[99999999999999999999s]",
            "|S99999999999",
        ]
    ),
    texts,
)
layouts = st.builds(
    pb.ArrayLayout,
    dtype=dtypes,
    shape=st.lists(st.one_of(st.integers(0, 8), u64), max_size=40),
    order=enums,
)
labels = st.one_of(
    st.dictionaries(texts, texts, max_size=3),
    st.integers(1000, 1100).map(lambda n: {"k": "v" * n}),
    st.integers(60, 70).map(lambda n: {str(i): "" for i in range(n)}),
)
specs = st.builds(
    pb.ObjectSpec,
    id=st.one_of(st.just(b""), ids),
    name=names,
    encoding=enums,
    array=st.none() | layouts,
    crc32c=st.none() | u32,
    labels=labels,
)
payloads = st.one_of(
    st.binary(max_size=4096), st.sampled_from([INLINE_LIMIT, INLINE_LIMIT + 1]).map(bytes)
)


@st.composite
def sound_puts(draw: st.DrawFn) -> tuple[pb.ObjectSpec, bytes]:
    """A spec and payload the server should accept: raw bytes, or a byte array of them."""
    data = draw(st.binary(max_size=2048))
    name = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20))
    if draw(st.booleans()):
        layout = pb.ArrayLayout(dtype="|u1", shape=[len(data)], order=pb.ARRAY_ORDER_C)
        return pb.ObjectSpec(name=name, encoding=pb.ENCODING_NDARRAY, array=layout), data
    return pb.ObjectSpec(name=name, encoding=pb.ENCODING_RAW), data


put_requests = st.one_of(
    st.builds(pb.PutRequest, spec=specs, data=payloads),
    sound_puts().map(lambda put: pb.PutRequest(spec=put[0], data=put[1])),
)
session_ids = st.one_of(
    st.just(OPEN_SESSION), st.just(""), texts, st.binary(min_size=16, max_size=16).map(bytes.hex)
)
durations = st.one_of(
    st.none(),
    st.builds(Duration, seconds=st.just(0), nanos=st.integers(0, 50_000_000)),
    st.builds(Duration, seconds=st.integers(-5, -1)),
    st.builds(
        Duration, seconds=st.integers(-(2**63), 2**63 - 1), nanos=st.integers(-(2**31), 2**31 - 1)
    ),
)
refs = st.one_of(
    st.builds(pb.ObjectRef, id=ids), st.builds(pb.ObjectRef, name=names), st.just(pb.ObjectRef())
)
handles = st.builds(
    pb.ShmHandle,
    segment=st.one_of(texts, st.sampled_from(["../../etc/passwd", "improvstore-", "/dev/zero"])),
    offset=st.one_of(st.integers(0, 1 << 20), u64),
    length=st.one_of(st.integers(0, 1 << 20), u64),
    lease_id=st.one_of(st.integers(0, 64), u64),
)
lease_ids = st.lists(st.one_of(st.integers(0, 64), u64), max_size=6)

# One strategy per RPC for its (first) request message.
REQUESTS: dict[str, st.SearchStrategy[Message]] = {
    "Put": put_requests,
    "Replace": put_requests.map(lambda put: pb.ReplaceRequest(spec=put.spec, data=put.data)),
    "BatchPut": st.one_of(
        st.builds(
            pb.BatchPutRequest,
            items=st.lists(put_requests.filter(lambda put: len(put.data) <= 4096), max_size=8),
        ),
        st.integers(1020, 1030).map(lambda n: pb.BatchPutRequest(items=[pb.PutRequest()] * n)),
    ),
    "Get": st.builds(
        pb.GetRequest,
        ref=refs,
        wait=durations,
        metadata_only=st.booleans(),
        transfer=enums,
        session_id=session_ids,
    ),
    "GetStream": st.builds(
        pb.GetStreamRequest,
        ref=refs,
        wait=durations,
        chunk_size=st.one_of(st.just(0), st.integers(4096, 2**32 - 1)),
    ),
    "BatchGet": st.one_of(
        st.builds(
            pb.BatchGetRequest,
            refs=st.lists(refs, max_size=8),
            wait=durations,
            transfer=enums,
            session_id=session_ids,
        ),
        st.integers(1020, 1030).map(
            lambda n: pb.BatchGetRequest(refs=[pb.ObjectRef(name="fz-none")] * n)
        ),
    ),
    "Delete": st.builds(pb.DeleteRequest, ref=refs),
    # Under a prefix of its own, so the neighbour objects the checks read stay.
    "DeleteMatching": st.one_of(
        st.just(pb.DeleteMatchingRequest()),
        st.builds(
            pb.DeleteMatchingRequest,
            prefix=names.map(lambda name: "fz-del/" + name),
            before_sequence=st.one_of(st.just(0), st.integers(0, 300), u64),
            created_before=st.none() | st.builds(
                Timestamp, seconds=st.integers(-(2**40), 2**40),
                nanos=st.integers(-(2**31), 2**31 - 1),
            ),
            all=st.booleans(),
        ),
    ),
    "List": st.builds(
        pb.ListRequest,
        prefix=names,
        page_size=u32,
        page_token=st.one_of(texts, u64.map(str), st.integers().map(str)),
    ),
    "Info": st.just(pb.InfoRequest()),
    "Promote": st.just(pb.PromoteRequest()),  # a primary: FAILED_PRECONDITION
    "Create": st.builds(
        pb.CreateRequest,
        session_id=session_ids,
        spec=specs,
        size=st.one_of(st.integers(0, 100_000), u64),
        replace=st.booleans(),
    ),
    "Seal": st.builds(
        pb.SealRequest, session_id=session_ids, handle=handles, keep_lease=st.booleans()
    ),
    "Abort": st.builds(pb.AbortRequest, session_id=session_ids, handle=handles),
    "Release": st.builds(pb.ReleaseRequest, session_id=session_ids, lease_ids=lease_ids),
    "Subscribe": st.builds(
        pb.SubscribeRequest,
        prefix=names,
        since_sequence=st.none() | st.integers(0, 300) | u64,
        transfer=enums,
        session_id=session_ids,
        batch_size=st.one_of(st.just(0), st.integers(0, 2000), u32),
        payload_limit=st.one_of(st.just(0), st.integers(0, 1 << 20), u32),
    ),
    "Session": st.builds(pb.SessionRequest, release_lease_ids=lease_ids),
    "PutStream": st.builds(
        pb.PutStreamRequest,
        header=st.builds(
            pb.PutStreamHeader,
            spec=specs,
            size=st.one_of(st.integers(0, 4096), u64),
            replace=st.booleans(),
        ),
    ),
}
UNARY = sorted(
    name for name, m in METHODS.items() if not m.client_streaming and not m.server_streaming
)


def test_every_rpc_is_fuzzed() -> None:
    """A new RPC in store.proto needs a request strategy here before this module passes."""
    assert set(REQUESTS) == set(METHODS)


# -- the server, its session, and calls ----------------------------------------------------


class FuzzSession:
    """A raw Session stream that can send release messages; closing it ends the session."""

    def __init__(self, stub: store_pb2_grpc.StoreServiceStub) -> None:
        self._outbox: list[pb.SessionRequest | None] = []
        self._ready = threading.Condition()
        self.call = stub.Session(self._requests())
        self.session_id: str = next(self.call).session_id

    def _requests(self) -> Iterator[pb.SessionRequest]:
        while True:
            with self._ready:
                while not self._outbox:
                    self._ready.wait()
                message = self._outbox.pop(0)
            if message is None:
                return
            yield message

    def close(self) -> None:
        """Half-close the stream: the server ends the session and drops what it held."""
        with self._ready:
            self._outbox.append(None)
            self._ready.notify()
        for _ in self.call:
            pass


@dataclass
class Target:
    """The module's server, a raw stub on it, its open session, and the neighbour object."""

    server: ServerProcess
    channel: grpc.Channel
    stub: store_pb2_grpc.StoreServiceStub
    session: FuzzSession
    neighbour: pb.ObjectMeta
    baseline: pb.InfoResponse
    raw: dict[str, Any] = field(default_factory=dict)

    def info(self) -> pb.InfoResponse:
        return self.stub.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT)


def raw_callables(channel: grpc.Channel) -> dict[str, Any]:
    """Every RPC as a callable taking and returning serialized bytes (no protobuf)."""
    kinds = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    return {
        name: kinds[method.client_streaming, method.server_streaming](
            f"/{SERVICE.full_name}/{name}", request_serializer=None, response_deserializer=None
        )
        for name, method in METHODS.items()
    }


@pytest.fixture(scope="module")
def target(start_module_server: Callable[..., ServerProcess]) -> Iterator[Target]:
    server = start_module_server(*SERVER_FLAGS)
    options = [
        ("grpc.max_send_message_length", 64 * MiB),
        ("grpc.max_receive_message_length", 64 * MiB),
    ]
    with grpc.insecure_channel(server.unix_address, options=options) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        neighbour = stub.Put(
            pb.PutRequest(spec=pb.ObjectSpec(name="neighbour"), data=NEIGHBOUR),
            timeout=CALL_TIMEOUT,
        ).meta
        baseline = stub.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT)
        for name, (object_id, data) in KNOWN.items():
            spec = pb.ObjectSpec(id=object_id, name=name)
            stub.Put(pb.PutRequest(spec=spec, data=data), timeout=CALL_TIMEOUT)
        session = FuzzSession(stub)
        yield Target(server, channel, stub, session, neighbour, baseline, raw_callables(channel))
        session.call.cancel()


@pytest.fixture(autouse=True)
def stays_healthy(target: Target) -> Iterator[None]:
    """After every test: the server runs, logged no traceback meanwhile, and the neighbour
    is intact."""
    server = target.server
    logged_before = len(server.log())
    yield
    assert server.process.poll() is None, f"the server died:\n{server.log()[-4000:]}"
    target.info()
    neighbour = pb.GetRequest(ref=pb.ObjectRef(id=target.neighbour.id))
    assert target.stub.Get(neighbour, timeout=CALL_TIMEOUT).data == NEIGHBOUR
    log = server.log()[logged_before:]
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]


@dataclass
class Outcome:
    """How a call ended, and the responses it produced before that."""

    code: grpc.StatusCode
    details: str
    responses: list[Any]


def outcome(call: Callable[[], Any]) -> Outcome:
    """Run a call, consuming it if it streams, and record how it ended."""
    responses: list[Any] = []
    try:
        result = call()
        if isinstance(result, Iterator):
            for response in result:
                responses.append(response)
        else:
            responses.append(result)
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "", responses)
    return Outcome(Code.OK, "", responses)


def assert_allowed(method: str, result: Outcome, request: Any, may_wait: bool = False) -> None:
    """OK, or a refusal the contract names (DEADLINE_EXCEEDED only for bounded waits)."""
    allowed = REFUSALS | ({Code.DEADLINE_EXCEEDED} if may_wait else set())
    if result.code != Code.OK and result.code not in allowed:
        shown = repr(request)
        raise AssertionError(
            f"{method} answered {result.code.name} ({result.details}) to {shown[:600]}"
        )


def waits(request: Message) -> bool:
    """Whether the request asks the server to wait (it may then run into our bound)."""
    return "wait" in request.DESCRIPTOR.fields_by_name and request.HasField("wait")


def with_open_session(request: Message, session_id: str) -> Message:
    """Point the placeholder session ID at a real open session."""
    if getattr(request, "session_id", None) == OPEN_SESSION:
        request.session_id = session_id
    return request


def release_all(target: Target, leases: list[int]) -> None:
    """Give back leases the fuzzing took on the open session, so they do not pile up."""
    if leases:
        request = pb.ReleaseRequest(session_id=target.session.session_id, lease_ids=leases)
        assert target.stub.Release(request, timeout=CALL_TIMEOUT).released == len(leases)


def leases_in(method: str, responses: list[Any]) -> list[int]:
    """Lease IDs of the shared-memory handles in structured responses."""
    found: list[int] = []
    for response in responses:
        if method == "BatchGet":
            found += [r.handle.lease_id for r in response.results if r.HasField("handle")]
        elif method in ("Get", "Subscribe") and response.HasField("handle"):
            found.append(response.handle.lease_id)
    return found


def undo(target: Target, method: str, request: Message, result: Outcome) -> None:
    """Abort what an accepted Create reserved, release what an accepted read leased."""
    if result.code != Code.OK and method != "Subscribe":
        return
    if method == "Create":
        (response,) = result.responses
        abort = pb.AbortRequest(session_id=request.session_id, handle=response.handle)
        target.stub.Abort(abort, timeout=CALL_TIMEOUT)
    elif getattr(request, "session_id", None) == target.session.session_id:
        release_all(target, leases_in(method, result.responses))


# -- well-formed messages with random values -----------------------------------------------


@pytest.mark.parametrize("method", UNARY)
@FUZZ
@given(data=st.data())
def test_unary_requests_with_random_fields(
    target: Target, method: str, data: st.DataObject
) -> None:
    """Every unary RPC answers OK or a named refusal, whatever its fields hold."""
    request = with_open_session(data.draw(REQUESTS[method]), target.session.session_id)
    timeout = WAIT_BOUND if waits(request) else CALL_TIMEOUT
    result = outcome(lambda: getattr(target.stub, method)(request, timeout=timeout))
    assert_allowed(method, result, request, may_wait=waits(request))
    undo(target, method, request, result)


@FUZZ
@given(request=REQUESTS["GetStream"])
def test_get_stream_with_random_fields(target: Target, request: pb.GetStreamRequest) -> None:
    """GetStream answers with its metadata and chunks adding up to the size, or a refusal."""
    timeout = WAIT_BOUND if waits(request) else CALL_TIMEOUT
    result = outcome(lambda: target.raw["GetStream"](request.SerializeToString(), timeout=timeout))
    assert_allowed("GetStream", result, request, may_wait=waits(request))
    if result.code == Code.OK:
        meta = pb.GetStreamResponse.FromString(result.responses[0]).meta
        assert sum(len(chunk_codec.decode_chunk(raw)) for raw in result.responses[1:]) == meta.size


@settings(FUZZ, max_examples=30)
@given(request=REQUESTS["Subscribe"])
def test_subscribe_with_random_fields(target: Target, request: pb.SubscribeRequest) -> None:
    """Subscribe streams events in sequence order, or refuses; we stop it after a moment."""
    request = with_open_session(request, target.session.session_id)
    result = outcome(lambda: target.stub.Subscribe(request, timeout=SUBSCRIBE_BOUND))
    assert_allowed("Subscribe", result, request, may_wait=True)
    sequences = [response.event.sequence for response in result.responses]
    assert sequences == sorted(sequences)
    undo(target, "Subscribe", request, result)


@FUZZ
@given(messages=st.lists(REQUESTS["Session"], max_size=5))
def test_session_with_random_releases(target: Target, messages: list[pb.SessionRequest]) -> None:
    """A Session stream opens with its ID; releases of leases it never held are ignored,
    and the session ends cleanly when the client half-closes."""
    result = outcome(lambda: target.stub.Session(iter(messages), timeout=CALL_TIMEOUT))
    assert result.code == Code.OK, f"{result.code.name}: {result.details}"
    assert result.responses[0].session_id


# -- raw bytes in place of every request ---------------------------------------------------


raw_messages = st.one_of(
    st.binary(max_size=512),
    st.binary(min_size=1, max_size=8).map(lambda prefix: prefix + b"\xff" * 64),
)


@pytest.mark.parametrize("method", sorted(METHODS))
@FUZZ
@given(data=st.data())
def test_random_bytes_as_the_request(target: Target, method: str, data: st.DataObject) -> None:
    """Bytes that may not even parse, sent as any RPC's request: OK or a named refusal."""
    descriptor = METHODS[method]
    if descriptor.client_streaming:
        request: Any = data.draw(st.lists(raw_messages, max_size=5))
        call = lambda: target.raw[method](iter(request), timeout=WAIT_BOUND)  # noqa: E731
    else:
        request = data.draw(raw_messages)
        call = lambda: target.raw[method](request, timeout=WAIT_BOUND)  # noqa: E731
    result = outcome(call)
    # Random bytes may decode to a wait (Get, GetStream, BatchGet) or to a live Subscribe.
    may_wait = method in ("Get", "GetStream", "BatchGet", "Subscribe")
    assert_allowed(method, result, request, may_wait=may_wait)


# -- chunk streams, encoded by hand --------------------------------------------------------


def bad_length_chunk(data: bytes) -> bytes:
    """A chunk whose length prefix promises one byte more than follows."""
    return b"\x12" + chunk_codec._varint(len(data) + 1) + data


CORRUPTIONS: dict[str, Callable[[list[bytes], bytes], list[bytes]]] = {
    "truncated": lambda messages, data: messages[:-1],
    "extra chunk": lambda messages, data: [*messages, chunk_codec.encode_chunk([b"x"])],
    "bad length": lambda messages, data: [*messages[:-1], bad_length_chunk(data[-1:])],
    "overlong varint": lambda messages, data: [*messages, b"\x12" + b"\xff" * 10 + b"\x01x"],
    "second header": lambda messages, data: [*messages[:1], *messages],
    "no header": lambda messages, data: messages[1:],
    "random bytes": lambda messages, data: [*messages, b"\x08\xff\xff\xff\xff\xff\xff"],
}


@FUZZ
@given(
    data=st.binary(min_size=1, max_size=20_000),
    cuts=st.lists(st.integers(0, 20_000), max_size=6),
    empty_chunks=st.booleans(),
    corruption=st.none() | st.sampled_from(sorted(CORRUPTIONS)),
    chunk_size=st.integers(64, 1 << 16),
)
def test_put_stream_chunk_encodings(
    target: Target,
    data: bytes,
    cuts: list[int],
    empty_chunks: bool,
    corruption: str | None,
    chunk_size: int,
) -> None:
    """A PutStream of hand-encoded chunks stores exactly their bytes (read back through
    GetStream's hand-encoded chunks); any broken chunk stream is INVALID_ARGUMENT."""
    bounds = sorted({0, len(data), *(cut % len(data) for cut in cuts)})
    pieces = [data[start:end] for start, end in itertools.pairwise(bounds)]
    if empty_chunks:
        pieces.insert(len(pieces) // 2, b"")
    header = pb.PutStreamHeader(spec=pb.ObjectSpec(name="fz-stream"), size=len(data))
    messages = [pb.PutStreamRequest(header=header).SerializeToString()]
    messages += [chunk_codec.encode_chunk([piece]) for piece in pieces]
    if corruption is not None:
        messages = CORRUPTIONS[corruption](messages, data)
    result = outcome(lambda: target.raw["PutStream"](iter(messages), timeout=CALL_TIMEOUT))
    if corruption is not None:
        assert result.code == Code.INVALID_ARGUMENT, (corruption, result)
        return
    assert result.code == Code.OK, result
    meta = pb.PutStreamResponse.FromString(result.responses[0]).meta
    request = pb.GetStreamRequest(ref=pb.ObjectRef(id=meta.id), chunk_size=chunk_size)
    streamed = list(target.raw["GetStream"](request.SerializeToString(), timeout=CALL_TIMEOUT))
    assert pb.GetStreamResponse.FromString(streamed[0]).meta == meta
    chunks = [chunk_codec.decode_chunk(raw) for raw in streamed[1:]]
    assert all(chunk is not None and len(chunk) <= chunk_size for chunk in chunks)
    assert b"".join(bytes(chunk) for chunk in chunks) == data
    target.stub.Delete(pb.DeleteRequest(ref=pb.ObjectRef(id=meta.id)), timeout=CALL_TIMEOUT)


@FUZZ
@given(request=REQUESTS["PutStream"], chunks=st.lists(st.binary(max_size=512), max_size=4))
def test_put_stream_with_random_headers(
    target: Target, request: pb.PutStreamRequest, chunks: list[bytes]
) -> None:
    """A random header followed by random chunks: OK only when they fit, else a refusal."""
    messages = [request.SerializeToString(), *(chunk_codec.encode_chunk([c]) for c in chunks)]
    result = outcome(lambda: target.raw["PutStream"](iter(messages), timeout=CALL_TIMEOUT))
    assert_allowed("PutStream", result, request)
    if result.code == Code.OK:
        assert pb.PutStreamResponse.FromString(result.responses[0]).meta.size == sum(
            len(c) for c in chunks
        )


# -- forged shared-memory handles ----------------------------------------------------------


@dataclass
class Pending:
    """A create the model knows of."""

    owner: str
    handle: pb.ShmHandle
    open: bool = True


class HandleMachine(RuleBasedStateMachine):
    """Creates, seals, aborts, gets and releases across two sessions, with forged handles,
    foreign sessions, closed sessions and IDs never issued; a model predicts each status."""

    creates = Bundle("creates")
    leases = Bundle("leases")

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.stub = target.stub
        self.server = target.server
        self.sessions = [FuzzSession(self.stub), FuzzSession(self.stub)]
        self.closed: list[str] = []
        self.pending: dict[int, Pending] = {}
        self.held: dict[int, str] = {}  # lease -> owning session, while held
        # Not named like the creates, which may replace every object of their name.
        put = pb.PutRequest(spec=pb.ObjectSpec(name="fz-leased"), data=b"leased" * 100)
        self.object_id = self.stub.Put(put, timeout=CALL_TIMEOUT).meta.id

    # The session a request names: 0 and 1 are open, 2 closed (if any), 3 never existed.
    def session_id(self, who: int) -> str:
        if who < 2:
            return self.sessions[who].session_id
        if who == 2 and self.closed:
            return self.closed[-1]
        return "f" * 32

    def is_open(self, session_id: str) -> bool:
        return any(s.session_id == session_id for s in self.sessions)

    def call(self, method: str, request: Message) -> Outcome:
        return outcome(lambda: getattr(self.stub, method)(request, timeout=CALL_TIMEOUT))

    def expect_take(self, session_id: str, handle: pb.ShmHandle) -> grpc.StatusCode:
        """What Seal or Abort of ``handle`` by ``session_id`` must answer."""
        if not self.is_open(session_id):
            return Code.FAILED_PRECONDITION
        pending = self.pending.get(handle.lease_id)
        if pending is None or not pending.open:
            return Code.NOT_FOUND
        if pending.owner != session_id:
            return Code.PERMISSION_DENIED
        return Code.OK if handle == pending.handle else Code.INVALID_ARGUMENT

    def forge(self, handle: pb.ShmHandle, forgery: tuple[str, int]) -> pb.ShmHandle:
        """A copy of ``handle`` with one field changed (or none)."""
        what, value = forgery
        forged = pb.ShmHandle()
        forged.CopyFrom(handle)
        if what == "lease_id":  # another ID this run issued, or one never issued
            issued = sorted({*self.pending, *self.held})
            forged.lease_id = issued[value % len(issued)] if value % 3 else 2**62 + value % 999
        elif what == "segment":
            forged.segment = ("../" * (value % 4)) + handle.segment + ("x" * (value % 2))
        elif what in ("offset", "length"):
            setattr(forged, what, value)
        return forged

    # Mostly the two open sessions; sometimes a closed one (2) or one never opened (3).
    whos = st.sampled_from([0, 0, 0, 1, 1, 1, 2, 3])
    forgeries = st.tuples(
        st.sampled_from(["none"] * 4 + ["lease_id", "segment", "offset", "length"]), u64
    )

    @rule(
        target=creates, who=st.integers(0, 1), size=st.integers(0, 100_000), replace=st.booleans()
    )
    def create(self, who: int, size: int, replace: bool) -> int:
        session_id = self.session_id(who)
        spec = pb.ObjectSpec(name="fz-handles")
        request = pb.CreateRequest(session_id=session_id, spec=spec, size=size, replace=replace)
        result = self.call("Create", request)
        assert result.code == Code.OK, result
        handle = result.responses[0].handle
        assert handle.length == size
        self.pending[handle.lease_id] = Pending(session_id, handle)
        return handle.lease_id

    @rule(create=creates, who=whos, forgery=forgeries, keep=st.booleans())
    def seal(self, create: int, who: int, forgery: tuple[str, int], keep: bool) -> None:
        session_id = self.session_id(who)
        handle = self.forge(self.pending[create].handle, forgery)
        expected = self.expect_take(session_id, handle)
        request = pb.SealRequest(session_id=session_id, handle=handle, keep_lease=keep)
        result = self.call("Seal", request)
        assert result.code == expected, (expected, result, request)
        if expected == Code.OK:
            self.pending[handle.lease_id].open = False
            sealed = result.responses[0]
            assert sealed.HasField("handle") == keep
            if keep:
                self.held[sealed.handle.lease_id] = session_id

    @rule(create=creates, who=whos, forgery=forgeries)
    def abort(self, create: int, who: int, forgery: tuple[str, int]) -> None:
        session_id = self.session_id(who)
        handle = self.forge(self.pending[create].handle, forgery)
        expected = self.expect_take(session_id, handle)
        result = self.call("Abort", pb.AbortRequest(session_id=session_id, handle=handle))
        assert result.code == expected, (expected, result, handle)
        if expected == Code.OK:
            self.pending[handle.lease_id].open = False

    @rule(
        target=leases,
        who=whos,
        transfer=st.sampled_from([pb.TRANSFER_SHM, pb.TRANSFER_AUTO]),
    )
    def lease(self, who: int, transfer: int) -> int:
        session_id = self.session_id(who)
        request = pb.GetRequest(
            ref=pb.ObjectRef(id=self.object_id), transfer=transfer, session_id=session_id
        )
        result = self.call("Get", request)
        if not self.is_open(session_id):
            assert result.code == Code.FAILED_PRECONDITION, result
            return 2**62 + who  # never issued: Release must say NOT_FOUND
        assert result.code == Code.OK, result
        response = result.responses[0]
        if transfer == pb.TRANSFER_AUTO:  # 600 bytes: below shm_min_size, so inline
            assert not response.HasField("handle") and response.data == b"leased" * 100
            return 2**62 + 10
        self.held[response.handle.lease_id] = session_id
        return response.handle.lease_id

    @rule(who=whos, ids=st.lists(st.one_of(leases, u64), max_size=4), twice=st.booleans())
    def release(self, who: int, ids: list[int], twice: bool) -> None:
        session_id = self.session_id(who)
        if twice:  # the same lease twice in one request
            ids = [*ids, *ids[:1]]
        result = self.call("Release", pb.ReleaseRequest(session_id=session_id, lease_ids=ids))
        expected, released = self.expect_release(session_id, ids)
        assert result.code == expected, (expected, result, ids)
        if expected == Code.OK:
            assert result.responses[0].released == released
            for lease_id in ids:
                self.held.pop(lease_id, None)

    def expect_release(self, session_id: str, ids: list[int]) -> tuple[grpc.StatusCode, int]:
        """What Release must answer, and how many leases it releases: each distinct ID once,
        all or nothing."""
        if not self.is_open(session_id):
            return Code.FAILED_PRECONDITION, 0
        for lease_id in ids:
            owner = self.held.get(lease_id)
            if owner != session_id:
                return (Code.PERMISSION_DENIED if owner else Code.NOT_FOUND), 0
        return Code.OK, len(set(ids))

    @rule(who=st.integers(0, 1))
    def reopen(self, who: int) -> None:
        """End a session: its creates and leases are gone; its ID is now refused."""
        old = self.sessions[who]
        old.close()
        self.closed.append(old.session_id)
        for pending in self.pending.values():
            if pending.owner == old.session_id:
                pending.open = False
        self.held = {k: v for k, v in self.held.items() if v != old.session_id}
        self.sessions[who] = FuzzSession(self.stub)

    @invariant()
    def server_runs(self) -> None:
        assert self.server.process.poll() is None

    def teardown(self) -> None:
        for session in self.sessions:
            session.close()


def test_forged_handles_get_the_status_the_model_predicts(target: Target) -> None:
    """Seal, Abort and Release with handles never issued, already used, used twice,
    tampered with, or from another or a closed session: each gets exactly its status."""
    run_state_machine_as_test(
        lambda: HandleMachine(target),
        settings=settings(FUZZ, max_examples=50, stateful_step_count=25),
    )


# -- the local lane ------------------------------------------------------------------------

# The lane's unary methods, by number: every LaneMethod but the connection's first
# (Open) and last (Subscribe), which are no unary call.
LANE_REQUESTS = {
    method: call.rpc for method, call in LANE_CALLS.items()
    if method not in (pb.LANE_METHOD_OPEN, pb.LANE_METHOD_SUBSCRIBE)
}


@st.composite
def lane_frames(draw: st.DrawFn) -> tuple[int, bool, Message | bytes]:
    """(method, one_way, request): a lane method or any byte; a message or random bytes.

    Not LANE_METHOD_SUBSCRIBE, which makes the connection a subscription that answers
    only with events (test_lane.py and test_subscribe.py send it bad requests).
    """
    any_byte = st.integers(0, 0x7F).filter(lambda method: method != pb.LANE_METHOD_SUBSCRIBE)
    method = draw(st.one_of(st.sampled_from(sorted(LANE_REQUESTS)), any_byte))
    name = LANE_REQUESTS.get(method)
    if name is not None and draw(st.booleans()):
        request: Message | bytes = draw(REQUESTS[name])
    else:
        request = draw(raw_messages)
    return method, draw(st.booleans()), request


def lane_body(method: int, request: Message | bytes, session_id: str) -> bytes:
    """The frame body: the placeholder session made this connection's, and any wait removed
    (a lane call has no deadline to bound a wait)."""
    name = LANE_REQUESTS.get(method)
    if isinstance(request, bytes):
        if name not in ("Get", "BatchGet"):
            return request
        try:
            request = getattr(pb, METHODS[name].input_type.name).FromString(request)
        except DecodeError:
            return request
    request = with_open_session(request, session_id)
    if waits(request):
        request.ClearField("wait")
    return request.SerializeToString()


@FUZZ
@given(
    frames=st.lists(lane_frames(), max_size=4),
    ending=st.sampled_from(["close", "empty frame", "huge frame", "short body", "garbage"]),
    garbage=st.binary(min_size=1, max_size=64),
)
def test_lane_frames_and_bytes(
    target: Target, frames: list[tuple[int, bool, Message | bytes]], ending: str, garbage: bytes
) -> None:
    """Random lane frames get OK, a named refusal or UNIMPLEMENTED (unknown method); a frame
    the lane cannot take, or bytes that are no frame, end only that connection."""
    lane = RawLane(target.server.socket_path + ".lane")
    try:
        for method, one_way, request in frames:
            body = lane_body(method, request, lane.session_id)
            flags = ONE_WAY if one_way else 0
            lane.socket.sendall(HEADER.pack(len(body) + 1, method | flags) + body)
            if not one_way:
                status, reply = lane.read()
                if status != Code.UNIMPLEMENTED or method in LANE_REQUESTS:
                    details = "" if status == Code.OK else read_lane_error(reply).message
                    assert_allowed(f"lane method {method}", Outcome(status, details, []), request)
        if ending in ("empty frame", "huge frame"):
            length = 0 if ending == "empty frame" else (1 << 30)
            lane.socket.sendall(HEADER.pack(length, pb.LANE_METHOD_PUT))
            assert lane.read()[0] == Code.RESOURCE_EXHAUSTED
            assert lane.hung_up()
        elif ending == "short body":
            lane.socket.sendall(HEADER.pack(100, pb.LANE_METHOD_PUT) + garbage[:50])
        elif ending == "garbage":
            lane.socket.sendall(garbage)
    finally:
        lane.socket.close()


# -- afterwards ----------------------------------------------------------------------------


def settle(target: Target, done: Callable[[pb.InfoResponse], bool], what: str) -> pb.InfoResponse:
    """Poll Info until ``done`` holds; fail showing the last Info after SETTLE_TIMEOUT."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        info = target.info()
        if done(info):
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {SETTLE_TIMEOUT} s; last Info:\n{info}")
        time.sleep(0.05)


def all_ids(stub: store_pb2_grpc.StoreServiceStub) -> list[bytes]:
    found: list[bytes] = []
    token = ""
    while True:
        page = stub.List(pb.ListRequest(page_size=1000, page_token=token), timeout=CALL_TIMEOUT)
        found += [meta.id for meta in page.objects]
        token = page.next_page_token
        if not token:
            return found


def test_after_fuzzing_usage_returns_to_baseline(target: Target) -> None:
    """Run last: once fuzz-made objects are deleted and the open session is closed, the
    arena is back at its baseline, nothing is pinned, no session or subscriber is left, and
    /dev/shm holds only the segments Info reports (plus the store's token, lock and object
    index)."""
    target.session.close()
    for object_id in all_ids(target.stub):
        if object_id != target.neighbour.id:
            target.stub.Delete(
                pb.DeleteRequest(ref=pb.ObjectRef(id=object_id)), timeout=CALL_TIMEOUT
            )
    baseline = target.baseline.arena

    def back(info: pb.InfoResponse) -> bool:
        arena = info.arena
        return (
            (arena.used, arena.pinned, arena.sessions) == (baseline.used, 0, 0)
            and info.subscriber_count == 0
            and info.object_count == 1
        )

    info = settle(target, back, "the baseline arena usage")
    prefix = store_prefix(target.server.data_dir)
    files = {name for name in os.listdir(SHM_DIR) if name.startswith(prefix)}
    segments = files - {prefix + TOKEN_SUFFIX, prefix + LOCK_SUFFIX, info.object_index.name}
    assert len(segments) == info.arena.segments, (sorted(segments), info.arena)
    assert sum(os.path.getsize(os.path.join(SHM_DIR, name)) for name in segments) <= (
        info.arena.capacity
    )
