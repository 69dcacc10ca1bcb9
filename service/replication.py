"""A follower: a store that replays another store (its primary), so that actors on
another machine read its objects with zero copy, and a second copy of the data exists.

The follower is a client of the primary's public RPCs. It subscribes from its
last applied sequence in batches of events that carry payloads up to 1 MiB,
fetches larger ones by stream, and applies every event here under the
primary's IDs, sequence numbers and store ID, in the primary's order; its own
subscribers therefore see the primary's history. A restarted follower resumes
from the last change it committed, and checks that the primary still has it.

When the history it needs is no longer retained by the primary, the primary
is another store than before or lost changes applied here, it resyncs: it
subscribes from the primary's current sequence, lists the primary's objects,
copies only those it lacks (at a bounded rate), drops those the primary no
longer has, then applies the subscription's events. If the subscription
broke meanwhile it repeats the listing, which then copies only what changed,
so a primary under steady writes cannot make it start over from nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import crc32c
import grpc

from improv_store.chunks import decode_chunk
from improv_store.protocol import MAX_MESSAGE_SIZE, SERVICE_NAME, Code
from improv_store.v1 import store_pb2 as pb

from .arena import Region
from .config import ServerConfig
from .errors import StoreError
from .store import Store

log = logging.getLogger(__name__)

_CALL_TIMEOUT = 10.0  # seconds for one unary call to the primary
_POLL_INTERVAL = 1.0  # seconds between Info calls that measure lag and notice a dead link
_POLL_TIMEOUT = 5.0  # seconds an Info poll may take before the link counts as lost
_VERIFY_WITHIN = 3.0  # seconds for the primary to replay the last event applied here
_RETRY_FIRST, _RETRY_MOST = 0.1, 2.0  # seconds between attempts to reach the primary
_BATCH_EVENTS = 512  # events applied per round
_BATCH_BYTES = 8 << 20  # payload bytes fetched per round of events
# Payloads up to this come with their events (or by BatchGet), larger ones by GetStream.
_SMALL_OBJECT = 1 << 20
_BATCH_GET_BYTES = 3 << 20  # payload per BatchGet, within a 4 MiB response
# Events and bytes read ahead of the applier; beyond, the primary buffers (a while).
_READ_AHEAD_EVENTS = 200_000
_READ_AHEAD_BYTES = 256 << 20
_LIST_PAGE = 1000
_SLOWEST_LINK = 10 << 20  # bytes per second below which a payload's download times out
_EVENTS_WITH_OBJECTS = (pb.EVENT_TYPE_PUT, pb.EVENT_TYPE_REPLACE)


_Item = pb.SubscribeResponse | BaseException | None  # what the event reader hands on
_Change = tuple[pb.Event, bytes | None]  # an event, and its payload if it came along


class _Resync(Exception):
    """The follower's history cannot continue from the primary's: copy a snapshot."""


class _StreamEnded(Exception):
    """The primary ended the subscription (it stopped, or the follower fell behind)."""


def _target(address: str) -> str:
    """The gRPC target of ``address`` (``host:port``, ``unix:///path`` or a socket path)."""
    if address.startswith(("/", ".")):
        return "unix:" + address
    return address


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


class PrimaryLink:
    """The primary's RPCs as the follower calls them, over one channel with the
    follower's credentials."""

    def __init__(self, config: ServerConfig) -> None:
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", MAX_MESSAGE_SIZE)]
        target = _target(config.follow)
        if config.follow_tls_ca or config.follow_tls_cert:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(config.follow_tls_ca) if config.follow_tls_ca else None,
                private_key=_read(config.follow_tls_key) if config.follow_tls_key else None,
                certificate_chain=_read(config.follow_tls_cert) if config.follow_tls_cert else None,
            )
            if config.follow_tls_server_name:
                options.append(("grpc.ssl_target_name_override", config.follow_tls_server_name))
            self._channel = grpc.secure_channel(target, credentials, options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        token = config.follow_token
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

        def method(name: str, response: type[Any], stream: bool = False) -> Callable[..., Any]:
            make = self._channel.unary_stream if stream else self._channel.unary_unary
            return make(f"/{SERVICE_NAME}/{name}", request_serializer=_serialize,
                        response_deserializer=response.FromString)

        self._info = method("Info", pb.InfoResponse)
        self._list = method("List", pb.ListResponse)
        self._batch_get = method("BatchGet", pb.BatchGetResponse)
        self._subscribe = method("Subscribe", pb.SubscribeResponse, stream=True)
        # GetStream's chunks are sliced from the raw messages (improv_store.chunks).
        self._get_stream = self._channel.unary_stream(
            f"/{SERVICE_NAME}/GetStream", request_serializer=_serialize
        )

    def info(self, timeout: float = _CALL_TIMEOUT) -> pb.InfoResponse:
        return self._info(pb.InfoRequest(), timeout=timeout, metadata=self._metadata)

    def list_all(self) -> Iterator[list[pb.ObjectMeta]]:
        """Every object the primary holds, a page at a time, in sequence order."""
        token = ""
        while True:
            page = self._list(pb.ListRequest(page_size=_LIST_PAGE, page_token=token),
                              timeout=_CALL_TIMEOUT, metadata=self._metadata)
            yield list(page.objects)
            token = page.next_page_token
            if not token:
                return

    def batch_get(self, ids: Sequence[bytes]) -> list[pb.BatchGetResult]:
        request = pb.BatchGetRequest(refs=[pb.ObjectRef(id=object_id) for object_id in ids],
                                     transfer=pb.TRANSFER_INLINE)
        return list(self._batch_get(request, timeout=_CALL_TIMEOUT,
                                    metadata=self._metadata).results)

    def get_stream(self, meta: pb.ObjectMeta) -> Any:
        """The raw messages of a GetStream: the metadata, then the chunks (a call)."""
        return self._get_stream(pb.GetStreamRequest(ref=pb.ObjectRef(id=meta.id)),
                                timeout=_CALL_TIMEOUT + meta.size / _SLOWEST_LINK,
                                metadata=self._metadata)

    def subscribe(self, since: int, store_id: str) -> Any:
        """The primary's events from ``since`` on (a call: iterate it, cancel it)."""
        request = pb.SubscribeRequest(since_sequence=since, store_id=store_id,
                                      batch_size=_BATCH_EVENTS, payload_limit=_SMALL_OBJECT)
        return self._subscribe(request, metadata=self._metadata)

    def close(self) -> None:
        """Ends every call in flight (they fail with CANCELLED)."""
        self._channel.close()


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


class Follower:
    """Keeps a Store a copy of its primary until stopped or promoted (one thread)."""

    def __init__(self, store: Store, config: ServerConfig) -> None:
        self.store = store
        self.config = config
        self._link = PrimaryLink(config)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="follower", daemon=True)
        self._state = pb.REPLICATION_STATE_CONNECTING
        self._primary_sequence = 0
        self._behind_since: float | None = None
        self._resyncs = 0
        self._last_error = ""
        self._promoted = False
        self._streamed = False  # whether the current attempt got as far as streaming
        self._must_resync = ""
        self._max_batch = 1
        self._resync_budget = _RateBound(config.resync_rate)

    def start(self) -> None:
        log.info("following %s from sequence %d", self.config.follow, self.store.last_sequence)
        self._thread.start()

    def stop(self) -> None:
        """Stop applying (calls in flight are cancelled)."""
        self._stopping.set()
        self._link.close()
        if self._thread.is_alive():
            self._thread.join(timeout=_CALL_TIMEOUT)

    def promote(self) -> pb.PromoteResponse:
        """Stop following and make the store a writable primary (Store.promote)."""
        if self._promoted:
            raise StoreError(Code.FAILED_PRECONDITION, "this store is a primary already")
        self.stop()
        response = self.store.promote()
        self._promoted = True
        return response

    def status(self, applied: int | None = None) -> pb.Replication:
        """Info.replication: where the follower stands, having applied ``applied`` (by
        default the store's last sequence now; Info passes the one it reports)."""
        if self._promoted:
            return self.store.primary_status()
        if applied is None:
            applied = self.store.last_sequence
        primary = max(self._primary_sequence, applied)
        behind = self._behind_since
        lag_seconds = time.monotonic() - behind if behind is not None and primary > applied else 0
        return pb.Replication(
            role=pb.ROLE_FOLLOWER,
            primary=self.config.follow,
            state=self._state,
            applied_sequence=applied,
            primary_sequence=primary,
            lag_events=primary - applied,
            lag_seconds=lag_seconds,
            resyncs=self._resyncs,
            last_error=self._last_error,
        )

    # -- the loop -------------------------------------------------------------------

    def _run(self) -> None:
        delay = _RETRY_FIRST
        while not self._stopping.is_set():
            try:
                self._follow()
            except _StreamEnded as ended:
                self._lost(str(ended))
            except grpc.RpcError as exc:
                self._lost(f"{exc.code().name}: {exc.details()}")
            except StoreError as exc:
                self._lost(f"{exc.code.name}: {exc.message}")
            except Exception as exc:  # keep following: the next attempt starts clean
                log.exception("following %s failed", self.config.follow)
                self._lost(repr(exc))
            if self._streamed:  # it worked until now: try again at once
                delay = _RETRY_FIRST
            if self._stopping.wait(delay):
                return
            delay = min(2 * delay, _RETRY_MOST)

    def _lost(self, why: str) -> None:
        if self._stopping.is_set():
            return
        if why != self._last_error:
            log.warning("lost primary %s: %s", self.config.follow, why)
        self._last_error = why
        self._state = pb.REPLICATION_STATE_CONNECTING

    def _follow(self) -> None:
        """Reach the primary, decide where to resume (resyncing if needed), then apply its
        events until the stream breaks."""
        self._state = pb.REPLICATION_STATE_CONNECTING
        self._streamed = False
        info = self._link.info()
        self._max_batch = max(info.limits.max_batch_size, 1)
        self.store.primary_issued(info.last_sequence)
        self._saw_primary(info.last_sequence)
        try:
            since, verify = self._resume_point(info)
            events = _Subscription(self._link, since, info.store_id)
        except _Resync as why:
            events, verify = self._resync(str(why)), False
        try:
            self._stream(events, verify)
        finally:
            events.close()

    def _resume_point(self, info: pb.InfoResponse) -> tuple[int, bool]:
        """The sequence to subscribe from, and whether its event is one already applied
        (then the primary must still have it, or it lost changes this follower holds)."""
        store = self.store
        applied = store.last_sequence
        if self._must_resync:
            raise _Resync(self._must_resync)
        if info.store_id != store.store_id:
            if applied == 0 and store.newest_object_sequence == 0 and info.oldest_sequence <= 1:
                store.adopt(info.store_id)  # a new follower replays the whole history
                return 1, False
            lineage = info.replication
            if lineage.promoted_from != store.store_id:
                raise _Resync(f"the primary is store {info.store_id}, this copy is of"
                              f" {store.store_id}")
            if applied > lineage.promoted_at_sequence and applied < info.oldest_sequence:
                raise _Resync("the primary was promoted before the last change applied here,"
                              " and no longer retains it to compare")
            store.adopt(info.store_id)  # its primary was promoted from the one it copied
        if store.newest_object_sequence > applied:
            raise _Resync("an earlier resync did not finish")
        if applied > info.last_sequence:
            raise _Resync(f"the primary's last sequence {info.last_sequence} is behind this"
                          f" copy's {applied}: it lost changes")
        if applied + 1 < info.oldest_sequence:
            raise _Resync(f"the primary retains history from {info.oldest_sequence} only;"
                          f" this copy needs it from {applied + 1}")
        if applied >= info.oldest_sequence:
            return applied, True
        return applied + 1, False

    def _stream(self, events: _Subscription, verify: bool) -> None:
        """Apply the subscription's events until it breaks; with ``verify``, its first
        event must be the last one applied here."""
        self._state = pb.REPLICATION_STATE_STREAMING
        self._last_error = ""
        polled = time.monotonic()
        # A retained event is replayed at once; one that does not come was lost.
        verify_by = polled + _VERIFY_WITHIN
        while not self._stopping.is_set():
            batch = events.take()
            if verify and (batch or time.monotonic() > verify_by):
                if not batch or not self._is_last_applied(batch.pop(0)[0]):
                    self._must_resync = (f"the primary no longer has event {events.since},"
                                         " the last one applied here: it lost changes")
                    raise _StreamEnded(self._must_resync)
                verify = False
            if batch:
                self._apply(batch)
            if time.monotonic() - polled >= _POLL_INTERVAL:
                self._poll()
                polled = time.monotonic()
            self._streamed = not verify

    def _is_last_applied(self, event: pb.Event) -> bool:
        """Whether the primary's ``event`` is the last one applied here (the same change,
        not just the same number)."""
        ours = self.store.event_at(event.sequence)
        return event.sequence == self.store.last_sequence and (
            ours is None or (ours.type, ours.meta.id) == (event.type, event.meta.id))

    def _poll(self) -> None:
        """Ask the primary how far it is, and whether it is still the store copied here: a
        promoted primary goes on with the same history under a new identity."""
        info = self._link.info(timeout=_POLL_TIMEOUT)
        self._saw_primary(info.last_sequence)
        if info.store_id != self.store.store_id:
            if info.replication.promoted_from != self.store.store_id:
                raise _StreamEnded(f"the primary is now store {info.store_id}")
            self.store.adopt(info.store_id)

    def _apply(self, changes: list[_Change]) -> None:
        """Fetch the payloads that did not come with their events, then apply the events
        in order."""
        needed = [(event, data) for event, data in changes
                  if event.type in _EVENTS_WITH_OBJECTS
                  and not self.store.holds(event.meta.id, event.meta.sequence)]
        regions = self._fetch([event.meta for event, data in needed if data is None])
        arrived = {event.sequence: data for event, data in needed if data is not None}
        try:
            for event, _ in changes:
                region: Region | None
                if (data := arrived.get(event.sequence)) is not None:
                    region = self._copy_in(event.meta, data)
                else:
                    region = regions.pop(event.sequence, None)
                self.store.apply(event, region)
                self._saw_primary(event.sequence)
        finally:
            self._discard(regions.values())
        self._caught_up_check()

    # -- copying payloads -----------------------------------------------------------

    def _fetch(self, metas: Sequence[pb.ObjectMeta]) -> dict[int, Region | None]:
        """The payloads of the objects ``metas`` describe, each in a region of the store,
        by sequence; None for an object the primary no longer holds."""
        fetched: dict[int, Region | None] = {}
        try:
            small: list[pb.ObjectMeta] = []
            small_bytes = 0
            for meta in metas:
                if meta.size > _SMALL_OBJECT:
                    fetched[meta.sequence] = self._fetch_streamed(meta)
                    continue
                if small and (small_bytes + meta.size > _BATCH_GET_BYTES
                              or len(small) == self._max_batch):
                    fetched.update(self._fetch_batch(small))
                    small, small_bytes = [], 0
                small.append(meta)
                small_bytes += meta.size
            if small:
                fetched.update(self._fetch_batch(small))
        except BaseException:
            self._discard(fetched.values())
            raise
        return fetched

    def _fetch_batch(self, metas: list[pb.ObjectMeta]) -> dict[int, Region | None]:
        fetched: dict[int, Region | None] = {}
        try:
            results = self._link.batch_get([meta.id for meta in metas])
            for meta, result in zip(metas, results, strict=True):
                if result.code == Code.OK and result.meta.sequence == meta.sequence \
                        and result.payload_omitted:
                    fetched[meta.sequence] = self._fetch_streamed(meta)
                elif result.code == Code.OK and result.meta.sequence == meta.sequence:
                    fetched[meta.sequence] = self._copy_in(meta, result.data)
                else:
                    self._missing(meta, result.code, result.message)
                    fetched[meta.sequence] = None
        except BaseException:
            self._discard(fetched.values())
            raise
        return fetched

    def _discard(self, regions: Iterable[Region | None]) -> None:
        """Free fetched payloads that will not be applied."""
        for region in regions:
            if region is not None:
                self.store.discard(region)

    def _fetch_streamed(self, meta: pb.ObjectMeta) -> Region | None:
        messages = self._link.get_stream(meta)
        try:
            first = pb.GetStreamResponse.FromString(next(messages))
        except grpc.RpcError as exc:
            self._missing(meta, exc.code().value[0], exc.details() or "")
            return None
        if first.meta.sequence != meta.sequence:
            messages.cancel()
            return None
        region = self.store.replica_region(meta.size)
        try:
            target = region.view()
            position = 0
            for message in messages:
                chunk = decode_chunk(message)
                if chunk is None:
                    chunk = memoryview(pb.GetStreamResponse.FromString(message).chunk)
                target[position:position + len(chunk)] = chunk
                position += len(chunk)
            if position != meta.size:
                raise StoreError(Code.DATA_LOSS, f"object {meta.id.hex()} came with {position}"
                                 f" of its {meta.size} bytes")
            self._check(meta, target)
        except grpc.RpcError as exc:
            self.store.discard(region)
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        except BaseException:
            self.store.discard(region)
            raise
        return region

    def _copy_in(self, meta: pb.ObjectMeta, data: bytes) -> Region:
        region = self.store.replica_region(len(data))
        try:
            region.view()[:] = data
            self._check(meta, data)
        except BaseException:
            self.store.discard(region)
            raise
        return region

    @staticmethod
    def _check(meta: pb.ObjectMeta, payload: bytes | memoryview) -> None:
        if len(payload) != meta.size or crc32c.crc32c(payload) != meta.crc32c:
            raise StoreError(Code.DATA_LOSS, f"object {meta.id.hex()} arrived damaged (size or"
                             " CRC32C differs from its metadata); fetching it again")

    def _missing(self, meta: pb.ObjectMeta, code: int, message: str) -> None:
        """An object the primary could not give: gone (a later event removes it), or
        damaged there (DATA_LOSS: this copy goes without it, as the primary's readers
        must). Anything else is raised, to be retried."""
        if code == Code.NOT_FOUND:
            return
        if code == Code.DATA_LOSS:
            log.error("the primary's copy of %s is damaged, not copied: %s", meta.id.hex(),
                      message)
            return
        raise StoreError(Code(code), f"fetching {meta.id.hex()} from the primary: {message}")

    # -- resync ---------------------------------------------------------------------

    def _resync(self, why: str) -> _Subscription:
        """Copy a snapshot of the primary; return the subscription to go on with.

        The subscription is opened before the listing, from the sequence the
        listing starts at, and read meanwhile, so the primary's history may be
        trimmed during a long copy without harm. Should it break anyway (this
        follower read too slowly), the listing is repeated: it then copies only
        what changed since.
        """
        log.warning("resyncing from a snapshot of %s: %s", self.config.follow, why)
        self._state = pb.REPLICATION_STATE_RESYNCING
        store = self.store
        held = store.begin_resync()
        started = time.monotonic()
        copied = 0
        while True:
            info = self._link.info()
            events = _Subscription(self._link, info.last_sequence + 1, info.store_id)
            try:
                copied += self._copy_snapshot(held)
            except BaseException:
                events.close()
                raise
            if events.intact():
                break
            events.close()
            log.info("the subscription broke during the snapshot; copying what changed since")
        store.end_resync(info.last_sequence, info.store_id)
        self._must_resync = ""
        self._resyncs += 1
        log.info("resynced from %s at sequence %d: %d objects held, %d bytes copied in %.1f s",
                 self.config.follow, info.last_sequence, len(held), copied,
                 time.monotonic() - started)
        return events

    def _copy_snapshot(self, held: dict[bytes, tuple[int, int, int]]) -> int:
        """Make the held objects the primary's: copy those missing or different, drop those
        it no longer has; return the payload bytes copied."""
        listed: set[bytes] = set()
        copied = 0
        for page in self._link.list_all():
            wanted = []
            for meta in page:
                listed.add(meta.id)
                if held.get(meta.id) != (meta.sequence, meta.size, meta.crc32c):
                    wanted.append(meta)
            copied += self._copy(wanted, held)
            if page:
                self._saw_primary(page[-1].sequence)
        gone = [object_id for object_id in held if object_id not in listed]
        self.store.resync_remove(gone)
        for object_id in gone:
            del held[object_id]
        return copied

    def _copy(self, metas: list[pb.ObjectMeta], held: dict[bytes, tuple[int, int, int]]) -> int:
        """Copy objects of the snapshot here; return the payload bytes copied."""
        copied = 0
        for start in range(0, len(metas), _BATCH_EVENTS):
            part = metas[start:start + _BATCH_EVENTS]
            regions = self._fetch(part)
            kept = [(meta, region) for meta in part
                    if (region := regions[meta.sequence]) is not None]
            self.store.resync_add(kept)
            for meta, _ in kept:
                held[meta.id] = (meta.sequence, meta.size, meta.crc32c)
                copied += meta.size
            self._resync_budget.spend(sum(meta.size for meta, _ in kept), self._stopping)
        return copied

    # -- lag --------------------------------------------------------------------------

    def _saw_primary(self, sequence: int) -> None:
        """The primary has issued ``sequence``."""
        if sequence > self._primary_sequence:
            self._primary_sequence = sequence
            self.store.primary_issued(sequence)
            if self._behind_since is None and sequence > self.store.last_sequence:
                self._behind_since = time.monotonic()

    def _caught_up_check(self) -> None:
        if self.store.last_sequence >= self._primary_sequence:
            self._behind_since = None


