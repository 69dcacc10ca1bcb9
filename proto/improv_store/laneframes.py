"""The local lane's framing, shared by the client and the server (see LaneMethod in
store.proto): each frame is a little-endian u32 length (of what follows it), one byte
(the method with ONE_WAY for requests, the status code for answers), then a protobuf
message or an error text."""

from __future__ import annotations

import socket
import struct

HEADER = struct.Struct("<IB")
ONE_WAY = 0x80


def frame(code: int, body: bytes) -> bytes:
    """One frame: header and body together, for a single send."""
    return HEADER.pack(len(body) + 1, code) + body


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
