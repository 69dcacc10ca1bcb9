"""Chunk messages encoded and decoded by hand, to keep protobuf out of bulk data.

``PutStreamRequest`` and ``GetStreamResponse`` are a oneof whose chunk is
field 2 (bytes). Building and parsing those messages with protobuf copies the
payload several times; writing the field header ourselves and slicing it off
on receipt copies it once. The bytes on the wire are the same protobuf
encoding, so any gRPC client or server interoperates. Shared by the client
and the server, which import nothing else of each other.
"""

from __future__ import annotations

from collections.abc import Sequence

CHUNK_FIELD = 2
# The chunk size both ends use unless asked otherwise: grpcio moves 1 MiB messages
# faster than 4 MiB ones, and smaller ones cost more per byte (docs/performance.md).
CHUNK_SIZE = 1 << 20
_CHUNK_TAG = bytes([CHUNK_FIELD << 3 | 2])  # field 2, wire type 2 (length-delimited)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_chunk(pieces: Sequence[memoryview | bytes]) -> bytes:
    """The serialized message ``{chunk: pieces joined}``, built with one copy."""
    length = sum(len(piece) for piece in pieces)
    return b"".join((_CHUNK_TAG, _varint(length), *pieces))


def decode_chunk(message: bytes) -> memoryview | None:
    """The chunk of a serialized message that is exactly ``{chunk: ...}``, without a copy.

    None for anything else (a header, or a chunk encoded with extra fields):
    parse those with protobuf.
    """
    if not message.startswith(_CHUNK_TAG):
        return None
    length = 0
    shift = 0
    position = 1
    while position < len(message) and position < 11:
        byte = message[position]
        position += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    else:
        return None
    if position + length != len(message):
        return None
    return memoryview(message)[position:]
