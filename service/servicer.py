"""The gRPC face of the store: translates messages to Store calls and errors to statuses."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import crc32c
import grpc
from google.protobuf.message import DecodeError, Message

from improv_store import chunks
from improv_store.protocol import Code
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

from . import validation
from .committer import Ticket
from .errors import StoreError, exhausted, invalid
from .objects import StoredObject
from .store import Store
from .validation import check_batch

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# A BatchGet response carries at most this many inline payload bytes; the rest
# are marked payload_omitted for the client to stream.
BATCH_PAYLOAD_BUDGET = 16 << 20

_SHM_TRANSFERS = (pb.TRANSFER_SHM, pb.TRANSFER_AUTO)
_GRPC_STATUS = {code.value[0]: code for code in grpc.StatusCode}


def grpc_status(code: Code) -> grpc.StatusCode:
    """The gRPC status of a core status code."""
    return _GRPC_STATUS[int(code)]


def _statuses(method: F) -> F:
    """Turn StoreError into its gRPC status, and anything unexpected into INTERNAL."""

    def abort(context: grpc.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, StoreError):
            if exc.trailers:
                context.set_trailing_metadata(tuple(exc.trailers.items()))
            context.abort(grpc_status(exc.code), exc.message)
        if isinstance(exc, grpc.RpcError):  # reading a client stream the client abandoned
            log.debug("%s: the client went away mid-stream", method.__name__)
            context.abort(grpc.StatusCode.CANCELLED, "the client cancelled the call")
        log.exception("unexpected error in %s", method.__name__)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streaming(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, _parsed(request), context)
            except Exception as exc:
                abort(context, exc)

        return streaming  # type: ignore[return-value]

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, _parsed(request), context)
        except Exception as exc:
            abort(context, exc)

    return unary  # type: ignore[return-value]


class _Malformed:
    """A request that did not parse (see ``_lenient``)."""

    def __init__(self, message: str) -> None:
        self.message = message


def _lenient(message_type: type[Message]) -> Callable[[bytes], Any]:
    """A request deserializer that never fails: the handler refuses what did not parse.

    grpcio answers a deserializer's exception with INTERNAL before any of our code
    runs; bytes that are not a valid request are the client's error, INVALID_ARGUMENT.
    """

    def parse(raw: bytes) -> Any:
        try:
            return message_type.FromString(raw)
        except DecodeError as exc:
            return _Malformed(f"malformed {message_type.__name__}: {exc}")

    return parse


def _parsed(request: Any) -> Any:
    """The request, or INVALID_ARGUMENT if it did not parse."""
    if isinstance(request, _Malformed):
        raise invalid(request.message)
    return request


class StreamSlots:
    """Counts open PutStream, GetStream and Session streams against ``max_streams``.

    Each open stream holds a server thread for as long as it lasts; the limit
    keeps threads free for unary calls however many streams clients open.
    Subscribe streams have their own limit (``max_subscribers``).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        """Streams holding a slot now."""
        return self._open

    @contextlib.contextmanager
    def hold(self, context: grpc.ServicerContext) -> Iterator[None]:
        """A slot for the stream of ``context``, given back when it ends, however it ends.

        RESOURCE_EXHAUSTED when all are taken.
        """
        with self._lock:
            if self._open >= self.limit:
                raise exhausted(
                    "too many open streams: PutStream, GetStream and Session together are"
                    f" limited to {self.limit} (the server's max_streams)"
                )
            self._open += 1
        held = [True]

        def release() -> None:
            with self._lock:
                if held[0]:
                    held[0] = False
                    self._open -= 1

        # A cancelled stream may never resume its handler: the callback gives the slot back.
        if not context.add_callback(release):
            release()  # the call ended before the callback could be registered
            raise StoreError(grpc.StatusCode.CANCELLED, "the call ended as it started")
        try:
            yield
        finally:
            release()


def _wait_seconds(request: Any, context: grpc.ServicerContext) -> float:
    """The requested wait, capped by the call's own deadline."""
    if not request.HasField("wait"):
        return 0.0
    wait = validation.wait_seconds(request.wait)
    remaining = context.time_remaining()
    return min(wait, remaining) if remaining is not None else wait


