"""Facts of the contract that both ends encode: statuses, IDs, trailers and the lane.

Each fact is written here once, derived from ``store.proto`` where the proto
defines it, and imported by the server and the client (which import nothing
else of each other). The chunk codec is ``improv_store.chunks``; the
shared-memory table layouts are ``improv_store.layouts``.
"""

from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from improv_store.v1 import store_pb2 as pb

MessageT = TypeVar("MessageT", bound=Message)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StoreService"].full_name
# An ObjectID is 20 bytes, Plasma's size.
ID_LENGTH = 20
# Where POSIX shared memory segments live; a colocated client shares it with the server.
SHM_DIR = "/dev/shm"

# No response is larger: the receive limit gRPC clients have by default (C++, Go, Java,
# grpc-js, .NET), so a client with default settings can make every call.
MAX_RESPONSE_SIZE = 4 << 20
# Most object IDs one message lists (DeleteResponse, ReplaceResponse, a REPLACE Event).
MAX_IDS_PER_MESSAGE = 100_000
# A payload up to this size travels in one message; larger ones go by the chunk streams.
# The room it leaves below MAX_RESPONSE_SIZE holds the largest metadata (64 labels of
# 1 KiB, a name, an array layout) and the message framing.
INLINE_LIMIT = MAX_RESPONSE_SIZE - (128 << 10)
# The largest gRPC message the server accepts (a BatchPut of many small objects).
MAX_MESSAGE_SIZE = 32 << 20

# Trailing metadata keys: where a subscriber resumes, and the oldest sequence retained.
RESUME_SEQUENCE_TRAILER = "improv-store-resume-sequence"
OLDEST_SEQUENCE_TRAILER = "improv-store-oldest-sequence"
# ...and the ID of the store that answered a resume it cannot serve (InfoResponse.store_id).
STORE_ID_TRAILER = "improv-store-store-id"
# On a write refused by a follower: the address of the primary to write to instead.
PRIMARY_TRAILER = "improv-store-primary"


class Code(enum.IntEnum):
    """The canonical status codes (google.rpc.Code), numbered as gRPC numbers them.

    The server's core speaks these; each transport turns them into its own
    (gRPC statuses, the lane's status byte).
    """

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def of(cls, value: int) -> Code:
        """The code numbered ``value``; UNKNOWN for a number outside the list."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


def parse(message_type: type[MessageT], raw: bytes) -> MessageT | str:
    """The message in ``raw``, or the reason it does not parse (for INVALID_ARGUMENT)."""
    try:
        return message_type.FromString(raw)
    except DecodeError as exc:
        return f"malformed {message_type.__name__}: {exc}"


# -- the local lane (framing in store.proto, LaneMethod) -------------------------------

# u32 length of what follows, u8 method (requests) or status (answers).
LANE_HEADER = struct.Struct("<IB")
# Set on a request's method byte: the call gets no answer.
ONE_WAY = 0x80
# The opening frame is small; a client that sends more before it is known is refused.
MAX_OPEN_FRAME = 64 << 10


@dataclass(frozen=True)
class LaneCall:
    """One LaneMethod: the RPC of the same name, and its message types."""

    method: int
    rpc: str
    request_type: type[Message]
    response_type: type[Message]


def _lane_calls() -> dict[int, LaneCall]:
    """Every LaneMethod, matched to the RPC whose name it spells (LANE_METHOD_BATCH_GET:
    BatchGet); LANE_METHOD_OPEN is the lane's own opening call."""
    service = pb.DESCRIPTOR.services_by_name["StoreService"]
    calls = {}
    for value in pb.LaneMethod.DESCRIPTOR.values:
        if value.number == pb.LANE_METHOD_UNSPECIFIED:
            continue
        words = value.name.removeprefix("LANE_METHOD_").split("_")
        rpc = "".join(word.capitalize() for word in words)
        if value.number == pb.LANE_METHOD_OPEN:
            request, response = pb.LaneOpenRequest, pb.SessionResponse
        else:
            method = service.methods_by_name[rpc]
            request = getattr(pb, method.input_type.name)
            response = getattr(pb, method.output_type.name)
        calls[value.number] = LaneCall(value.number, rpc, request, response)
    return calls


LANE_CALLS: dict[int, LaneCall] = _lane_calls()
LANE_CALL_OF_RPC: dict[str, LaneCall] = {call.rpc: call for call in LANE_CALLS.values()}


def lane_frame(code: int, body: bytes | bytearray | memoryview) -> bytes:
    """One frame, header and body together, for a single send."""
    return LANE_HEADER.pack(len(body) + 1, code) + body


def lane_error(message: str, trailing_metadata: dict[str, str] | None = None) -> bytes:
    """The body of an answer whose status is not OK."""
    return pb.LaneError(message=message, trailing_metadata=trailing_metadata).SerializeToString()


def read_lane_error(body: bytes) -> pb.LaneError:
    """The LaneError in a failed answer's body (its bytes as the message, if it is not one)."""
    error = parse(pb.LaneError, body)
    if isinstance(error, str):
        return pb.LaneError(message=body.decode(errors="replace"))
    return error


def receive_exactly(connection: socket.socket, size: int) -> bytearray | None:
    """Exactly ``size`` bytes, or None if the peer closed first."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = connection.recv_into(view[received:])
        if count == 0:
            return None
        received += count
    return buffer
