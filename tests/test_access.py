"""Access control: bearer tokens on every RPC, TLS and mutual TLS on TCP, safe defaults.

Certificates are made per test session with ``cryptography``: a CA, a server
certificate for 127.0.0.1 and localhost, a client certificate from that CA,
and a second, unrelated CA with a client certificate of its own.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import ServerProcess, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_cli import run_cli
from test_lane import RawLane, subscription_path, wait_until

from improv_store.client import StoreClient, StoreUnavailable, Unauthenticated
from improv_store.client.lane import LaneSubscription
from improv_store.service.access import load_token
from improv_store.service.arena import SHM_DIR
from improv_store.service.config import ServerConfig
from improv_store.service.locality import store_prefix
from improv_store.v1 import store_pb2 as pb

TOKEN = "s3cret-token-for-tests"
EXIT_UNREACHABLE = 3
EXIT_ACCESS_DENIED = 5
SERVICE = "/improv_store.v1.StoreService/"

# -- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files the TLS tests use."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str
    other_client_cert: str
    other_client_key: str


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> str:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return str(path)


def _write_cert(path: Path, cert: x509.Certificate) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    """A certificate for ``key``, self-signed (a CA) when ``issuer`` is None."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signing_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _authority(directory: Path, label: str) -> tuple[x509.Name, ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(f"improv-store test {label}", key, None)
    return cert.subject, key, _write_cert(directory / f"{label}.pem", cert)


