"""The Connect listener (--web-listen): browsers and curl call the store over HTTP/1.1.

Everything here is plain HTTP from the standard library against a real server:
unary calls in JSON and binary protobuf, the Connect error shape and its HTTP
statuses, the server streams (Subscribe, GetStream) in Connect envelopes, the
client streams refused, the token, CORS and the DNS-rebinding guard. What the
web side stores, the gRPC client reads back, and the other way round.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import NODE_HINT, ServerProcess, need_program, npm_ci
from test_lane import wait_until
from test_other_languages import tap_summary

from improv_store.client import ObjectID
from improv_store.protocol import OLDEST_SEQUENCE_TRAILER, Code
from improv_store.service.config import ServerConfig
from improv_store.service.web import CONNECT_CODES
from improv_store.v1 import store_pb2 as pb

SERVICE = "/improv_store.v1.StoreService/"
DASHBOARD = "http://dash.example:8080"
TOKEN = "web-token-for-tests"
ENVELOPE = struct.Struct(">BI")
END_STREAM = 0x02
TIMEOUT = 30.0
PROTO_DIR = Path(__file__).resolve().parent.parent / "proto"
NODE_DIR = Path(__file__).resolve().parent / "web_node"
NODE_TEST = NODE_DIR / "connect.test.mjs"
NODE_RUN_TIMEOUT = 120
# Every test of connect.test.mjs; the last runs only against a store with a token.
NODE_TESTS = (
    "Info describes the server",
    "Put and Get round-trip by name and by ID, in JSON and binary",
    "a missing name is not_found",
    "Subscribe streams the puts under its prefix",
    "GetStream reads an object larger than one message, in chunks",
    "without the token, a store that has one says unauthenticated",
)
RETAINED = 4  # events the module's server keeps for replay


@dataclass
class Answer:
    """One HTTP answer, read whole."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def web_port(server: ServerProcess) -> int:
    """The port the server's log says its Connect listener took (it was asked for port 0)."""
    found = re.search(r"http://127\.0\.0\.1:(\d+) \(Connect\)", server.log())
    assert found, server.log()
    return int(found.group(1))


