"""The client's credentials: a bearer token on every call, and TLS for TCP addresses.

Explicit arguments win; otherwise IMPROV_STORE_TOKEN (the token itself) or
IMPROV_STORE_TOKEN_FILE, and IMPROV_STORE_TLS_CA / _TLS_CERT / _TLS_KEY /
_TLS_SERVER_NAME, with IMPROV_STORE_TLS=1 for TLS with the system's roots.
TLS applies to TCP addresses only: the server's unix socket is plaintext,
guarded by file permissions, so one environment serves both kinds of address.
"""

from __future__ import annotations

import os
from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc


def resolve_token(token: str | None, token_file: str | None) -> str | None:
    """The token to send: ``token``, else ``token_file``'s content, else the environment's."""
    if token:
        return token
    if token_file:
        return _read_token(token_file)
    if os.environ.get("IMPROV_STORE_TOKEN"):
        return os.environ["IMPROV_STORE_TOKEN"]
    if os.environ.get("IMPROV_STORE_TOKEN_FILE"):
        return _read_token(os.environ["IMPROV_STORE_TOKEN_FILE"])
    return None


def _read_token(path: str) -> str:
    """The token in ``path``, whitespace stripped, as the server reads its own token file."""
    with open(path, encoding="utf-8") as handle:
        token = handle.read().strip()
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token


@dataclass(frozen=True)
class TlsSettings:
    """Where the certificates for a TLS channel are; None fields use gRPC's defaults."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None

    @classmethod
    def resolve(
        cls,
        tls: bool | None,
        ca: str | None,
        cert: str | None,
        key: str | None,
        server_name: str | None,
    ) -> TlsSettings | None:
        """The settings from arguments and environment, or None when TLS is off.

        TLS is on when asked for, or (``tls`` None) when IMPROV_STORE_TLS is set
        or a CA or client certificate is given.
        """
        env = os.environ.get
        ca = ca or env("IMPROV_STORE_TLS_CA") or None
        cert = cert or env("IMPROV_STORE_TLS_CERT") or None
        key = key or env("IMPROV_STORE_TLS_KEY") or None
        server_name = server_name or env("IMPROV_STORE_TLS_SERVER_NAME") or None
        if tls is None:
            flag = env("IMPROV_STORE_TLS", "").lower() in ("1", "true", "yes", "on")
            tls = flag or bool(ca or cert)
        if not tls:
            return None
        if bool(cert) != bool(key):
            raise ValueError("a client certificate needs both tls_cert and tls_key")
        return cls(ca, cert, key, server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC's credentials from these files, read now (a missing file fails here)."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.key),
            certificate_chain=_read(self.cert),
        )


def _read(path: str | None) -> bytes | None:
    """The file's bytes; None (gRPC's default) when there is no file."""
    if path is None:
        return None
    with open(path, "rb") as handle:
        return handle.read()


def open_channel(
    address: str,
    options: Sequence[tuple[str, Any]],
    token: str | None,
    tls: TlsSettings | None,
) -> grpc.Channel:
    """A channel to ``address`` that uses TLS (TCP only) and sends ``token`` on every call."""
    if tls is not None and not address.startswith("unix:"):
        if tls.server_name:
            options = [*options, ("grpc.ssl_target_name_override", tls.server_name)]
        channel = grpc.secure_channel(address, tls.credentials(), options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    if token:
        channel = grpc.intercept_channel(channel, _BearerToken(token))
    return channel


class _CallDetails(
    namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """ClientCallDetails with a constructor: gRPC's own class is abstract, and an
    interceptor must pass on a copy to add metadata."""


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call, unary or streaming."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._header],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def _intercept(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    intercept_unary_unary = _intercept
    intercept_unary_stream = _intercept
    intercept_stream_unary = _intercept
    intercept_stream_stream = _intercept
