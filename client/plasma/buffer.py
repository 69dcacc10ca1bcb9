"""ObjectID, PlasmaBuffer, ObjectNotAvailable and the exceptions of Plasma's Python API."""

from __future__ import annotations

import os
from typing import Any, cast

import numpy as np

from improv_store.client.errors import ObjectExists, ObjectNotFound, StoreFull
from improv_store.client.ids import ObjectID as StoreObjectID
from improv_store.protocol import ID_LENGTH


class ObjectID(StoreObjectID):
    """Plasma's 20-byte object ID; also an ``improv_store.client.ObjectID``.

    As in Plasma: built from exactly 20 ``bytes``, equal to another ID with
    the same bytes (an ``improv_store.client.ObjectID`` too) and to nothing
    else, hashed as its bytes, pickled as its bytes, not ordered.
    """

    __slots__ = ()

    def __init__(self, object_id: bytes) -> None:
        if not isinstance(object_id, bytes) or len(object_id) != ID_LENGTH:
            raise ValueError(f"Object ID must by {ID_LENGTH} bytes, is " + str(object_id))
        super().__init__(object_id)

    @staticmethod
    def from_random() -> ObjectID:
        """A randomly generated ObjectID."""
        return ObjectID(os.urandom(ID_LENGTH))

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (ObjectID, (self.binary(),))


class ObjectNotAvailable:
    """What ``get`` returns, the class itself as in Plasma, for an object that was not
    available within the timeout."""


class PlasmaBuffer(np.ndarray):
    """The bytes of an object: a one-dimensional uint8 array over them, so it exports
    the buffer protocol (``memoryview``, ``np.frombuffer``, ``pyarrow.py_buffer``).

    From ``get_buffers`` of an array or raw buffer on a colocated client it is a
    read-only view on the store's shared memory (no copy), holding the store's
    lease until it is garbage or ``PlasmaClient.release`` is called; from
    ``create`` it is the new object's shared memory, writable until ``seal``.
    pyarrow.Buffer's ``size``, ``is_mutable``, ``address``, ``to_pybytes``,
    ``equals``, ``slice`` and ``hex`` are here too; ``object_id`` is the ID.
    """

    object_id: ObjectID | None = None

    @staticmethod
    def wrap(memory: np.ndarray, object_id: ObjectID) -> PlasmaBuffer:
        """The bytes of the contiguous array ``memory``, without a copy."""
        flat = memory.reshape(-1, order="A") if memory.ndim != 1 else memory
        buffer = flat.view(np.uint8).view(PlasmaBuffer)
        buffer.object_id = object_id
        return buffer

    def __array_finalize__(self, obj: Any) -> None:
        self.object_id = getattr(obj, "object_id", None)

    @property
    def is_mutable(self) -> bool:
        return bool(self.flags.writeable)

    @property
    def address(self) -> int:
        return int(self.ctypes.data)

    def to_pybytes(self) -> bytes:
        """The bytes, copied."""
        return self.tobytes()

    def equals(self, other: Any) -> bool:
        """Whether ``other`` holds exactly the same bytes."""
        return self.tobytes() == bytes(memoryview(other))

    def slice(self, offset: int = 0, length: int | None = None) -> PlasmaBuffer:
        """A view on part of the bytes (no copy)."""
        end = None if length is None else offset + length
        return cast(PlasmaBuffer, self[offset:end])

    def hex(self) -> bytes:  # pyarrow.Buffer's: the hex digits as bytes
        return self.tobytes().hex().encode()

    def __repr__(self) -> str:
        return f"<improv_store.plasma.PlasmaBuffer size={self.size} is_mutable={self.is_mutable}>"


class PlasmaObjectExists(ObjectExists):
    """An object with that ID is already in the store (also an ObjectExists)."""


class PlasmaObjectNotFound(ObjectNotFound):
    """No object with that ID (also an ObjectNotFound, a KeyError)."""


class PlasmaStoreFull(StoreFull):
    """The store could not make room for the object (also a StoreFull)."""
