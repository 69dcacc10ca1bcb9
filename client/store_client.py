"""StoreClient: the one object a Python program uses to talk to an improv-store server.

Its methods build requests and decode answers; how they travel is its
transport's business (transport.py), picked once, when the first call needs
it: gRPC, or the local lane for a client that shares the server's /dev/shm
(colocated.py), which then also reads the server's object index. A client
given several addresses (a primary and its followers) picks two routes: one
for reads, to the nearest store, and one for writes, to the primary.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import grpc
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from improv_store.protocol import MAX_MESSAGE_SIZE
from improv_store.v1 import store_pb2 as pb

from . import codec
from .access import TlsSettings, open_channel, resolve_token
from .colocated import MISS, Colocated
from .creation import Creation
from .errors import StoreError, StoreUnavailable, error_for, status_code
from .ids import ObjectID, Ref
from .models import ObjectInfo, Promotion, StoreInfo
from .shm import exporter_of, is_colocated
from .subscription import Subscription
from .transport import GrpcTransport, LaneTransport, LeaseSession, Transport
from .tuning import keep_freed_memory

log = logging.getLogger(__name__)

__all__ = ["Creation", "Ref", "StoreClient", "Subscription"]

DEFAULT_ADDRESS = "unix:///tmp/improv-store.sock"
_OFF = ("0", "off", "no")  # environment values that turn a default-on setting off
# put_many packs up to _PUT_BATCH objects of at most _BATCH_ITEM_LIMIT bytes per
# message, which keeps every BatchPut under the server's 32 MiB message limit.
_PUT_BATCH = 256
# get_many asks for at most this many objects per BatchGet: the server's default limit.
_GET_BATCH = 1024
_BATCH_ITEM_LIMIT = 64 << 10
TRANSFER_MODES = ("auto", "shm", "inline")
# Statuses that mean the session a request named is gone: renew it and retry once.
_SESSION_LOST = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
    ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
    ("grpc.http2.max_frame_size", 16777215),
]
# Given several addresses: seconds each store has to answer Info while the client chooses
# (unless the client's timeout is shorter), and how many followers of followers it walks
# to find the primary.
_PROBE_TIMEOUT = 5.0
_MAX_HOPS = 8


def normalize_address(address: str) -> str:
    """Accept ``unix:///path``, a bare socket path, or ``host:port``; return a gRPC target."""
    if address.startswith("unix:"):
        return address
    if address.startswith("/") or address.startswith("."):
        return "unix:" + os.path.abspath(address)
    return address


def parse_addresses(address: str | Sequence[str] | None) -> list[str]:
    """The gRPC targets of ``address``: one, several separated by commas, or a list of
    them; None (or empty) means ``$IMPROV_STORE_ADDRESS``, else the default socket."""
    given = address or os.environ.get("IMPROV_STORE_ADDRESS") or DEFAULT_ADDRESS
    parts = given.split(",") if isinstance(given, str) else list(given)
    targets = list(dict.fromkeys(normalize_address(part.strip()) for part in parts if part.strip()))
    if not targets:
        raise ValueError(f"no store address in {given!r}")
    return targets


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


class _Route(NamedTuple):
    """The way this client's calls go, chosen once: the transport, and the shared-memory
    state when the client shares the server's /dev/shm."""

    transport: Transport
    colocated: Colocated | None


class _Store(NamedTuple):
    """A store that answered Info: its address, gRPC transport and that answer."""

    address: str
    transport: GrpcTransport
    info: pb.InfoResponse


