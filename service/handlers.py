"""The server's operations, one per RPC, over the Store and independent of transport.

A handler takes a request message and returns its response; it raises only
StoreError, whose code, message and trailer values each transport sends its
own way. The gRPC servicer and the local lane are thin adapters over these
methods, which are named as the RPCs (and the lane methods) they serve, so
that an adapter finds each by name. What a transport knows of a call comes in
as plain arguments: the time the caller has left, and a way to run something
when the call ends.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import crc32c
from google.protobuf.message import Message

from improv_store import chunks
from improv_store.protocol import MAX_IDS_PER_MESSAGE, Code, parse
from improv_store.v1 import store_pb2 as pb

from . import validation
from .committer import Ticket
from .errors import StoreError, exhausted, invalid
from .objects import StoredObject
from .replication import Follower
from .store import Store, Subscription

log = logging.getLogger(__name__)

# Bytes of a Get or BatchGet answer besides an object's metadata and payload, at most.
_RESPONSE_FRAMING = 64
# A SubscribeResponse.events entry's tag and length prefix, at most.
_EVENT_FRAMING = 6
# Bytes a BatchGetResult takes besides its fields' contents (tags, lengths, a flag), at most.
_RESULT_FRAMING = 32
# A BatchGetResult's status message is cut to this many characters (it may quote a name),
# so that a result carrying only a status takes at most _LARGEST_STATUS bytes.
_MAX_STATUS_MESSAGE = 384
_LARGEST_STATUS = 4 * _MAX_STATUS_MESSAGE + _RESULT_FRAMING

_SHM_TRANSFERS = (pb.TRANSFER_SHM, pb.TRANSFER_AUTO)
_EVENTS_WITH_OBJECTS = (pb.EVENT_TYPE_PUT, pb.EVENT_TYPE_REPLACE)

RequestT = TypeVar("RequestT", bound=Message)
# Registers a callback to run when the call ends; False (and never runs it) if the call
# has ended already. gRPC's ServicerContext.add_callback is one.
OnEnd = Callable[[Callable[[], None]], bool]


@dataclass(frozen=True)
class Pending:
    """A write's response, to be sent once ``ticket`` (the commit that makes the write
    durable) is settled; ticket None when there is nothing to wait for (not ``sync``).

    The gRPC servicer waits for the ticket; the lane answers from the commit itself.
    """

    response: Message
    ticket: Ticket | None


# The shape of every unary handler: request, seconds the caller has left (None: no deadline).
UnaryHandler = Callable[[Any, float | None], Message | Pending]


def checked(request: RequestT | str) -> RequestT:
    """A request as ``protocol.parse`` gave it, or INVALID_ARGUMENT with why it did not
    parse: both transports parse requests this one way."""
    if isinstance(request, str):
        raise invalid(request)
    return request


def parsed(message_type: type[RequestT], raw: bytes) -> RequestT:
    """``raw`` parsed as ``message_type``, or INVALID_ARGUMENT."""
    return checked(parse(message_type, raw))


def as_store_error(exc: Exception, method: str) -> StoreError:
    """``exc`` as the error a transport reports: itself, or INTERNAL for anything
    unexpected (logged here with its traceback: the caller gets only a line)."""
    if isinstance(exc, StoreError):
        return exc
    log.error("unexpected error in %s", method, exc_info=exc)
    return StoreError(Code.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def token_matches(expected: str, presented: str) -> bool:
    """Compare tokens in constant time."""
    return hmac.compare_digest(expected.encode(), presented.encode())


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
    def hold(self, on_end: OnEnd) -> Iterator[None]:
        """A slot for a stream, given back when the block ends or the call does (a
        cancelled stream may never resume its handler), whichever comes first.

        RESOURCE_EXHAUSTED when all are taken; CANCELLED if the call has ended already.
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

        if not on_end(release):
            release()
            raise StoreError(Code.CANCELLED, "the call ended as it started")
        try:
            yield
        finally:
            release()


