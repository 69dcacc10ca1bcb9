"""The gRPC face of the store: each RPC calls its handler, waits for a write's commit,
and turns a StoreError into the call's status and trailing metadata.

The RPCs are made from the service descriptor: a unary RPC needs only its
handler (``service/handlers.py``), found by name; the four streaming ones tie
their handler to the call in ``StreamingRpcs``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import Message

from improv_store.protocol import SERVICE_NAME, Code, parse
from improv_store.v1 import store_pb2 as pb

from .handlers import Handlers, Pending, UnaryHandler, as_store_error, checked

log = logging.getLogger(__name__)

_GRPC_STATUS: dict[Code, grpc.StatusCode] = {
    Code.of(status.value[0]): status for status in grpc.StatusCode
}


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> None:
    """End the call with the status of ``exc`` (INTERNAL if it is no StoreError), by
    raising what ``context.abort`` raises."""
    if isinstance(exc, grpc.RpcError):  # reading a client stream the client abandoned
        log.debug("%s: the client went away mid-stream", method)
        context.abort(grpc.StatusCode.CANCELLED, "the client cancelled the call")
    error = as_store_error(exc, method)
    if error.trailers:
        context.set_trailing_metadata(tuple(error.trailers.items()))
    context.abort(_GRPC_STATUS[error.code], error.message)


def _calling(handler: UnaryHandler) -> Callable[[Any, grpc.ServicerContext], Any]:
    """A unary handler called with what gRPC gives: the parsed request, the time left."""

    def respond(request: Any, context: grpc.ServicerContext) -> Message | Pending:
        return handler(checked(request), context.time_remaining())

    return respond


def _single(
    method: str,
    respond: Callable[[Any, grpc.ServicerContext], Message | Pending],
    settle: Callable[[Message | Pending], Message],
) -> Callable[[Any, grpc.ServicerContext], Any]:
    """The behaviour of an RPC with one response: the handler's, sent once a write's
    commit is durable; an error ends the call with its status."""

    def call(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return settle(respond(request, context))
        except Exception as exc:
            _abort(context, exc, method)

    return call


def _streaming(
    method: str, respond: Callable[[Any, grpc.ServicerContext], Iterator[Any]]
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """The behaviour of an RPC with a stream of responses; an error ends the call with
    its status."""

    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from respond(request, context)
        except Exception as exc:
            _abort(context, exc, method)

    return call


class StreamingRpcs:
    """The streaming RPCs, which tie a handler to the call's end (and its deadline)."""

    def __init__(self, handlers: Handlers) -> None:
        self._handlers = handlers

    def PutStream(self, raw_requests: Iterator[bytes], context: grpc.ServicerContext) -> Pending:
        """Takes serialized PutStreamRequests (chunks are sliced by the handler, not parsed)."""
        return self._handlers.PutStream(raw_requests, context.add_callback)

    def GetStream(self, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Yields serialized GetStreamResponses."""
        return self._handlers.GetStream(
            checked(request), context.time_remaining(), context.add_callback
        )

    def Session(
        self, requests: Iterator[pb.SessionRequest | str], context: grpc.ServicerContext
    ) -> Iterator[pb.SessionResponse]:
        return self._handlers.Session(requests, context.add_callback)

    def Subscribe(
        self, request: Any, context: grpc.ServicerContext
    ) -> Iterator[pb.SubscribeResponse]:
        events = self._handlers.Subscribe(checked(request))
        if not context.add_callback(events.close):
            events.close()  # the call ended before the callback could be registered
            return
        yield from events


def method_handlers(handlers: Handlers) -> dict[str, grpc.RpcMethodHandler]:
    """Every StoreService method, by name, for ``server.add_registered_method_handlers``.

    Requests are parsed by ``protocol.parse``, which never raises: grpcio answers
    a deserializer's exception with INTERNAL before any of our code runs, and
    bytes that are not a valid request are the client's error, INVALID_ARGUMENT.
    PutStream's requests and GetStream's responses stay serialized: the handlers
    read and write their chunks as bytes (``improv_store.chunks``), so bulk data
    is copied once each way instead of going through protobuf objects.
    """
    streaming = StreamingRpcs(handlers)
    rpcs = {}
    for method in _SERVICE.methods:
        name = method.name
        if method.client_streaming or method.server_streaming:
            respond = getattr(streaming, name)
        else:
            respond = _calling(getattr(handlers, name))
        if method.server_streaming:
            behaviour = _streaming(name, respond)
        else:
            behaviour = _single(name, respond, handlers.settle)
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        rpcs[name] = _KINDS[method.client_streaming, method.server_streaming](
            behaviour,
            request_deserializer=(
                None if name in _RAW_REQUESTS else functools.partial(parse, request_type)
            ),
            response_serializer=None if name in _RAW_RESPONSES else response_type.SerializeToString,
        )
    return rpcs


_SERVICE = pb.DESCRIPTOR.services_by_name["StoreService"]
_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
# The RPCs whose requests, or responses, the handlers take or give serialized.
_RAW_REQUESTS = frozenset({"PutStream"})
_RAW_RESPONSES = frozenset({"GetStream"})


def add_to_server(handlers: Handlers, server: grpc.Server) -> None:
    """Serve StoreService on ``server`` through ``handlers``."""
    rpcs = method_handlers(handlers)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, rpcs),))
    server.add_registered_method_handlers(SERVICE_NAME, rpcs)