class _Stores:
    """The stores of a client given several addresses (a primary and its followers): which
    to read from (the nearest) and which to write to (the primary). Each is asked Info with
    a deadline of its own, so one that does not answer delays the choice, not blocks it."""

    def __init__(
        self,
        addresses: list[str],
        connect: Callable[[str], GrpcTransport],
        timeout: float | None,
    ) -> None:
        self._connect = connect
        self._probe_timeout = min(timeout or _PROBE_TIMEOUT, _PROBE_TIMEOUT)
        # Every store this client has a channel to: the given ones first, in order, then
        # primaries that followers named.
        self._transports = {address: connect(address) for address in addresses}
        self._given = len(addresses)
        self._retired: list[Transport] = []  # write routes replaced by a promotion

    @property
    def first(self) -> GrpcTransport:
        """The first address's transport."""
        return next(iter(self._transports.values()))

    def wait_until_ready(self, timeout: float) -> None:
        """Return once any given store accepts connections; FutureTimeoutError after ``timeout``."""
        given = list(self._transports.values())[: self._given]
        ready = [grpc.channel_ready_future(transport.channel) for transport in given]
        deadline = time.monotonic() + timeout
        try:
            while not any(future.done() for future in ready):
                if time.monotonic() >= deadline:
                    raise grpc.FutureTimeoutError()
                time.sleep(0.01)
        finally:
            for future in ready:
                future.cancel()

    def nearest(self, *, shm: bool) -> _Store:
        """The given store to read from: the first that shares this process's /dev/shm
        (when ``shm``: payloads may move through it), else the first that answers."""
        given = list(self._transports.items())[: self._given]
        asked = [
            (address, transport, transport.call_later("Info", pb.InfoRequest(),
                                                      self._probe_timeout))
            for address, transport in given
        ]
        first: _Store | None = None
        failures: list[tuple[str, StoreError]] = []
        for address, transport, answer in asked:
            try:
                store = _Store(address, transport, answer())
            except StoreError as exc:
                failures.append((address, exc))
                continue
            if shm and is_colocated(store.info.locality_token_name, store.info.locality_token):
                return store
            if first is None:
                first = store
        if first is not None:
            return first
        raise _no_answer(failures)

    def primary(self, start: GrpcTransport) -> _Store:
        """The store that takes writes, found from ``start``: itself when it is a primary;
        else the given primary with its store_id (a follower has its primary's); else the
        one its primary address names, through followers of followers."""
        address = next(address for address, known in self._transports.items() if known is start)
        store = self._ask(address)
        if store.info.replication.role != pb.ROLE_FOLLOWER:
            return store
        follower = store
        for candidate in list(self._transports)[: self._given]:
            if candidate == follower.address:
                continue
            try:
                found = self._ask(candidate)
            except StoreError:
                continue
            role = found.info.replication.role
            if role != pb.ROLE_FOLLOWER and found.info.store_id == follower.info.store_id:
                return found
        for _ in range(_MAX_HOPS):
            named = normalize_address(store.info.replication.primary)
            try:
                store = self._ask(named)
            except StoreError as exc:
                raise error_for(
                    exc.code,
                    f"the primary {named} that {store.address} follows did not answer"
                    f" ({exc.message}); write to it directly, or promote a follower",
                ) from None
            if store.info.replication.role != pb.ROLE_FOLLOWER:
                return store
        raise StoreError(
            f"no primary within {_MAX_HOPS} followers of {follower.address}",
            grpc.StatusCode.FAILED_PRECONDITION,
        )

    def _ask(self, address: str) -> _Store:
        """The store at ``address`` with its Info now (a channel is opened for a new one)."""
        transport = self._transports.get(address)
        if transport is None:
            transport = self._transports[address] = self._connect(address)
        info = transport.call_later("Info", pb.InfoRequest(), self._probe_timeout)()
        return _Store(address, transport, info)

    def retire(self, transport: Transport) -> None:
        """Keep ``transport``, no longer used, to be closed with the others (calls that
        other threads make on it now still finish)."""
        self._retired.append(transport)

    def close(self) -> None:
        """Close every channel and retired route."""
        for transport in [*self._retired, *self._transports.values()]:
            transport.close()


def _no_answer(failures: list[tuple[str, StoreError]]) -> StoreError:
    """The error of a choice no store answered: access refused is said as such, else
    StoreUnavailable naming each address and why."""
    for _, exc in failures:
        if exc.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return exc
    reasons = "; ".join(f"{address}: {exc.message}" for address, exc in failures)
    return StoreUnavailable(f"no store answered ({reasons})")


