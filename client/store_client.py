"""StoreClient: the one object a Python program uses to talk to an improv-store server."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from improv_store import chunks
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

from . import codec
from .access import TlsSettings, open_channel, resolve_token
from .errors import (
    HistoryUnavailable,
    ObjectNotFound,
    StoreError,
    StoreFull,
    StoreUnavailable,
    error_for,
    from_rpc_error,
)
from .ids import ObjectID
from .index import IndexReader, PinTable
from .lane import Lane, LaneClosed, LaneSubscription
from .models import Event, ObjectInfo, StoreInfo
from .session import Session
from .shm import SegmentMaps, exporter_of, is_colocated, read_only
from .tuning import keep_freed_memory

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "unix:///tmp/improv-store.sock"
_OFF = ("0", "off", "no")  # environment values that turn a default-on setting off
# Payloads above this go through the chunked streams; it matches the server's
# default inline limit, and each chunk is at most this size.
INLINE_LIMIT = 4 << 20
MAX_MESSAGE_SIZE = 32 << 20
# put_many packs up to _PUT_BATCH objects of at most _BATCH_ITEM_LIMIT bytes per
# message, which keeps every BatchPut under the server's 32 MiB message limit.
_PUT_BATCH = 256
# A colocated writer keeps a region of its last put's size reserved, up to this size
# (SealRequest.reserve_next): the next put of that size skips Create.
_RESERVE_MAX = 16 << 20
_BATCH_ITEM_LIMIT = 64 << 10
TRANSFER_MODES = ("auto", "shm", "inline")
_SERVICE_PATH = "/" + pb.DESCRIPTOR.services_by_name["StoreService"].full_name + "/"

# RPCs the local lane carries: name -> (LaneMethod, response type).
_LANE_METHODS: dict[str, tuple[int, type]] = {
    "Put": (pb.LANE_METHOD_PUT, pb.PutResponse),
    "Get": (pb.LANE_METHOD_GET, pb.GetResponse),
    "BatchGet": (pb.LANE_METHOD_BATCH_GET, pb.BatchGetResponse),
    "Delete": (pb.LANE_METHOD_DELETE, pb.DeleteResponse),
    "Replace": (pb.LANE_METHOD_REPLACE, pb.ReplaceResponse),
    "Create": (pb.LANE_METHOD_CREATE, pb.CreateResponse),
    "Seal": (pb.LANE_METHOD_SEAL, pb.SealResponse),
    "Abort": (pb.LANE_METHOD_ABORT, pb.AbortResponse),
    "Info": (pb.LANE_METHOD_INFO, pb.InfoResponse),
    "List": (pb.LANE_METHOD_LIST, pb.ListResponse),
    "BatchPut": (pb.LANE_METHOD_BATCH_PUT, pb.BatchPutResponse),
}

Ref = ObjectID | bytes | str


def normalize_address(address: str) -> str:
    """Accept ``unix:///path``, a bare socket path, or ``host:port``; return a gRPC target."""
    if address.startswith("unix:"):
        return address
    if address.startswith("/") or address.startswith("."):
        return "unix:" + os.path.abspath(address)
    return address


def to_ref(ref: Ref) -> pb.ObjectRef:
    """An ObjectID or 20 raw bytes refers by ID; a string refers by name."""
    if isinstance(ref, ObjectID):
        return pb.ObjectRef(id=ref.binary())
    if isinstance(ref, (bytes, bytearray)):
        return pb.ObjectRef(id=bytes(ref))
    if isinstance(ref, str):
        return pb.ObjectRef(name=ref)
    raise TypeError(f"refer to an object by ObjectID, 20 bytes or name, not {type(ref).__name__}")


def _duration(seconds: float | None) -> Duration | None:
    if seconds is None:
        return None
    duration = Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


