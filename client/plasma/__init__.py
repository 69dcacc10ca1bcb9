"""Plasma's Python client API (pyarrow 11's ``pyarrow.plasma``) on improv-store.

    import improv_store.plasma as plasma       # was: import pyarrow.plasma as plasma
    client = plasma.connect("/tmp/store")      # the improv-store server's --socket
    object_id = client.put(frame)
    frame = client.get(object_id)              # a view on shared memory when colocated

Values are stored with improv-store's codec, not Arrow's serialization:
numpy arrays as arrays (zero copy), bytes as raw bytes, anything else
pickled. Plasma metadata lives in the object's ``plasma.metadata`` label.
docs/plasma.md lists what is identical and what differs.
"""

from .buffer import (
    ObjectID,
    ObjectNotAvailable,
    PlasmaBuffer,
    PlasmaObjectExists,
    PlasmaObjectNotFound,
    PlasmaStoreFull,
)
from .client import METADATA_LABEL, PlasmaClient, connect

__all__ = [
    "METADATA_LABEL",
    "ObjectID",
    "ObjectNotAvailable",
    "PlasmaBuffer",
    "PlasmaClient",
    "PlasmaObjectExists",
    "PlasmaObjectNotFound",
    "PlasmaStoreFull",
    "connect",
]
