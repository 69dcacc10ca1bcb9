"""The layouts of the shared-memory tables a colocated client reads: object index, pin tables.

Both are described in store.proto (``ObjectIndex``, ``SessionResponse.pin_table``);
the server writes them and the client reads them, each through the names here.
"""

from __future__ import annotations

import struct

import crc32c

from .protocol import ID_LENGTH

# -- the object index -----------------------------------------------------------------
# A slot: the version (odd while the server rewrites the slot), the entry, then
# the entry's meta length of serialized ObjectMeta (encoding, size, array).

# Native (memcpy): one aligned 8-byte load or store, never torn on x86-64.
INDEX_VERSION = struct.Struct("@Q")
# ID (all zeros: empty), segment number, 4 bytes padding, offset, length, meta length.
INDEX_ENTRY = struct.Struct(f"<{ID_LENGTH}sI4xQQH")
INDEX_META_OFFSET = INDEX_VERSION.size + INDEX_ENTRY.size
# An ID's home slot is this hash of it, masked to the (power of two) slot count.
index_hash = crc32c.crc32c

# -- pin tables -----------------------------------------------------------------------
# A slot holds the ID of an object read in place at its start (all zeros: free).
PIN_SLOT_SIZE = 32
NO_ID = bytes(ID_LENGTH)
