"""The ways a client reaches its server: gRPC, or the local lane beside it.

A Transport makes a unary call by RPC name, carries a payload too large for
one message as a chunk stream, opens subscriptions, and holds the session
that owns this client's shared-memory leases. ``StoreClient`` picks one when
it first needs it (given several addresses, one for reads and one for writes)
and never asks which it has. The lane (a plain unix socket,
for clients on the server's machine) carries the unary calls and
subscriptions; the chunk streams exist only on gRPC, so a LaneTransport
keeps a GrpcTransport for them and for any call the lane does not carry.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message

from improv_store import chunks
from improv_store.protocol import INLINE_LIMIT, LANE_CALL_OF_RPC, SERVICE_NAME
from improv_store.v1 import store_pb2 as pb
from improv_store.v1 import store_pb2_grpc

from . import codec
from .errors import StoreError, from_rpc_error
from .lane import Lane, LaneClosed, LaneSubscription
from .session import Session


class LeaseSession(Protocol):
    """What holds a client's leases: a lane connection or a gRPC Session stream."""

    session_id: str

    @property
    def alive(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    def release(self, lease_id: int) -> None: ...

    def close(self) -> None: ...


class SubscribeStream(Protocol):
    """An open Subscribe: its responses, failures raised as StoreError; ``close`` ends it."""

    def __iter__(self) -> Iterator[pb.SubscribeResponse]: ...

    def close(self) -> None: ...


SessionType = TypeVar("SessionType", bound=LeaseSession)


class Transport(ABC, Generic[SessionType]):
    """One way to the server. Thread-safe."""

    def __init__(self) -> None:
        self._session_lock = threading.Lock()
        self._session: SessionType | None = None

    @abstractmethod
    def call(self, rpc: str, request: Message, extra_time: float = 0.0) -> Any:
        """The response of unary RPC ``rpc``; a failure raises its StoreError.
        ``extra_time`` (a wait the request asks for) is added to the call's deadline."""

    @abstractmethod
    def call_pipelined(self, rpc: str, requests: Iterator[Message]) -> Iterator[Any]:
        """The responses of unary RPC ``rpc`` called with each of ``requests`` in turn.

        The server handles one at a time, in order, as separate calls would be;
        but the next request is built (the iterator runs) while the server
        handles the one before, and sent before that one's response is
        yielded, so the caller's work on each side overlaps the server's. A
        failure raises its StoreError, and no request is sent after it.
        """

    @abstractmethod
    def put_stream(self, messages: Iterator[bytes]) -> pb.PutStreamResponse:
        """A PutStream of already serialized messages."""

    @abstractmethod
    def get_stream(self, request: pb.GetStreamRequest) -> Iterator[bytes]:
        """A GetStream's serialized messages."""

    @abstractmethod
    def subscribe(self, request: pb.SubscribeRequest) -> SubscribeStream:
        """Open a subscription."""

    @abstractmethod
    def _open_session(self) -> SessionType:
        """A new session."""

    def session(self, *, probe: bool = True) -> SessionType:
        """The session that holds this client's leases, (re)opened when missing or dead.

        ``probe=False`` skips the lane's liveness probe (a system call) for calls that
        handle a lost session themselves: one the server left fails before sending
        (LaneClosed) and is retried, or the caller renews its session.
        """
        with self._session_lock:
            session = self._session
            if session is None or (not session.alive if probe else session.closed):
                session = self._session = self._open_session()
            return session

    def drop_session(self, session_id: str) -> None:
        """Close and forget session ``session_id``, which the server no longer has: the
        next use opens another. One that another thread has renewed already is kept."""
        with self._session_lock:
            stale = self._session
            if stale is None or stale.session_id != session_id:
                return
            self._session = None
        stale.close()

    def close(self) -> None:
        """Close the session (the server drops its leases) and the connection."""
        with self._session_lock:
            if self._session is not None:
                self._session.close()

    def put(self, spec: pb.ObjectSpec, encoded: codec.Encoded, replace: bool) -> pb.ObjectMeta:
        """Store a payload given as bytes: in one message when it fits, else as a stream."""
        if encoded.size <= INLINE_LIMIT:
            if replace:
                request = pb.ReplaceRequest(spec=spec, data=encoded.to_bytes())
                return self.call("Replace", request).meta
            return self.call("Put", pb.PutRequest(spec=spec, data=encoded.to_bytes())).meta
        header = pb.PutStreamHeader(spec=spec, size=encoded.size, replace=replace)
        return self.put_stream(_chunked(header, encoded)).meta

    def get_streamed(self, object_id: bytes) -> Any:
        """An object too large for one message, as chunks, each copied once into the final
        object (numpy copies without the GIL, so gRPC's threads go on receiving meanwhile)."""
        request = pb.GetStreamRequest(ref=pb.ObjectRef(id=object_id), chunk_size=chunks.CHUNK_SIZE)
        stream = self.get_stream(request)
        meta = pb.GetStreamResponse.FromString(next(stream)).meta
        payload, target = codec.fillable(meta.size, meta.encoding)
        offset = 0
        for raw in stream:
            chunk = np.frombuffer(_chunk_of(raw), dtype=np.uint8)
            if offset + len(chunk) > meta.size:
                raise StoreError(f"stream sent more than the {meta.size} bytes announced")
            np.copyto(target[offset : offset + len(chunk)], chunk)
            offset += len(chunk)
        if offset != meta.size:
            raise StoreError(f"stream ended after {offset} of {meta.size} bytes")
        return codec.decode(meta, payload)


class GrpcTransport(Transport[Session]):
    """Every RPC over a gRPC channel; the session is a Session stream."""

    def __init__(self, channel: grpc.Channel, timeout: float | None) -> None:
        """``timeout``: each call's deadline in seconds (None: none)."""
        super().__init__()
        self.channel = channel
        self._timeout = timeout
        self._stub = store_pb2_grpc.StoreServiceStub(channel)
        # The chunk streams with their messages left serialized (improv_store.chunks):
        # bulk data is copied once, not passed through protobuf objects.
        self._put_stream = channel.stream_unary(
            f"/{SERVICE_NAME}/PutStream",
            request_serializer=None,
            response_deserializer=pb.PutStreamResponse.FromString,
        )
        self._get_stream = channel.unary_stream(
            f"/{SERVICE_NAME}/GetStream",
            request_serializer=pb.GetStreamRequest.SerializeToString,
            response_deserializer=None,
        )

    def call(self, rpc: str, request: Message, extra_time: float = 0.0) -> Any:
        timeout = None if self._timeout is None else self._timeout + extra_time
        try:
            return getattr(self._stub, rpc)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def call_later(self, rpc: str, request: Message, timeout: float) -> Callable[[], Any]:
        """Start unary RPC ``rpc`` now, with its own ``timeout``; the function returned waits
        for the response (a failure raises its StoreError). For asking several stores at once."""
        answer = getattr(self._stub, rpc).future(request, timeout=timeout)

        def result() -> Any:
            try:
                return answer.result()
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None

        return result

    def call_pipelined(self, rpc: str, requests: Iterator[Message]) -> Iterator[Any]:
        method = getattr(self._stub, rpc)
        try:
            request = next(requests, None)
            answer = None if request is None else method.future(request, timeout=self._timeout)
            while answer is not None:
                try:
                    request = next(requests, None)
                finally:
                    response = answer.result()  # also when building the next one failed
                answer = None if request is None else method.future(request, timeout=self._timeout)
                yield response
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def put_stream(self, messages: Iterator[bytes]) -> pb.PutStreamResponse:
        try:
            return self._put_stream(messages, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def get_stream(self, request: pb.GetStreamRequest) -> Iterator[bytes]:
        try:
            yield from self._get_stream(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def subscribe(self, request: pb.SubscribeRequest) -> SubscribeStream:
        return _GrpcSubscription(self._stub, request)

    def _open_session(self) -> Session:
        try:
            return Session(self._stub)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def close(self) -> None:
        super().close()
        self.channel.close()


class LaneTransport(Transport[Lane]):
    """Unary calls and subscriptions over the local lane at ``path``; the session is the
    lane connection. The rest goes over ``grpc``."""

    def __init__(
        self,
        path: str,
        token: str | None,
        grpc_transport: GrpcTransport,
        on_open: Callable[[Lane, pb.InfoResponse], None],
    ) -> None:
        """``on_open(lane, info)`` runs for each new lane connection with the server's Info:
        after a restart the server's shared-memory tables are new ones."""
        super().__init__()
        self.path = path
        self._token = token
        self._grpc = grpc_transport
        self._on_open = on_open

    def call(self, rpc: str, request: Message, extra_time: float = 0.0) -> Any:
        """By the lane, except a call that may wait (a get with a timeout): that goes by
        gRPC, so it does not hold up the client's other threads behind the lane, which
        carries one call at a time (its session ID is valid on either)."""
        lane_call = LANE_CALL_OF_RPC.get(rpc)
        if lane_call is None or extra_time > 0:
            return self._grpc.call(rpc, request, extra_time)
        for attempt in range(2):
            lane = self.session(probe=False)
            try:
                return lane.call(lane_call.method, request, lane_call.response_type)
            except LaneClosed:
                if attempt or getattr(request, "session_id", None):
                    raise  # a request bound to the lost session: the caller renews it
        raise AssertionError("unreachable")

    def call_pipelined(self, rpc: str, requests: Iterator[Message]) -> Iterator[Any]:
        lane_call = LANE_CALL_OF_RPC.get(rpc)
        if lane_call is None:
            return self._grpc.call_pipelined(rpc, requests)
        return self._lane_pipelined(lane_call.method, requests, lane_call.response_type)

    def _lane_pipelined(
        self, method: int, requests: Iterator[Message], response_type: type[Message]
    ) -> Iterator[Any]:
        """Over the lane; a lane found closed before the first request left is reopened
        once (the server saw nothing), later it is StoreUnavailable."""
        first = next(requests, None)
        if first is None:
            return
        for attempt in range(2):
            lane = self.session(probe=False)
            responses = lane.call_pipelined(method, first, requests, response_type)
            try:
                response = next(responses)
            except LaneClosed:
                if attempt:
                    raise
                continue
            yield response
            yield from responses
            return

    def put_stream(self, messages: Iterator[bytes]) -> pb.PutStreamResponse:
        return self._grpc.put_stream(messages)

    def get_stream(self, request: pb.GetStreamRequest) -> Iterator[bytes]:
        return self._grpc.get_stream(request)

    def subscribe(self, request: pb.SubscribeRequest) -> SubscribeStream:
        return LaneSubscription(self.path, self._token, request)

    def _open_session(self) -> Lane:
        lane = Lane(self.path, self._token)
        try:
            self._on_open(lane, lane.call(pb.LANE_METHOD_INFO, pb.InfoRequest(), pb.InfoResponse))
        except BaseException:
            lane.close()
            raise
        return lane

    def close(self) -> None:
        super().close()
        self._grpc.close()


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


def _chunked(header: pb.PutStreamHeader, encoded: codec.Encoded) -> Iterator[bytes]:
    """A PutStream's serialized messages: the header, then chunks encoded by hand."""
    yield pb.PutStreamRequest(header=header).SerializeToString()
    for pieces in encoded.chunk_pieces(chunks.CHUNK_SIZE):
        yield chunks.encode_chunk(pieces)


def _chunk_of(raw: bytes) -> memoryview | bytes:
    """The payload slice of a serialized GetStreamResponse chunk."""
    chunk = chunks.decode_chunk(raw)
    return chunk if chunk is not None else pb.GetStreamResponse.FromString(raw).chunk