class _Subscription:
    """The primary's events from ``since`` on, each with its payload when it came along,
    read ahead by a thread of its own so the primary never holds them for this follower."""

    def __init__(self, link: PrimaryLink, since: int, store_id: str) -> None:
        self.since = since
        self._call = link.subscribe(since, store_id)
        self._responses: deque[_Item] = deque()
        self._queued = threading.Condition()
        self._queued_events = self._queued_bytes = 0
        self._carry: deque[_Change] = deque()
        self._end: BaseException | None = None  # how the stream ended, once taken
        self._broken = False
        self._reader = threading.Thread(target=self._read, name="follower-events", daemon=True)
        self._reader.start()

    def intact(self) -> bool:
        """Whether it has neither ended nor failed so far."""
        return not self._broken

    def close(self) -> None:
        self._call.cancel()
        self._reader.join(timeout=_CALL_TIMEOUT)

    def take(self) -> list[_Change]:
        """The next changes to apply: those waiting, up to a round's count and payload
        bytes; none if nothing came within the poll interval. An end or error after some
        changes is raised at the next call, once they are applied."""
        batch: list[_Change] = []
        payload = 0
        while len(batch) < _BATCH_EVENTS:
            if not self._carry and not self._receive(wait=not batch):
                break
            event = self._carry[0][0]
            size = event.meta.size if event.type in _EVENTS_WITH_OBJECTS else 0
            if batch and payload + size > _BATCH_BYTES:
                break
            batch.append(self._carry.popleft())
            payload += size
        if not batch and self._end is not None:
            raise self._end
        return batch

    def _receive(self, wait: bool) -> bool:
        """Move the next response's changes into the carry; False if none came."""
        if self._end is not None:
            return False
        with self._queued:
            if wait and not self._responses:
                self._queued.wait(_POLL_INTERVAL)
            if not self._responses:
                return False
            item = self._responses.popleft()
            if isinstance(item, pb.SubscribeResponse):
                self._queued_events -= len(item.events)
                self._queued_bytes -= item.ByteSize()
            self._queued.notify_all()
        if not isinstance(item, pb.SubscribeResponse):
            self._end = item or _StreamEnded("the primary ended the subscription")
            return False
        payloads: list[bytes | None] = [*item.payloads] or [None] * len(item.events)
        for event, data in zip(item.events, payloads, strict=True):
            self._carry.append((event, data if data is not None
                                and len(data) == event.meta.size else None))
        return bool(item.events)

    def _read(self) -> None:
        try:
            for response in self._call:
                self._offer(response)
            self._broken = True
            self._offer(None)
        except grpc.RpcError as exc:
            self._broken = True
            self._offer(exc)

    def _offer(self, item: _Item) -> None:
        """Queue ``item``, waiting while the read-ahead is full; give up once the call is
        cancelled (nobody takes any more)."""
        events = len(item.events) if isinstance(item, pb.SubscribeResponse) else 0
        size = item.ByteSize() if isinstance(item, pb.SubscribeResponse) else 0
        with self._queued:
            while (self._queued_events + events > _READ_AHEAD_EVENTS
                   or self._queued_bytes + size > _READ_AHEAD_BYTES) and self._responses:
                if not self._call.is_active():
                    return
                self._queued.wait(_POLL_INTERVAL)
            self._responses.append(item)
            self._queued_events += events
            self._queued_bytes += size
            self._queued.notify_all()


class _RateBound:
    """Paces a resync's copying to at most ``rate`` bytes per second (0: no bound)."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._free_at = time.monotonic()

    def spend(self, amount: int, stopping: threading.Event) -> None:
        if not self._rate:
            return
        now = time.monotonic()
        self._free_at = max(self._free_at, now) + amount / self._rate
        if self._free_at > now:
            stopping.wait(self._free_at - now)
