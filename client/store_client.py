"""StoreClient: the one object a Python program uses to talk to an improv-store server."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
import numpy as np
from google.protobuf.duration_pb2 import Duration
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

from . import codec
from .errors import StoreError, error_for, from_rpc_error, resume_sequence
from .ids import ObjectID
from .models import Event, ObjectInfo, StoreInfo

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "unix:///tmp/improv-store.sock"
# Payloads above this go through the chunked streams; it matches the server's
# default inline limit, and each chunk is at most this size.
INLINE_LIMIT = 4 << 20
MAX_MESSAGE_SIZE = 32 << 20

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
    """

    def __init__(self, address: str | None = None, *, timeout: float | None = None) -> None:
        self.address = normalize_address(
            address or os.environ.get("IMPROV_STORE_ADDRESS", DEFAULT_ADDRESS)
        )
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            self.address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
                ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
            ],
        )
        self._stub = store_pb2_grpc.StoreServiceStub(self._channel)

    # -- lifecycle ----------------------------------------------------------------

    def __enter__(self) -> StoreClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; open subscriptions end."""
        self._channel.close()

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Block until the server accepts connections; StoreUnavailable after ``timeout``."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise error_for(
                grpc.StatusCode.UNAVAILABLE, f"no store answered at {self.address} in {timeout} s"
            ) from None

    def _call(self, method: Any, request: Any, extra_time: float = 0.0) -> Any:
        timeout = None if self.timeout is None else self.timeout + extra_time
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

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
        meta, _ = self._store(obj, name, id, labels, replace=False)
        return ObjectID(meta.id)

    def replace(self, name: str, obj: Any, *, labels: dict[str, str] | None = None) -> ObjectID:
        """Store ``obj`` under ``name`` and delete the older objects of that name, atomically."""
        meta, _ = self._store(obj, name, None, labels, replace=True)
        return ObjectID(meta.id)

    def _store(
        self,
        obj: Any,
        name: str | None,
        object_id: ObjectID | bytes | None,
        labels: dict[str, str] | None,
        *,
        replace: bool,
    ) -> tuple[pb.ObjectMeta, list[bytes]]:
        encoded = codec.encode(obj)
        spec = pb.ObjectSpec(
            id=bytes(object_id) if object_id is not None else b"",
            name=name or "",
            encoding=encoded.encoding,
            array=encoded.array,
            labels=labels or {},
        )
        payload = encoded.payload
        if len(payload) <= INLINE_LIMIT:
            if replace:
                response = self._call(
                    self._stub.Replace, pb.ReplaceRequest(spec=spec, data=bytes(payload))
                )
            else:
                response = self._call(self._stub.Put, pb.PutRequest(spec=spec, data=bytes(payload)))
            return response.meta, list(getattr(response, "replaced_ids", ()))
        header = pb.PutStreamHeader(spec=spec, size=len(payload), replace=replace)
        response = self._call(self._stub.PutStream, _chunked(header, payload))
        return response.meta, list(response.replaced_ids)

    def delete(self, ref: Ref) -> list[ObjectID]:
        """Delete an object by ID, or every object with a name; return what was deleted."""
        response = self._call(self._stub.Delete, pb.DeleteRequest(ref=to_ref(ref)))
        return [ObjectID(raw) for raw in response.deleted_ids]

    # -- reading ------------------------------------------------------------------

    def get(self, ref: Ref, *, timeout: float | None = None) -> Any:
        """The object by ID or name (the newest of that name).

        With ``timeout``, wait up to that many seconds for it to appear
        (WaitTimeout after); without, a missing object is ObjectNotFound.
        """
        request = pb.GetRequest(ref=to_ref(ref), wait=_duration(timeout))
        response = self._call(self._stub.Get, request, extra_time=timeout or 0.0)
        if response.payload_omitted:
            return self._get_streamed(response.meta.id)
        return codec.decode(response.meta, response.data)

    def get_many(self, refs: Iterable[Ref], *, timeout: float | None = None) -> list[Any]:
        """Several objects in one round trip, in the order asked; raises for the first missing."""
        request = pb.BatchGetRequest(refs=[to_ref(ref) for ref in refs], wait=_duration(timeout))
        response = self._call(self._stub.BatchGet, request, extra_time=timeout or 0.0)
        objects = []
        for result in response.results:
            if result.code != grpc.StatusCode.OK.value[0]:
                raise error_for(_status_code(result.code), result.message)
            if result.payload_omitted:
                objects.append(self._get_streamed(result.meta.id))
            else:
                objects.append(codec.decode(result.meta, result.data))
        return objects

    def stat(self, ref: Ref, *, timeout: float | None = None) -> ObjectInfo:
        """Metadata of an object, without its payload."""
        request = pb.GetRequest(ref=to_ref(ref), wait=_duration(timeout), metadata_only=True)
        response = self._call(self._stub.Get, request, extra_time=timeout or 0.0)
        return ObjectInfo.from_proto(response.meta)

    def _get_streamed(self, object_id: bytes) -> Any:
        """Fetch a large payload as chunks into one buffer (one copy, no join of copies)."""
        request = pb.GetStreamRequest(ref=pb.ObjectRef(id=object_id))
        try:
            stream = self._stub.GetStream(request, timeout=self.timeout)
            meta = next(stream).meta
            if meta.encoding == pb.ENCODING_RAW:
                return b"".join(message.chunk for message in stream)
            buffer = np.empty(meta.size, dtype=np.uint8)
            offset = 0
            for message in stream:
                chunk = message.chunk
                buffer[offset : offset + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
                offset += len(chunk)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        if offset != meta.size:
            raise StoreError(f"stream ended after {offset} of {meta.size} bytes")
        return codec.decode(meta, buffer)

    def list(self, prefix: str = "", *, page_size: int = 500) -> Iterator[ObjectInfo]:
        """Every object whose name starts with ``prefix`` (all, when empty), oldest first."""
        token = ""
        while True:
            request = pb.ListRequest(prefix=prefix, page_size=page_size, page_token=token)
            response = self._call(self._stub.List, request)
            for meta in response.objects:
                yield ObjectInfo.from_proto(meta)
            token = response.next_page_token
            if not token:
                return

    def info(self) -> StoreInfo:
        """Version, limits, durability mode and usage of the server."""
        return StoreInfo.from_proto(self._call(self._stub.Info, pb.InfoRequest()))

    def subscribe(self, prefix: str = "", *, since: int | None = None) -> Subscription:
        """Follow changes to objects whose name starts with ``prefix``.

        With ``since``, first replay retained history from that sequence
        (HistoryUnavailable if it is gone). Iterate the result for Events;
        close it (or use it as a context manager) to stop.
        """
        return Subscription(self._stub, prefix, since)


def _chunked(header: pb.PutStreamHeader, payload: memoryview) -> Iterator[pb.PutStreamRequest]:
    yield pb.PutStreamRequest(header=header)
    for offset in range(0, len(payload), INLINE_LIMIT):
        yield pb.PutStreamRequest(chunk=bytes(payload[offset : offset + INLINE_LIMIT]))


def _status_code(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


class Subscription:
    """An open Subscribe stream: iterate it for Events, close it to stop.

    A subscriber the server cuts off for falling behind resumes by itself from
    where it stopped, so the caller sees every event once, in order.
    ``last_sequence`` is the last event delivered: pass ``since=last_sequence + 1``
    to a new subscription to continue after a disconnect or server restart.
    """

    def __init__(
        self, stub: store_pb2_grpc.StoreServiceStub, prefix: str, since: int | None
    ) -> None:
        self._stub = stub
        self._prefix = prefix
        self.last_sequence: int | None = None if since is None else since - 1
        self._call = self._open(since)
        self._closed = False

    def _open(self, since: int | None) -> Any:
        request = pb.SubscribeRequest(prefix=self._prefix, since_sequence=since)
        return self._stub.Subscribe(request)

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                for response in self._call:
                    event = Event.from_proto(response.event)
                    self.last_sequence = event.sequence
                    yield event
                return
            except grpc.RpcError as exc:
                if self._closed or exc.code() == grpc.StatusCode.CANCELLED:
                    return
                resume = resume_sequence(exc)
                if resume is None:
                    raise from_rpc_error(exc) from None
                log.warning("subscription fell behind; resuming from sequence %d", resume)
                self._call = self._open(resume)

    def close(self) -> None:
        self._closed = True
        self._call.cancel()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
