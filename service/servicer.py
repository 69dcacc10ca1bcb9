"""The gRPC face of the store: translates messages to Store calls and errors to statuses."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import crc32c
import grpc
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

from .errors import StoreError, invalid
from .objects import StoredObject
from .store import Store

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# A BatchGet response carries at most this many payload bytes; the rest are
# marked payload_omitted for the client to stream.
BATCH_PAYLOAD_BUDGET = 16 << 20


def _statuses(method: F) -> F:
    """Turn StoreError into its gRPC status, and anything unexpected into INTERNAL."""

    def abort(context: grpc.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, StoreError):
            if exc.trailers:
                context.set_trailing_metadata(exc.trailers)
            context.abort(exc.code, exc.message)
        log.exception("unexpected error in %s", method.__name__)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    if method.__name__ in ("GetStream", "Subscribe"):

        @functools.wraps(method)
        def streaming(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except Exception as exc:
                abort(context, exc)

        return streaming  # type: ignore[return-value]

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            abort(context, exc)

    return unary  # type: ignore[return-value]


def _wait_seconds(request: Any, context: grpc.ServicerContext) -> float:
    """The requested wait, capped by the call's own deadline."""
    if not request.HasField("wait"):
        return 0.0
    wait = request.wait.ToTimedelta().total_seconds()
    if wait < 0:
        raise invalid("wait must not be negative")
    remaining = context.time_remaining()
    return min(wait, remaining) if remaining is not None else wait


class StoreServicer(store_pb2_grpc.StoreServiceServicer):
    """Implements improv_store.v1.StoreService over a Store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._inline_limit = store.config.inline_limit

    @_statuses
    def Put(self, request: pb.PutRequest, context: grpc.ServicerContext) -> pb.PutResponse:
        data = request.data  # each access to a bytes field copies it: read it once
        if len(data) > self._inline_limit:
            raise invalid(f"inline payload above {self._inline_limit} bytes: use PutStream")
        return pb.PutResponse(meta=self._store.put(request.spec, data).meta)

    @_statuses
    def Replace(
        self, request: pb.ReplaceRequest, context: grpc.ServicerContext
    ) -> pb.ReplaceResponse:
        data = request.data
        if len(data) > self._inline_limit:
            raise invalid(f"inline payload above {self._inline_limit} bytes: use PutStream")
        stored = self._store.put(request.spec, data, replace=True)
        return pb.ReplaceResponse(meta=stored.meta, replaced_ids=stored.replaced_ids)

    @_statuses
    def PutStream(
        self, request_iterator: Iterator[pb.PutStreamRequest], context: grpc.ServicerContext
    ) -> pb.PutStreamResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise invalid("a PutStream must start with a header")
        header = first.header
        self._store.check_new(header.spec, header.size)
        payload = bytearray(header.size)
        received = 0
        checksum = 0
        for message in request_iterator:
            if message.WhichOneof("part") != "chunk":
                raise invalid("only chunks may follow the header")
            chunk = message.chunk
            end = received + len(chunk)
            if end > header.size:
                raise invalid(f"chunks exceed the declared size of {header.size} bytes")
            payload[received:end] = chunk
            checksum = crc32c.crc32c(chunk, checksum)
            received = end
        if received != header.size:
            raise invalid(f"stream ended after {received} of {header.size} bytes")
        stored = self._store.put(
            header.spec, memoryview(payload).toreadonly(), replace=header.replace, checksum=checksum
        )
        return pb.PutStreamResponse(meta=stored.meta, replaced_ids=stored.replaced_ids)

    @_statuses
    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> pb.GetResponse:
        obj = self._store.get(request.ref, _wait_seconds(request, context))
        if request.metadata_only:
            return pb.GetResponse(meta=obj.meta)
        if obj.meta.size > self._inline_limit:
            return pb.GetResponse(meta=obj.meta, payload_omitted=True)
        return pb.GetResponse(meta=obj.meta, data=self._payload_bytes(obj))

    @_statuses
    def GetStream(
        self, request: pb.GetStreamRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetStreamResponse]:
        chunk_size = min(request.chunk_size or self._inline_limit, self._inline_limit)
        obj = self._store.get(request.ref, _wait_seconds(request, context))
        view = memoryview(self._store.payload(obj))
        yield pb.GetStreamResponse(meta=obj.meta)
        for offset in range(0, len(view), chunk_size):
            yield pb.GetStreamResponse(chunk=bytes(view[offset : offset + chunk_size]))

    @_statuses
    def BatchGet(
        self, request: pb.BatchGetRequest, context: grpc.ServicerContext
    ) -> pb.BatchGetResponse:
        results = self._store.get_many(list(request.refs), _wait_seconds(request, context))
        response = pb.BatchGetResponse()
        budget = BATCH_PAYLOAD_BUDGET
        for found in results:
            item = response.results.add()
            try:
                if isinstance(found, StoreError):
                    raise found
                item.meta.CopyFrom(found.meta)
                if found.meta.size <= min(budget, self._inline_limit):
                    item.data = self._payload_bytes(found)
                    budget -= found.meta.size
                else:
                    item.payload_omitted = True
            except StoreError as exc:
                item.Clear()
                item.code = exc.code.value[0]
                item.message = exc.message
        return response

    @_statuses
    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        return pb.DeleteResponse(deleted_ids=self._store.delete(request.ref))

    @_statuses
    def List(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.ListResponse:
        metas, token = self._store.list(request.prefix, request.page_size, request.page_token)
        return pb.ListResponse(objects=metas, next_page_token=token)

    @_statuses
    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoResponse:
        return self._store.info()

    @_statuses
    def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SubscribeResponse]:
        since = request.since_sequence if request.HasField("since_sequence") else None
        subscription = self._store.subscribe(request.prefix, since)
        context.add_callback(subscription.close)
        for event in subscription:
            yield pb.SubscribeResponse(event=event)

    def _payload_bytes(self, obj: StoredObject) -> bytes:
        payload = self._store.payload(obj)
        return payload if isinstance(payload, bytes) else bytes(payload)
