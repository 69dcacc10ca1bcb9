"""ObjectID: the 20-byte identity of a stored object (Plasma's size)."""

from __future__ import annotations

import os

from improv_store.protocol import ID_LENGTH


class ObjectID:
    """An immutable 20-byte object ID; hashable, comparable, printable as hex."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        raw = bytes(raw)
        if len(raw) != ID_LENGTH:
            raise ValueError(f"an ObjectID is {ID_LENGTH} bytes, got {len(raw)}")
        self._raw = raw

    @classmethod
    def random(cls) -> ObjectID:
        """A fresh random ID, for clients that choose their own."""
        return cls(os.urandom(ID_LENGTH))

    @classmethod
    def from_hex(cls, text: str) -> ObjectID:
        return cls(bytes.fromhex(text))

    def binary(self) -> bytes:
        """The 20 raw bytes (Plasma's ``ObjectID.binary()``)."""
        return self._raw

    def hex(self) -> str:
        return self._raw.hex()

    def __bytes__(self) -> bytes:
        return self._raw

    def __reduce__(self) -> tuple[type[ObjectID], tuple[bytes]]:
        """Pickle as the raw bytes, so IDs travel through multiprocessing queues."""
        return (ObjectID, (self._raw,))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ObjectID):
            return self._raw == other._raw
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"ObjectID({self._raw.hex()})"

    def __str__(self) -> str:
        return self._raw.hex()


# How a call names an object: an ObjectID or its 20 raw bytes, or a name.
Ref = ObjectID | bytes | str