class EventStream:
    """A Subscribe call's responses; close() ends it, and the adapter calls it when the
    call ends (the client left), which iterating alone could not notice while idle."""

    def __init__(
        self, subscription: Subscription,
        attach_handle: Callable[[pb.SubscribeResponse], None] | None,
        batch_size: int = 1,
        max_response_size: int = 0,
        payload: Callable[[pb.ObjectMeta], bytes] | None = None,
    ) -> None:
        """``batch_size`` above 1 sends events in batches, each response within
        ``max_response_size``, with ``payload`` of each new object when given
        (see SubscribeRequest.batch_size and payload_limit)."""
        self._subscription = subscription
        self._attach_handle = attach_handle
        self._batch_size = batch_size
        self._room = max_response_size - _RESPONSE_FRAMING
        self._payload = payload

    def __iter__(self) -> Iterator[pb.SubscribeResponse]:
        if self._batch_size > 1:
            yield from self._batched()
            return
        for event in self._subscription:
            response = pb.SubscribeResponse(event=event)
            if self._attach_handle is not None and event.type in _EVENTS_WITH_OBJECTS:
                self._attach_handle(response)
            yield response

    def _batched(self) -> Iterator[pb.SubscribeResponse]:
        payload = self._payload
        for batch in self._subscription.batches(self._batch_size):
            response = pb.SubscribeResponse()
            size = 0
            for event in batch:
                length = event.ByteSize() + _EVENT_FRAMING
                data = payload(event.meta) if payload and event.type in _EVENTS_WITH_OBJECTS \
                    else b""
                if size + length + len(data) > self._room and size:
                    yield response
                    response = pb.SubscribeResponse()
                    size = 0
                if size + length + len(data) > self._room:
                    data = b""  # a large label set leaves no room: the reader fetches it
                response.events.append(event)
                size += length
                if payload:
                    response.payloads.append(data)
                    size += len(data) + _EVENT_FRAMING
            yield response

    def close(self) -> None:
        self._subscription.close()


