"""The Python client of improv-store.

from improv_store.client import StoreClient
with StoreClient() as store:
    oid = store.put(frame, name="acq_raw1")
    frame = store.get(oid)
"""

from .errors import (
    DataCorrupted,
    HistoryUnavailable,
    InvalidRequest,
    NotPrimaryError,
    ObjectExists,
    ObjectNotFound,
    PermissionDenied,
    StoreError,
    StoreFull,
    StoreReset,
    StoreUnavailable,
    Unauthenticated,
    WaitTimeout,
)
from .ids import ObjectID
from .models import Event, ObjectInfo, Promotion, ReplicationInfo, StoreInfo
from .store_client import StoreClient
from .subscription import Subscription

__all__ = [
    "DataCorrupted",
    "Event",
    "HistoryUnavailable",
    "InvalidRequest",
    "NotPrimaryError",
    "ObjectExists",
    "ObjectID",
    "ObjectInfo",
    "ObjectNotFound",
    "PermissionDenied",
    "Promotion",
    "ReplicationInfo",
    "StoreClient",
    "StoreError",
    "StoreFull",
    "StoreInfo",
    "StoreReset",
    "StoreUnavailable",
    "Subscription",
    "Unauthenticated",
    "WaitTimeout",
]
