"""Checks on what clients send, so that nothing malformed reaches the table or disk."""

from __future__ import annotations

import math
import re

import numpy as np
from google.protobuf.duration_pb2 import Duration

from improv_store.protocol import ID_LENGTH
from improv_store.v1 import store_pb2 as pb

from .errors import exhausted, invalid

MAX_NDIM = 32
MAX_LABELS = 64
MAX_LABEL_BYTES = 1024
# The range google.protobuf.Duration allows: about 10,000 years either way.
MAX_DURATION_SECONDS = 315_576_000_000
_MAX_NANOS = 999_999_999

# numpy's explicit dtype strings, e.g. "<f8", "|b1", "<M8[ns]", "|S16".
_DTYPE_PATTERN = re.compile(r"[<>|][biufcmMSUV]\d+(\[\w+\])?")
_KNOWN_ENCODINGS = frozenset(pb.Encoding.values()) - {pb.ENCODING_UNSPECIFIED}
_KNOWN_ORDERS = frozenset(pb.ArrayOrder.values())


def check_id(object_id: bytes) -> None:
    """An object ID is exactly 20 bytes."""
    if len(object_id) != ID_LENGTH:
        raise invalid(f"object ID must be {ID_LENGTH} bytes, got {len(object_id)}")


def check_name(name: str, max_length: int) -> None:
    """A name fits the server's limit (INVALID_ARGUMENT: a malformed name) and holds no NUL."""
    length = len(name.encode())
    if length > max_length:
        raise invalid(f"name is {length} bytes; the limit (max_name_length) is {max_length}")
    if "\x00" in name:
        raise invalid("name must not contain NUL")


def check_prefix(prefix: str, max_length: int) -> None:
    """A List or Subscribe prefix is no longer than the longest name."""
    length = len(prefix.encode())
    if length > max_length:
        raise invalid(f"prefix is {length} bytes; the limit (max_name_length) is {max_length}")


def check_batch(count: int, what: str, max_batch_size: int) -> None:
    """A batch holds at most the server's limit (INVALID_ARGUMENT: resend it split up)."""
    if count > max_batch_size:
        raise invalid(f"{count} {what}; a batch holds at most {max_batch_size} (max_batch_size)")


def check_ref(ref: pb.ObjectRef, max_name_length: int) -> None:
    """A reference names exactly one object by a well-formed ID or a non-empty name."""
    kind = ref.WhichOneof("ref")
    if kind == "id":
        check_id(ref.id)
    elif kind == "name":
        if not ref.name:
            raise invalid("name must not be empty")
        check_name(ref.name, max_name_length)
    else:
        raise invalid("object reference needs an id or a name")


def wait_seconds(wait: Duration) -> float:
    """A requested wait in seconds: a valid, non-negative Duration (a malformed one would
    overflow the conversion to a timedelta)."""
    seconds, nanos = wait.seconds, wait.nanos
    if abs(seconds) > MAX_DURATION_SECONDS or abs(nanos) > _MAX_NANOS or seconds * nanos < 0:
        raise invalid(f"wait of {seconds} s and {nanos} ns is not a valid Duration")
    if seconds < 0 or nanos < 0:
        raise invalid("wait must not be negative")
    return seconds + nanos / 1e9


def check_spec(spec: pb.ObjectSpec, size: int, max_object_size: int, max_name_length: int) -> None:
    """A new object's declaration is well formed and accounts for ``size`` payload bytes."""
    if size > max_object_size:
        raise exhausted(
            f"object of {size} bytes exceeds the limit of {max_object_size} bytes (max_object_size)"
        )
    if spec.id:
        check_id(spec.id)
    check_name(spec.name, max_name_length)
    if spec.labels:
        _check_labels(spec)
    if spec.encoding != pb.ENCODING_UNSPECIFIED and spec.encoding not in _KNOWN_ENCODINGS:
        raise invalid(f"unknown encoding {spec.encoding}")
    if spec.encoding == pb.ENCODING_NDARRAY:
        if not spec.HasField("array"):
            raise invalid("an NDARRAY object needs an array layout")
        check_array(spec.array, size)
    elif spec.HasField("array"):
        raise invalid("an array layout is only allowed with ENCODING_NDARRAY")


def check_array(layout: pb.ArrayLayout, size: int) -> None:
    """dtype, shape and order describe exactly ``size`` bytes."""
    if not _DTYPE_PATTERN.fullmatch(layout.dtype):
        raise invalid(f"dtype {layout.dtype!r} is not an explicit numpy dtype string like '<f8'")
    try:
        dtype = np.dtype(layout.dtype)
    except TypeError as exc:
        raise invalid(f"dtype {layout.dtype!r}: {exc}") from None
    if dtype.itemsize == 0:
        raise invalid(f"dtype {layout.dtype!r} has no size")
    if len(layout.shape) > MAX_NDIM:
        raise invalid(f"{len(layout.shape)} dimensions; at most {MAX_NDIM} are allowed")
    if layout.order not in _KNOWN_ORDERS:
        raise invalid(f"unknown array order {layout.order}")
    expected = math.prod(layout.shape) * dtype.itemsize
    if expected != size:
        raise invalid(
            f"dtype {layout.dtype} with shape {tuple(layout.shape)} needs {expected} bytes,"
            f" but the payload has {size}"
        )


def _check_labels(spec: pb.ObjectSpec) -> None:
    if len(spec.labels) > MAX_LABELS:
        raise invalid(f"{len(spec.labels)} labels; at most {MAX_LABELS} are allowed")
    for key, value in spec.labels.items():
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_BYTES:
            raise invalid(f"label {key[:40]!r} is longer than {MAX_LABEL_BYTES} bytes")
