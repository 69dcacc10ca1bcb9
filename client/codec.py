"""Turn Python objects into (encoding, layout, payload parts) and back.

numpy arrays travel as ENCODING_NDARRAY (raw elements plus dtype, shape and
order), readable from any language; bytes as ENCODING_RAW; everything else as
a pickle (protocol 5). A pickle whose objects expose large contiguous buffers
(arrays inside a dict, say) keeps them out of band, ENCODING_PICKLE_BUFFERS,
so they are copied once on the way in and read in place on the way out.
Encoding avoids copies: payload parts are views on the caller's memory.
"""

from __future__ import annotations

import ctypes
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from improv_store.v1 import store_pb2 as pb

from .checksum import copy_and_checksum
from .ids import ObjectID
from .tuning import back_with_huge_pages

if TYPE_CHECKING:  # an ndarray is one too, though numpy's stubs for Python 3.10 do not say so
    from typing_extensions import Buffer

BUFFER_ALIGNMENT = 64
_COUNTS = struct.Struct("<IQ")
_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True)
class Encoded:
    """A payload ready to send: how to read it, and its bytes as consecutive parts."""

    encoding: pb.Encoding
    parts: tuple[memoryview, ...]
    array: pb.ArrayLayout | None = None

    @property
    def size(self) -> int:
        return sum(len(part) for part in self.parts)

    def to_bytes(self) -> bytes:
        """The payload as one bytes object (one copy)."""
        return self.parts[0].tobytes() if len(self.parts) == 1 else b"".join(self.parts)

    def fill(self, target: memoryview) -> int:
        """Copy the payload into ``target``, which has exactly its size; return its CRC32C
        (on two cores when it is large, see checksum.py)."""
        return copy_and_checksum(self.parts, target)

    def chunk_pieces(self, chunk_size: int) -> Iterator[list[memoryview]]:
        """The payload as chunks of at most ``chunk_size`` bytes, each a list of views (no copy)."""
        pending: list[memoryview] = []
        pending_size = 0
        for part in self.parts:
            for offset in range(0, len(part), chunk_size):
                piece = part[offset : offset + chunk_size]
                if pending_size + len(piece) > chunk_size:
                    yield pending
                    pending, pending_size = [], 0
                pending.append(piece)
                pending_size += len(piece)
        if pending:
            yield pending


def encode(obj: Any) -> Encoded:
    """Encode ``obj`` for storage without copying its memory where avoidable."""
    if isinstance(obj, np.ndarray) and type(obj) is np.ndarray and _is_plain_dtype(obj.dtype):
        return _encode_array(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        view = memoryview(obj)
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        return Encoded(pb.ENCODING_RAW, (view.cast("B") if view.format != "B" else view,))
    return _encode_pickle(obj)


def spec(
    encoded: Encoded,
    name: str | None,
    object_id: ObjectID | bytes | None,
    labels: dict[str, str] | None,
) -> pb.ObjectSpec:
    """The ObjectSpec of a put of ``encoded`` (no ``object_id``: the server picks one)."""
    object_spec = pb.ObjectSpec(
        id=bytes(object_id) if object_id is not None else b"",
        name=name or "",
        encoding=encoded.encoding,
        array=encoded.array,
    )
    if labels:  # a map given to the constructor, even empty, is copied in Python
        object_spec.labels.update(labels)
    return object_spec


def _is_plain_dtype(dtype: np.dtype) -> bool:
    """Dtypes fully described by their string: no objects, no structured fields."""
    return not dtype.hasobject and dtype.fields is None and dtype.itemsize > 0


def _encode_array(array: np.ndarray) -> Encoded:
    if array.flags.c_contiguous:
        order, flat = pb.ARRAY_ORDER_C, array.reshape(-1)
    elif array.flags.f_contiguous:
        order, flat = pb.ARRAY_ORDER_F, array.ravel(order="F")
    else:
        order, flat = pb.ARRAY_ORDER_C, np.ascontiguousarray(array).reshape(-1)
    layout = pb.ArrayLayout(dtype=array.dtype.str, shape=array.shape, order=order)
    return Encoded(pb.ENCODING_NDARRAY, (flat.view(np.uint8).data,), layout)


def _encode_pickle(obj: Any) -> Encoded:
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    if not buffers:
        return Encoded(pb.ENCODING_PICKLE, (memoryview(data),))
    raw = [buffer.raw() for buffer in buffers]
    header = _COUNTS.pack(len(raw), len(data)) + b"".join(_LENGTH.pack(len(r)) for r in raw)
    parts: list[memoryview] = [memoryview(header), memoryview(data)]
    position = len(header) + len(data)
    for buffer in raw:
        padding = -position % BUFFER_ALIGNMENT
        if padding:
            parts.append(memoryview(bytes(padding)))
        parts.append(buffer)
        position += padding + len(buffer)
    return Encoded(pb.ENCODING_PICKLE_BUFFERS, tuple(parts))


def fillable(size: int, encoding: int) -> tuple[bytes | np.ndarray, np.ndarray]:
    """A payload of ``size`` bytes to be filled before ``decode``, and a writable uint8
    array over its memory.

    A RAW payload is decoded as ``bytes``, so it is made a bytes object from the
    start, uninitialised, as CPython's ``PyBytes_FromStringAndSize(NULL, size)``
    allows for exactly this: filling it before anyone else sees it. That saves
    the final copy a bytes object built from the pieces would cost. A large
    one is backed by huge pages, as numpy backs its arrays, which makes
    filling it cheaper (fewer page faults).
    """
    if encoding != pb.ENCODING_RAW or size == 0:
        array = np.empty(size, dtype=np.uint8)
        return array, array
    payload = _new_bytes(None, size)
    address = ctypes.cast(ctypes.c_char_p(payload), ctypes.c_void_p).value
    assert address is not None  # a bytes object's buffer
    back_with_huge_pages(address, size)
    memory = memoryview((ctypes.c_ubyte * size).from_address(address))
    return payload, np.frombuffer(memory, np.uint8)


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_new_bytes.restype = ctypes.py_object


def decode(meta: pb.ObjectMeta, payload: bytes | bytearray | memoryview | np.ndarray) -> Any:
    """Rebuild the stored object; arrays come back read-only, as views on ``payload``."""
    if meta.encoding == pb.ENCODING_NDARRAY:
        layout = meta.array
        order: Literal["C", "F"] = "F" if layout.order == pb.ARRAY_ORDER_F else "C"
        array = np.frombuffer(payload, dtype=np.dtype(layout.dtype))
        array = array.reshape(tuple(layout.shape), order=order)
        array.flags.writeable = False
        return array
    if meta.encoding == pb.ENCODING_PICKLE:
        return pickle.loads(cast("Buffer", payload))
    if meta.encoding == pb.ENCODING_PICKLE_BUFFERS:
        return _decode_pickle_buffers(memoryview(cast("Buffer", payload)).cast("B").toreadonly())
    return payload if isinstance(payload, bytes) else bytes(payload)


def _decode_pickle_buffers(view: memoryview) -> Any:
    count, pickle_length = _COUNTS.unpack_from(view)
    position = _COUNTS.size
    lengths = [_LENGTH.unpack_from(view, position + i * _LENGTH.size)[0] for i in range(count)]
    position += count * _LENGTH.size
    data = view[position : position + pickle_length]
    position += pickle_length
    buffers = []
    for length in lengths:
        position += -position % BUFFER_ALIGNMENT
        buffers.append(view[position : position + length])
        position += length
    return pickle.loads(data, buffers=buffers)