class StoreClient:
    """A connection to one store, or to a primary and its followers. Thread-safe; use it
    as a context manager.

    ``address`` defaults to ``$IMPROV_STORE_ADDRESS``, else the default unix
    socket. Several addresses (separated by commas, or a list) name copies of
    one store, a primary and its followers (``improv-store serve --follow``):
    the client reads from the nearest, one that shares this process's
    /dev/shm if any, else the first that answers, and writes to the primary
    (the one whose Info says so; a follower names the store it follows). Both
    are chosen once, on the first read and the first write. A write sent to a
    follower named alone raises NotPrimaryError.

    ``timeout`` is the deadline, in seconds, for each call (None: no
    deadline); waits asked for with ``get(..., timeout=)`` are added to it.
    ``transfer`` (default ``$IMPROV_STORE_TRANSFER``, else ``auto``) says how
    payloads move: ``auto`` uses shared memory when this process shares the
    server's /dev/shm and inline bytes otherwise; ``shm`` insists on shared
    memory; ``inline`` never uses it. A client that uses shared memory also
    makes its unary calls and subscriptions over the server's local lane (a
    plain unix socket, much cheaper than a gRPC call) unless ``lane``
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
    improv_store.client.tuning.keep_freed_memory), which makes large inline gets
    faster. It is a process-wide setting;
    ``$IMPROV_STORE_KEEP_FREED_MEMORY=0`` leaves malloc as it is.
    """

    def __init__(
        self,
        address: str | Sequence[str] | None = None,
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
        addresses = parse_addresses(address)
        self.address = ",".join(addresses)
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
        tls_settings = TlsSettings.resolve(tls, tls_ca, tls_cert, tls_key, tls_server_name)

        def connect(target: str) -> GrpcTransport:
            channel = open_channel(target, _CHANNEL_OPTIONS, self._token, tls_settings)
            return GrpcTransport(channel, timeout)

        # Given several addresses, the stores behind them (None: one address).
        self._stores = _Stores(addresses, connect, timeout) if len(addresses) > 1 else None
        # gRPC to the store this client reads from (given several: the first, until chosen).
        self._grpc = connect(addresses[0]) if self._stores is None else self._stores.first
        # The transport in use: gRPC until the route is chosen, which may make it the lane.
        self._transport: Transport = self._grpc
        self._route_lock = threading.Lock()
        self._chosen: _Route | None = None
        # The route of writes: the same as reads' for one address (set with it), else the
        # primary's, chosen by the first write.
        self._writing: _Route | None = None
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
        self._transport.close()
        if self._stores is not None:
            writing = self._writing
            if writing is not None:
                writing.transport.close()
            self._stores.close()

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Block until the server (given several addresses: one of them) accepts
        connections; StoreUnavailable after ``timeout``."""
        try:
            if self._stores is None:
                grpc.channel_ready_future(self._grpc.channel).result(timeout=timeout)
            else:
                self._stores.wait_until_ready(timeout)
        except grpc.FutureTimeoutError:
            raise StoreUnavailable(
                f"no store answered at {self.address} in {timeout} s"
            ) from None

    def health(self, timeout: float = 5.0) -> str:
        """The server's grpc.health.v1 status, e.g. ``SERVING`` (this check needs no token);
        given several addresses, the status of the store this client reads from."""
        if self._stores is not None:
            self._route()
        stub = health_pb2_grpc.HealthStub(self._grpc.channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:  # whatever the code, the server did not answer
            message = f"no health answer from {self.address}: {exc.details() or exc.code().name}"
            raise StoreUnavailable(message) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    @property
    def colocated(self) -> bool:
        """Whether payloads move through shared memory for this client's reads."""
        return self._route().colocated is not None

    # -- the route ------------------------------------------------------------------

    def _route(self) -> _Route:
        """The transport and shared-memory state of reads, chosen by the first call that
        needs them."""
        route = self._chosen
        return route if route is not None else self._choose()

    def _choose(self) -> _Route:
        with self._route_lock:
            if self._chosen is None:
                self._chosen = self._connect()
                self._transport = self._chosen.transport
                if self._stores is None:
                    self._writing = self._chosen
            return self._chosen

    def _write_route(self) -> _Route:
        """The transport and shared-memory state of writes: the primary's."""
        route = self._writing
        return route if route is not None else self._choose_writer()

    def _choose_writer(self) -> _Route:
        """Given several addresses, the route to the primary, found from the store this
        client reads from (which may be it); a failure is not kept: the next write tries again."""
        reading = self._route()
        with self._route_lock:
            if self._writing is None:
                assert self._stores is not None  # with one address, _choose set it
                primary = self._stores.primary(self._grpc)
                self._put_batch = _put_batch_size(primary.info.limits)
                self._writing = (
                    reading if primary.transport is self._grpc else self._route_to(primary)
                )
            return self._writing

    def _connect(self) -> _Route:
        """Ask the server (Info over gRPC) whether this process shares its /dev/shm, as its
        locality token tells, and where its lane is; given several addresses, ask them
        all and take the nearest."""
        if self._stores is not None:
            nearest = self._stores.nearest(shm=self.transfer != "inline")
            self._grpc = nearest.transport
            self._put_batch = _put_batch_size(nearest.info.limits)
            return self._route_to(nearest)
        if self.transfer == "inline":
            return _Route(self._grpc, None)
        info = self._grpc.call("Info", pb.InfoRequest())
        self._put_batch = _put_batch_size(info.limits)
        return self._route_to(_Store(self.address, self._grpc, info))

    def _route_to(self, store: _Store) -> _Route:
        """The route to ``store``: over the lane with shared memory when this process
        shares its /dev/shm (unless told otherwise), else over gRPC."""
        info = store.info
        if self.transfer == "inline":
            return _Route(store.transport, None)
        if not is_colocated(info.locality_token_name, info.locality_token):
            if self.transfer == "shm":
                raise StoreError(
                    f"IMPROV_STORE_TRANSFER=shm, but the store at {store.address} does not"
                    " share this process's /dev/shm"
                )
            return _Route(store.transport, None)
        if self.transfer == "shm":
            colocated = Colocated(1, pb.TRANSFER_SHM)
        else:
            colocated = Colocated(info.limits.shm_min_size, pb.TRANSFER_AUTO)
        if not (self.lane and info.lane_socket):
            return _Route(store.transport, colocated)
        lane = LaneTransport(info.lane_socket, self._token, store.transport, colocated.attach)
        return _Route(lane, colocated)

    def _call(self, rpc: str, request: Any, extra_time: float = 0.0) -> Any:
        return self._route().transport.call(rpc, request, extra_time)

    def _call_with_session(
        self, rpc: str, make_request: Callable[[str], Any], extra_time: float = 0.0
    ) -> tuple[Any, LeaseSession | None]:
        """Call with the shared-memory session's ID filled in (colocated, else ""); retry
        once if the server lost that session. Returns the response and the session."""
        transport, colocated = self._route()
        for attempt in range(2):
            session = transport.session(probe=False) if colocated is not None else None
            try:
                request = make_request(session.session_id if session is not None else "")
                return transport.call(rpc, request, extra_time), session
            except StoreError as exc:
                if exc.code not in _SESSION_LOST or session is None or attempt:
                    raise
                transport.drop_session(session.session_id)
        raise AssertionError("unreachable")

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
        which item). Objects too large for a batch go one by one. Every object
        is encoded before any batch is sent; each batch's message is built
        while the server stores the one before.
        """
        items = list(objects)
        labels = list(names) if names is not None else [None] * len(items)
        if len(labels) != len(items):
            raise ValueError(f"{len(items)} objects but {len(labels)} names")
        ids: list[ObjectID | None] = [None] * len(items)
        batched: list[_BatchItem] = []
        for index, (obj, name) in enumerate(zip(items, labels, strict=True)):
            payload: bytes | codec.Encoded
            if type(obj) is bytes:  # the usual small object: sent as it is, not encoded
                payload, size = obj, len(obj)
            else:
                payload = codec.encode(obj)
                size = payload.size
            if size > _BATCH_ITEM_LIMIT:
                ids[index] = self.put(obj, name)
                continue
            batched.append((index, _checked_name(name), payload))
        transport = self._write_route().transport
        if self._put_batch is None:
            self._put_batch = _put_batch_size(transport.call("Info", pb.InfoRequest()).limits)
        chunks = [
            batched[start : start + self._put_batch]
            for start in range(0, len(batched), self._put_batch)
        ]
        responses = transport.call_pipelined("BatchPut", map(_batch_put_request, chunks))
        first_error: StoreError | None = None
        for chunk, response in zip(chunks, responses, strict=True):
            for (index, _, _), result in zip(chunk, response.results, strict=True):
                if not result.code:
                    ids[index] = ObjectID(result.meta.id)
                elif first_error is None:
                    message = f"item {index}: {result.message}"
                    first_error = error_for(status_code(result.code), message)
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
        """Through shared memory when colocated and the payload is large enough, else as
        bytes (in one message, or a stream when larger)."""
        encoded = codec.encode(obj)
        spec = codec.spec(encoded, name, object_id, labels)
        transport, colocated = self._write_route()
        if colocated is not None and encoded.size >= colocated.min_size:
            return colocated.write(transport, spec, encoded, replace)
        return transport.put(spec, encoded, replace)

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
        transport, colocated = self._write_route()
        return Creation(transport, colocated, shape, dtype, name, order, id, labels, replace)

    def delete(self, ref: Ref) -> list[ObjectID]:
        """Delete an object by ID, or every object with a name; return what was deleted (the
        oldest 100,000 IDs of a name that had more: ``delete_matching`` counts instead)."""
        response = self._write_route().transport.call("Delete", pb.DeleteRequest(ref=to_ref(ref)))
        return [ObjectID(raw) for raw in response.deleted_ids]

    def delete_matching(
        self,
        prefix: str = "",
        *,
        before_sequence: int = 0,
        created_before: float | None = None,
        everything: bool = False,
    ) -> int:
        """Delete, in one call, every object meeting all the conditions given: a name
        ``prefix``, a sequence below ``before_sequence``, a creation time (seconds
        since the epoch) before ``created_before``; return how many were deleted.

        With no condition, ``everything=True`` is required to empty the store. Each
        deleted object reaches subscribers as a DELETE event.
        """
        request = pb.DeleteMatchingRequest(prefix=prefix, before_sequence=before_sequence,
                                           all=everything)
        if created_before is not None:
            request.created_before.FromNanoseconds(int(created_before * 1e9))
        return self._write_route().transport.call("DeleteMatching", request).deleted_count

    # -- reading ------------------------------------------------------------------

    def get(self, ref: Ref, *, timeout: float | None = None) -> Any:
        """The object by ID or name (the newest of that name).

        With ``timeout``, wait up to that many seconds for it to appear
        (WaitTimeout after); without, a missing object is ObjectNotFound.
        Colocated, arrays are read-only views on the store's shared memory.
        """
        colocated = self._route().colocated
        if colocated is not None and (value := colocated.read(ref)) is not MISS:
            return value
        transfer = colocated.transfer if colocated is not None else pb.TRANSFER_INLINE

        def request(session_id: str) -> pb.GetRequest:
            return pb.GetRequest(
                ref=to_ref(ref), wait=_duration(timeout), transfer=transfer, session_id=session_id
            )

        response, session = self._call_with_session("Get", request, timeout or 0.0)
        return self._decode(response, session)

    def _decode(
        self, result: pb.GetResponse | pb.BatchGetResult, session: LeaseSession | None
    ) -> Any:
        """A result's object: in place (under the lease ``session`` took), inline, or
        streamed when it was too large for the answer."""
        transport, colocated = self._route()
        if result.HasField("handle"):
            assert colocated is not None and session is not None
            return colocated.view(result.meta, result.handle, session.release)
        if result.payload_omitted:
            return transport.get_streamed(result.meta.id)
        return codec.decode(result.meta, result.data)

    def release(self, value: Any) -> bool:
        """Give back the shared memory behind an array from ``get`` now, not when it is garbage.

        Plasma's ``release``. The array must not be read afterwards: the store
        may reuse its memory. Returns False when there was no lease to release
        (an inline result, or released already).
        """
        exporter = exporter_of(value)
        if exporter is None:
            return False
        # A get's array is leased from the store read, a creator's from the one written to.
        for route in (self._chosen, self._writing):
            colocated = route.colocated if route is not None else None
            if colocated is not None and colocated.maps.release_now(exporter):
                return True
        return False

    def get_many(self, refs: Iterable[Ref], *, timeout: float | None = None) -> list[Any]:
        """Several objects in few round trips, in the order asked; raises for the first missing.

        Colocated, they are read from the server's object index up to the first it
        cannot serve; that one and the rest come in BatchGets of up to 1,024 (the
        server's default max_batch_size).
        """
        refs = list(refs)
        colocated = self._route().colocated
        found: list[Any] = []
        if colocated is not None:
            for ref in refs:
                value = colocated.read(ref)
                if value is MISS:
                    break
                found.append(value)
            else:
                return found
            refs = refs[len(found) :]
        for start in range(0, len(refs), _GET_BATCH):
            found.extend(self._batch_get(refs[start : start + _GET_BATCH], timeout, colocated))
        return found

    def _batch_get(
        self, refs: list[Ref], timeout: float | None, colocated: Colocated | None
    ) -> list[Any]:
        """One BatchGet of ``refs``, decoded."""
        transfer = colocated.transfer if colocated is not None else pb.TRANSFER_INLINE
        batch = pb.BatchGetRequest(wait=_duration(timeout), transfer=transfer)
        add = batch.refs.add
        for ref in refs:
            if type(ref) is ObjectID:  # the usual ref, added in place (no ObjectRef to copy)
                add(id=ref.binary())
            else:
                batch.refs.append(to_ref(ref))

        def request(session_id: str) -> pb.BatchGetRequest:
            batch.session_id = session_id
            return batch

        response, session = self._call_with_session("BatchGet", request, timeout or 0.0)
        objects = []
        for result in response.results:
            if result.code:
                raise error_for(status_code(result.code), result.message)
            if result.payload_omitted or result.HasField("handle"):
                objects.append(self._decode(result, session))
            else:  # inline: what _decode would do, without asking for the route each time
                objects.append(codec.decode(result.meta, result.data))
        return objects

    def stat(self, ref: Ref, *, timeout: float | None = None) -> ObjectInfo:
        """Metadata of an object, without its payload."""
        request = pb.GetRequest(ref=to_ref(ref), wait=_duration(timeout), metadata_only=True)
        response = self._call("Get", request, extra_time=timeout or 0.0)
        return ObjectInfo.from_proto(response.meta)

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
        """Version, limits, durability mode, usage and replication role of the server (the
        one this client reads from)."""
        return StoreInfo.from_proto(self._call("Info", pb.InfoRequest()))

    def promote(self) -> Promotion:
        """Make the follower this client reads from a writable primary with a new store_id,
        for when its primary is lost; this client then writes to it too. A store that is a
        primary already refuses (StoreError, FAILED_PRECONDITION)."""
        response = self._call("Promote", pb.PromoteRequest())
        reading = self._route()
        with self._route_lock:
            writing, self._writing = self._writing, reading
        if self._stores is not None and writing is not None and writing is not reading:
            self._stores.retire(writing.transport)
        return Promotion(store_id=response.store_id, last_sequence=response.last_sequence)

    def subscribe(
        self,
        prefix: str = "",
        *,
        since: int | None = None,
        store_id: str | None = None,
        values: bool = False,
    ) -> Subscription:
        """Follow changes to objects whose name starts with ``prefix``.

        With ``since``, first replay retained history from that sequence
        (HistoryUnavailable if it is gone). With ``store_id`` (a Subscription's,
        or Info's), ``since`` counts in that store: StoreReset if this server's
        data started over since. Iterate the result for Events;
        close it (or use it as a context manager) to stop. With ``values``,
        each put/replace event carries the stored object as ``event.value``
        (through shared memory when colocated, so no extra round trip).
        A colocated client subscribes over a lane connection of its own,
        others over a gRPC stream; both behave the same.
        """
        transport, colocated = self._route()
        subscription = Subscription(
            transport, prefix, since, store_id=store_id, values=values, colocated=colocated,
            get=self.get,
        )
        self._subscriptions.add(subscription)
        return subscription


# One object of a put_many batch: its index, name, and payload (bytes are sent as they are).
_BatchItem = tuple[int, str, bytes | codec.Encoded]


def _checked_name(name: str | None) -> str:
    """``name`` as the batch's ObjectSpec takes it ("" for none), refused here, before any
    batch is sent, if protobuf would refuse it (a str that is not valid UTF-8, a non-str)."""
    if not name:
        return ""
    if type(name) is not str or not name.isascii():
        pb.ObjectSpec(name=name)  # raises what building the batch would have raised
    return name


def _batch_put_request(chunk: list[_BatchItem]) -> pb.BatchPutRequest:
    """The BatchPut of ``chunk``'s objects (built with ``items.add``: far cheaper in
    protobuf than a PutRequest per object, then a list of them)."""
    request = pb.BatchPutRequest()
    add = request.items.add
    for _, name, payload in chunk:
        if isinstance(payload, bytes):
            add(spec={"name": name, "encoding": pb.ENCODING_RAW}, data=payload)
        else:
            spec = pb.ObjectSpec(name=name, encoding=payload.encoding, array=payload.array)
            add(spec=spec, data=payload.to_bytes())
    return request


def _put_batch_size(limits: pb.Limits) -> int:
    """Objects per BatchPut: ``_PUT_BATCH``, or fewer if the server's max_batch_size is lower."""
    return min(_PUT_BATCH, limits.max_batch_size or _PUT_BATCH)
