"""One process's connection to a store, as the handoff and subscribe workloads use it.

The stores' client libraries are imported when a connection is made, so the
Plasma worker (no improv-store, no redis-py) and scripts/bench (no pyarrow)
share this module.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from benchmarks.harness import PLASMA


def import_plasma() -> Any:
    """``pyarrow.plasma``, without its deprecation warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pyarrow.plasma as plasma
    return plasma


class Backend:
    """Put, get and delete a frame, on any of the stores.

    ``put`` returns a small picklable reference that the other process's
    ``get`` accepts. Kinds: ``improv-shm`` (StoreClient, transfer="auto"),
    ``improv-inline`` (transfer="inline"), ``redis`` (a key), ``plasma``.
    """

    def __init__(self, kind: str, address: str) -> None:
        self.kind = kind
        self._count = 0
        if kind.startswith("improv-"):
            from improv_store.client import StoreClient

            transfer = "auto" if kind == "improv-shm" else "inline"
            self.client: Any = StoreClient("unix://" + address, transfer=transfer)
            if kind == "improv-shm" and not self.client.colocated:
                raise RuntimeError("improv-store does not use shared memory for this client")
        elif kind == "redis":
            import redis

            self.client = redis.Redis(unix_socket_path=address)
        elif kind == PLASMA:
            self.plasma = import_plasma()
            self.client = self.plasma.connect(address)
        else:
            raise ValueError(f"unknown store kind {kind!r}")

    def put(self, frame: np.ndarray) -> bytes:
        if self.kind == "redis":
            self._count += 1
            key = b"frame:%d" % self._count
            self.client.set(key, frame.data)
            return key
        return self.client.put(frame).binary()  # improv-store and Plasma ObjectIDs alike

    def get(self, ref: bytes) -> Any:
        if self.kind == PLASMA:
            return self.client.get(self.plasma.ObjectID(ref))
        return self.client.get(ref)

    def delete(self, ref: bytes) -> None:
        if self.kind == PLASMA:
            self.client.delete([self.plasma.ObjectID(ref)])
        else:
            self.client.delete(ref)

    def close(self) -> None:
        if self.kind == PLASMA:
            self.client.disconnect()
        else:
            self.client.close()