def _leaf(
    directory: Path,
    label: str,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey],
    sans: list[x509.GeneralName] | None = None,
) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(label, key, issuer, sans)
    return (
        _write_cert(directory / f"{label}.pem", cert),
        _write_key(directory / f"{label}.key", key),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_name, ca_key, ca = _authority(directory, "ca")
    other_name, other_key, other_ca = _authority(directory, "other-ca")
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_cert, server_key = _leaf(directory, "server", (ca_name, ca_key), sans)
    client_cert, client_key = _leaf(directory, "client", (ca_name, ca_key))
    other_cert, other_key_path = _leaf(directory, "other-client", (other_name, other_key))
    return Pki(
        ca, server_cert, server_key, client_cert, client_key, other_ca, other_cert, other_key_path
    )


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def token_server(start_server: Callable[..., ServerProcess], token_file: str) -> ServerProcess:
    return start_server("--token-file", token_file)


def _roundtrip(client: StoreClient, name: str) -> None:
    """A put and a get of an array through ``client`` that must succeed."""
    frame = np.arange(1000, dtype=np.uint16)
    with client:
        client.put(frame, name=name)
        np.testing.assert_array_equal(client.get(name), frame)


# -- tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
def test_token_required(token_server: ServerProcess, token_file: str, tcp: bool) -> None:
    """Without the token or with a wrong one calls are refused; with it, they work."""
    for token in (None, "wrong-token", TOKEN[:-1]):
        with token_server.client(tcp=tcp, token=token) as client:
            with pytest.raises(Unauthenticated) as refused:
                client.put(b"x", name="refused")
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    _roundtrip(token_server.client(tcp=tcp, token=TOKEN), "with_token")
    _roundtrip(token_server.client(tcp=tcp, token_file=token_file), "with_token_file")
    with token_server.client(tcp=tcp, token=TOKEN) as client:
        assert [info.name for info in client.list()] == ["with_token", "with_token_file"]


def _raw_call(channel: grpc.Channel, kind: str, method: str, metadata: list) -> None:
    """One call of any shape with empty messages, run until the server ends it."""
    if kind == "unary_unary":
        channel.unary_unary(method)(b"", metadata=metadata, timeout=10)
    elif kind == "unary_stream":
        list(channel.unary_stream(method)(b"", metadata=metadata, timeout=10))
    elif kind == "stream_unary":
        channel.stream_unary(method)(iter([b""]), metadata=metadata, timeout=10)
    else:
        list(channel.stream_stream(method)(iter([b""]), metadata=metadata, timeout=10))


CALLS = [
    ("unary_unary", SERVICE + "Info"),
    ("unary_stream", SERVICE + "Subscribe"),
    ("unary_stream", SERVICE + "GetStream"),
    ("stream_unary", SERVICE + "PutStream"),
    ("stream_stream", SERVICE + "Session"),
    ("stream_stream", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
    ("stream_stream", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
]


@pytest.mark.parametrize("kind,method", CALLS, ids=[m.rsplit("/", 1)[1] for _, m in CALLS])
def test_every_kind_of_call_needs_the_token(
    token_server: ServerProcess, kind: str, method: str
) -> None:
    """Unary, server-, client- and bidi-streaming calls (the bulk handlers too) are refused."""
    with grpc.insecure_channel(token_server.unix_address) as channel:
        for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", TOKEN)]):
            with pytest.raises(grpc.RpcError) as refused:
                _raw_call(channel, kind, method, metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        # The right token gets past the check: a GetStream naming nothing is INVALID_ARGUMENT.
        with pytest.raises(grpc.RpcError) as missing:
            right = [("authorization", f"Bearer {TOKEN}")]
            _raw_call(channel, "unary_stream", SERVICE + "GetStream", right)
        assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_client_streams_with_wrong_token(token_server: ServerProcess) -> None:
    """The client's own streams (Subscribe, PutStream) raise Unauthenticated too."""
    with token_server.client(token="wrong", transfer="inline") as client:
        with pytest.raises(Unauthenticated):
            next(iter(client.subscribe("")))
        with pytest.raises(Unauthenticated):
            client.put(bytes(5 << 20), name="big")  # above the inline limit: PutStream


def test_lane_subscriptions_need_the_token(token_server: ServerProcess) -> None:
    """A colocated client's subscription takes the lane with its token and gets events; a
    lane subscription with a wrong token or none is refused UNAUTHENTICATED, and one that
    skips the opening frame INVALID_ARGUMENT; neither is registered."""
    path = token_server.socket_path + ".lane"
    with token_server.client(token=TOKEN) as client:
        with client.subscribe(since=1) as subscription:
            assert subscription_path(subscription) == "lane"
            stored = client.put(b"behind the token", name="secret")
            assert next(iter(subscription)).object.id == stored
        for token in (None, "wrong"):
            with pytest.raises(Unauthenticated):
                LaneSubscription(path, token, pb.SubscribeRequest())
        skipped = RawLane(path, open_session=False)
        skipped.subscribe(pb.SubscribeRequest())
        assert skipped.read()[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert skipped.hung_up()
        wait_until(lambda: client.info().subscriber_count == 0, "no subscriber left")


def test_health_stays_open(token_server: ServerProcess) -> None:
    """Probes need no token: the client's health() and the CLI's health both answer."""
    with token_server.client(tcp=True) as client:
        assert client.health() == "SERVING"
    result = run_cli("health", address=token_server.unix_address)
    assert result.returncode == 0 and result.stdout.decode().strip() == "SERVING"


def test_cli_token(token_server: ServerProcess, token_file: str, tmp_path: Path) -> None:
    """The CLI takes --token-file or $IMPROV_STORE_TOKEN[_FILE]; refusals exit 5."""
    address = token_server.tcp_address
    result = run_cli(
        "put", "-", "--name", "cli", "--token-file", token_file, address=address, stdin=b"hello"
    )
    assert result.returncode == 0, result.stderr.decode()
    for env in ({"IMPROV_STORE_TOKEN_FILE": token_file}, {"IMPROV_STORE_TOKEN": TOKEN}):
        result = run_cli("get", "cli", address=address, env=env)
        assert result.returncode == 0 and result.stdout == b"hello", result.stderr.decode()
    wrong = tmp_path / "wrong"
    wrong.write_text("not the token")
    refusals = (([], {}), (["--token-file", str(wrong)], {}), ([], {"IMPROV_STORE_TOKEN": "x"}))
    for extra, env in refusals:
        result = run_cli("ls", *extra, address=address, env=env)
        assert result.returncode == EXIT_ACCESS_DENIED, result.stderr.decode()
        assert "access refused" in result.stderr.decode()


# -- TLS ----------------------------------------------------------------------------------


def test_tls(start_server: Callable[..., ServerProcess], pki: Pki) -> None:
    """The right CA works; a wrong CA or a plaintext client is refused."""
    server = start_server("--tls-cert", pki.server_cert, "--tls-key", pki.server_key)
    _roundtrip(server.client(tcp=True, tls_ca=pki.ca, transfer="inline", timeout=10), "tls")
    for kwargs in ({"tls_ca": pki.other_ca}, {"tls": False}):
        client = server.client(tcp=True, transfer="inline", timeout=10, **kwargs)
        with client, pytest.raises(StoreUnavailable):
            client.info()
    result = run_cli("get", "tls", "--tls-ca", pki.ca, address=server.tcp_address)
    assert result.returncode == 0 and result.stdout.startswith(b"\x93NUMPY"), result.stderr
    result = run_cli("info", address=server.tcp_address, env={"IMPROV_STORE_TLS_CA": pki.other_ca})
    assert result.returncode == EXIT_UNREACHABLE, result.stderr.decode()
    result = run_cli("health", address=server.tcp_address, env={"IMPROV_STORE_TLS_CA": pki.ca})
    assert result.returncode == 0 and result.stdout.decode().strip() == "SERVING"


def test_mutual_tls(start_server: Callable[..., ServerProcess], pki: Pki, token_file: str) -> None:
    """With --tls-client-ca a client needs a certificate from that CA (and the token)."""
    server = start_server(
        "--tls-cert",
        pki.server_cert,
        "--tls-key",
        pki.server_key,
        "--tls-client-ca",
        pki.ca,
        "--token-file",
        token_file,
    )
    client_cert = {"tls_cert": pki.client_cert, "tls_key": pki.client_key}
    base = {"tcp": True, "tls_ca": pki.ca, "transfer": "inline", "timeout": 10}
    for kwargs in ({}, {"tls_cert": pki.other_client_cert, "tls_key": pki.other_client_key}):
        client = server.client(**base, token=TOKEN, **kwargs)
        with client, pytest.raises(StoreUnavailable):
            client.info()
    client = server.client(**base, **client_cert)
    with client, pytest.raises(Unauthenticated):
        client.info()
    _roundtrip(server.client(**base, token=TOKEN, **client_cert), "mtls")
    env = {
        "IMPROV_STORE_TLS_CA": pki.ca,
        "IMPROV_STORE_TLS_CERT": pki.client_cert,
        "IMPROV_STORE_TLS_KEY": pki.client_key,
        "IMPROV_STORE_TOKEN_FILE": token_file,
    }
    result = run_cli("ls", address=server.tcp_address, env=env)
    assert result.returncode == 0 and "mtls" in result.stdout.decode(), result.stderr.decode()


# -- configuration ------------------------------------------------------------------------


def _serve(*flags: str) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` with flags that must make it refuse to start."""
    command = [sys.executable, "-m", "improv_store.service", "--durability", "none", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_network_bind_needs_credentials_or_insecure(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """0.0.0.0 without TLS or a token refuses to start; --insecure starts, with a warning."""
    port = free_port()
    listen = f"0.0.0.0:{port}"
    result = _serve("--socket", str(tmp_path / "s.sock"), "--listen", listen)
    assert result.returncode != 0
    assert "without TLS or a token" in result.stderr and "--insecure" in result.stderr
    server = start_server("--listen", listen, "--insecure")
    assert "WARNING" in server.log() and "--insecure" in server.log()
    with StoreClient(f"127.0.0.1:{port}", transfer="inline") as client:
        assert client.health() == "SERVING"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"listen": "0.0.0.0:1"}, "without TLS or a token"),
        ({"listen": "[::]:1"}, "without TLS or a token"),
        ({"listen": ":1"}, "without TLS or a token"),
        ({"tls_cert": "cert.pem"}, "both --tls-cert and --tls-key"),
        ({"tls_key": "key.pem"}, "both --tls-cert and --tls-key"),
        ({"tls_client_ca": "ca.pem"}, "--tls-client-ca needs"),
        ({"token_file": "/nonexistent/token"}, "cannot read the token file"),
        ({"socket_mode": 0o1777}, "socket_mode"),
    ],
)
def test_bad_access_configuration(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("-", r"\-")):
        ServerConfig(**kwargs)


@pytest.mark.parametrize("listen", ["127.0.0.1:1", "127.3.4.5:1", "localhost:1", "[::1]:1", ""])
def test_loopback_binds_need_nothing(listen: str) -> None:
    assert not ServerConfig(listen=listen, socket="s").open_to_network()


def test_refusal_exits_nonzero_with_message(tmp_path: Path) -> None:
    """A bad combination ends ``serve`` before it binds anything, with the reason."""
    result = _serve("--socket", str(tmp_path / "s.sock"), "--tls-key", "key.pem")
    assert result.returncode == 2
    assert "both --tls-cert and --tls-key" in result.stderr
    assert not (tmp_path / "s.sock").exists()


def test_token_file_checks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Whitespace is stripped; empty files are refused; loose permissions draw a warning."""
    path = tmp_path / "token"
    path.write_text("  \n")
    path.chmod(0o600)
    with pytest.raises(ValueError, match="empty"):
        load_token(str(path))
    path.write_text(f"\n{TOKEN}\n")
    with caplog.at_level(logging.WARNING):
        assert load_token(str(path)) == TOKEN
        assert not caplog.records
        path.chmod(0o644)
        assert load_token(str(path)) == TOKEN
    assert "readable by group or others" in caplog.text


# -- file permissions ---------------------------------------------------------------------


def test_socket_mode(start_server: Callable[..., ServerProcess]) -> None:
    default = start_server()
    assert stat.S_IMODE(os.stat(default.socket_path).st_mode) == 0o600
    shared = start_server("--socket-mode", "0660")
    assert stat.S_IMODE(os.stat(shared.socket_path).st_mode) == 0o660


def test_shared_memory_is_owner_only(server: ServerProcess) -> None:
    """Segments, the lock and the locality token in /dev/shm: no access for group or others."""
    with server.client(transfer="shm") as client:
        client.put(np.zeros(1 << 20, dtype=np.uint8), name="resident")
        prefix = store_prefix(server.data_dir)
        files = [name for name in os.listdir(SHM_DIR) if name.startswith(prefix)]
        assert prefix + "token" in files and len(files) >= 3, files
        for name in files:
            mode = stat.S_IMODE(os.stat(os.path.join(SHM_DIR, name)).st_mode)
            assert mode & 0o077 == 0, (name, oct(mode))


@pytest.fixture(autouse=True)
def _no_inherited_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests decide the credentials: none may come from the calling environment."""
    for name in list(os.environ):
        if name.startswith(("IMPROV_STORE_TOKEN", "IMPROV_STORE_TLS")):
            monkeypatch.delenv(name)
    yield