class StoreClient:
    """A connection to one store. Thread-safe; use it as a context manager.

    ``address`` defaults to ``$IMPROV_STORE_ADDRESS``, else the default unix
    socket. ``timeout`` is the deadline, in seconds, for each call (None: no
    deadline); waits asked for with ``get(..., timeout=)`` are added to it.
    ``transfer`` (default ``$IMPROV_STORE_TRANSFER``, else ``auto``) says how
    payloads move: ``auto`` uses shared memory when this process shares the
    server's /dev/shm and inline bytes otherwise; ``shm`` insists on shared
    memory; ``inline`` never uses it. A client that uses shared memory also
    makes its unary calls and subscriptions over the server's local lane (a
    plain unix socket, ten times cheaper than a gRPC call) unless ``lane``
    (default ``$IMPROV_STORE_LANE``) is off.

    A server started with ``--token-file`` wants its token on every call:
    ``token`` (default ``$IMPROV_STORE_TOKEN``) or ``token_file`` (default
    ``$IMPROV_STORE_TOKEN_FILE``); without it calls raise Unauthenticated.
    Over TCP, ``tls`` (default: on when ``$IMPROV_STORE_TLS`` is 1 or a CA or
    client certificate is given) encrypts the connection; ``tls_ca`` is the
    PEM file of CAs to trust (default the system's), ``tls_cert`` and
    ``tls_key`` a client certificate for mutual TLS, ``tls_server_name`` the
    name to check the server's certificate against; each defaults to
    ``$IMPROV_STORE_TLS_<NAME>``. Unix-socket addresses never use TLS.

    Payloads that travel inline allocate and free megabyte buffers, so the
    client asks glibc to keep freed memory for reuse (up to 256 MiB;
    improv_store.client.tuning.keep_freed_memory): a 100 MiB get over TCP is then
    about 1.5x faster. It is a process-wide setting;
    ``$IMPROV_STORE_KEEP_FREED_MEMORY=0`` leaves malloc as it is.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float | None = None,
        transfer: str | None = None,
        lane: bool | None = None,
        token: str | None = None,
        token_file: str | None = None,
        tls: bool | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        self.address = normalize_address(
            address or os.environ.get("IMPROV_STORE_ADDRESS", DEFAULT_ADDRESS)
        )
        self.timeout = timeout
        self.transfer = transfer or os.environ.get("IMPROV_STORE_TRANSFER", "auto")
        self.lane = (
            lane if lane is not None
            else os.environ.get("IMPROV_STORE_LANE", "on").lower() not in _OFF
        )
        if self.transfer not in TRANSFER_MODES:
            raise ValueError(f"transfer must be one of {TRANSFER_MODES}, not {self.transfer!r}")
        if os.environ.get("IMPROV_STORE_KEEP_FREED_MEMORY", "on").lower() not in _OFF:
            keep_freed_memory()
        # The lane sends this token too; None when the server needs none.
        self._token = resolve_token(token, token_file)
        self._channel = open_channel(
            self.address,
            [
                ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
                ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
                ("grpc.http2.max_frame_size", 16777215),
            ],
            self._token,
            TlsSettings.resolve(tls, tls_ca, tls_cert, tls_key, tls_server_name),
        )
        self._stub = store_pb2_grpc.StoreServiceStub(self._channel)
        # The chunk streams with their messages left serialized (improv_store.chunks):
        # bulk data is copied once, not passed through protobuf objects.
        self._bulk = {
            "PutStream": self._channel.stream_unary(
                _SERVICE_PATH + "PutStream",
                request_serializer=None,
                response_deserializer=pb.PutStreamResponse.FromString,
            ),
            "GetStream": self._channel.unary_stream(
                _SERVICE_PATH + "GetStream",
                request_serializer=pb.GetStreamRequest.SerializeToString,
                response_deserializer=None,
            ),
        }
        self._local_lock = threading.Lock()
        self._local: _Local | None = None
        self._local_checked = False
        # Open subscriptions, ended by close() (the gRPC ones end with the channel anyway).
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._put_batch: int | None = None  # items per BatchPut, within the server's limit

    # -- lifecycle ----------------------------------------------------------------

    def __enter__(self) -> StoreClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection: subscriptions end and the server drops this client's leases."""
        for subscription in list(self._subscriptions):
            subscription.close()
        with self._local_lock:
            if self._local is not None and self._local.session is not None:
                self._local.session.close()
        self._channel.close()

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Block until the server accepts connections; StoreUnavailable after ``timeout``."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise error_for(
                grpc.StatusCode.UNAVAILABLE, f"no store answered at {self.address} in {timeout} s"
            ) from None

    def health(self, timeout: float = 5.0) -> str:
        """The server's grpc.health.v1 status, e.g. ``SERVING`` (this check needs no token)."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:  # whatever the code, the server did not answer
            message = f"no health answer from {self.address}: {exc.details() or exc.code().name}"
            raise StoreUnavailable(message) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    @property
    def colocated(self) -> bool:
        """Whether payloads move through shared memory for this client."""
        return self._shared_memory() is not None

    def _call(self, method: str, request: Any, extra_time: float = 0.0) -> Any:
        """Call an RPC by name: over the local lane when this client has one, else gRPC."""
        lane_method = _LANE_METHODS.get(method)
        # Decided by the first call that needs it (a put_many may be the first call).
        local = self._local if self._local_checked else self._shared_memory()
        if lane_method is None or local is None or not local.lane_path:
            return self._grpc_call(method, request, extra_time)
        method_id, response_type = lane_method
        for attempt in range(2):
            lane = self._session(local, probe=False)
            assert isinstance(lane, Lane)
            try:
                return lane.call(method_id, request, response_type)
            except LaneClosed:
                if attempt or getattr(request, "session_id", ""):
                    raise  # a request bound to the lost session: the caller renews it
        raise AssertionError("unreachable")

    def _grpc_call(self, method: str, request: Any, extra_time: float = 0.0) -> Any:
        timeout = None if self.timeout is None else self.timeout + extra_time
        try:
            call = self._bulk.get(method) or getattr(self._stub, method)
            return call(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    # -- shared memory --------------------------------------------------------------

    def _shared_memory(self) -> _Local | None:
        """The shared-memory state when this client uses it (decided once, by the token)."""
        if self.transfer == "inline":
            return None
        with self._local_lock:
            if not self._local_checked:
                info = self._grpc_call("Info", pb.InfoRequest())
                self._put_batch = _put_batch_size(info.limits)
                if is_colocated(info.locality_token_name, info.locality_token):
                    minimum = 1 if self.transfer == "shm" else info.limits.shm_min_size
                    lane_path = info.lane_socket if self.lane else ""
                    self._local = _Local(maps=SegmentMaps(), min_size=minimum, lane_path=lane_path)
                elif self.transfer == "shm":
                    raise StoreError(
                        f"IMPROV_STORE_TRANSFER=shm, but the store at {self.address} does not"
                        " share this process's /dev/shm"
                    )
                self._local_checked = True
            return self._local

    def _session(self, local: _Local, *, probe: bool = True) -> Session | Lane:
        """The session that holds this client's leases: the lane connection, if there is
        a lane, else a gRPC Session stream. (Re)opened when missing or dead.

        ``probe=False`` skips the lane's liveness probe (a system call) for calls that
        handle a lost lane themselves: one the server left fails before sending
        (LaneClosed), and is retried or renews its session.
        """
        with self._local_lock:
            session = local.session
            if isinstance(session, Lane) and not probe:
                dead = session.closed
            else:
                dead = session is None or not session.alive
            if dead:
                if local.lane_path:
                    self._open_lane(local)
                else:
                    try:
                        local.session = Session(self._stub)
                    except grpc.RpcError as exc:
                        raise from_rpc_error(exc) from None
            return local.session

    def _open_lane(self, local: _Local) -> Lane:
        """A new lane session, and the object index of the server behind it."""
        lane = local.session = Lane(local.lane_path, self._token)
        info = lane.call(pb.LANE_METHOD_INFO, pb.InfoRequest(), pb.InfoResponse)
        local.index = self._index_reader(local, info)
        local.pins = None
        if local.index is not None and info.object_index.views and lane.opened.pin_table:
            try:
                local.pins = PinTable(lane.opened.pin_table, lane.opened.pin_slots)
            except (OSError, ValueError) as exc:
                log.debug("not reading in place: pin table %s: %s", lane.opened.pin_table, exc)
        return lane

    def _index_reader(self, local: _Local, info: pb.InfoResponse) -> IndexReader | None:
        """The server's object index, when this client reads small objects inline."""
        layout = info.object_index
        if not info.HasField("object_index") or layout.max_payload > local.min_size:
            return None  # a transfer="shm" client gets handles even for small objects
        try:
            return IndexReader(layout, local.maps)
        except (OSError, ValueError) as exc:
            log.debug("not using the object index %s: %s", layout.name, exc)
            return None

    def _indexed(self, ref: Ref) -> Any:
        """The object read from the server's object index, or _NOT_INDEXED: ask the server.

        Only while this client's lane is up: a lane that hung up means the
        server stopped, and its index may be stale (and its pins gone).
        """
        local = self._shared_memory()
        if local is None or local.index is None or isinstance(ref, str):
            return _NOT_INDEXED
        object_id = ref.binary() if isinstance(ref, ObjectID) else bytes(ref)
        # Reading a dead server's tables is harmless.
        found = local.index.read(object_id, local.pins)
        session = local.session
        if found is None or session is None or not session.alive:
            return _NOT_INDEXED
        meta, payload = found
        if isinstance(payload, ctypes.Array):  # in place, pinned until the result is garbage
            return codec.decode(meta, read_only(payload))
        return codec.decode(meta, payload)

    def _call_with_session(
        self,
        method: str,
        make_request: Callable[[_Local | None, str], Any],
        extra_time: float = 0.0,
    ) -> tuple[Any, _Local | None]:
        """Call with the shared-memory session filled in; retry once if it was lost."""
        local = self._shared_memory()
        for attempt in range(2):
            session_id = self._session(local, probe=False).session_id if local else ""
            try:
                return self._call(method, make_request(local, session_id), extra_time), local
            except StoreError as exc:
                lost = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)
                if exc.code not in lost or not local or attempt:
                    raise
                self._drop_session(local, session_id)
        raise AssertionError("unreachable")

    def _drop_session(self, local: _Local, session_id: str) -> None:
        """Close and forget session ``session_id``, which the server no longer has: the
        next use opens another. One that another thread has renewed already is kept."""
        with self._local_lock:
            stale = local.session
            if stale is None or stale.session_id != session_id:
                return
            local.session = None
        stale.close()

    def _transfer(self) -> int:
        return pb.TRANSFER_SHM if self.transfer == "shm" else pb.TRANSFER_AUTO

    def _from_handle(self, local: _Local, meta: pb.ObjectMeta, handle: pb.ShmHandle) -> Any:
        """Decode a payload in place; its lease is released when the result is garbage."""
        session = local.session or self._session(local)  # the session that took the lease
        exporter = local.maps.region(handle, on_release=session.release)
        return codec.decode(meta, read_only(exporter))

    # -- writing ------------------------------------------------------------------

    def put(
        self,
        obj: Any,
        name: str | None = None,
        *,
        id: ObjectID | bytes | None = None,
        labels: dict[str, str] | None = None,
    ) -> ObjectID:
        """Store ``obj`` (ndarray, bytes, or anything picklable); return its ID."""
        return ObjectID(self._store(obj, name, id, labels, replace=False).id)

    def put_many(
        self, objects: Iterable[Any], names: Iterable[str | None] | None = None
    ) -> list[ObjectID]:
        """Store several small objects in few round trips; return their IDs in order.

        Each object is stored on its own: if one is refused, the others still
        are, and the first refusal is raised afterwards (its message says
        which item). Objects too large for a batch go one by one.
        """
        items = list(objects)
        labels = list(names) if names is not None else [None] * len(items)
        if len(labels) != len(items):
            raise ValueError(f"{len(items)} objects but {len(labels)} names")
        ids: list[ObjectID | None] = [None] * len(items)
        batch: list[tuple[int, pb.PutRequest]] = []
        for index, (obj, name) in enumerate(zip(items, labels, strict=True)):
            encoded = codec.encode(obj)
            if encoded.size > _BATCH_ITEM_LIMIT:
                ids[index] = self.put(obj, name)
                continue
            spec = pb.ObjectSpec(name=name or "", encoding=encoded.encoding, array=encoded.array)
            batch.append((index, pb.PutRequest(spec=spec, data=encoded.to_bytes())))
        first_error: StoreError | None = None
        if self._put_batch is None:
            self._put_batch = _put_batch_size(self._call("Info", pb.InfoRequest()).limits)
        for start in range(0, len(batch), self._put_batch):
            chunk = batch[start : start + self._put_batch]
            request = pb.BatchPutRequest(items=[item for _, item in chunk])
            response = self._call("BatchPut", request)
            for (index, _), result in zip(chunk, response.results, strict=True):
                if result.code == grpc.StatusCode.OK.value[0]:
                    ids[index] = ObjectID(result.meta.id)
                elif first_error is None:
                    message = f"item {index}: {result.message}"
                    first_error = error_for(_status_code(result.code), message)
        if first_error is not None:
            raise first_error
        return [object_id for object_id in ids if object_id is not None]

    def replace(self, name: str, obj: Any, *, labels: dict[str, str] | None = None) -> ObjectID:
        """Store ``obj`` under ``name`` and delete the older objects of that name, atomically."""
        return ObjectID(self._store(obj, name, None, labels, replace=True).id)

    def _store(
        self,
        obj: Any,
        name: str | None,
        object_id: ObjectID | bytes | None,
        labels: dict[str, str] | None,
        *,
        replace: bool,
    ) -> pb.ObjectMeta:
        encoded = codec.encode(obj)
        spec = pb.ObjectSpec(
            id=bytes(object_id) if object_id is not None else b"",
            name=name or "",
            encoding=encoded.encoding,
            array=encoded.array,
        )
        if labels:  # a map given to the constructor, even empty, is copied in Python
            spec.labels.update(labels)
        size = encoded.size
        local = self._shared_memory()
        if local is not None and size >= local.min_size:
            return self._store_in_place(local, spec, size, encoded, replace)
        if size <= INLINE_LIMIT:
            if replace:
                request = pb.ReplaceRequest(spec=spec, data=encoded.to_bytes())
                return self._call("Replace", request).meta
            return self._call("Put", pb.PutRequest(spec=spec, data=encoded.to_bytes())).meta
        header = pb.PutStreamHeader(spec=spec, size=size, replace=replace)
        return self._call("PutStream", _chunked(header, encoded)).meta

    def _store_in_place(
        self,
        local: _Local,
        spec: pb.ObjectSpec,
        size: int,
        encoded: codec.Encoded,
        replace: bool,
    ) -> pb.ObjectMeta:
        """Fill a region (the one reserved by the last seal if it has this size, else a
        new Create's), seal it with the payload's CRC32C; abort if filling fails."""
        session_id = self._session(local).session_id
        handle = self._reserved(local, session_id, size)
        reserve_next = size if size <= _RESERVE_MAX else 0
        seal = pb.SealRequest(session_id=session_id, reserve_next=reserve_next)
        if handle is None:
            request = pb.CreateRequest(session_id=session_id, spec=spec, size=size, replace=replace)
            handle = self._call("Create", request).handle
        else:
            seal.spec.CopyFrom(spec)
            seal.replace = replace
        try:
            seal.crc32c = encoded.fill(memoryview(local.maps.region(handle)).cast("B"))
        except BaseException:
            self._abort(session_id, handle)
            raise
        seal.handle.CopyFrom(handle)
        sealed = self._call("Seal", seal)
        if sealed.HasField("next_handle"):
            displaced = local.swap_reservation((session_id, sealed.next_handle))
            if displaced is not None:  # another thread's seal reserved one too
                self._abort(*displaced)
        return sealed.meta

    def _reserved(self, local: _Local, session_id: str, size: int) -> pb.ShmHandle | None:
        """The reserved region, if it is this session's and ``size`` bytes long; a
        reservation of another size is given back."""
        reservation = local.swap_reservation()
        if reservation is None or reservation[0] != session_id:
            return None  # none, or one that ended with its session
        if reservation[1].length != size:
            self._abort(*reservation)
            return None
        return reservation[1]

    def _abort(self, session_id: str, handle: pb.ShmHandle) -> None:
        try:
            self._call("Abort", pb.AbortRequest(session_id=session_id, handle=handle))
        except StoreError as exc:
            log.warning("could not abort create %d: %s", handle.lease_id, exc)

    def create(
        self,
        shape: int | tuple[int, ...],
        dtype: Any,
        name: str | None = None,
        *,
        order: str = "C",
        id: ObjectID | bytes | None = None,
        labels: dict[str, str] | None = None,
        replace: bool = False,
    ) -> Creation:
        """A new array to fill in place; stored when the ``with`` block ends.

            creation = store.create((512, 512), "uint16", name="frame")
            with creation as frame:
                camera.read_into(frame)
            creation.id    # the stored object's ID

        Colocated, the array is the object's own shared memory (zero copy);
        otherwise it is a local buffer put on exit. An exception in the block
        aborts: nothing is stored. After the block the array is read-only and
        reads the stored object (it holds a lease, like a ``get`` view). As
        with Plasma's buffers, numpy would let the creator set it writeable
        again; writing then would change an object others read: don't.
        """
        return Creation(self, shape, dtype, name, order, id, labels, replace)

    def delete(self, ref: Ref) -> list[ObjectID]:
        """Delete an object by ID, or every object with a name; return what was deleted."""
        response = self._call("Delete", pb.DeleteRequest(ref=to_ref(ref)))
        return [ObjectID(raw) for raw in response.deleted_ids]

    # -- reading ------------------------------------------------------------------

    def get(self, ref: Ref, *, timeout: float | None = None) -> Any:
        """The object by ID or name (the newest of that name).

        With ``timeout``, wait up to that many seconds for it to appear
        (WaitTimeout after); without, a missing object is ObjectNotFound.
        Colocated, arrays are read-only views on the store's shared memory.
        """
        value = self._indexed(ref)
        if value is not _NOT_INDEXED:
            return value

        def request(local: _Local | None, session_id: str) -> pb.GetRequest:
            return pb.GetRequest(
                ref=to_ref(ref),
                wait=_duration(timeout),
                transfer=self._transfer() if local else pb.TRANSFER_INLINE,
                session_id=session_id,
            )

        response, local = self._call_with_session("Get", request, timeout or 0.0)
        return self._decode(local, response)

    def _decode(self, local: _Local | None, result: pb.GetResponse | pb.BatchGetResult) -> Any:
        if result.HasField("handle"):
            assert local is not None
            return self._from_handle(local, result.meta, result.handle)
        if result.payload_omitted:
            return self._get_streamed(result.meta.id)
        return codec.decode(result.meta, result.data)

    def release(self, value: Any) -> bool:
        """Give back the shared memory behind an array from ``get`` now, not when it is garbage.

        Plasma's ``release``. The array must not be read afterwards: the store
        may reuse its memory. Returns False when there was no lease to release
        (an inline result, or released already).
        """
        exporter = exporter_of(value)
        if self._local is None or exporter is None:
            return False
        return self._local.maps.release_now(exporter)

    def get_many(self, refs: Iterable[Ref], *, timeout: float | None = None) -> list[Any]:
        """Several objects in one round trip, in the order asked; raises for the first missing."""
        refs = list(refs)
        values = []
        for ref in refs:
            value = self._indexed(ref)
            if value is _NOT_INDEXED:
                break
            values.append(value)
        else:
            return values
        object_refs = [to_ref(ref) for ref in refs]

        def request(local: _Local | None, session_id: str) -> pb.BatchGetRequest:
            return pb.BatchGetRequest(
                refs=object_refs,
                wait=_duration(timeout),
                transfer=self._transfer() if local else pb.TRANSFER_INLINE,
                session_id=session_id,
            )

        response, local = self._call_with_session("BatchGet", request, timeout or 0.0)
        objects = []
        for result in response.results:
            if result.code != grpc.StatusCode.OK.value[0]:
                raise error_for(_status_code(result.code), result.message)
            objects.append(self._decode(local, result))
        return objects

    def stat(self, ref: Ref, *, timeout: float | None = None) -> ObjectInfo:
        """Metadata of an object, without its payload."""
        request = pb.GetRequest(ref=to_ref(ref), wait=_duration(timeout), metadata_only=True)
        response = self._call("Get", request, extra_time=timeout or 0.0)
        return ObjectInfo.from_proto(response.meta)

    def _get_streamed(self, object_id: bytes) -> Any:
        """Fetch a large payload as chunks, each copied once into the final object (numpy
        copies without the GIL, so gRPC's threads go on receiving meanwhile)."""
        request = pb.GetStreamRequest(ref=pb.ObjectRef(id=object_id), chunk_size=chunks.CHUNK_SIZE)
        try:
            stream = self._bulk["GetStream"](request, timeout=self.timeout)
            meta = pb.GetStreamResponse.FromString(next(stream)).meta
            payload, target = codec.fillable(meta.size, meta.encoding)
            offset = 0
            for raw in stream:
                chunk = np.frombuffer(_chunk_of(raw), dtype=np.uint8)
                if offset + len(chunk) > meta.size:
                    raise StoreError(f"stream sent more than the {meta.size} bytes announced")
                np.copyto(target[offset : offset + len(chunk)], chunk)
                offset += len(chunk)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        if offset != meta.size:
            raise StoreError(f"stream ended after {offset} of {meta.size} bytes")
        return codec.decode(meta, payload)

    def list(self, prefix: str = "", *, page_size: int = 500) -> Iterator[ObjectInfo]:
        """Every object whose name starts with ``prefix`` (all, when empty), oldest first."""
        token = ""
        while True:
            request = pb.ListRequest(prefix=prefix, page_size=page_size, page_token=token)
            response = self._call("List", request)
            for meta in response.objects:
                yield ObjectInfo.from_proto(meta)
            token = response.next_page_token
            if not token:
                return

    def info(self) -> StoreInfo:
        """Version, limits, durability mode and usage of the server."""
        return StoreInfo.from_proto(self._call("Info", pb.InfoRequest()))

    def subscribe(
        self, prefix: str = "", *, since: int | None = None, values: bool = False
    ) -> Subscription:
        """Follow changes to objects whose name starts with ``prefix``.

        With ``since``, first replay retained history from that sequence
        (HistoryUnavailable if it is gone). Iterate the result for Events;
        close it (or use it as a context manager) to stop. With ``values``,
        each put/replace event carries the stored object as ``event.value``
        (through shared memory when colocated, so no extra round trip).
        A colocated client subscribes over a lane connection of its own,
        others over a gRPC stream; both behave the same.
        """
        subscription = Subscription(self, prefix, since, values)
        self._subscriptions.add(subscription)
        return subscription


