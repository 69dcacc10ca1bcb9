"""Malformed and hostile requests get the exact status the contract names, and nothing else.

Requests go through the raw generated stub, so that the server sees what the Python
client would never send. After every group the server must still be running, still
serve a put/get round trip, and still return the neighbour object (stored before any
bad request) byte for byte: no request, however malformed, may crash the server or
corrupt another object.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import crc32c
import grpc
import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration

from improv_store.client import (
    HistoryUnavailable,
    InvalidRequest,
    ObjectExists,
    ObjectID,
    ObjectNotFound,
    StoreError,
    StoreFull,
    WaitTimeout,
)
from improv_store.protocol import INLINE_LIMIT
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

if TYPE_CHECKING:
    from conftest import ServerProcess

Code = grpc.StatusCode
MiB = 1 << 20

CALL_TIMEOUT = 30.0
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 32 * MiB),
    ("grpc.max_receive_message_length", 32 * MiB),
]
NEIGHBOUR = np.arange(64 * 64, dtype="<u2").reshape(64, 64)


@dataclass
class Raw:
    """A live server, a raw stub on its unix socket, and the neighbour stored before any test."""

    server: ServerProcess
    stub: store_pb2_grpc.StoreServiceStub
    neighbour: pb.ObjectMeta
    neighbour_data: bytes


def open_raw(server: ServerProcess, channel: grpc.Channel) -> Raw:
    """Wrap ``channel`` in a raw stub and store the neighbour object through it."""
    stub = store_pb2_grpc.StoreServiceStub(channel)
    data = NEIGHBOUR.tobytes()
    spec = pb.ObjectSpec(
        name="neighbour",
        encoding=pb.ENCODING_NDARRAY,
        array=pb.ArrayLayout(dtype="<u2", shape=[64, 64], order=pb.ARRAY_ORDER_C),
        labels={"role": "neighbour"},
    )
    meta = stub.Put(pb.PutRequest(spec=spec, data=data), timeout=CALL_TIMEOUT).meta
    return Raw(server, stub, meta, data)


@pytest.fixture
def raw(server: ServerProcess) -> Iterator[Raw]:
    """The default server with a raw stub (32 MiB messages) and a neighbour object."""
    with grpc.insecure_channel(server.unix_address, options=CHANNEL_OPTIONS) as channel:
        yield open_raw(server, channel)


@contextlib.contextmanager
def raw_servers(start_server: Callable[..., ServerProcess]) -> Iterator[Callable[..., Raw]]:
    """``make(*flags, env=)``: start a server and return a Raw for it; channels close on exit."""
    channels: list[grpc.Channel] = []

    def make(*flags: str, env: dict[str, str] | None = None) -> Raw:
        server = start_server(*flags, env=env)
        channel = grpc.insecure_channel(server.unix_address, options=CHANNEL_OPTIONS)
        channels.append(channel)
        return open_raw(server, channel)

    try:
        yield make
    finally:
        for channel in channels:
            channel.close()


@pytest.fixture
def raw_factory(start_server: Callable[..., ServerProcess]) -> Iterator[Callable[..., Raw]]:
    """Start a server with extra flags and return a Raw for it; channels close at teardown."""
    with raw_servers(start_server) as make:
        yield make


def expect(code: grpc.StatusCode, call: Callable[[], Any]) -> grpc.RpcError:
    """Run ``call`` (consuming it when it is a stream) and check it fails with ``code``."""
    with pytest.raises(grpc.RpcError) as failure:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    error = failure.value
    assert error.code() == code, f"expected {code.name}, got {error.code().name}: {error.details()}"
    return error


def check_cases(cases: Sequence[tuple[str, grpc.StatusCode, Callable[[], Any]]]) -> None:
    """Run every labelled call and fail listing every case that did not get its status."""
    wrong: list[str] = []
    for label, code, call in cases:
        try:
            result = call()
            if isinstance(result, Iterator):
                list(result)
            got = "OK"
        except grpc.RpcError as error:
            if error.code() == code:
                continue
            got = f"{error.code().name}: {error.details()}"
        if code != Code.OK:
            wrong.append(f"{label}: expected {code.name}, got {got}")
        elif got != "OK":
            wrong.append(f"{label}: expected OK, got {got}")
    assert not wrong, "\n".join(wrong)


def stored_ids(stub: store_pb2_grpc.StoreServiceStub) -> set[bytes]:
    """Every object ID the server lists, across all pages."""
    ids: set[bytes] = set()
    token = ""
    while True:
        page = stub.List(pb.ListRequest(page_token=token, page_size=1000), timeout=CALL_TIMEOUT)
        ids.update(meta.id for meta in page.objects)
        token = page.next_page_token
        if not token:
            return ids


def assert_serving(raw: Raw) -> None:
    """The server process lives, a put/get round trip works, and the neighbour is unchanged."""
    assert raw.server.process.poll() is None, "server exited:\n" + raw.server.log()
    payload = os.urandom(1000)
    stored = raw.stub.Put(pb.PutRequest(data=payload), timeout=CALL_TIMEOUT).meta
    back = raw.stub.Get(pb.GetRequest(ref=pb.ObjectRef(id=stored.id)), timeout=CALL_TIMEOUT)
    assert back.data == payload
    raw.stub.Delete(pb.DeleteRequest(ref=pb.ObjectRef(id=stored.id)), timeout=CALL_TIMEOUT)
    neighbour = raw.stub.Get(
        pb.GetRequest(ref=pb.ObjectRef(id=raw.neighbour.id)), timeout=CALL_TIMEOUT
    )
    assert neighbour.meta == raw.neighbour
    assert neighbour.data == raw.neighbour_data
    assert neighbour.meta.crc32c == crc32c.crc32c(raw.neighbour_data)
    assert raw.server.process.poll() is None, "server exited:\n" + raw.server.log()


def ref_id(object_id: bytes) -> pb.ObjectRef:
    """A reference by ID (an empty ID still sets the oneof)."""
    ref = pb.ObjectRef()
    ref.id = object_id
    return ref


def duration(seconds: float) -> Duration:
    """A protobuf Duration of ``seconds`` (may be negative)."""
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def stream_of(*messages: pb.PutStreamRequest) -> Iterator[pb.PutStreamRequest]:
    """A PutStream request iterator sending exactly ``messages``."""
    yield from messages


def header(size: int, **spec: Any) -> pb.PutStreamRequest:
    """A PutStream header message declaring ``size`` bytes."""
    return pb.PutStreamRequest(header=pb.PutStreamHeader(spec=pb.ObjectSpec(**spec), size=size))


def chunk(data: bytes) -> pb.PutStreamRequest:
    """A PutStream chunk message."""
    return pb.PutStreamRequest(chunk=data)


def put_three_ways(
    raw: Raw, spec: pb.ObjectSpec, data: bytes
) -> list[tuple[str, Callable[[], Any]]]:
    """The same object sent by Put, Replace (named) and PutStream, as labelled calls."""
    named = pb.ObjectSpec()
    named.CopyFrom(spec)
    if not named.name:
        named.name = "replace-target"
    streamed = [header(0), *([chunk(data)] if data else [])]
    streamed[0].header.spec.CopyFrom(spec)
    streamed[0].header.size = len(data)
    stub = raw.stub
    return [
        ("Put", lambda: stub.Put(pb.PutRequest(spec=spec, data=data), timeout=CALL_TIMEOUT)),
        ("Replace", lambda: stub.Replace(pb.ReplaceRequest(spec=named, data=data),
                                         timeout=CALL_TIMEOUT)),
        ("PutStream", lambda: stub.PutStream(stream_of(*streamed), timeout=CALL_TIMEOUT)),
    ]


# -- references ------------------------------------------------------------------------


def test_malformed_ids_are_invalid_argument(raw: Raw) -> None:
    """IDs of 0, 19 and 21 bytes are INVALID_ARGUMENT wherever an ID is read."""
    stub = raw.stub
    cases: list[tuple[str, grpc.StatusCode, Callable[[], Any]]] = []
    for length in (0, 19, 21):
        bad = ref_id(b"\x01" * length)
        cases += [
            (f"Get id[{length}]", Code.INVALID_ARGUMENT,
             lambda bad=bad: stub.Get(pb.GetRequest(ref=bad), timeout=CALL_TIMEOUT)),
            (f"Get metadata_only id[{length}]", Code.INVALID_ARGUMENT,
             lambda bad=bad: stub.Get(pb.GetRequest(ref=bad, metadata_only=True),
                                      timeout=CALL_TIMEOUT)),
            (f"GetStream id[{length}]", Code.INVALID_ARGUMENT,
             lambda bad=bad: stub.GetStream(pb.GetStreamRequest(ref=bad), timeout=CALL_TIMEOUT)),
            (f"Delete id[{length}]", Code.INVALID_ARGUMENT,
             lambda bad=bad: stub.Delete(pb.DeleteRequest(ref=bad), timeout=CALL_TIMEOUT)),
        ]
    for length in (19, 21):  # an empty spec.id is valid: the server picks one
        spec = pb.ObjectSpec(id=b"\x02" * length)
        cases += [(f"{how} spec.id[{length}]", Code.INVALID_ARGUMENT, call)
                  for how, call in put_three_ways(raw, spec, b"payload")]
    before = stored_ids(stub)
    check_cases(cases)
    assert stored_ids(stub) == before

    # BatchGet reports each ref's own status: the malformed ones fail, the rest succeed.
    refs = [ref_id(raw.neighbour.id), ref_id(b""), ref_id(b"\x01" * 19),
            ref_id(b"\x01" * 21), pb.ObjectRef(name="neighbour")]
    results = stub.BatchGet(pb.BatchGetRequest(refs=refs), timeout=CALL_TIMEOUT).results
    assert [r.code for r in results] == [0, 3, 3, 3, 0]
    assert all(r.message for r in results[1:4])
    assert results[0].data == results[4].data == raw.neighbour_data

    server_chosen = stub.Put(pb.PutRequest(spec=pb.ObjectSpec(id=b""), data=b"x"),
                             timeout=CALL_TIMEOUT).meta
    assert len(server_chosen.id) == 20
    assert_serving(raw)


def test_empty_and_bad_refs_are_invalid_argument(raw: Raw) -> None:
    """A ref with neither ID nor name, an empty name, a NUL or an oversize name is refused."""
    stub = raw.stub
    bad_refs = {
        "no id, no name": pb.ObjectRef(),
        "empty name": pb.ObjectRef(name=""),
        "name with NUL": pb.ObjectRef(name="neigh\x00bour"),
        "257-byte name": pb.ObjectRef(name="n" * 257),
    }
    cases: list[tuple[str, grpc.StatusCode, Callable[[], Any]]] = []
    for label, ref in bad_refs.items():
        cases += [
            (f"Get {label}", Code.INVALID_ARGUMENT,
             lambda ref=ref: stub.Get(pb.GetRequest(ref=ref), timeout=CALL_TIMEOUT)),
            (f"GetStream {label}", Code.INVALID_ARGUMENT,
             lambda ref=ref: stub.GetStream(pb.GetStreamRequest(ref=ref), timeout=CALL_TIMEOUT)),
            (f"Delete {label}", Code.INVALID_ARGUMENT,
             lambda ref=ref: stub.Delete(pb.DeleteRequest(ref=ref), timeout=CALL_TIMEOUT)),
        ]
    cases.append(("Get without a ref", Code.INVALID_ARGUMENT,
                  lambda: stub.Get(pb.GetRequest(), timeout=CALL_TIMEOUT)))
    cases.append(("Delete without a ref", Code.INVALID_ARGUMENT,
                  lambda: stub.Delete(pb.DeleteRequest(), timeout=CALL_TIMEOUT)))
    check_cases(cases)

    refs = [*bad_refs.values(), ref_id(raw.neighbour.id)]
    results = stub.BatchGet(pb.BatchGetRequest(refs=refs), timeout=CALL_TIMEOUT).results
    assert [r.code for r in results] == [3, 3, 3, 3, 0]
    assert_serving(raw)


def test_unknown_objects_are_not_found(raw: Raw) -> None:
    """An unknown ID or name is NOT_FOUND; in BatchGet only for that item, the rest succeed."""
    stub = raw.stub
    unknown_id = ref_id(os.urandom(20))
    unknown_name = pb.ObjectRef(name="never-stored")
    cases: list[tuple[str, grpc.StatusCode, Callable[[], Any]]] = []
    for label, ref in (("id", unknown_id), ("name", unknown_name)):
        cases += [
            (f"Get unknown {label}", Code.NOT_FOUND,
             lambda ref=ref: stub.Get(pb.GetRequest(ref=ref), timeout=CALL_TIMEOUT)),
            (f"Get metadata_only unknown {label}", Code.NOT_FOUND,
             lambda ref=ref: stub.Get(pb.GetRequest(ref=ref, metadata_only=True),
                                      timeout=CALL_TIMEOUT)),
            (f"GetStream unknown {label}", Code.NOT_FOUND,
             lambda ref=ref: stub.GetStream(pb.GetStreamRequest(ref=ref), timeout=CALL_TIMEOUT)),
            (f"Delete unknown {label}", Code.NOT_FOUND,
             lambda ref=ref: stub.Delete(pb.DeleteRequest(ref=ref), timeout=CALL_TIMEOUT)),
        ]
    before = stub.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT)
    check_cases(cases)
    after = stub.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT)
    assert after.last_sequence == before.last_sequence  # a failed Delete records no change

    refs = [ref_id(raw.neighbour.id), unknown_id, unknown_name, pb.ObjectRef(name="neighbour")]
    results = stub.BatchGet(pb.BatchGetRequest(refs=refs), timeout=CALL_TIMEOUT).results
    assert [r.code for r in results] == [0, 5, 5, 0]
    assert results[1].message and results[2].message
    assert not results[1].HasField("meta") and not results[1].data
    for ok in (results[0], results[3]):
        assert ok.meta == raw.neighbour and ok.data == raw.neighbour_data
    assert_serving(raw)


def test_duplicate_id_is_already_exists_and_keeps_the_original(raw: Raw) -> None:
    """Reusing a stored ID is ALREADY_EXISTS from Put, Replace and PutStream; the first stays."""
    stub = raw.stub
    object_id = os.urandom(20)
    original = stub.Put(
        pb.PutRequest(spec=pb.ObjectSpec(id=object_id, name="first"), data=b"original"),
        timeout=CALL_TIMEOUT,
    ).meta
    spec = pb.ObjectSpec(id=object_id, name="second", labels={"x": "y"})
    before = stub.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT)
    check_cases([(f"{how} duplicate", Code.ALREADY_EXISTS, call)
                 for how, call in put_three_ways(raw, spec, b"impostor")])
    # Replacing "neighbour" with the neighbour's own ID must not delete the neighbour.
    check_cases([
        ("Put neighbour's ID", Code.ALREADY_EXISTS,
         lambda: stub.Put(pb.PutRequest(spec=pb.ObjectSpec(id=raw.neighbour.id)),
                          timeout=CALL_TIMEOUT)),
        ("Replace neighbour's name with its ID", Code.ALREADY_EXISTS,
         lambda: stub.Replace(pb.ReplaceRequest(
             spec=pb.ObjectSpec(id=raw.neighbour.id, name="neighbour"), data=b"x"),
             timeout=CALL_TIMEOUT)),
    ])
    after = stub.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT)
    assert (after.object_count, after.last_sequence) == (before.object_count, before.last_sequence)
    back = stub.Get(pb.GetRequest(ref=ref_id(object_id)), timeout=CALL_TIMEOUT)
    assert back.meta == original and back.data == b"original"
    # The refused objects were named "second": no such name exists now.
    expect(Code.NOT_FOUND, lambda: stub.Get(pb.GetRequest(ref=pb.ObjectRef(name="second")),
                                            timeout=CALL_TIMEOUT))
    assert_serving(raw)


# -- object specs ----------------------------------------------------------------------


def array_spec(dtype: str, shape: Sequence[int], order: int = pb.ARRAY_ORDER_C) -> pb.ObjectSpec:
    """An NDARRAY spec with the given layout."""
    return pb.ObjectSpec(encoding=pb.ENCODING_NDARRAY,
                         array=pb.ArrayLayout(dtype=dtype, shape=list(shape), order=order))


def test_bad_array_layouts_are_invalid_argument(raw: Raw) -> None:
    """Layouts that do not describe exactly the payload, or are not allowed, are refused.

    Each is sent by Put, Replace and PutStream; valid look-alikes are accepted, so the
    refusals are about the layout and not about something else in the request.
    """
    eight = bytes(8)
    bad: dict[str, tuple[pb.ObjectSpec, bytes]] = {
        "<f8 (3,) with 16 bytes": (array_spec("<f8", [3]), bytes(16)),
        "<f8 (2,2) with 24 bytes": (array_spec("<f8", [2, 2]), bytes(24)),
        "<u2 (0,) with 2 bytes": (array_spec("<u2", [0]), bytes(2)),
        "<f8 0-d with 4 bytes": (array_spec("<f8", []), bytes(4)),
        "shape overflowing 64 bits": (array_spec("<f8", [1 << 63, 1 << 63]), eight),
        "F order, wrong size": (array_spec("<i4", [3, 3], pb.ARRAY_ORDER_F), bytes(32)),
        "33 dims": (array_spec("|u1", [1] * 33), b"\x07"),
        "unknown order 7": (array_spec("<f8", [1], order=7), eight),
        "missing layout": (pb.ObjectSpec(encoding=pb.ENCODING_NDARRAY), eight),
        "layout on RAW": (pb.ObjectSpec(encoding=pb.ENCODING_RAW,
                                        array=pb.ArrayLayout(dtype="<f8", shape=[1])), eight),
        "layout on PICKLE": (pb.ObjectSpec(encoding=pb.ENCODING_PICKLE,
                                           array=pb.ArrayLayout(dtype="<f8", shape=[1])), eight),
        "layout on UNSPECIFIED": (pb.ObjectSpec(array=pb.ArrayLayout(dtype="<f8", shape=[1])),
                                  eight),
        "unknown encoding 42": (pb.ObjectSpec(encoding=42), eight),
        "unknown encoding -1": (pb.ObjectSpec(encoding=-1), eight),
    }
    for dtype in ("float", "<x8", "", "O", "|O8", "<O8", "|O", "f8", "<f8 ", "<f3", "<i16",
                  "<M8[foo]", "|V0", "<U0", "|S99999999999999999999", "<f8[ns]", "<<f8",
                  "=f8", "=i4"):  # native order: a reader elsewhere could not tell which
        bad[f"dtype {dtype!r}"] = (array_spec(dtype, [1]), eight)
    good: dict[str, tuple[pb.ObjectSpec, bytes]] = {
        "<f8 (3,)": (array_spec("<f8", [3]), bytes(24)),
        "<i4 (3,3) F": (array_spec("<i4", [3, 3], pb.ARRAY_ORDER_F), bytes(36)),
        "32 dims": (array_spec("|u1", [1] * 32), b"\x07"),
        "0-d": (array_spec("<f8", []), eight),
        "empty (0, 4)": (array_spec("<i2", [0, 4]), b""),
        "|b1 order unset": (array_spec("|b1", [8], order=pb.ARRAY_ORDER_UNSPECIFIED), eight),
        "<M8[ns]": (array_spec("<M8[ns]", [1]), eight),
        "|S4": (array_spec("|S4", [2]), eight),
        ">f8 big-endian": (array_spec(">f8", [1]), eight),
        "<U1": (array_spec("<U1", [2]), eight),
    }
    before = stored_ids(raw.stub)
    cases: list[tuple[str, grpc.StatusCode, Callable[[], Any]]] = []
    for label, (spec, data) in bad.items():
        cases += [(f"{how} {label}", Code.INVALID_ARGUMENT, call)
                  for how, call in put_three_ways(raw, spec, data)]
    check_cases(cases)
    assert stored_ids(raw.stub) == before, "a refused object was stored"
    assert_serving(raw)

    cases = []
    for label, (spec, data) in good.items():
        cases += [(f"{how} {label}", Code.OK, call)
                  for how, call in put_three_ways(raw, spec, data)]
    check_cases(cases)
    assert_serving(raw)


def test_bad_names_and_labels_are_invalid_argument(raw: Raw) -> None:
    """Names over 256 UTF-8 bytes (not characters) or with NUL are refused; 256 bytes is fine.

    Label sets over the server's limits (65 labels, a 1025-byte label) are refused too.
    """
    stub = raw.stub
    euro_258 = "\u20ac" * 86  # 86 characters, 258 UTF-8 bytes
    euro_256 = "\u20ac" * 85 + "a"  # 86 characters, 256 UTF-8 bytes
    assert len(euro_258.encode()) == 258 and len(euro_256.encode()) == 256
    before = stored_ids(stub)
    cases: list[tuple[str, grpc.StatusCode, Callable[[], Any]]] = []
    for label, name in (("257 ASCII bytes", "n" * 257), ("258 UTF-8 bytes", euro_258),
                        ("NUL inside", "a\x00b"), ("only NUL", "\x00")):
        cases += [(f"{how} name {label}", Code.INVALID_ARGUMENT, call)
                  for how, call in put_three_ways(raw, pb.ObjectSpec(name=name), b"data")]
    for label, labels in (("65 labels", {str(i): "v" for i in range(65)}),
                          ("1025-byte label", {"k": "v" * 1024})):
        cases += [(f"{how} {label}", Code.INVALID_ARGUMENT, call)
                  for how, call in put_three_ways(raw, pb.ObjectSpec(labels=labels), b"data")]
    cases.append(("List prefix of 257 bytes", Code.INVALID_ARGUMENT,
                  lambda: stub.List(pb.ListRequest(prefix="p" * 257), timeout=CALL_TIMEOUT)))
    check_cases(cases)
    assert stored_ids(stub) == before
    check_cases([(f"{how} name of 256 bytes", Code.OK, call)
                 for how, call in put_three_ways(raw, pb.ObjectSpec(name=euro_256), b"data")])
    assert stub.Get(pb.GetRequest(ref=pb.ObjectRef(name=euro_256)),
                    timeout=CALL_TIMEOUT).data == b"data"
    assert_serving(raw)


def test_undecodable_request_does_not_hurt_the_server(raw: Raw, server: ServerProcess) -> None:
    """Bytes that are not a PutRequest (or a name that is not UTF-8) fail the call only."""
    with grpc.insecure_channel(server.unix_address) as channel:
        put_bytes = channel.unary_unary(
            "/improv_store.v1.StoreService/Put",
            request_serializer=None,
            response_deserializer=pb.PutResponse.FromString,
        )
        # field 1 (spec) -> field 2 (name) = b"\xff\xfe": a string that is not UTF-8.
        bad_utf8 = bytes([0x0A, 0x04, 0x12, 0x02, 0xFF, 0xFE])
        garbage = b"\xff" * 64
        before = stored_ids(raw.stub)
        for request in (bad_utf8, garbage):
            with pytest.raises(grpc.RpcError) as failure:
                put_bytes(request, timeout=CALL_TIMEOUT)
            # Parsed by the server's own lenient deserializer: grpcio's would say INTERNAL.
            assert failure.value.code() == Code.INVALID_ARGUMENT
        assert stored_ids(raw.stub) == before
    assert_serving(raw)


# -- sizes -----------------------------------------------------------------------------


def test_object_above_max_object_size_is_refused_from_the_header(
    raw_factory: Callable[..., Raw],
) -> None:
    """With --max-object-size 1M, a PutStream declaring more is RESOURCE_EXHAUSTED at once.

    The request iterator holds its chunks back until the call has ended, so the refusal
    can only have come from the header.
    """
    raw = raw_factory("--max-object-size", "1M")
    release = threading.Event()
    chunks_sent: list[int] = []

    def held_back() -> Iterator[pb.PutStreamRequest]:
        yield header(2 * MiB, name="too-big")
        release.wait(CALL_TIMEOUT)
        for _ in range(2):
            chunks_sent.append(MiB)
            yield chunk(bytes(MiB))

    before = stored_ids(raw.stub)
    future = raw.stub.PutStream.future(held_back(), timeout=CALL_TIMEOUT)
    try:
        error = future.exception(timeout=CALL_TIMEOUT)
    finally:
        release.set()
    assert error is not None and error.code() == Code.RESOURCE_EXHAUSTED, error
    assert chunks_sent == []
    assert "1048576" in error.details()

    stub = raw.stub
    check_cases([
        ("Put 1 MiB + 1", Code.RESOURCE_EXHAUSTED,
         lambda: stub.Put(pb.PutRequest(data=bytes(MiB + 1)), timeout=CALL_TIMEOUT)),
        ("Replace 1 MiB + 1", Code.RESOURCE_EXHAUSTED,
         lambda: stub.Replace(pb.ReplaceRequest(spec=pb.ObjectSpec(name="r"), data=bytes(MiB + 1)),
                              timeout=CALL_TIMEOUT)),
        ("PutStream declaring 2**64 - 1", Code.RESOURCE_EXHAUSTED,
         lambda: stub.PutStream(stream_of(header((1 << 64) - 1)), timeout=CALL_TIMEOUT)),
    ])
    assert stored_ids(stub) == before
    check_cases([
        ("Put exactly 1 MiB", Code.OK,
         lambda: stub.Put(pb.PutRequest(data=bytes(MiB)), timeout=CALL_TIMEOUT)),
        ("PutStream exactly 1 MiB", Code.OK,
         lambda: stub.PutStream(stream_of(header(MiB), chunk(bytes(MiB))), timeout=CALL_TIMEOUT)),
    ])
    assert_serving(raw)


def test_inline_payload_above_the_inline_limit_is_invalid_argument(raw: Raw) -> None:
    """Put and Replace carrying more than 4 MiB inline are INVALID_ARGUMENT; 4 MiB is fine."""
    stub = raw.stub
    over = bytes(INLINE_LIMIT + 1)
    before = stored_ids(stub)
    check_cases([
        ("Put 4 MiB + 1", Code.INVALID_ARGUMENT,
         lambda: stub.Put(pb.PutRequest(data=over), timeout=CALL_TIMEOUT)),
        ("Replace 4 MiB + 1", Code.INVALID_ARGUMENT,
         lambda: stub.Replace(pb.ReplaceRequest(spec=pb.ObjectSpec(name="r"), data=over),
                              timeout=CALL_TIMEOUT)),
    ])
    assert stored_ids(stub) == before
    at_limit = stub.Put(pb.PutRequest(data=bytes(INLINE_LIMIT)), timeout=CALL_TIMEOUT).meta
    assert at_limit.size == INLINE_LIMIT
    assert_serving(raw)


# -- PutStream framing -----------------------------------------------------------------


def test_malformed_put_streams_store_nothing(raw: Raw) -> None:
    """Every framing error is INVALID_ARGUMENT and leaves no object and no sequence behind."""
    stub = raw.stub
    streams: dict[str, list[pb.PutStreamRequest]] = {
        "no messages at all": [],
        "chunk before any header": [chunk(b"abcd"), header(4)],
        "only a chunk": [chunk(b"abcd")],
        "chunks exceed the declared size": [header(4, name="s"), chunk(b"abc"), chunk(b"de")],
        "one chunk larger than the declared size": [header(4, name="s"), chunk(b"abcde")],
        "stream ends short": [header(10, name="s"), chunk(b"abcd")],
        "stream ends after the header": [header(10, name="s")],
        "second header mid-stream": [header(8, name="s"), chunk(b"abcd"), header(4),
                                     chunk(b"efgh")],
        "second header after all bytes": [header(4, name="s"), chunk(b"abcd"), header(4)],
        "empty part (neither header nor chunk)": [header(4, name="s"), pb.PutStreamRequest(),
                                                  chunk(b"abcd")],
        "replace without a name": [pb.PutStreamRequest(header=pb.PutStreamHeader(
            size=4, replace=True)), chunk(b"abcd")],
    }
    before_ids = stored_ids(stub)
    before = stub.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT)
    wrong: list[str] = []
    for label, messages in streams.items():
        try:
            stub.PutStream(stream_of(*messages), timeout=CALL_TIMEOUT)
            wrong.append(f"{label}: accepted")
        except grpc.RpcError as error:
            if error.code() != Code.INVALID_ARGUMENT:
                wrong.append(f"{label}: {error.code().name}: {error.details()}")
        if stored_ids(stub) != before_ids:
            wrong.append(f"{label}: an object was stored")
    assert not wrong, "\n".join(wrong)
    after = stub.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT)
    assert (after.object_count, after.total_bytes, after.last_sequence) == (
        before.object_count, before.total_bytes, before.last_sequence)
    expect(Code.NOT_FOUND, lambda: stub.Get(pb.GetRequest(ref=pb.ObjectRef(name="s")),
                                            timeout=CALL_TIMEOUT))
    assert_serving(raw)


def test_cancelled_put_stream_stores_nothing(raw: Raw) -> None:
    """A client that cancels a PutStream half way leaves no object behind (and no traceback
    in the server's log)."""
    stub = raw.stub
    release = threading.Event()
    halfway = threading.Event()

    def half() -> Iterator[pb.PutStreamRequest]:
        yield header(2 * MiB, name="cancelled")
        yield chunk(bytes(MiB))
        halfway.set()
        release.wait(CALL_TIMEOUT)
        yield chunk(bytes(MiB))

    before = stored_ids(stub)
    future = stub.PutStream.future(half(), timeout=CALL_TIMEOUT)
    try:
        assert halfway.wait(CALL_TIMEOUT)
        future.cancel()
    finally:
        release.set()
    assert future.cancelled() or future.exception(timeout=CALL_TIMEOUT) is not None
    expect(Code.NOT_FOUND, lambda: stub.Get(pb.GetRequest(ref=pb.ObjectRef(name="cancelled")),
                                            timeout=CALL_TIMEOUT))
    assert stored_ids(stub) == before
    assert_serving(raw)
    assert "Traceback" not in raw.server.log()  # a client going away is no server error


# -- checksums -------------------------------------------------------------------------


def test_crc32c_mismatch_is_data_loss(raw: Raw) -> None:
    """A declared CRC32C that is wrong is DATA_LOSS (Put, Replace, PutStream); the right is OK."""
    stub = raw.stub
    data = os.urandom(3 * MiB + 17)
    right = crc32c.crc32c(data)
    streamed = [data[i:i + MiB] for i in range(0, len(data), MiB)]
    before = stored_ids(stub)
    cases: list[tuple[str, grpc.StatusCode, Callable[[], Any]]] = []
    for label, value in (("wrong", right ^ 1), ("zero", 0)):
        spec = pb.ObjectSpec(name="checked", crc32c=value)
        cases += [
            (f"Put {label}", Code.DATA_LOSS,
             lambda spec=spec: stub.Put(pb.PutRequest(spec=spec, data=data),
                                        timeout=CALL_TIMEOUT)),
            (f"Replace {label}", Code.DATA_LOSS,
             lambda spec=spec: stub.Replace(pb.ReplaceRequest(spec=spec, data=data),
                                            timeout=CALL_TIMEOUT)),
            (f"PutStream {label}", Code.DATA_LOSS,
             lambda value=value: stub.PutStream(
                 stream_of(header(len(data), name="checked", crc32c=value),
                           *map(chunk, streamed)), timeout=CALL_TIMEOUT)),
        ]
    check_cases(cases)
    assert stored_ids(stub) == before
    expect(Code.NOT_FOUND, lambda: stub.Get(pb.GetRequest(ref=pb.ObjectRef(name="checked")),
                                            timeout=CALL_TIMEOUT))

    put = stub.Put(pb.PutRequest(spec=pb.ObjectSpec(crc32c=right), data=data),
                   timeout=CALL_TIMEOUT).meta
    streamed_meta = stub.PutStream(
        stream_of(header(len(data), crc32c=right), *map(chunk, streamed)), timeout=CALL_TIMEOUT
    ).meta
    empty = stub.Put(pb.PutRequest(spec=pb.ObjectSpec(crc32c=0)), timeout=CALL_TIMEOUT).meta
    assert put.crc32c == streamed_meta.crc32c == right
    assert empty.crc32c == 0 and empty.size == 0
    assert_serving(raw)


# -- Replace, waits, List, BatchGet ---------------------------------------------------------


def test_replace_without_a_name_is_invalid_argument(raw: Raw) -> None:
    """Replace needs spec.name: without one it is INVALID_ARGUMENT and stores nothing."""
    stub = raw.stub
    before = stored_ids(stub)
    check_cases([
        ("Replace, no spec", Code.INVALID_ARGUMENT,
         lambda: stub.Replace(pb.ReplaceRequest(data=b"x"), timeout=CALL_TIMEOUT)),
        ("Replace, spec without name", Code.INVALID_ARGUMENT,
         lambda: stub.Replace(pb.ReplaceRequest(spec=pb.ObjectSpec(labels={"a": "b"}), data=b"x"),
                              timeout=CALL_TIMEOUT)),
        ("Replace, empty payload, no name", Code.INVALID_ARGUMENT,
         lambda: stub.Replace(pb.ReplaceRequest(), timeout=CALL_TIMEOUT)),
    ])
    assert stored_ids(stub) == before
    assert_serving(raw)


def test_waits(raw: Raw) -> None:
    """A wait that runs out is DEADLINE_EXCEEDED (per item in BatchGet); a negative one is
    INVALID_ARGUMENT."""
    stub = raw.stub
    ghost = pb.ObjectRef(name="never-appears")
    short, negative = duration(0.2), duration(-1)
    check_cases([
        ("Get wait 0.2 s", Code.DEADLINE_EXCEEDED,
         lambda: stub.Get(pb.GetRequest(ref=ghost, wait=short), timeout=CALL_TIMEOUT)),
        ("Get by ID wait 0.2 s", Code.DEADLINE_EXCEEDED,
         lambda: stub.Get(pb.GetRequest(ref=ref_id(os.urandom(20)), wait=short),
                          timeout=CALL_TIMEOUT)),
        ("GetStream wait 0.2 s", Code.DEADLINE_EXCEEDED,
         lambda: stub.GetStream(pb.GetStreamRequest(ref=ghost, wait=short), timeout=CALL_TIMEOUT)),
        ("Get negative wait", Code.INVALID_ARGUMENT,
         lambda: stub.Get(pb.GetRequest(ref=ghost, wait=negative), timeout=CALL_TIMEOUT)),
        ("Get negative wait, object present", Code.INVALID_ARGUMENT,
         lambda: stub.Get(pb.GetRequest(ref=ref_id(raw.neighbour.id), wait=negative),
                          timeout=CALL_TIMEOUT)),
        ("GetStream negative wait", Code.INVALID_ARGUMENT,
         lambda: stub.GetStream(pb.GetStreamRequest(ref=ghost, wait=negative),
                                timeout=CALL_TIMEOUT)),
        ("BatchGet negative wait", Code.INVALID_ARGUMENT,
         lambda: stub.BatchGet(pb.BatchGetRequest(refs=[ghost], wait=negative),
                               timeout=CALL_TIMEOUT)),
    ])
    results = stub.BatchGet(
        pb.BatchGetRequest(refs=[ref_id(raw.neighbour.id), ghost], wait=short),
        timeout=CALL_TIMEOUT,
    ).results
    assert [r.code for r in results] == [0, 4]
    assert results[0].data == raw.neighbour_data
    assert_serving(raw)


def test_longest_wait_is_a_wait_not_an_internal_error(raw: Raw) -> None:
    """The largest Duration (10,000 years), with no call deadline, waits for the object.

    The wait must not overflow into INTERNAL: the call stays open until the object is
    stored, then returns it.
    """
    stub = raw.stub
    longest = Duration(seconds=315_576_000_000)
    pending = {
        "Get": stub.Get.future(pb.GetRequest(ref=pb.ObjectRef(name="late"), wait=longest)),
        "BatchGet": stub.BatchGet.future(
            pb.BatchGetRequest(refs=[pb.ObjectRef(name="late")], wait=longest)),
    }
    try:
        time.sleep(0.5)  # let the server start waiting before the object appears
        early = {how: f"{f.exception().code().name}: {f.exception().details()}"
                 for how, f in pending.items() if f.done() and f.exception() is not None}
        assert not early, f"a 10,000-year wait failed at once: {early}"
        stub.Put(pb.PutRequest(spec=pb.ObjectSpec(name="late"), data=b"arrived"),
                 timeout=CALL_TIMEOUT)
        assert pending["Get"].result(timeout=CALL_TIMEOUT).data == b"arrived"
        (result,) = pending["BatchGet"].result(timeout=CALL_TIMEOUT).results
        assert (result.code, result.data) == (0, b"arrived")
    finally:
        for call in pending.values():
            call.cancel()
    assert_serving(raw)


def test_list_rejects_page_tokens_it_never_issues(raw: Raw) -> None:
    """Tokens that merely parse as an int (sign, spaces, underscores, non-ASCII digits) are
    not tokens the server issues: INVALID_ARGUMENT, like any other garbage token."""
    stub = raw.stub
    check_cases([
        (f"List page_token {token!r}", Code.INVALID_ARGUMENT,
         lambda token=token: stub.List(pb.ListRequest(page_token=token), timeout=CALL_TIMEOUT))
        for token in ("-1", "+1", " 1", "1 ", "1_0", "\u0661")
    ])
    assert_serving(raw)


def test_list_token_and_batch_size_limits(raw: Raw) -> None:
    """A page_token the server never issued and a BatchGet over 1024 refs are INVALID_ARGUMENT."""
    stub = raw.stub
    cases: list[tuple[str, grpc.StatusCode, Callable[[], Any]]] = [
        (f"List page_token {token!r}", Code.INVALID_ARGUMENT,
         lambda token=token: stub.List(pb.ListRequest(page_token=token), timeout=CALL_TIMEOUT))
        for token in ("garbage", "12abc", "%%%", "1.5", "\u0661\u0662x")
    ]
    missing = pb.ObjectRef(name="missing")
    cases.append(("BatchGet 1025 refs", Code.INVALID_ARGUMENT,
                  lambda: stub.BatchGet(pb.BatchGetRequest(refs=[missing] * 1025),
                                        timeout=CALL_TIMEOUT)))
    check_cases(cases)
    results = stub.BatchGet(pb.BatchGetRequest(refs=[missing] * 1023 + [ref_id(raw.neighbour.id)]),
                            timeout=CALL_TIMEOUT).results
    assert len(results) == 1024
    assert {r.code for r in results[:-1]} == {5} and results[-1].code == 0
    first = stub.List(pb.ListRequest(page_size=1), timeout=CALL_TIMEOUT)
    assert [m.id for m in first.objects] == [raw.neighbour.id]
    assert_serving(raw)


# -- Subscribe ---------------------------------------------------------------------------


def wait_committed(stub: store_pb2_grpc.StoreServiceStub, sequence: int) -> pb.InfoResponse:
    """Poll Info until everything through ``sequence`` is on disk; return that Info."""
    deadline = time.monotonic() + CALL_TIMEOUT
    while True:
        info = stub.Info(pb.InfoRequest(), timeout=CALL_TIMEOUT)
        if info.committed_sequence >= sequence:
            return info
        assert time.monotonic() < deadline, f"committed_sequence stuck at {info.committed_sequence}"
        time.sleep(0.02)


def test_subscribe_to_dropped_history_is_out_of_range(raw_factory: Callable[..., Raw]) -> None:
    """Asking for history older than --event-retention keeps is OUT_OF_RANGE, naming the oldest.

    The oldest sequence is in the message and the trailer "improv-store-oldest-sequence";
    subscribing from exactly that sequence works and replays from it.
    """
    raw = raw_factory("--event-retention", "5")
    stub = raw.stub
    last = 0
    for index in range(20):
        last = stub.Put(pb.PutRequest(spec=pb.ObjectSpec(name=f"e{index}"), data=b"x"),
                        timeout=CALL_TIMEOUT).meta.sequence
    info = wait_committed(stub, last)
    assert info.last_sequence == last == 21  # the neighbour was sequence 1
    oldest = info.oldest_sequence
    assert oldest == last - 5 + 1

    for since in (0, 1, oldest - 1):
        error = expect(Code.OUT_OF_RANGE, lambda since=since: stub.Subscribe(
            pb.SubscribeRequest(since_sequence=since), timeout=CALL_TIMEOUT))
        trailers = dict(error.trailing_metadata() or ())
        assert trailers.get("improv-store-oldest-sequence") == str(oldest), trailers
        assert str(oldest) in error.details()

    stream = stub.Subscribe(pb.SubscribeRequest(since_sequence=oldest), timeout=CALL_TIMEOUT)
    try:
        replayed = [next(stream).event.sequence for _ in range(5)]
    finally:
        stream.cancel()
    assert replayed == list(range(oldest, last + 1))

    with raw.server.client(timeout=CALL_TIMEOUT) as client, \
            pytest.raises(HistoryUnavailable) as failure:
        next(iter(client.subscribe(since=1)))
    assert failure.value.oldest_sequence == oldest
    assert_serving(raw)


# -- the Python client's typed exceptions ------------------------------------------------


def test_python_client_raises_typed_exceptions(start_server: Callable[..., ServerProcess]) -> None:
    """Each status reaches Python code as its own exception class, with the status as ``code``."""
    server = start_server("--max-object-size", "1M")
    with server.client(timeout=CALL_TIMEOUT) as store:
        kept = store.put(b"kept", name="kept", id=ObjectID.random())

        with pytest.raises(ObjectNotFound) as not_found:
            store.get("never-stored")
        assert not_found.value.code == Code.NOT_FOUND
        assert isinstance(not_found.value, KeyError)
        with pytest.raises(ObjectNotFound):
            store.delete(ObjectID.random())
        with pytest.raises(ObjectNotFound):
            store.stat(ObjectID.random())

        with pytest.raises(ObjectExists) as exists:
            store.put(b"other", id=kept)
        assert exists.value.code == Code.ALREADY_EXISTS

        with pytest.raises(InvalidRequest) as invalid:
            store.put(b"x", id=b"\x01" * 19)
        assert invalid.value.code == Code.INVALID_ARGUMENT
        assert isinstance(invalid.value, ValueError)
        with pytest.raises(InvalidRequest):
            store.put(b"x", name="n" * 257)
        with pytest.raises(InvalidRequest):
            store.get("a\x00b")

        with pytest.raises(WaitTimeout) as timeout:
            store.get("never-stored", timeout=0.2)
        assert timeout.value.code == Code.DEADLINE_EXCEEDED
        assert isinstance(timeout.value, TimeoutError)

        with pytest.raises(StoreFull) as full:
            store.put(bytes(MiB + 1))  # inline Put path
        assert full.value.code == Code.RESOURCE_EXHAUSTED
        with pytest.raises(StoreFull):
            store.put(bytes(INLINE_LIMIT + 1))  # PutStream path

        for error in (not_found, exists, invalid, timeout, full):
            assert isinstance(error.value, StoreError) and error.value.message
        assert store.get(kept) == b"kept"
    assert server.process.poll() is None