class Web:
    """A Connect client made of http.client, one connection per call unless given one."""

    def __init__(self, port: int) -> None:
        self.port = port

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)

    def post(
        self,
        method: str,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        connection: http.client.HTTPConnection | None = None,
    ) -> Answer:
        conn = connection or self.connection()
        try:
            conn.request(
                "POST", SERVICE + method, body,
                {"Content-Type": content_type, **(headers or {})},
            )
            response = conn.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            if connection is None:
                conn.close()

    def call(self, method: str, message: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """A JSON call that must succeed; its response as a dict."""
        answer = self.post(method, json.dumps(message).encode(), **kwargs)
        assert answer.status == 200, answer
        assert answer.headers["Content-Type"] == "application/json"
        return answer.json()  # type: ignore[no-any-return]

    def open_stream(
        self, method: str, request: bytes, codec: str = "json",
        headers: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A server stream's response, open: read it with ``envelopes``."""
        conn = self.connection()
        conn.request(
            "POST", SERVICE + method, ENVELOPE.pack(0, len(request)) + request,
            {"Content-Type": f"application/connect+{codec}", **(headers or {})},
        )
        response = conn.getresponse()
        assert response.status == 200
        assert response.headers["Content-Type"] == f"application/connect+{codec}"
        return conn, response


def envelopes(response: http.client.HTTPResponse) -> Iterator[tuple[int, bytes]]:
    """The (flags, message) envelopes of a stream, up to and including its end."""
    while True:
        head = response.read(ENVELOPE.size)
        assert len(head) == ENVELOPE.size, f"the stream stopped without an end: {head!r}"
        flags, length = ENVELOPE.unpack(head)
        message = response.read(length)
        assert len(message) == length
        yield flags, message
        if flags & END_STREAM:
            return


def read_stream(response: http.client.HTTPResponse) -> tuple[list[bytes], dict[str, Any]]:
    """Every message of a stream, and its end-of-stream JSON."""
    messages = []
    for flags, message in envelopes(response):
        if flags & END_STREAM:
            assert response.read() == b""  # nothing after the end
            return messages, json.loads(message)
        assert flags == 0
        messages.append(message)
    raise AssertionError("unreachable")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def web_server(start_module_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_module_server(
        "--web-listen", "127.0.0.1:0", "--web-allow-origin", DASHBOARD,
        "--event-retention", str(RETAINED), durability="none",
    )


@pytest.fixture
def web(web_server: ServerProcess) -> Web:
    return Web(web_port(web_server))


# -- unary calls ----------------------------------------------------------------------------


def test_json_put_get_list_info_delete(web: Web, web_server: ServerProcess) -> None:
    """The common calls in JSON, as curl would make them; the gRPC client sees the same store."""
    payload = bytes(range(256)) * 3
    put = web.call("Put", {
        "spec": {"name": "web/json", "encoding": "ENCODING_RAW", "labels": {"from": "web"}},
        "data": b64(payload),
    })
    meta = put["meta"]
    assert meta["name"] == "web/json" and meta["size"] == str(len(payload))  # uint64: a string

    by_name = web.call("Get", {"ref": {"name": "web/json"}})
    assert base64.b64decode(by_name["data"]) == payload
    by_id = web.call("Get", {"ref": {"id": meta["id"]}})
    assert base64.b64decode(by_id["data"]) == payload
    assert by_id["meta"]["labels"] == {"from": "web"}

    with web_server.client(tcp=True) as store:
        assert store.get("web/json") == payload
        assert store.stat("web/json").id == ObjectID(base64.b64decode(meta["id"]))
        store.put(b"from grpc", "web/grpc")
    assert base64.b64decode(web.call("Get", {"ref": {"name": "web/grpc"}})["data"]) == b"from grpc"

    listed = web.call("List", {"prefix": "web/"})
    assert [each["name"] for each in listed["objects"]] == ["web/json", "web/grpc"]

    info = web.call("Info", {})
    assert int(info["lastSequence"]) >= 2
    assert int(info["limits"]["inlineLimit"]) > 0

    deleted = web.call("Delete", {"ref": {"name": "web/json"}})
    assert deleted["deletedIds"] == [meta["id"]]
    gone = web.post("Get", json.dumps({"ref": {"name": "web/json"}}).encode())
    assert gone.status == 404
    assert gone.headers["Content-Type"] == "application/json"
    error = gone.json()
    assert error["code"] == "not_found" and "web/json" in error["message"]


def test_empty_json_body_is_the_empty_message(web: Web) -> None:
    """``curl -d ''`` calls Info; unknown fields (a newer client's) are ignored."""
    assert web.post("Info", b"").json()["version"]
    assert web.call("Info", {"fieldFromTheFuture": 1})["version"]


def test_binary_proto_unary(web: Web, web_server: ServerProcess) -> None:
    """application/proto: the same calls with serialized messages."""
    request = pb.PutRequest(
        spec=pb.ObjectSpec(name="web/proto", encoding=pb.ENCODING_RAW), data=b"\x00\xffproto"
    )
    answer = web.post("Put", request.SerializeToString(), "application/proto")
    assert answer.status == 200 and answer.headers["Content-Type"] == "application/proto"
    meta = pb.PutResponse.FromString(answer.body).meta
    got = web.post(
        "Get", pb.GetRequest(ref=pb.ObjectRef(id=meta.id)).SerializeToString(), "application/proto"
    )
    assert pb.GetResponse.FromString(got.body).data == b"\x00\xffproto"
    with web_server.client(tcp=True) as store:
        assert store.get(ObjectID(meta.id)) == b"\x00\xffproto"

    garbage = web.post("Get", b"\xff\xff\xff", "application/proto")
    assert garbage.status == 400 and garbage.json()["code"] == "invalid_argument"


@pytest.mark.parametrize(
    "body",
    [b'{"ref":', b'{"ref": {"name": 7}}', b'{"metadataOnly": "yes"}', b"\xff\xfe", b"[1, 2]"],
    ids=["truncated", "wrong-type", "not-a-bool", "not-utf8", "not-an-object"],
)
def test_bad_json_is_invalid_argument(web: Web, body: bytes) -> None:
    answer = web.post("Get", body)
    assert answer.status == 400
    error = answer.json()
    assert error == {"code": "invalid_argument", "message": error["message"], "details": []}
    assert "GetRequest" in error["message"]


def test_refusals_of_the_http_kind(web: Web) -> None:
    """Unknown methods, other content types, GETs, streams asked as unary and the reverse."""
    unknown = web.post("NoSuchMethod", b"{}")
    assert unknown.status == 404 and unknown.json()["code"] == "unimplemented"
    elsewhere = web.connection()
    elsewhere.request("POST", "/other.Service/Put", b"{}", {"Content-Type": "application/json"})
    assert elsewhere.getresponse().status == 404
    elsewhere.close()

    text = web.post("Info", b"{}", "text/plain")
    assert text.status == 415 and text.json()["code"] == "invalid_argument"
    streamed_as_unary = web.post("Subscribe", b"{}")
    assert streamed_as_unary.status == 415
    assert "application/connect+" in streamed_as_unary.json()["message"]
    unary_as_stream = web.post("Info", ENVELOPE.pack(0, 2) + b"{}", "application/connect+json")
    assert unary_as_stream.status == 415

    get = web.connection()
    get.request("GET", SERVICE + "Info")
    answer = get.getresponse()
    assert answer.status == 405 and answer.headers["Allow"] == "POST, OPTIONS"
    get.close()

    gzip = web.post("Info", b"{}", headers={"Content-Encoding": "gzip"})
    assert gzip.status == 501 and gzip.json()["code"] == "unimplemented"
    version = web.post("Info", b"{}", headers={"Connect-Protocol-Version": "2"})
    assert version.status == 400
    assert web.post("Info", b"{}", headers={"Connect-Protocol-Version": "1"}).status == 200


def test_client_streams_are_unimplemented(web: Web) -> None:
    """PutStream and Session stream from the client: refused, in the shape the client asked."""
    for method in ("PutStream", "Session"):
        unary = web.post(method, b"{}")
        assert unary.status == 501 and unary.json()["code"] == "unimplemented"
        conn, response = web.open_stream(method, b"{}", "json")
        messages, end = read_stream(response)
        conn.close()
        assert messages == [] and end["error"]["code"] == "unimplemented"


def test_keep_alive_and_chunked_requests(web: Web) -> None:
    """Several calls on one connection; a chunked request body (Node's http sends those)."""
    conn = web.connection()
    try:
        for _ in range(3):
            assert web.post("Info", b"{}", connection=conn).status == 200
        conn.putrequest("POST", SERVICE + "Get")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for part in (b'{"ref": ', b'{"name": "nothing-here"}}'):
            conn.send(b"%x\r\n%b\r\n" % (len(part), part))
        conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        assert response.status == 404 and json.loads(response.read())["code"] == "not_found"
        assert web.post("Info", b"{}", connection=conn).status == 200  # still usable
    finally:
        conn.close()


def test_body_above_the_message_limit_is_refused_unread(web: Web) -> None:
    with socket.create_connection(("127.0.0.1", web.port), timeout=TIMEOUT) as raw:
        raw.sendall(
            f"POST {SERVICE}Put HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n".encode()
        )
        answer = raw.makefile("rb").read()  # the server answers and closes
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429")
    assert json.loads(body)["code"] == "resource_exhausted"


# -- server streams -------------------------------------------------------------------------


def test_subscribe_streams_live_puts_and_ends_when_the_client_leaves(
    web: Web, web_server: ServerProcess
) -> None:
    with web_server.client(tcp=True) as store:
        since = store.info().last_sequence + 1
        baseline = store.info().subscriber_count
        request = json.dumps({"prefix": "web-sub/", "sinceSequence": str(since)}).encode()
        conn, response = web.open_stream("Subscribe", request, "json")
        try:
            names = [f"web-sub/{index}" for index in range(3)]
            for name in names:
                store.put(name.encode(), name)
            store.put(b"not under the prefix", "web-other")
            events = []
            for flags, message in envelopes(response):
                assert flags == 0, message
                events.append(json.loads(message)["event"])
                if len(events) == len(names):
                    break
            assert [event["meta"]["name"] for event in events] == names
            assert [event["type"] for event in events] == ["EVENT_TYPE_PUT"] * 3
            assert [int(event["sequence"]) for event in events] == sorted(
                int(event["sequence"]) for event in events
            )
            assert store.info().subscriber_count == baseline + 1
        finally:
            conn.close()
        wait_until(
            lambda: store.info().subscriber_count == baseline,
            "the server ended the subscription of a client that hung up",
        )


def test_subscribe_in_binary_proto(web: Web, web_server: ServerProcess) -> None:
    with web_server.client(tcp=True) as store:
        since = store.info().last_sequence + 1
        request = pb.SubscribeRequest(prefix="web-bin/", since_sequence=since)
        conn, response = web.open_stream("Subscribe", request.SerializeToString(), "proto")
        try:
            store.put(b"x", "web-bin/a")
            flags, message = next(envelopes(response))
            assert flags == 0
            event = pb.SubscribeResponse.FromString(message).event
            assert event.meta.name == "web-bin/a" and event.sequence == since
        finally:
            conn.close()


@pytest.mark.parametrize("codec", ["proto", "json"])
def test_get_stream_of_a_large_object(web: Web, web_server: ServerProcess, codec: str) -> None:
    """A 10 MiB object, larger than any one message, read in chunks from GetStream."""
    payload = os.urandom(10 << 20)
    with web_server.client(tcp=True) as store:
        object_id = store.put(payload, f"web-large-{codec}")
    inline = web.post("Get", json.dumps({"ref": {"name": f"web-large-{codec}"}}).encode()).json()
    assert inline.get("payloadOmitted") is True and "data" not in inline

    if codec == "proto":
        request = pb.GetStreamRequest(ref=pb.ObjectRef(id=object_id.binary())).SerializeToString()
    else:
        request = json.dumps({"ref": {"id": b64(object_id.binary())}}).encode()
    conn, response = web.open_stream("GetStream", request, codec)
    try:
        messages, end = read_stream(response)
    finally:
        conn.close()
    assert end == {}
    if codec == "proto":
        parts = [pb.GetStreamResponse.FromString(message) for message in messages]
        assert parts[0].meta.size == len(payload)
        received = b"".join(part.chunk for part in parts[1:])
    else:
        decoded = [json.loads(message) for message in messages]
        assert decoded[0]["meta"]["size"] == str(len(payload))
        received = b"".join(base64.b64decode(part["chunk"]) for part in decoded[1:])
    assert len(messages) > 3  # in chunks, not one message
    assert received == payload


def test_stream_errors_end_the_stream(web: Web, web_server: ServerProcess) -> None:
    """A stream's error is its end-of-stream message, with the trailers as metadata."""
    conn, response = web.open_stream("GetStream", b'{"ref": {"name": "web-missing"}}', "json")
    messages, end = read_stream(response)
    conn.close()
    assert messages == [] and end["error"]["code"] == "not_found"

    conn, response = web.open_stream("GetStream", b'{"ref": 5}', "json")
    assert read_stream(response)[1]["error"]["code"] == "invalid_argument"
    conn.close()

    with web_server.client(tcp=True) as store:
        for index in range(RETAINED + 2):
            store.put(b"", f"web-history/{index}")
    trimmed = json.dumps({"sinceSequence": "1"}).encode()
    conn, response = web.open_stream("Subscribe", trimmed, "json")
    messages, end = read_stream(response)
    conn.close()
    assert messages == [] and end["error"]["code"] == "out_of_range"
    (oldest,) = end["metadata"][OLDEST_SEQUENCE_TRAILER]
    assert int(oldest) > 1


def test_subscribers_hear_unavailable_when_the_server_stops(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--web-listen", "127.0.0.1:0", durability="none")
    web = Web(web_port(server))
    conn, response = web.open_stream("Subscribe", b"{}", "json")
    idle = web.connection()
    assert web.post("Info", b"{}", connection=idle).status == 200  # a keep-alive, idle after
    try:
        assert server.stop() == 0
        messages, end = read_stream(response)
    finally:
        conn.close()
        idle.close()
    assert messages == [] and end["error"]["code"] == "unavailable"


# -- who may call -----------------------------------------------------------------------------


@pytest.fixture
def token_server(start_server: Callable[..., ServerProcess], tmp_path: Path) -> ServerProcess:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    return start_server("--web-listen", "127.0.0.1:0", "--token-file", str(path))


@pytest.fixture
def token_web(token_server: ServerProcess) -> Web:
    return Web(web_port(token_server))


def test_token_required(token_web: Web) -> None:
    missing = token_web.post("Info", b"{}")
    assert missing.status == 401 and missing.json()["code"] == "unauthenticated"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = token_web.post("Info", b"{}", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401 and wrong.json()["message"] == "wrong token"
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert token_web.post("Info", b"{}", headers=right).status == 200

    conn, response = token_web.open_stream("Subscribe", b"{}", "json")
    assert read_stream(response)[1]["error"]["code"] == "unauthenticated"
    conn.close()
    conn, response = token_web.open_stream(
        "GetStream", b'{"ref": {"name": "none"}}', "json", headers=right
    )
    assert read_stream(response)[1]["error"]["code"] == "not_found"
    conn.close()
    # With a token, any Host name is fine: DNS rebinding gains nothing without the token.
    named = token_web.post("Info", b"{}", headers={**right, "Host": "store.lab.example"})
    assert named.status == 200


def test_without_a_token_only_literal_hosts(web: Web) -> None:
    """A page on a rebound name (evil.example -> 127.0.0.1) gets nothing from a tokenless store."""
    rebound = web.post("Info", b"{}", headers={"Host": "evil.example:1234"})
    assert rebound.status == 403 and rebound.json()["code"] == "permission_denied"
    for host in ("localhost:80", "127.0.0.1", "[::1]:9"):
        assert web.post("Info", b"{}", headers={"Host": host}).status == 200


def test_cors(web: Web) -> None:
    """The configured origin may call (preflight, then the call); others may not."""

    def preflight(origin: str) -> http.client.HTTPResponse:
        conn = web.connection()
        conn.request("OPTIONS", SERVICE + "Put", headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,connect-protocol-version,authorization",
        })
        response = conn.getresponse()
        response.read()
        conn.close()
        return response

    allowed = preflight(DASHBOARD)
    assert allowed.status == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert allowed.headers["Access-Control-Allow-Methods"] == "POST"
    requested = {"content-type", "connect-protocol-version", "authorization", "connect-timeout-ms"}
    offered = allowed.headers["Access-Control-Allow-Headers"].lower().replace(" ", "").split(",")
    assert requested <= set(offered)
    assert preflight("http://elsewhere.example").status == 403

    call = web.post("Info", b"{}", headers={"Origin": DASHBOARD})
    assert call.status == 200 and call.headers["Access-Control-Allow-Origin"] == DASHBOARD
    refused = web.post("Info", b"{}", headers={"Origin": "http://elsewhere.example"})
    assert refused.status == 403 and refused.json()["code"] == "permission_denied"
    same_origin = web.post("Info", b"{}", headers={"Origin": f"http://127.0.0.1:{web.port}"})
    assert same_origin.status == 200
    assert web.post("Info", b"{}").headers["Access-Control-Allow-Origin"] is None  # no Origin


def test_every_status_has_a_connect_code() -> None:
    assert set(CONNECT_CODES) == set(Code) - {Code.OK}
    assert len({name for name, _ in CONNECT_CODES.values()}) == len(CONNECT_CODES)


def test_web_listen_beyond_loopback_needs_a_token() -> None:
    with pytest.raises(ValueError, match="web-listen"):
        ServerConfig(socket="", listen="127.0.0.1:0", web_listen="0.0.0.0:8080")
    ServerConfig(socket="", listen="127.0.0.1:0", web_listen="0.0.0.0:8080", insecure=True)


# -- connect-web, the browser's client ------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with tests/web_node/node_modules installed from its lock file."""
    node = need_program("node", NODE_HINT)
    npm_ci(NODE_DIR)
    return node


def write_descriptor_set(path: Path) -> None:
    """store.proto and its imports as a FileDescriptorSet, made by protoc (grpcio-tools): its
    descriptors carry the JSON names that connect-web's JSON format reads and writes."""
    protoc = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", "--include_imports",
         f"--descriptor_set_out={path}", "improv_store/v1/store.proto"],
        capture_output=True, text=True, timeout=NODE_RUN_TIMEOUT, check=False,
    )
    assert protoc.returncode == 0, protoc.stderr


@pytest.mark.parametrize("with_token", [False, True], ids=["no-token", "token"])
def test_connect_web_client(
    request: pytest.FixtureRequest, node: str, tmp_path: Path, with_token: bool
) -> None:
    """connect-web (in Node, on fetch) calls the store; Python reads back what it stored."""
    server: ServerProcess = request.getfixturevalue("token_server" if with_token else "web_server")
    prefix = f"connect-web-{'token' if with_token else 'open'}/"
    large = os.urandom((10 << 20) + 12345)
    with server.client(tcp=True, token=TOKEN if with_token else None) as store:
        store.put(large, prefix + "large")
    descriptors = tmp_path / "store.binpb"
    write_descriptor_set(descriptors)
    env = {
        **os.environ,
        "IMPROV_STORE_WEB_URL": f"http://127.0.0.1:{web_port(server)}",
        "IMPROV_STORE_DESCRIPTORS": str(descriptors),
        "IMPROV_STORE_TOKEN": TOKEN if with_token else "",
        "IMPROV_STORE_TEST_PREFIX": prefix,
        "IMPROV_STORE_LARGE_NAME": prefix + "large",
        "IMPROV_STORE_LARGE_SHA256": hashlib.sha256(large).hexdigest(),
    }
    run = subprocess.run(
        [node, "--test", "--test-reporter=tap", str(NODE_TEST)],
        cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=NODE_RUN_TIMEOUT,
        check=False,
    )
    output = f"node --test exited {run.returncode}:\n{run.stdout}\n{run.stderr}"
    summary = tap_summary(run.stdout)
    assert run.returncode == 0, output
    expected = NODE_TESTS if with_token else NODE_TESTS[:-1]
    assert summary.get("pass") == len(expected) and summary.get("fail") == 0, output
    for name in expected:
        assert re.search(rf"^ok \d+ - {re.escape(name)}$", run.stdout, re.MULTILINE), output

    with server.client(tcp=True, token=TOKEN if with_token else None) as store:
        for format in ("JSON", "binary"):
            name = f"{prefix}{format}"
            assert store.get(name) == f"stored by connect-web in {format}".encode()
            assert store.stat(name).labels == {"writer": "connect-web"}
        events = [info.name for info in store.list(prefix + "events/")]
        assert events == [f"{prefix}events/{index}" for index in range(3)]