@dataclass
class _Local:
    """Shared-memory state of a colocated client."""

    maps: SegmentMaps
    min_size: int
    lane_path: str = ""
    session: Session | Lane | None = None
    index: IndexReader | None = None
    pins: PinTable | None = None  # the lane session's, for reading large objects in place
    # (session ID, handle) of the region the server reserved for the next put.
    reservation: tuple[str, pb.ShmHandle] | None = None
    reservation_lock: threading.Lock = field(default_factory=threading.Lock)

    def swap_reservation(
        self, new: tuple[str, pb.ShmHandle] | None = None
    ) -> tuple[str, pb.ShmHandle] | None:
        """Put ``new`` in place of the current reservation, and return that."""
        with self.reservation_lock:
            old, self.reservation = self.reservation, new
        return old


_NOT_INDEXED = object()


def _put_batch_size(limits: pb.Limits) -> int:
    """Objects per BatchPut: ``_PUT_BATCH``, or fewer if the server's max_batch_size is lower."""
    return min(_PUT_BATCH, limits.max_batch_size or _PUT_BATCH)


def _chunked(header: pb.PutStreamHeader, encoded: codec.Encoded) -> Iterator[bytes]:
    """A PutStream's serialized messages: the header, then chunks encoded by hand."""
    yield pb.PutStreamRequest(header=header).SerializeToString()
    for pieces in encoded.chunk_pieces(chunks.CHUNK_SIZE):
        yield chunks.encode_chunk(pieces)


