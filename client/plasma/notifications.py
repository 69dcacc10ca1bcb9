"""Plasma's notification messages, byte for byte: an 8-byte length, then a flatbuffer.

Plasma's store wrote each notification to the subscriber's socket as a
little-endian int64 length followed by a ``PlasmaNotification`` flatbuffer
(plasma/common.fbs: a vector of ``ObjectInfo`` tables: object_id, data_size,
metadata_size, ..., is_deletion). The same bytes are written here, so code
that read the socket itself and called ``decode_notifications`` (or
pyarrow's) works unchanged. Only the fields a notification carries are
written: object_id, data_size, metadata_size and is_deletion.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

LENGTH = struct.Struct("<q")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")

# ObjectInfo's fields in plasma/common.fbs order; a notification writes 0, 1, 2 and 7.
_OBJECT_INFO_FIELDS = 8
_ID, _DATA_SIZE, _METADATA_SIZE, _IS_DELETION = 0, 1, 2, 7
# An ObjectInfo table as written: soffset, object_id offset, data_size, metadata_size,
# is_deletion (at these offsets in the table), padded to 32 bytes.
_TABLE_OFFSETS = {_ID: 4, _DATA_SIZE: 8, _METADATA_SIZE: 16, _IS_DELETION: 24}
_TABLE_SIZE = 32


class Notification(NamedTuple):
    """One object stored (sizes as given) or deleted (both sizes -1)."""

    object_id: bytes
    data_size: int
    metadata_size: int


def _vtable(field_offsets: Sequence[int], table_size: int) -> bytes:
    return b"".join(
        _U16.pack(value) for value in (4 + 2 * len(field_offsets), table_size, *field_offsets)
    )


def encode(notifications: Sequence[Notification]) -> bytes:
    """One message: the length prefix and the PlasmaNotification flatbuffer."""
    object_vtable = _vtable(
        [_TABLE_OFFSETS.get(field, 0) for field in range(_OBJECT_INFO_FIELDS)], 25
    )
    root_vtable = _vtable([4], 8)
    buffer = bytearray(_U32.pack(0))  # the root offset, filled in below
    # Root: its vtable, then the table (soffset, offset of the vector).
    root_vtable_at = len(buffer)
    buffer += root_vtable
    buffer += bytes(-len(buffer) % 8)
    root_at = len(buffer)
    _U32.pack_into(buffer, 0, root_at)
    buffer += _I32.pack(root_at - root_vtable_at) + _U32.pack(0)
    vector_at = len(buffer)
    _U32.pack_into(buffer, root_at + 4, vector_at - (root_at + 4))
    buffer += _U32.pack(len(notifications)) + bytes(4 * len(notifications))
    for index, note in enumerate(notifications):
        vtable_at = len(buffer)
        buffer += object_vtable
        buffer += bytes(-len(buffer) % 8)
        table_at = len(buffer)
        slot = vector_at + 4 + 4 * index
        _U32.pack_into(buffer, slot, table_at - slot)
        table = bytearray(_TABLE_SIZE)
        _I32.pack_into(table, 0, table_at - vtable_at)
        _I64.pack_into(table, _TABLE_OFFSETS[_DATA_SIZE], max(note.data_size, 0))
        _I64.pack_into(table, _TABLE_OFFSETS[_METADATA_SIZE], max(note.metadata_size, 0))
        table[_TABLE_OFFSETS[_IS_DELETION]] = int(note.data_size < 0)
        string_at = table_at + _TABLE_SIZE
        id_field = table_at + _TABLE_OFFSETS[_ID]
        _U32.pack_into(table, _TABLE_OFFSETS[_ID], string_at - id_field)
        buffer += table
        buffer += _U32.pack(len(note.object_id)) + note.object_id + b"\0"
    return LENGTH.pack(len(buffer)) + bytes(buffer)


def _field(buffer: memoryview, table_at: int, field: int) -> int:
    """The position of a table's field, or 0 when the table leaves it out."""
    vtable_at = table_at - _I32.unpack_from(buffer, table_at)[0]
    vtable_size = _U16.unpack_from(buffer, vtable_at)[0]
    entry = 4 + 2 * field
    if entry >= vtable_size:
        return 0
    offset = _U16.unpack_from(buffer, vtable_at + entry)[0]
    return table_at + offset if offset else 0


def _follow(buffer: memoryview, at: int) -> int:
    return at + _U32.unpack_from(buffer, at)[0]


def decode(data: bytes | bytearray | memoryview) -> list[Notification]:
    """The notifications in one PlasmaNotification flatbuffer (the message without its
    length prefix), from this module or from Plasma's store."""
    buffer = memoryview(data).cast("B")
    root_at = _follow(buffer, 0)
    vector_field = _field(buffer, root_at, 0)
    if not vector_field:
        return []
    vector_at = _follow(buffer, vector_field)
    count = _U32.unpack_from(buffer, vector_at)[0]
    found = []
    for index in range(count):
        table_at = _follow(buffer, vector_at + 4 + 4 * index)
        id_field = _field(buffer, table_at, _ID)
        object_id = b""
        if id_field:
            string_at = _follow(buffer, id_field)
            length = _U32.unpack_from(buffer, string_at)[0]
            object_id = bytes(buffer[string_at + 4 : string_at + 4 + length])
        deletion_field = _field(buffer, table_at, _IS_DELETION)
        if deletion_field and buffer[deletion_field]:
            found.append(Notification(object_id, -1, -1))
            continue
        sizes = []
        for field in (_DATA_SIZE, _METADATA_SIZE):
            at = _field(buffer, table_at, field)
            sizes.append(_I64.unpack_from(buffer, at)[0] if at else 0)
        found.append(Notification(object_id, sizes[0], sizes[1]))
    return found
