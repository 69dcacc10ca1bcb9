"""The gRPC contract as any client sees it: fresh stubs, standard health and reflection,
the .proto's style rules, and Info describing the server truthfully."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import EnumDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from improv_store import __version__
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

if TYPE_CHECKING:
    from conftest import ServerProcess

REPO = Path(__file__).resolve().parent.parent
SERVICE = "improv_store.v1.StoreService"
CALL_TIMEOUT = 30.0
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


def test_generated_stubs_are_fresh() -> None:
    """``scripts/gen-protos --check`` passes: the committed stubs match the .proto."""
    result = subprocess.run(
        [str(REPO / "scripts" / "gen-protos"), "--check"],
        cwd=REPO, env={**os.environ, "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_health_service_reports_serving(server: ServerProcess) -> None:
    """grpc.health.v1 says SERVING for "" and for StoreService, on both listeners; an unknown
    service is NOT_FOUND."""
    with grpc.insecure_channel(server.unix_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service),
                                 timeout=CALL_TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as failure:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"),
                         timeout=CALL_TIMEOUT)
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(server.tcp_address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=CALL_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def reflect(
    channel: grpc.Channel, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    """Send reflection requests on one ServerReflectionInfo stream; one response each."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses: Iterator[reflection_pb2.ServerReflectionResponse] = stub.ServerReflectionInfo(
        iter(requests), timeout=CALL_TIMEOUT)
    return list(responses)


def test_reflection_describes_the_service(server: ServerProcess) -> None:
    """Reflection lists StoreService and Health, and serves the store.proto descriptor,
    identical to the one the Python stubs were generated from."""
    with grpc.insecure_channel(server.unix_address) as channel:
        listed, by_symbol = reflect(
            channel,
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
        )
    names = {service.name for service in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names, names

    assert not by_symbol.HasField("error_response"), by_symbol.error_response
    files = {}
    for raw in by_symbol.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        files[proto.name] = proto
    store_file = files["improv_store/v1/store.proto"]
    assert store_file.package == "improv_store.v1"
    (service,) = store_file.service
    assert service.name == "StoreService"
    local = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(local)
    assert [m.name for m in service.method] == [m.name for m in local.service[0].method]
    assert store_file.source_code_info.location  # reflection carries the comments
    store_file.ClearField("source_code_info")
    assert store_file == local


def upper_snake(name: str) -> str:
    """``ArrayOrder`` -> ``ARRAY_ORDER``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def all_enums() -> list[EnumDescriptor]:
    """Every enum in store.proto, top-level and nested in messages."""
    enums = list(pb.DESCRIPTOR.enum_types_by_name.values())
    pending = list(pb.DESCRIPTOR.message_types_by_name.values())
    while pending:
        message = pending.pop()
        enums += message.enum_types
        pending += message.nested_types
    return enums


def test_proto_follows_the_style_rules() -> None:
    """Enum zero values are <ENUM>_UNSPECIFIED, values carry the enum's prefix, and every
    RPC has its own <Rpc>Request and <Rpc>Response messages used by no other RPC."""
    enums = all_enums()
    assert {e.name for e in enums} >= {"Encoding", "ArrayOrder", "Durability", "EventType"}
    for enum in enums:
        prefix = upper_snake(enum.name) + "_"
        assert enum.values_by_number[0].name == prefix + "UNSPECIFIED", enum.name
        assert all(value.name.startswith(prefix) for value in enum.values), enum.name

    methods = pb.DESCRIPTOR.services_by_name["StoreService"].methods
    core = {"Put", "PutStream", "Get", "GetStream", "BatchGet", "Delete", "Replace", "List",
            "Info", "Subscribe"}
    assert core <= {m.name for m in methods}
    for method in methods:
        assert method.input_type.name == method.name + "Request", method.name
        assert method.output_type.name == method.name + "Response", method.name
        assert method.input_type.file is pb.DESCRIPTOR
    inputs = [m.input_type.full_name for m in methods]
    outputs = [m.output_type.full_name for m in methods]
    assert len(set(inputs)) == len(inputs) and len(set(outputs)) == len(outputs)
    streaming = {m.name: (m.client_streaming, m.server_streaming) for m in methods}
    assert streaming["PutStream"] == (True, False)
    assert streaming["GetStream"] == (False, True)
    assert streaming["Subscribe"] == (False, True)
    for name in core - {"PutStream", "GetStream", "Subscribe"}:
        assert streaming[name] == (False, False), name


def test_every_rpc_has_a_stub_method() -> None:
    """The generated stub exposes every RPC the descriptor declares."""
    with grpc.insecure_channel("unix:///nonexistent-improv-store.sock") as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        for method in pb.DESCRIPTOR.services_by_name["StoreService"].methods:
            assert callable(getattr(stub, method.name)), method.name


def info(server: ServerProcess) -> pb.InfoResponse:
    """Info from ``server`` over the raw stub."""
    with grpc.insecure_channel(server.unix_address) as channel:
        return store_pb2_grpc.StoreServiceStub(channel).Info(pb.InfoRequest(),
                                                            timeout=CALL_TIMEOUT)


def test_info_reports_version_durability_and_default_limits(server: ServerProcess) -> None:
    """A default server reports the package version, async durability and the documented limits."""
    reply = info(server)
    assert reply.version == __version__
    assert reply.durability == pb.DURABILITY_ASYNC
    limits = reply.limits
    assert limits.max_object_size == 2 * GiB
    # Every answer fits the 4 MiB a gRPC client receives by default; an inline payload
    # leaves room in it for the largest metadata.
    assert limits.max_response_size == 4 * MiB
    assert limits.inline_limit == 4 * MiB - 128 * KiB
    assert limits.max_chunk_size <= limits.max_response_size - KiB
    assert limits.max_name_length == 256
    assert limits.max_batch_size == 1024
    assert limits.max_message_size >= limits.inline_limit + MiB
    assert (reply.object_count, reply.total_bytes, reply.last_sequence) == (0, 0, 0)
    assert reply.oldest_sequence == 1 and reply.subscriber_count == 0
    assert reply.start_time.seconds > 0


@pytest.mark.parametrize(
    ("durability", "expected"),
    [("sync", pb.DURABILITY_SYNC), ("none", pb.DURABILITY_NONE)],
)
def test_info_follows_the_flags(
    start_server: Callable[..., ServerProcess], durability: str, expected: int
) -> None:
    """Info reflects --durability and --max-object-size, and counts what was stored."""
    server = start_server("--max-object-size", "1M", durability=durability)
    with server.client(timeout=CALL_TIMEOUT) as store:
        store.put(b"12345")
        store.put(b"678", name="n")
    reply = info(server)
    assert reply.durability == expected
    assert reply.limits.max_object_size == MiB
    assert (reply.object_count, reply.total_bytes, reply.last_sequence) == (2, 8, 2)
    if durability == "sync":
        assert reply.committed_sequence == 2  # sync writes are on disk when they return
    else:
        assert reply.committed_sequence == 0  # nothing is ever committed without LMDB
