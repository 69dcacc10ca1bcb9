"""Creation: an array filled in place, then stored (``StoreClient.create``)."""

from __future__ import annotations

import ctypes
from typing import Any, Literal

import numpy as np

from improv_store.v1 import store_pb2 as pb

from . import codec
from .colocated import Colocated, abort
from .ids import ObjectID
from .transport import Transport


class Creation:
    """The ``with`` block of ``StoreClient.create``; ``id`` is set once it is stored.

    Colocated, the array is the new object's own shared memory, created and
    sealed through the transport's session; otherwise it is a local buffer
    put when the block ends.
    """

    def __init__(
        self,
        transport: Transport,
        colocated: Colocated | None,
        shape: int | tuple[int, ...],
        dtype: Any,
        name: str | None,
        order: str,
        object_id: ObjectID | bytes | None,
        labels: dict[str, str] | None,
        replace: bool,
    ) -> None:
        if order not in ("C", "F"):
            raise ValueError(f"order must be 'C' or 'F', not {order!r}")
        self._transport = transport
        self._colocated = colocated
        self._shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self._dtype = np.dtype(dtype)
        self._order: Literal["C", "F"] = "F" if order == "F" else "C"
        self._name = name
        self._object_id = object_id
        self._labels = labels
        self._replace = replace
        self._handle: pb.ShmHandle | None = None
        self._session_id = ""
        self._array: np.ndarray | None = None
        self._exporter: ctypes.Array | None = None
        self.id: ObjectID | None = None

    def _spec(self) -> pb.ObjectSpec:
        layout = pb.ArrayLayout(
            dtype=self._dtype.str,
            shape=self._shape,
            order=pb.ARRAY_ORDER_F if self._order == "F" else pb.ARRAY_ORDER_C,
        )
        return pb.ObjectSpec(
            id=bytes(self._object_id) if self._object_id is not None else b"",
            name=self._name or "",
            encoding=pb.ENCODING_NDARRAY,
            array=layout,
            labels=self._labels or {},
        )

    def __enter__(self) -> np.ndarray:
        colocated = self._colocated
        size = int(np.prod(self._shape)) * self._dtype.itemsize
        if colocated is None or size == 0:
            self._array = np.empty(self._shape, self._dtype, order=self._order)
            return self._array
        self._session_id = self._transport.session().session_id
        request = pb.CreateRequest(
            session_id=self._session_id, spec=self._spec(), size=size, replace=self._replace
        )
        self._handle = self._transport.call("Create", request).handle
        self._exporter = colocated.maps.region(self._handle)
        flat = np.frombuffer(memoryview(self._exporter).cast("B"), dtype=self._dtype)
        self._array = flat.reshape(self._shape, order=self._order)
        return self._array

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        transport = self._transport
        array, self._array = self._array, None
        exporter, self._exporter = self._exporter, None
        assert array is not None
        array.flags.writeable = False
        if self._handle is None:
            if exc_type is None:
                encoded = codec.encode(array)
                spec = codec.spec(encoded, self._name, self._object_id, self._labels)
                self.id = ObjectID(transport.put(spec, encoded, self._replace).id)
            return
        if exc_type is not None:
            abort(transport, self._session_id, self._handle)
            return
        seal = pb.SealRequest(session_id=self._session_id, handle=self._handle, keep_lease=True)
        sealed = transport.call("Seal", seal)
        self.id = ObjectID(sealed.meta.id)
        # The creator's array now reads the stored object: lease it like a get view.
        assert self._colocated is not None and exporter is not None
        session = transport.session()
        self._colocated.maps.release_with(exporter, sealed.handle.lease_id, session.release)
