"""Turn Python objects into (encoding, layout, payload) and back.

numpy arrays travel as ENCODING_NDARRAY (raw elements plus dtype, shape and
order), readable from any language; bytes as ENCODING_RAW; everything else as
ENCODING_PICKLE (protocol 5). Encoding avoids copies: a C- or Fortran-
contiguous array is sent from its own memory.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
from improv_store.v1 import store_pb2 as pb


@dataclass(frozen=True)
class Encoded:
    """A payload ready to send: how to read it, and its bytes (a flat byte view)."""

    encoding: int
    payload: memoryview
    array: pb.ArrayLayout | None = None


def encode(obj: Any) -> Encoded:
    """Encode ``obj`` for storage without copying its memory where avoidable."""
    if isinstance(obj, np.ndarray) and type(obj) is np.ndarray and _is_plain_dtype(obj.dtype):
        return _encode_array(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        view = memoryview(obj)
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        return Encoded(pb.ENCODING_RAW, view.cast("B") if view.format != "B" else view)
    return Encoded(pb.ENCODING_PICKLE, memoryview(pickle.dumps(obj, protocol=5)))


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
    return Encoded(pb.ENCODING_NDARRAY, memoryview(flat.view(np.uint8)), layout)


def decode(meta: pb.ObjectMeta, payload: bytes | bytearray | memoryview) -> Any:
    """Rebuild the stored object; arrays come back read-only, as views on ``payload``."""
    if meta.encoding == pb.ENCODING_NDARRAY:
        layout = meta.array
        order = "F" if layout.order == pb.ARRAY_ORDER_F else "C"
        array = np.frombuffer(payload, dtype=np.dtype(layout.dtype))
        array = array.reshape(tuple(layout.shape), order=order)
        array.flags.writeable = False
        return array
    if meta.encoding == pb.ENCODING_PICKLE:
        return pickle.loads(payload)
    return payload if isinstance(payload, bytes) else bytes(payload)
