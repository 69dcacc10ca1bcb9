"""Chunk messages encoded by hand are byte for byte what protobuf writes, and read back."""

from __future__ import annotations

import os

import pytest

from improv_store import chunks
from improv_store.v1 import store_pb2 as pb


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 4 << 20])
def test_chunk_encoding_matches_protobuf(size: int) -> None:
    data = os.urandom(size)
    encoded = chunks.encode_chunk([data[: size // 3], memoryview(data)[size // 3 :]])
    assert encoded == pb.PutStreamRequest(chunk=data).SerializeToString()
    assert encoded == pb.GetStreamResponse(chunk=data).SerializeToString()
    decoded = chunks.decode_chunk(encoded)
    assert decoded is not None and bytes(decoded) == data


@pytest.mark.parametrize("message", [
    pb.PutStreamRequest(header=pb.PutStreamHeader(size=5)).SerializeToString(),
    pb.GetStreamResponse(meta=pb.ObjectMeta(size=5)).SerializeToString(),
    b"",
    b"\x12",  # a tag with no length
    b"\x12\x05abc",  # a length longer than the message
    b"\x12\x01ab",  # a length shorter than the message (more fields follow)
    b"\x12" + b"\xff" * 12,  # a length that never ends
])
def test_anything_else_is_left_to_protobuf(message: bytes) -> None:
    assert chunks.decode_chunk(message) is None
