"""Who may call the server: a bearer token checked on every RPC, and TLS for TCP.

The token, when configured, guards every gRPC listener (TCP and the unix
socket) and every method except the standard health service, so probes and
the container healthcheck need no secret. Missing and wrong tokens both end
the call with UNAUTHENTICATED before any request message is parsed. The lane
checks the same token when a connection opens (``Handlers.Open``).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import stat
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health

log = logging.getLogger(__name__)

_OPEN_PREFIX = f"/{health.SERVICE_NAME}/"


def load_token(path: str) -> str:
    """The token in ``path`` (surrounding whitespace stripped); ValueError if none.

    Warns when the file is readable by group or others: anyone who can read
    it can call the store.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
            mode = os.fstat(handle.fileno()).st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the token file {path}: {exc}") from None
    if not token:
        raise ValueError(f"the token file {path} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "the token file %s is readable by group or others (mode %04o); chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )
    return token


def is_loopback(listen: str) -> bool:
    """Whether a ``host:port`` listen address only accepts connections from this host."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or empty (every interface)
        return False


def read_file(path: str) -> bytes:
    """A PEM file's bytes, with an error message that names what it was for."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise RuntimeError(f"cannot read {path}: {exc.strerror}") from None


def server_credentials(cert: str, key: str, client_ca: str) -> grpc.ServerCredentials:
    """TLS for the TCP listener; with ``client_ca``, clients must show a certificate it signed."""
    return grpc.ssl_server_credentials(
        [(read_file(key), read_file(cert))],
        root_certificates=read_file(client_ca) if client_ca else None,
        require_client_auth=bool(client_ca),
    )


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call without ``authorization: Bearer <token>``, except health checks."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_OPEN_PREFIX):
            return handler
        presented = _authorization(handler_call_details.invocation_metadata)
        if presented is None:
            return _refusal(handler, "this store requires a token (authorization: Bearer ...)")
        if not hmac.compare_digest(presented.encode(), self._expected):
            return _refusal(handler, "wrong token")
        return handler


def _authorization(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape that ends the call with UNAUTHENTICATED.

    Requests stay undeserialized: nothing from an unauthenticated caller is parsed.
    """

    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, None, serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, None, serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, None, serializer)
    return grpc.unary_unary_rpc_method_handler(refuse, None, serializer)