_Write = (pb.PutRequest | pb.ReplaceRequest | pb.DeleteRequest | pb.SealRequest
          | pb.BatchPutRequest)


class StoreServicer(store_pb2_grpc.StoreServiceServicer):
    """Implements improv_store.v1.StoreService over a Store."""

    def __init__(
        self,
        store: Store,
        stats: Callable[[], pb.ServerStats] | None = None,
        lane_socket: str = "",
    ) -> None:
        """``stats`` adds request and commit counters to Info; ``lane_socket`` the lane's path."""
        self._store = store
        self._stats = stats
        self._lane_socket = lane_socket
        self._inline_limit = store.config.inline_limit
        self._shm_min_size = store.config.shm_min_size
        self._streams = StreamSlots(store.config.max_streams)
        self._writes: dict[type, Callable[[Any], tuple[Message, Ticket | None]]] = {
            pb.PutRequest: self._put,
            pb.ReplaceRequest: self._put,
            pb.DeleteRequest: self._delete,
            pb.SealRequest: self._seal,
            pb.BatchPutRequest: self._batch_put,
        }

    def _wants_handle(self, transfer: int, session_id: str, size: int) -> bool:
        """Whether this payload goes by shared memory; checks the session when it does."""
        if transfer not in _SHM_TRANSFERS:
            return False
        self._store.check_session(session_id)
        return transfer == pb.TRANSFER_SHM or size >= self._shm_min_size

    # -- writes -------------------------------------------------------------------

    # Writes come in two halves: the change, which returns the response and the ticket of
    # the commit that makes it durable, and in sync mode the wait for that commit. The
    # lane does not wait: it answers from the commit (``before_commit``).

    @_statuses
    def Put(self, request: pb.PutRequest, context: grpc.ServicerContext) -> pb.PutResponse:
        return self._after_commit(*self._put(request))

    @_statuses
    def Replace(
        self, request: pb.ReplaceRequest, context: grpc.ServicerContext
    ) -> pb.ReplaceResponse:
        return self._after_commit(*self._put(request))

    @_statuses
    def before_commit(
        self, request: _Write, context: grpc.ServicerContext
    ) -> tuple[Message, Ticket | None]:
        """Put, Replace, Delete, Seal or BatchPut (by the request's type) without waiting
        for its ``sync`` commit: the response, and the ticket of the commit to wait for
        before sending it (None when there is none to wait for). A BatchPut's response
        is complete once that ticket is settled (items whose commit failed say so)."""
        response, ticket = self._writes[type(request)](request)
        return response, ticket if self._store.config.durability == "sync" else None

    def _after_commit(self, response: Message, ticket: Ticket | None) -> Any:
        self._store.await_durable(ticket)
        return response

    def _put(self, request: pb.PutRequest | pb.ReplaceRequest) -> tuple[Message, Ticket | None]:
        data = request.data  # each access to a bytes field copies it: read it once
        self._check_inline(data)
        replace = isinstance(request, pb.ReplaceRequest)
        stored = self._store.put(request.spec, data, replace=replace, wait=False)
        if replace:
            return pb.ReplaceResponse(meta=stored.meta, replaced_ids=stored.replaced_ids), \
                stored.ticket
        return pb.PutResponse(meta=stored.meta), stored.ticket

    def _check_inline(self, data: bytes) -> None:
        if len(data) > self._inline_limit:
            raise invalid(f"inline payload above {self._inline_limit} bytes: use PutStream")

    @_statuses
    def PutStream(
        self, request_iterator: Iterator[bytes], context: grpc.ServicerContext
    ) -> pb.PutStreamResponse:
        """Takes serialized PutStreamRequests (``bulk_handlers``): chunks are sliced, not parsed."""
        with self._streams.hold(context):
            return self._put_stream(request_iterator)

    def _put_stream(self, request_iterator: Iterator[bytes]) -> pb.PutStreamResponse:
        raw = next(request_iterator, None)
        first = _parse(pb.PutStreamRequest, raw) if raw is not None else None
        if first is None or first.WhichOneof("part") != "header":
            raise invalid("a PutStream must start with a header")
        header = first.header
        region = self._store.reserve(header.spec, header.size, replace=header.replace)
        try:
            checksum = _receive_chunks(request_iterator, region.view())
        except BaseException:
            self._store.discard(region)
            raise
        stored = self._store.insert(header.spec, region, checksum, replace=header.replace)
        return pb.PutStreamResponse(meta=stored.meta, replaced_ids=stored.replaced_ids)

    @_statuses
    def BatchPut(
        self, request: pb.BatchPutRequest, context: grpc.ServicerContext
    ) -> pb.BatchPutResponse:
        return self._after_commit(*self._batch_put(request))

    def _batch_put(self, request: pb.BatchPutRequest) -> tuple[Message, Ticket | None]:
        check_batch(len(request.items), "items", self._store.config.max_batch_size)
        response = pb.BatchPutResponse()
        # In sync mode the items share a few commits; each item's result waits for its own.
        committing: dict[Ticket, list[pb.BatchPutResult]] = {}
        sync = self._store.config.durability == "sync"
        for item in request.items:
            result = response.results.add()
            data = item.data
            try:
                self._check_inline(data)
                put = self._store.put(item.spec, data, wait=False)
                result.meta.CopyFrom(put.meta)
                if sync and put.ticket is not None:
                    committing.setdefault(put.ticket, []).append(result)
            except StoreError as exc:
                if exc.code == Code.UNAVAILABLE:
                    raise
                _fail_item(result, exc)
        return response, _all_settled(committing)

    @_statuses
    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        return self._after_commit(*self._delete(request))

    def _delete(self, request: pb.DeleteRequest) -> tuple[Message, Ticket | None]:
        deleted, ticket = self._store.delete(request.ref, wait=False)
        return pb.DeleteResponse(deleted_ids=deleted), ticket

    # -- colocated writes and leases ----------------------------------------------

    @_statuses
    def Session(
        self, request_iterator: Iterator[pb.SessionRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.SessionResponse]:
        with self._streams.hold(context):
            opened, ended = self._store.open_session()
            session_id = opened.session_id
            if not context.add_callback(lambda: self._store.close_session(session_id)):
                self._store.close_session(session_id)  # the call ended as it started
                return
            yield opened
            # Releases are read on a thread of their own, so that this handler can
            # finish the stream as soon as the store stops, whatever the client does.
            threading.Thread(
                target=self._read_releases,
                args=(session_id, request_iterator),
                name=f"session-{session_id[:8]}",
                daemon=True,
            ).start()
            ended.wait()

    def _read_releases(self, session_id: str, requests: Iterator[pb.SessionRequest]) -> None:
        try:
            for message in requests:
                if isinstance(message, _Malformed):
                    log.warning("session %s: %s ignored", session_id[:8], message.message)
                elif message.release_lease_ids:
                    self._release_quietly(session_id, list(message.release_lease_ids))
        except grpc.RpcError:
            pass  # the stream is over; the termination callback closes the session
        finally:
            self._store.close_session(session_id)

    def _release_quietly(self, session_id: str, lease_ids: list[int]) -> None:
        """Releases on the stream have no reply: a bad one is logged, not fatal."""
        try:
            self._store.release(session_id, lease_ids)
        except StoreError as exc:
            log.warning("session %s: release ignored: %s", session_id[:8], exc.message)

    @_statuses
    def Create(self, request: pb.CreateRequest, context: grpc.ServicerContext) -> pb.CreateResponse:
        handle = self._store.create(
            request.session_id, request.spec, request.size, replace=request.replace
        )
        return pb.CreateResponse(handle=handle)

    @_statuses
    def Seal(self, request: pb.SealRequest, context: grpc.ServicerContext) -> pb.SealResponse:
        return self._after_commit(*self._seal(request))

    def _seal(self, request: pb.SealRequest) -> tuple[Message, Ticket | None]:
        stored = self._store.seal(
            request.session_id,
            request.handle,
            keep_lease=request.keep_lease,
            checksum=request.crc32c if request.HasField("crc32c") else None,
            spec=request.spec if request.HasField("spec") else None,
            replace=request.replace,
            wait=False,
        )
        response = pb.SealResponse(
            meta=stored.meta, replaced_ids=stored.replaced_ids, handle=stored.handle
        )
        if request.reserve_next:
            reserved = self._store.reserve_next(request.session_id, request.reserve_next)
            if reserved is not None:
                response.next_handle.CopyFrom(reserved)
        return response, stored.ticket

    @_statuses
    def Abort(self, request: pb.AbortRequest, context: grpc.ServicerContext) -> pb.AbortResponse:
        self._store.abort(request.session_id, request.handle)
        return pb.AbortResponse()

    @_statuses
    def Release(
        self, request: pb.ReleaseRequest, context: grpc.ServicerContext
    ) -> pb.ReleaseResponse:
        released = self._store.release(request.session_id, list(request.lease_ids))
        return pb.ReleaseResponse(released=released)

    # -- reads --------------------------------------------------------------------

    @_statuses
    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> pb.GetResponse:
        obj = self._store.get(request.ref, _wait_seconds(request, context))
        if request.metadata_only:
            return pb.GetResponse(meta=obj.meta)
        if self._wants_handle(request.transfer, request.session_id, obj.meta.size):
            return pb.GetResponse(meta=obj.meta, handle=self._store.lease(request.session_id, obj))
        if obj.meta.size > self._inline_limit:
            return pb.GetResponse(meta=obj.meta, payload_omitted=True)
        with self._store.read(obj) as payload:
            return pb.GetResponse(meta=obj.meta, data=bytes(payload))

    @_statuses
    def GetStream(
        self, request: pb.GetStreamRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Yields serialized GetStreamResponses (``bulk_handlers``), chunks encoded by hand."""
        chunk_size = min(request.chunk_size or chunks.CHUNK_SIZE, self._inline_limit)
        with self._streams.hold(context):
            obj = self._store.get(request.ref, _wait_seconds(request, context))
            with self._store.read(obj) as payload:
                yield pb.GetStreamResponse(meta=obj.meta).SerializeToString()
                for offset in range(0, len(payload), chunk_size):
                    yield chunks.encode_chunk((payload[offset : offset + chunk_size],))

    @_statuses
    def BatchGet(
        self, request: pb.BatchGetRequest, context: grpc.ServicerContext
    ) -> pb.BatchGetResponse:
        if request.transfer in _SHM_TRANSFERS:
            self._store.check_session(request.session_id)
        results = self._store.get_many(list(request.refs), _wait_seconds(request, context))
        response = pb.BatchGetResponse()
        budget = BATCH_PAYLOAD_BUDGET
        for found in results:
            item = response.results.add()
            try:
                if isinstance(found, StoreError):
                    raise found
                budget -= self._fill_result(item, found, request, budget)
            except StoreError as exc:
                item.Clear()
                item.code = exc.code
                item.message = exc.message
        return response

    def _fill_result(
        self, item: pb.BatchGetResult, obj: StoredObject, request: pb.BatchGetRequest, budget: int
    ) -> int:
        """Put one object into a BatchGet result; return the inline bytes it used."""
        item.meta.CopyFrom(obj.meta)
        size = obj.meta.size
        if self._wants_handle(request.transfer, request.session_id, size):
            item.handle.CopyFrom(self._store.lease(request.session_id, obj))
            return 0
        if size > min(budget, self._inline_limit):
            item.payload_omitted = True
            return 0
        with self._store.read(obj) as payload:
            item.data = bytes(payload)
        return size

    @_statuses
    def List(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.ListResponse:
        metas, token = self._store.list(request.prefix, request.page_size, request.page_token)
        return pb.ListResponse(objects=metas, next_page_token=token)

    @_statuses
    def Info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoResponse:
        info = self._store.info()
        info.lane_socket = self._lane_socket
        info.stats.open_streams = self._streams.open
        if self._stats is not None:
            info.stats.MergeFrom(self._stats())
        return info

    @_statuses
    def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SubscribeResponse]:
        since = request.since_sequence if request.HasField("since_sequence") else None
        with_handles = request.transfer in _SHM_TRANSFERS
        if with_handles:
            self._store.check_session(request.session_id)
        subscription = self._store.subscribe(request.prefix, since)
        if not context.add_callback(subscription.close):
            subscription.close()  # the call ended before the callback could be registered
            return
        for event in subscription:
            response = pb.SubscribeResponse(event=event)
            if with_handles and event.type in (pb.EVENT_TYPE_PUT, pb.EVENT_TYPE_REPLACE):
                self._attach_handle(response, request)
            yield response

    def _attach_handle(self, response: pb.SubscribeResponse, request: pb.SubscribeRequest) -> None:
        """Lease the event's object to the subscriber, if it is still stored."""
        meta = response.event.meta
        if not self._wants_handle(request.transfer, request.session_id, meta.size):
            return
        obj = self._store.find(meta.id)
        if obj is None:
            return
        try:
            response.handle.CopyFrom(self._store.lease(request.session_id, obj))
        except StoreError as exc:
            if exc.code != Code.NOT_FOUND:
                raise


def _all_settled(committing: dict[Ticket, list[pb.BatchPutResult]]) -> Ticket | None:
    """A ticket settled once every ticket in ``committing`` is; each result whose commit
    failed is made that failure. It never fails itself: a batch reports per item."""
    if not committing:
        return None
    settled = Ticket()
    remaining = [len(committing)]
    lock = threading.Lock()

    def settle(results: list[pb.BatchPutResult], error: StoreError | None) -> None:
        if error is not None:
            for result in results:
                _fail_item(result, error)
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            settled.resolve()

    for ticket, results in committing.items():
        ticket.when_done(functools.partial(settle, results))
    return settled


def _fail_item(result: pb.BatchPutResult, error: StoreError) -> None:
    """Report one BatchPut item as refused."""
    result.Clear()
    result.code = error.code
    result.message = error.message


def _parse(message_type: type[Message], raw: bytes) -> Any:
    try:
        return message_type.FromString(raw)
    except DecodeError as exc:
        raise invalid(f"malformed {message_type.__name__}: {exc}") from None


def _receive_chunks(messages: Iterator[bytes], target: memoryview) -> int:
    """Copy a PutStream's serialized chunk messages into ``target``, which they must fill.

    Returns the payload's CRC32C, computed as the chunks arrive.
    """
    received = 0
    checksum = 0
    for raw in messages:
        chunk = chunks.decode_chunk(raw)
        if chunk is None:  # not the plain encoding: let protobuf judge it
            message = _parse(pb.PutStreamRequest, raw)
            if message.WhichOneof("part") != "chunk":
                raise invalid("only chunks may follow the header")
            chunk = message.chunk
        end = received + len(chunk)
        if end > len(target):
            raise invalid(f"chunks exceed the declared size of {len(target)} bytes")
        target[received:end] = chunk
        checksum = crc32c.crc32c(chunk, checksum)
        received = end
    if received != len(target):
        raise invalid(f"stream ended after {received} of {len(target)} bytes")
    return checksum


def method_handlers(servicer: StoreServicer) -> dict[str, grpc.RpcMethodHandler]:
    """Every StoreService method, with requests parsed by ``_lenient``.

    They replace the generated handlers. PutStream and GetStream also leave their
    chunk messages serialized: the servicer reads and writes chunks as bytes (see
    ``improv_store.chunks``), so bulk data is copied once each way instead of going
    through protobuf objects.
    """
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["StoreService"].methods:
        response_type = getattr(pb, method.output_type.name)
        handlers[method.name] = kinds[method.client_streaming, method.server_streaming](
            getattr(servicer, method.name),
            request_deserializer=_lenient(getattr(pb, method.input_type.name)),
            response_serializer=response_type.SerializeToString,
        )
    handlers["PutStream"] = grpc.stream_unary_rpc_method_handler(
        servicer.PutStream,
        request_deserializer=None,
        response_serializer=pb.PutStreamResponse.SerializeToString,
    )
    handlers["GetStream"] = grpc.unary_stream_rpc_method_handler(
        servicer.GetStream,
        request_deserializer=_lenient(pb.GetStreamRequest),
        response_serializer=None,
    )
    return handlers