def _chunk_of(raw: bytes) -> memoryview | bytes:
    """The payload slice of a serialized GetStreamResponse chunk."""
    chunk = chunks.decode_chunk(raw)
    return chunk if chunk is not None else pb.GetStreamResponse.FromString(raw).chunk


def _status_code(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


class Creation:
    """The ``with`` block of ``StoreClient.create``; ``id`` is set once it is stored."""

    def __init__(
        self,
        client: StoreClient,
        shape: int | tuple[int, ...],
        dtype: Any,
        name: str | None,
        order: str,
        object_id: ObjectID | bytes | None,
        labels: dict[str, str] | None,
        replace: bool,
    ) -> None:
        if order not in ("C", "F"):
            raise ValueError(f"order must be 'C' or 'F', not {order!r}")
        self._client = client
        self._shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self._dtype = np.dtype(dtype)
        self._order = order
        self._name = name
        self._object_id = object_id
        self._labels = labels
        self._replace = replace
        self._handle: pb.ShmHandle | None = None
        self._session_id = ""
        self._array: np.ndarray | None = None
        self._exporter: ctypes.Array | None = None
        self._local: _Local | None = None
        self.id: ObjectID | None = None

    def _spec(self) -> pb.ObjectSpec:
        layout = pb.ArrayLayout(
            dtype=self._dtype.str,
            shape=self._shape,
            order=pb.ARRAY_ORDER_F if self._order == "F" else pb.ARRAY_ORDER_C,
        )
        return pb.ObjectSpec(
            id=bytes(self._object_id) if self._object_id is not None else b"",
            name=self._name or "",
            encoding=pb.ENCODING_NDARRAY,
            array=layout,
            labels=self._labels or {},
        )

    def __enter__(self) -> np.ndarray:
        client = self._client
        local = self._local = client._shared_memory()
        size = int(np.prod(self._shape)) * self._dtype.itemsize
        if local is None or size == 0:
            self._array = np.empty(self._shape, self._dtype, order=self._order)
            return self._array
        session = client._session(local)
        self._session_id = session.session_id
        request = pb.CreateRequest(
            session_id=self._session_id, spec=self._spec(), size=size, replace=self._replace
        )
        self._handle = client._call("Create", request).handle
        self._exporter = local.maps.region(self._handle)
        flat = np.frombuffer(self._exporter, dtype=self._dtype)
        self._array = flat.reshape(self._shape, order=self._order)
        return self._array

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        client = self._client
        array, self._array = self._array, None
        exporter, self._exporter = self._exporter, None
        assert array is not None
        array.flags.writeable = False
        if self._handle is None:
            if exc_type is None:
                meta = client._store(
                    array, self._name, self._object_id, self._labels, replace=self._replace
                )
                self.id = ObjectID(meta.id)
            return
        if exc_type is not None:
            client._abort(self._session_id, self._handle)
            return
        seal = pb.SealRequest(session_id=self._session_id, handle=self._handle, keep_lease=True)
        sealed = client._call("Seal", seal)
        self.id = ObjectID(sealed.meta.id)
        # The creator's array now reads the stored object: lease it like a get view.
        session = client._session(self._local)
        self._local.maps.release_with(exporter, sealed.handle.lease_id, session.release)


class Subscription:
    """An open Subscribe stream: iterate it for Events, close it to stop.

    A subscriber the server cuts off for falling behind resumes by itself from
    where it stopped, so the caller sees every event once, in order.
    ``last_sequence`` is the last event delivered: pass ``since=last_sequence + 1``
    to a new subscription to continue after a disconnect or server restart.
    A colocated client's subscription runs on a lane connection of its own
    (LaneSubscription), any other on a gRPC stream (_GrpcSubscription).
    """

    def __init__(self, client: StoreClient, prefix: str, since: int | None, values: bool) -> None:
        self._client = client
        self._prefix = prefix
        self._values = values
        local = client._shared_memory()
        self._lane_path = local.lane_path if local is not None else ""
        self._local = local if values else None
        if since is None:
            # From the next change on, asked for by number: the server registers a
            # subscription after the call has left, and a change made in between (by
            # this process's next put, say) would otherwise be missed.
            since = client._call("Info", pb.InfoRequest()).last_sequence + 1
        self.last_sequence = since - 1
        self._closed = False
        self._session_id = ""  # the session that takes the values' leases
        self._stream = self._open(since)

    def _open(self, since: int) -> LaneSubscription | _GrpcSubscription:
        client = self._client
        request = pb.SubscribeRequest(prefix=self._prefix, since_sequence=since)
        if self._local is not None:
            self._session_id = client._session(self._local).session_id
            request.transfer = client._transfer()
            request.session_id = self._session_id
        if self._lane_path:
            return LaneSubscription(self._lane_path, client._token, request)
        return _GrpcSubscription(client._stub, request)

    def __iter__(self) -> Iterator[Event]:
        while True:
            received = False
            try:
                for response in self._stream:
                    event = Event.from_proto(response.event, value=self._value(response))
                    self.last_sequence = event.sequence
                    received = True
                    yield event
                return
            except StoreError as exc:
                if self._closed:
                    return
                resume = self._resume_from(exc, received)
            self._stream = self._open(resume)
            if self._closed:  # closed while reopening: end the new stream too
                self._stream.close()

    def _resume_from(self, error: StoreError, received: bool) -> int:
        """Where to resubscribe after ``error``, or raise it when it ends the subscription.

        RESOURCE_EXHAUSTED after events (a refusal comes first) means the
        subscriber fell behind: the first event it missed follows the last it
        got, where the gRPC resume trailer points too.
        """
        if isinstance(error, StoreFull) and received:
            resume = self.last_sequence + 1
            log.warning("subscription fell behind; resuming from sequence %d", resume)
            return resume
        if error.code == grpc.StatusCode.FAILED_PRECONDITION and self._local:
            self._client._drop_session(self._local, self._session_id)  # renew it and go on
            return self.last_sequence + 1
        if isinstance(error, HistoryUnavailable) and error.oldest_sequence is None:
            raise HistoryUnavailable(error.message, self._oldest_sequence()) from None
        raise error

    def _oldest_sequence(self) -> int | None:
        """The oldest sequence the server retains (a lane refusal says it only in words)."""
        try:
            return self._client.info().oldest_sequence
        except StoreError:
            return None

    def _value(self, response: pb.SubscribeResponse) -> Any:
        if not self._values or response.event.type == pb.EVENT_TYPE_DELETE:
            return None
        if response.HasField("handle"):
            assert self._local is not None
            return self._client._from_handle(self._local, response.event.meta, response.handle)
        try:
            return self._client.get(ObjectID(response.event.meta.id))
        except ObjectNotFound:
            return None

    def close(self) -> None:
        """Stop: an iteration blocked in another thread ends, without error."""
        self._closed = True
        self._stream.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _GrpcSubscription:
    """A Subscribe over gRPC, shaped like LaneSubscription: errors as StoreError, close()."""

    def __init__(self, stub: store_pb2_grpc.StoreServiceStub, request: pb.SubscribeRequest) -> None:
        self._call = stub.Subscribe(request)

    def __iter__(self) -> Iterator[pb.SubscribeResponse]:
        try:
            yield from self._call
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:  # cancelled: closed here
                raise from_rpc_error(exc) from None

    def close(self) -> None:
        self._call.cancel()