class Handlers:
    """The operations of improv_store.v1.StoreService (and the lane's Open) over a Store.

    Every unary handler takes the request and the seconds its caller has left
    (None: no deadline), so that an adapter calls each one the same way; a
    write returns a Pending.
    """

    def __init__(
        self,
        store: Store,
        stats: Callable[[], pb.ServerStats] | None = None,
        lane_socket: str = "",
        follower: Follower | None = None,
    ) -> None:
        """``stats`` adds request and commit counters to Info; ``lane_socket`` the lane's path;
        ``follower`` is the store's replication from its primary, if it follows one."""
        self.store = store
        self._follower = follower
        self._stats = stats
        self._lane_socket = lane_socket
        config = store.config
        self._inline_limit = config.inline_limit
        self._max_response_size = config.max_response_size
        self._shm_min_size = config.shm_min_size
        self._max_batch_size = config.max_batch_size
        self._sync = config.durability == "sync"
        self._token = config.token
        self.streams = StreamSlots(config.max_streams)

    def settle(self, result: Message | Pending) -> Message:
        """A handler's response, once a write's commit is durable: what a thread that
        may wait sends (the lane's loop does not wait: it answers at the commit)."""
        if isinstance(result, Pending):
            self.store.await_durable(result.ticket)
            return result.response
        return result

    def _durable(self, ticket: Ticket | None) -> Ticket | None:
        """The ticket a write's answer waits for: its commit's in ``sync`` mode only."""
        return ticket if self._sync else None

    def _wants_handle(self, transfer: int, session_id: str, size: int) -> bool:
        """Whether this payload goes by shared memory; checks the session when it does."""
        if transfer not in _SHM_TRANSFERS:
            return False
        self.store.check_session(session_id)
        return transfer == pb.TRANSFER_SHM or size >= self._shm_min_size

    def _fits(self, obj: StoredObject) -> bool:
        """Whether a response with the object's metadata and payload stays within the
        largest response (only an unusually long name or many labels push it over)."""
        return obj.size + len(obj.record) + _RESPONSE_FRAMING <= self._max_response_size

    def _check_inline(self, data: bytes) -> None:
        if len(data) > self._inline_limit:
            raise invalid(f"inline payload above {self._inline_limit} bytes: use PutStream")

    @staticmethod
    def _wait(request: pb.GetRequest | pb.GetStreamRequest | pb.BatchGetRequest,
              time_left: float | None) -> float:
        """The requested wait, capped by the time the caller has left."""
        if not request.HasField("wait"):
            return 0.0
        wait = validation.wait_seconds(request.wait)
        return min(wait, time_left) if time_left is not None else wait

    # -- writes -------------------------------------------------------------------

    def Put(self, request: pb.PutRequest, time_left: float | None = None) -> Pending:
        data = request.data  # each access to a bytes field copies it: read it once
        self._check_inline(data)
        stored = self.store.put(request.spec, data, wait=False)
        return Pending(pb.PutResponse(meta=stored.meta), self._durable(stored.ticket))

    def Replace(self, request: pb.ReplaceRequest, time_left: float | None = None) -> Pending:
        data = request.data
        self._check_inline(data)
        stored = self.store.put(request.spec, data, replace=True, wait=False)
        response = pb.ReplaceResponse(meta=stored.meta, replaced_ids=stored.replaced_ids)
        return Pending(response, self._durable(stored.ticket))

    def BatchPut(self, request: pb.BatchPutRequest, time_left: float | None = None) -> Pending:
        """Each item stored or refused on its own; the response is complete once the
        ticket is settled (items whose commit failed then say so)."""
        validation.check_batch(len(request.items), "items", self._max_batch_size)
        self.store.check_writable()  # a follower refuses the call, not each item
        response = pb.BatchPutResponse()
        # In sync mode the items share a few commits; each item's result waits for its own.
        committing: dict[Ticket, list[pb.BatchPutResult]] = {}
        for item in request.items:
            result = response.results.add()
            data = item.data
            try:
                self._check_inline(data)
                put = self.store.put(item.spec, data, wait=False)
                result.meta.CopyFrom(put.meta)
                if item.spec.labels:  # the caller has them; a batch of them could outgrow
                    result.meta.ClearField("labels")  # a client's receive limit
                if self._sync and put.ticket is not None:
                    committing.setdefault(put.ticket, []).append(result)
            except StoreError as exc:
                if exc.code == Code.UNAVAILABLE:
                    raise
                _fail_item(result, exc)
        if response.ByteSize() > self._max_response_size - _RESPONSE_FRAMING:
            # Long names (a raised max_name_length): only what identifies each object.
            for result in response.results:
                if result.HasField("meta"):
                    meta = result.meta
                    result.meta.CopyFrom(pb.ObjectMeta(id=meta.id, size=meta.size,
                                                       sequence=meta.sequence))
        return Pending(response, _all_settled(committing))

    def Delete(self, request: pb.DeleteRequest, time_left: float | None = None) -> Pending:
        deleted, ticket = self.store.delete(request.ref, wait=False)
        response = pb.DeleteResponse(
            deleted_ids=deleted[:MAX_IDS_PER_MESSAGE], deleted_count=len(deleted)
        )
        return Pending(response, self._durable(ticket))

    def DeleteMatching(
        self, request: pb.DeleteMatchingRequest, time_left: float | None = None
    ) -> Pending:
        created_before = None
        if request.HasField("created_before"):
            if not 0 <= request.created_before.nanos < 1_000_000_000:
                raise invalid("created_before.nanos must be in [0, 1e9)")
            created_before = request.created_before.ToNanoseconds()
        deleted, last, ticket = self.store.delete_matching(
            request.prefix, request.before_sequence, created_before,
            everything=request.all, wait=False,
        )
        response = pb.DeleteMatchingResponse(deleted_count=deleted, last_sequence=last)
        return Pending(response, self._durable(ticket))

    def PutStream(self, raw_requests: Iterator[bytes], on_end: OnEnd) -> Pending:
        """Takes serialized PutStreamRequests: chunks are sliced, not parsed (see
        ``improv_store.chunks``), so bulk data is copied once."""
        with self.streams.hold(on_end):
            raw = next(raw_requests, None)
            first = parsed(pb.PutStreamRequest, raw) if raw is not None else None
            if first is None or first.WhichOneof("part") != "header":
                raise invalid("a PutStream must start with a header")
            header = first.header
            region = self.store.reserve(header.spec, header.size, replace=header.replace)
            try:
                checksum = _receive_chunks(raw_requests, region.view())
            except BaseException:
                self.store.discard(region)
                raise
            stored = self.store.insert(
                header.spec, region, checksum, replace=header.replace, wait=False
            )
        response = pb.PutStreamResponse(meta=stored.meta, replaced_ids=stored.replaced_ids)
        return Pending(response, self._durable(stored.ticket))

    # -- colocated writes, sessions and leases --------------------------------------

    def Open(
        self, request: pb.LaneOpenRequest, time_left: float | None = None
    ) -> pb.SessionResponse:
        """The lane's opening call: the same token check as gRPC calls pass, then a session."""
        if self._token and not token_matches(self._token, request.token):
            message = "wrong token" if request.token else "this store requires a token"
            raise StoreError(Code.UNAUTHENTICATED, message)
        opened, _ = self.store.open_session()
        return opened

    def Session(
        self, requests: Iterator[pb.SessionRequest | str], on_end: OnEnd
    ) -> Iterator[pb.SessionResponse]:
        """A session stream: the session's ID first, then nothing until the session ends
        (the call ends, or the store stops). Its leases and creates go with it.

        ``requests`` are the client's messages as ``protocol.parse`` gave them.
        """
        with self.streams.hold(on_end):
            opened, ended = self.store.open_session()
            session_id = opened.session_id
            if not on_end(lambda: self.store.close_session(session_id)):
                self.store.close_session(session_id)  # the call ended as it started
                return
            yield opened
            # Releases are read on a thread of their own, so that this handler can
            # finish the stream as soon as the store stops, whatever the client does.
            threading.Thread(
                target=self._read_releases,
                args=(session_id, requests),
                name=f"session-{session_id[:8]}",
                daemon=True,
            ).start()
            ended.wait()

    def _read_releases(self, session_id: str, requests: Iterator[pb.SessionRequest | str]) -> None:
        try:
            for message in requests:
                if isinstance(message, str):
                    log.warning("session %s: %s ignored", session_id[:8], message)
                elif message.release_lease_ids:
                    self._release_quietly(session_id, list(message.release_lease_ids))
        except Exception as exc:  # the transport's stream broke: the session is over
            log.debug("session %s: the request stream ended: %s", session_id[:8], exc)
        finally:
            self.store.close_session(session_id)

    def _release_quietly(self, session_id: str, lease_ids: list[int]) -> None:
        """Releases on the stream have no reply: a bad one is logged, not fatal."""
        try:
            self.store.release(session_id, lease_ids)
        except StoreError as exc:
            log.warning("session %s: release ignored: %s", session_id[:8], exc.message)

    def Create(
        self, request: pb.CreateRequest, time_left: float | None = None
    ) -> pb.CreateResponse:
        handle = self.store.create(
            request.session_id, request.spec, request.size, replace=request.replace
        )
        return pb.CreateResponse(handle=handle)

    def Seal(self, request: pb.SealRequest, time_left: float | None = None) -> Pending:
        stored = self.store.seal(
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
            reserved = self.store.reserve_next(request.session_id, request.reserve_next)
            if reserved is not None:
                response.next_handle.CopyFrom(reserved)
        return Pending(response, self._durable(stored.ticket))

    def Abort(self, request: pb.AbortRequest, time_left: float | None = None) -> pb.AbortResponse:
        self.store.abort(request.session_id, request.handle)
        return pb.AbortResponse()

    def Release(
        self, request: pb.ReleaseRequest, time_left: float | None = None
    ) -> pb.ReleaseResponse:
        released = self.store.release(request.session_id, list(request.lease_ids))
        return pb.ReleaseResponse(released=released)

    # -- reads --------------------------------------------------------------------

    def Get(self, request: pb.GetRequest, time_left: float | None = None) -> pb.GetResponse:
        obj = self.store.get(request.ref, self._wait(request, time_left))
        response = pb.GetResponse()
        response.meta.MergeFromString(obj.record)
        if request.metadata_only:
            return response
        if self._wants_handle(request.transfer, request.session_id, obj.size):
            response.handle.CopyFrom(self.store.lease(request.session_id, obj))
        elif obj.size > self._inline_limit or not self._fits(obj):
            response.payload_omitted = True
        else:
            with self.store.read(obj) as payload:
                response.data = bytes(payload)
        return response

    def GetStream(
        self, request: pb.GetStreamRequest, time_left: float | None, on_end: OnEnd
    ) -> Iterator[bytes]:
        """Yields serialized GetStreamResponses, the chunks encoded by ``improv_store.chunks``
        (no protobuf object holds the payload on the way out)."""
        chunk_size = min(request.chunk_size or chunks.CHUNK_SIZE, self._inline_limit)
        with self.streams.hold(on_end):
            obj = self.store.get(request.ref, self._wait(request, time_left))
            if request.offset > obj.size:
                raise StoreError(Code.OUT_OF_RANGE, f"offset {request.offset} is beyond the"
                                 f" object's {obj.size} bytes")
            end = obj.size if not request.length else min(obj.size, request.offset
                                                          + request.length)
            with self.store.read(obj) as payload:
                yield pb.GetStreamResponse(meta=obj.meta).SerializeToString()
                for offset in range(request.offset, end, chunk_size):
                    yield chunks.encode_chunk((payload[offset : min(offset + chunk_size, end)],))

    def BatchGet(
        self, request: pb.BatchGetRequest, time_left: float | None = None
    ) -> pb.BatchGetResponse:
        """Every result's status and metadata first, then payloads in order while the
        response has room (the rest payload_omitted): the answer never exceeds
        max_response_size. Results whose metadata no longer fits, which only large labels
        cause, are RESOURCE_EXHAUSTED."""
        if request.transfer in _SHM_TRANSFERS:
            self.store.check_session(request.session_id)
        results = self.store.get_many(list(request.refs), self._wait(request, time_left))
        response = pb.BatchGetResponse()
        room = self._max_response_size - _RESPONSE_FRAMING
        inline: list[tuple[pb.BatchGetResult, StoredObject]] = []
        for index, found in enumerate(results):
            item = response.results.add()
            # Room for a status in each result still to come.
            reserve = (len(results) - index - 1) * _LARGEST_STATUS
            try:
                if isinstance(found, StoreError):
                    raise found
                if len(found.record) + _RESULT_FRAMING > room - reserve:
                    raise exhausted("did not fit in this response (max_response_size): ask again")
                item.meta.MergeFromString(found.record)
                if self._wants_handle(request.transfer, request.session_id, found.size):
                    item.handle.CopyFrom(self.store.lease(request.session_id, found))
                else:
                    inline.append((item, found))
            except StoreError as exc:
                item.Clear()
                item.code = exc.code
                item.message = exc.message[:_MAX_STATUS_MESSAGE]
            room -= item.ByteSize() + _RESULT_FRAMING
        for item, obj in inline:
            if obj.size > min(room, self._inline_limit):
                item.payload_omitted = True
                continue
            with self.store.read(obj) as payload:
                item.data = bytes(payload)
            room -= obj.size + _RESULT_FRAMING
        return response

    def List(self, request: pb.ListRequest, time_left: float | None = None) -> pb.ListResponse:
        return self.store.list(request.prefix, request.page_size, request.page_token)

    def Info(self, request: pb.InfoRequest, time_left: float | None = None) -> pb.InfoResponse:
        info = self.store.info()
        info.lane_socket = self._lane_socket
        info.stats.open_streams = self.streams.open
        if self._stats is not None:
            info.stats.MergeFrom(self._stats())
        if self._follower is not None:
            info.replication.CopyFrom(self._follower.status(applied=info.last_sequence))
        else:
            info.replication.CopyFrom(self.store.primary_status())
        return info

    def Promote(
        self, request: pb.PromoteRequest, time_left: float | None = None
    ) -> pb.PromoteResponse:
        if self._follower is not None:
            return self._follower.promote()
        return self.store.promote()  # a primary: FAILED_PRECONDITION

    def Subscribe(self, request: pb.SubscribeRequest) -> EventStream:
        """The subscription's responses; refusals (a bad prefix or session, history no
        longer retained, too many subscribers) are raised here, before any response."""
        since = request.since_sequence if request.HasField("since_sequence") else None
        attach = None
        if request.transfer in _SHM_TRANSFERS:
            if request.batch_size > 1:
                raise invalid("batch_size above 1 sends no shared-memory handles: ask for"
                              " an inline transfer")
            self.store.check_session(request.session_id)
            attach = functools.partial(self._attach_handle, request=request)
        payload = None
        if request.payload_limit:
            if request.batch_size <= 1:
                raise invalid("payload_limit needs batch_size above 1")
            payload = functools.partial(self._event_payload, limit=request.payload_limit)
        subscription = self.store.subscribe(
            request.prefix, since, store_id=request.store_id, from_oldest=request.from_oldest
        )
        return EventStream(subscription, attach, request.batch_size, self._max_response_size,
                           payload)

    def _event_payload(self, meta: pb.ObjectMeta, limit: int) -> bytes:
        """The payload of the object an event stored, if still stored and at most ``limit``
        bytes; else nothing (the reader fetches it, or learns it is gone)."""
        obj = self.store.find(meta.id)
        if obj is None or obj.sequence != meta.sequence or not 0 < obj.size <= limit:
            return b""
        try:
            with self.store.read(obj) as view:
                return bytes(view)
        except StoreError as exc:
            if exc.code != Code.NOT_FOUND:
                raise
            return b""

    def _attach_handle(self, response: pb.SubscribeResponse, request: pb.SubscribeRequest) -> None:
        """Lease the event's object to the subscriber, if it is still stored."""
        meta = response.event.meta
        if not self._wants_handle(request.transfer, request.session_id, meta.size):
            return
        obj = self.store.find(meta.id)
        if obj is None:
            return
        try:
            response.handle.CopyFrom(self.store.lease(request.session_id, obj))
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
    result.message = error.message[:_MAX_STATUS_MESSAGE]


def _receive_chunks(messages: Iterable[bytes], target: memoryview) -> int:
    """Copy a PutStream's serialized chunk messages into ``target``, which they must fill.

    Returns the payload's CRC32C, computed as the chunks arrive.
    """
    received = 0
    checksum = 0
    for raw in messages:
        chunk: bytes | memoryview | None = chunks.decode_chunk(raw)
        if chunk is None:  # not the plain encoding: let protobuf judge it
            message = parsed(pb.PutStreamRequest, raw)
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
