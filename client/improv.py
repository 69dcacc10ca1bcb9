"""Drop-in replacement for improv's ``improv.store`` module.

An improv actor switches by changing one import::

    from improv.store import StoreInterface             # before: Plasma
    from improv_store.client.improv import StoreInterface  # after: improv-store

Same classes, methods, parameters, defaults, attributes, exceptions and
messages as the documented ``improv.store`` API, with improv's defects fixed:
no ``exit()`` inside ``flush``, no SIGINT handler taken over, errors raised
where the documentation says "Raises", and ``replace``/``subscribe`` that do
something. ``store_loc`` is the server's unix socket path (what improv's
nexus passes) or ``host:port``. Start a server the way nexus started
``plasma_store`` with :func:`improv_store.service.launch`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import re
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import lmdb
import numpy as np

from .errors import ObjectNotFound, StoreError
from .ids import ObjectID
from .store_client import StoreClient
from .subscription import Subscription as _Subscription

logger = logging.getLogger(__name__)

CONNECT_RETRIES = 20
CONNECT_RETRY_DELAY = 0.1


class ObjectNotFoundError(Exception):
    """No object with that ID or name."""

    def __init__(self, obj_id_or_name: Any) -> None:
        super().__init__()
        self.name = "ObjectNotFoundError"
        self.obj_id_or_name = obj_id_or_name
        # improv's spelling, kept so that existing assertions pass.
        self.message = f'Cannnot find object with ID/name "{obj_id_or_name}"'

    def __str__(self) -> str:
        return self.message


class CannotGetObjectError(Exception):
    """The object could not be fetched."""

    def __init__(self, query: Any) -> None:
        super().__init__()
        self.name = "CannotGetObjectError"
        self.query = query
        self.message = f"Cannot get object {query}"

    def __str__(self) -> str:
        return self.message


class CannotConnectToStoreInterfaceError(Exception):
    """Raised when failing to connect to store."""

    def __init__(self, store_loc: Any) -> None:
        super().__init__()
        self.name = "CannotConnectToStoreInterfaceError"
        self.message = f"Cannot connect to store at {store_loc}"

    def __str__(self) -> str:
        return self.message


class StoreInterface:
    """General interface for a store."""

    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def put(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def replace(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def store_address(store_loc: str) -> str:
    """improv's ``store_loc`` as a client address: a socket path, or ``host:port``."""
    if store_loc.startswith("unix:"):
        return store_loc
    host, _, port = store_loc.rpartition(":")
    if host and port.isdigit() and "/" not in store_loc:
        return store_loc
    return "unix:" + os.path.abspath(store_loc)


class PlasmaStoreInterface(StoreInterface):
    """Basic interface for our specific data store, formerly Apache Arrow Plasma.

    Objects are stored with object IDs. References to objects are kept in a
    dict (``stored``) where the key is a short name and the value the ID.
    With ``use_hdd`` set (by ``_setup_LMDB``, or ``use_lmdb``/``use_hdd`` in
    the constructor), every put is also recorded in an LMDBStoreInterface
    (improv's hard-disk side recording), which ``getID`` falls back on and
    ``getID(..., hdd_only=True)`` reads alone; setting ``use_hdd`` to False
    stops both, as improv's replayer does.
    """

    def __init__(
        self,
        name: str = "default",
        store_loc: str = "/tmp/store",
        use_lmdb: bool = False,
        lmdb_path: str = "../outputs/",
        lmdb_name: str | None = None,
        hdd_maxstore: float = 1e12,
        flush_immediately: bool = False,
        commit_freq: float = 1,
        use_hdd: bool = False,
    ) -> None:
        self.name = name
        self.store_loc = store_loc
        self._subscription: _Subscription | None = None
        self._notifications: queue.SimpleQueue[tuple[ObjectID, int, int]] = queue.SimpleQueue()
        self.client = self.connect_store(store_loc)
        self.stored: dict[str, ObjectID] = {}
        self.use_hdd = False
        self.flush_immediately = flush_immediately
        self.lmdb_store: LMDBStoreInterface | None = None
        if use_lmdb or use_hdd:  # improv's nexus passes use_hdd=True
            self._setup_LMDB(
                True, lmdb_path, lmdb_name, hdd_maxstore, flush_immediately, commit_freq
            )

    def _setup_LMDB(
        self,
        use_lmdb: bool = False,
        lmdb_path: str = "../outputs/",
        lmdb_name: str | None = None,
        hdd_maxstore: float = 1e12,
        flush_immediately: bool = False,
        commit_freq: float = 1,
    ) -> None:
        """Set ``use_hdd`` to ``use_lmdb`` and, if true, open the LMDB recording, as improv does.

        ``hdd_maxstore`` bounds the LMDB map; ``commit_freq`` is the commit
        thread's period in seconds unless ``flush_immediately``.
        """
        self.use_hdd = use_lmdb
        self.flush_immediately = flush_immediately
        if use_lmdb:
            self.lmdb_store = LMDBStoreInterface(
                path=lmdb_path, name=lmdb_name, max_size=hdd_maxstore,
                flush_immediately=flush_immediately, commit_freq=commit_freq,
            )

    def connect_store(self, store_loc: str) -> StoreClient:
        """Connect to the store at store_loc, max 20 retries to connect.

        Raises CannotConnectToStoreInterfaceError if it can't connect.
        Returns the client if successful and updates ``self.client``.
        """
        if not isinstance(store_loc, str) or not store_loc:
            raise CannotConnectToStoreInterfaceError(store_loc)
        client = StoreClient(store_address(store_loc))
        for attempt in range(CONNECT_RETRIES):
            try:
                client.info()
                break
            except StoreError:
                if attempt == CONNECT_RETRIES - 1:
                    client.close()
                    logger.error("Cannot connect to store: %s", store_loc)
                    raise CannotConnectToStoreInterfaceError(store_loc) from None
                time.sleep(CONNECT_RETRY_DELAY)
        logger.info("Successfully connected to store: %s", store_loc)
        self.client = client
        return client

    def put(self, object: Any, object_name: str) -> ObjectID:
        """Put a single object referenced by its string name into the store.

        Returns its ObjectID (``.binary()`` gives the 20 bytes). Arrays are
        stored zero-copy when colocated; anything else picklable is accepted,
        scipy sparse matrices included.
        """
        object_id = self.client.put(object, name=object_name)
        if self.use_hdd and self.lmdb_store is not None:
            self.lmdb_store.put(object, object_name, obj_id=object_id)
        return object_id

    def _put(self, obj: Any, id: ObjectID | bytes) -> ObjectID:
        """Internal put: store ``obj`` under the chosen ``id`` (from random_ObjectID), unnamed.

        Not recorded to LMDB, as in improv. Raises the client's ObjectExists
        (where Plasma raised PlasmaObjectExists) if the ID is taken.
        """
        return self.client.put(obj, id=_as_id(id))

    def get(self, object_name: str) -> Any:
        """Get a single object from the store by object name.

        A name recorded with updateStoreInterfaced resolves to its ID;
        otherwise the newest object stored under that name. Raises
        CannotGetObjectError when there is none.
        """
        object_id = self.stored.get(object_name)
        if object_id is not None:
            return self.getID(object_id)
        try:
            return self.client.get(object_name)
        except ObjectNotFound:
            logger.error("Never recorded storing this object: %s", object_name)
            raise CannotGetObjectError(query=object_name) from None

    def getID(self, obj_id: ObjectID | bytes, hdd_only: bool = False) -> Any:
        """Get object by object ID; from the LMDB recording only with ``hdd_only``.

        The recording is read only while ``use_hdd`` is set, as in improv.
        Raises ObjectNotFoundError if the ID is not found.
        """
        if not hdd_only:
            try:
                return self.client.get(_as_id(obj_id))
            except ObjectNotFound:
                pass
        if self.use_hdd and self.lmdb_store is not None:
            try:
                return self.lmdb_store.get(_as_id(obj_id))
            except ObjectNotFoundError:
                pass
        logger.error("Unable to locate object: %s in store", obj_id)
        raise ObjectNotFoundError(obj_id)

    def _get(self, object_name: str) -> Any:
        """Get an object by a name recorded with updateStoreInterfaced (its ID is known).

        Raises ObjectNotFoundError naming ``object_name`` if the name was never
        recorded, or naming the ID if its object is gone.
        """
        object_id = self.stored.get(object_name)
        if object_id is None:
            logger.warning("Object %s cannot be found.", object_name)
            raise ObjectNotFoundError(obj_id_or_name=object_name)
        return self.getID(object_id)

    def getList(self, ids: list[ObjectID | bytes]) -> list[Any]:
        """Get multiple objects from the store, in one round trip.

        Raises ObjectNotFoundError for the first ID that is not found.
        """
        ids = [_as_id(obj_id) for obj_id in ids]
        try:
            return self.client.get_many(ids)
        except ObjectNotFound as exc:
            raise ObjectNotFoundError(exc.message) from None

    def get_all(self) -> dict[ObjectID, dict[str, Any]]:
        """A listing of all objects in the store, keyed by ID, with Plasma ``list()``'s fields.

        As Plasma: ``create_time`` in whole Unix seconds; ``construct_duration``
        the whole seconds from create to seal, 0 here because a put creates and
        seals in one call; ``ref_count`` 0 (not tracked). Beyond Plasma:
        ``name``, the name the object was put under.
        """
        return {
            info.id: {
                "data_size": info.size,
                "metadata_size": 0,
                "ref_count": 0,
                "create_time": int(info.created.timestamp()),
                "construct_duration": 0,
                "state": "sealed",
                "name": info.name,
            }
            for info in self.client.list()
        }

    def delete(self, object_id: ObjectID | bytes) -> None:
        """Delete an object. Raises ObjectNotFoundError if the ID is not found."""
        try:
            self.client.delete(_as_id(object_id))
        except ObjectNotFound:
            raise ObjectNotFoundError(object_id) from None

    def replace(self, object: Any, object_name: str) -> ObjectID:
        """Store ``object`` under ``object_name``, deleting older objects of that name."""
        object_id = self.client.replace(object_name, object)
        if object_name in self.stored:
            self.stored[object_name] = object_id
        return object_id

    def reset(self) -> None:
        """Reset client connection."""
        self.release()
        self.client = self.connect_store(self.store_loc)

    def release(self) -> None:
        """Disconnect from the store; the server drops this client's leases."""
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        self.client.close()

    def subscribe(self) -> None:
        """Start receiving a notification per object stored; read them with notify().

        Raises StoreError (typed) if the subscription cannot be opened.
        """
        if self._subscription is not None:
            return
        subscription = self.client.subscribe()
        self._subscription = subscription
        threading.Thread(
            target=self._collect, args=(subscription,), name="improv-notify", daemon=True
        ).start()

    def _collect(self, subscription: _Subscription) -> None:
        try:
            for event in subscription:
                if event.type in ("put", "replace"):
                    self._notifications.put((event.object.id, event.object.size, 0))
        except StoreError as exc:
            logger.warning("notifications stopped: %s", exc)

    def notify(self) -> tuple[ObjectID, int, int] | None:
        """The next notification as (object_id, data_size, metadata_size), or None if none."""
        try:
            return self._notifications.get_nowait()
        except queue.Empty:
            return None

    def random_ObjectID(self, number: int = 1) -> list[ObjectID]:
        """``number`` fresh random IDs, for putting objects under chosen IDs."""
        return [ObjectID.random() for _ in range(number)]

    def updateStoreInterfaced(self, object_name: str, object_id: ObjectID) -> None:
        """Update local dict with info we need locally (name -> ID)."""
        self.stored.update({object_name: object_id})

    def getStored(self) -> dict[str, ObjectID]:
        """Returns: its info about what it has stored."""
        return self.stored


def _as_id(obj_id: ObjectID | bytes) -> ObjectID:
    return obj_id if isinstance(obj_id, ObjectID) else ObjectID(bytes(obj_id))


@dataclass
class LMDBData:
    """Dataclass to store objects and their metadata into LMDB."""

    obj: object
    time: float
    name: str = None  # type: ignore[assignment]
    is_queue: bool = False

    @property
    def queue(self) -> str | None:
        """Returns: Queue name if object is a queue else None."""
        # Expected: 'q__Acquirer.q_out__124' -> 'q_out'
        if self.is_queue:
            try:
                return self.name.split("__")[1].split(".")[1]
            except IndexError:
                return "q_comm"
        logger.error("Attempt to get queue name from objects not from queue.")
        return None


@dataclass
class _PendingPut:
    key: bytes
    record: LMDBData
    flush_now: bool


class LMDBStoreInterface(StoreInterface):
    """improv's recording store: objects pickled into a local LMDB environment.

    Puts go through a queue to a commit thread (every ``commit_freq``
    seconds, or at once for ``flush_immediately``). Keys are improv 0.2's:
    names starting with ``q_`` or ``config`` are queue records, kept under the
    name itself (a later put of the name replaces the record); everything else
    under its object ID, or its name when put without one. Queue records that
    earlier versions of this module kept under name plus pickled time are read
    by name too (the newest of them).
    """

    def __init__(
        self,
        path: str = "../outputs/",
        name: str | None = None,
        load: bool = False,
        max_size: float = 1e12,
        flush_immediately: bool = False,
        commit_freq: float = 1,
    ) -> None:
        if load:
            if name is None:
                raise ValueError("name of the LMDB is required when loading an existing one")
            self.lmdb_path = os.path.join(path, name)
            if not os.path.exists(self.lmdb_path):
                raise FileNotFoundError(f"no LMDB at {self.lmdb_path}")
        else:
            os.makedirs(path, exist_ok=True)
            name = name or "lmdb_" + datetime.now().strftime("%Y%m%d_%H%M%S")
            self.lmdb_path = os.path.join(path, name)
        self.lmdb_name = name
        self.flush_immediately = flush_immediately
        self.lmdb_commit_freq = commit_freq
        self.lmdb_env = lmdb.open(self.lmdb_path, map_size=int(max_size), sync=True)
        self.put_queue: queue.Queue[_PendingPut] = queue.Queue()
        self._subscribers: list[queue.SimpleQueue[LMDBData]] = []
        self._commit_lock = threading.Lock()
        self._closed = threading.Event()
        self.commit_thread = threading.Thread(
            target=self.commit_daemon, name="lmdb-commit", daemon=True
        )
        self.commit_thread.start()

    def get(self, key: Any, include_metadata: bool = False) -> Any:
        """Get object using key (any byte string, name or ObjectID), or a list of keys.

        Returns the stored object, or its LMDBData with ``include_metadata``.
        Raises ObjectNotFoundError for a key that is not stored.
        """
        if isinstance(key, list):
            return [self._get_one(_key_bytes(k), include_metadata) for k in key]
        return self._get_one(_key_bytes(key), include_metadata)

    def _get_one(self, key: bytes, include_metadata: bool) -> Any:
        with self.lmdb_env.begin() as txn:
            raw = txn.get(key)
            if raw is None and key.startswith((b"q_", b"config")):
                raw = _newest_timed_record(txn, key)
        if raw is None:
            raise ObjectNotFoundError(key)
        record = pickle.loads(raw)
        return record if include_metadata else record.obj

    def get_keys(self) -> list[bytes]:
        """Get all keys in LMDB."""
        with self.lmdb_env.begin() as txn:
            return list(txn.cursor().iternext(values=False))

    def put(
        self,
        obj: Any,
        obj_name: str,
        obj_id: ObjectID | bytes | None = None,
        flush_this_immediately: bool = False,
    ) -> None:
        """Queue an object for recording; committed by the commit thread.

        Keyed as improv 0.2 keys it: a queue record (name starting with ``q_``
        or ``config``) by its name, anything else by ``obj_id``, or by its name
        without one.
        """
        is_queue = obj_name.startswith(("q_", "config"))
        key = obj_name.encode() if is_queue or obj_id is None else _key_bytes(obj_id)
        record = LMDBData(obj=obj, time=time.time(), name=obj_name, is_queue=is_queue)
        self.put_queue.put(_PendingPut(key, record, flush_this_immediately))
        if self.flush_immediately or flush_this_immediately:
            self.commit()

    def flush(self, sig: Any = None, frame: Any = None) -> None:
        """Must run before exiting. Commits what is queued, syncs to disk and closes."""
        if self._closed.is_set():
            return
        self.commit()
        self._closed.set()
        self.commit_thread.join(timeout=10)
        self.lmdb_env.sync(True)
        self.lmdb_env.close()

    def commit_daemon(self) -> None:
        """Commit queued puts every ``commit_freq`` seconds until flushed."""
        while not self._closed.wait(self.lmdb_commit_freq):
            self.commit()

    def commit(self) -> None:
        """Commit queued puts into LMDB in one transaction."""
        with self._commit_lock:
            pending: list[_PendingPut] = []
            while True:
                try:
                    pending.append(self.put_queue.get_nowait())
                except queue.Empty:
                    break
            if not pending or self._closed.is_set():
                return
            with self.lmdb_env.begin(write=True) as txn:
                for item in pending:
                    txn.put(item.key, pickle.dumps(item.record, protocol=5), overwrite=True)
            for item in pending:
                for subscriber in self._subscribers:
                    subscriber.put(item.record)

    def delete(self, obj_id: ObjectID | bytes) -> None:
        """Delete object from LMDB. Raises ObjectNotFoundError if the ID is not found."""
        with self.lmdb_env.begin(write=True) as txn:
            if txn.pop(_key_bytes(obj_id)) is None:
                raise ObjectNotFoundError(obj_id)

    def replace(self, obj: Any, obj_name: str, obj_id: ObjectID | bytes) -> None:
        """Overwrite the recorded object under ``obj_id``. Raises ObjectNotFoundError if absent."""
        key = _key_bytes(obj_id)
        record = LMDBData(obj=obj, time=time.time(), name=obj_name)
        with self.lmdb_env.begin(write=True) as txn:
            if txn.get(key) is None:
                raise ObjectNotFoundError(obj_id)
            txn.put(key, pickle.dumps(record, protocol=5))

    def subscribe(self) -> Iterator[LMDBData]:
        """The records committed from now on, as an iterator that waits for the next one."""
        inbox: queue.SimpleQueue[LMDBData] = queue.SimpleQueue()
        self._subscribers.append(inbox)
        return iter(inbox.get, None)


# The pickled time.time() after the name in the queue-record keys that earlier versions of
# this module wrote (improv 0.1's LMDBStore format): one float pickled with protocol 2 to 5,
# with the frame opcode of protocols 4 and 5.
_PICKLED_TIME = re.compile(rb"\x80[\x02-\x05](?:\x95\x0a\x00{7})?G(.{8})\.", re.DOTALL)


def _newest_timed_record(txn: lmdb.Transaction, name: bytes) -> bytes | None:
    """The newest record kept under ``name`` + pickled time (the older key format), if any."""
    newest: tuple[float, bytes] | None = None
    prefix = name + b"\x80"  # a pickle's first byte; it never begins a UTF-8 character
    cursor = txn.cursor()
    if not cursor.set_range(prefix):
        return None
    for key, value in cursor:
        key = bytes(key)
        if not key.startswith(prefix):
            break
        stamp = _PICKLED_TIME.fullmatch(key, len(name))
        if stamp is not None:
            when: float = struct.unpack(">d", stamp.group(1))[0]
            if newest is None or when > newest[0]:
                newest = (when, bytes(value))
    return newest[1] if newest is not None else None


def _key_bytes(key: Any) -> bytes:
    if isinstance(key, ObjectID):
        return key.binary()
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, (bytes, bytearray, np.bytes_)):
        return bytes(key)
    binary = getattr(key, "binary", None)  # e.g. a pyarrow.plasma.ObjectID
    if binary is not None:
        return binary()
    raise TypeError(f"cannot use {type(key).__name__} as an LMDB key")


# improv's RedisStoreInterface default: zlib's own default level (6).
ZLIB_COMPRESSION_LEVEL = -1
# improv's Redis client retried 5 times, 0.25 s apart, before giving up.
REDIS_CONNECT_RETRIES = 5
REDIS_CONNECT_RETRY_DELAY = 0.25
REDIS_HEALTH_TIMEOUT = 1.0


class RedisStoreInterface(StoreInterface):
    """improv's Redis-era store interface (``improv.store.RedisStoreInterface``), on improv-store.

    ``put(obj)`` returns a string key; ``get(key)``, ``get_list(keys)`` and
    ``get_all()`` read values back. The key is the stored object's ObjectID in
    hex, so any improv-store client reads it with ``ObjectID.from_hex(key)``.
    numpy arrays are stored as arrays: a colocated reader gets a read-only view
    on the store's shared memory, no copy. Anything else is pickled and, as
    improv does, zlib-compressed at ``compression_level`` (-1 is zlib's
    default, 0 stores uncompressed zlib data; ``None``, beyond improv, skips
    zlib so that arrays inside containers are read in place too).

    The store is ``hostname:server_port_num`` over TCP, where improv's nexus
    started ``redis-server``, unless ``address`` (a unix socket path,
    ``unix:///path`` or ``host:port``) is given. A client on the server's host
    uses shared memory over either. Objects are not named; the server's
    ``--max-stored-bytes`` and ``--expire-after`` do the harvester's job.
    """

    def __init__(
        self,
        name: str = "default",
        server_port_num: int | str | None = 6379,
        hostname: str = "localhost",
        compression_level: int | None = ZLIB_COMPRESSION_LEVEL,
        *,
        address: str | None = None,
    ) -> None:
        if compression_level is not None and not -1 <= compression_level <= 9:
            raise ValueError(f"compression_level must be -1 to 9 or None, not {compression_level}")
        self.name = name
        self.server_port_num = server_port_num
        self.hostname = hostname
        self.compression_level = compression_level
        self.address = address
        self._batch_size = 0  # the server's max_batch_size, learnt on connecting
        self.client = self.connect_to_server()

    def _target(self) -> str | None:
        """The address to connect to, or None when the port is not a port."""
        if self.address is not None:
            return store_address(self.address)
        if self.server_port_num is None:
            return None
        try:
            port = int(self.server_port_num)
        except ValueError:
            return None
        if not 0 < port < 65536:
            return None
        host = self.hostname
        if ":" in host and not host.startswith("["):  # an IPv6 literal
            host = f"[{host}]"
        return f"{host}:{port}"

    def connect_to_server(self) -> StoreClient:
        """Connect to the store, retrying as improv's Redis client did; returns the client.

        Raises CannotConnectToStoreInterfaceError (naming the port, or
        ``address`` when given) if no store answers.
        """
        where = self.address if self.address is not None else self.server_port_num
        target = self._target()
        if target is None:
            logger.error("Cannot connect to store at %s: not a port", where)
            raise CannotConnectToStoreInterfaceError(where)
        client = StoreClient(target)
        for attempt in range(REDIS_CONNECT_RETRIES + 1):
            try:
                if client.health(timeout=REDIS_HEALTH_TIMEOUT) == "SERVING":
                    self._batch_size = client.info().max_batch_size
                    break
            except StoreError as exc:
                logger.debug("store at %s not answering yet: %s", target, exc.message)
            if attempt == REDIS_CONNECT_RETRIES:
                client.close()
                logger.error("Cannot connect to store at %s", target)
                raise CannotConnectToStoreInterfaceError(where)
            time.sleep(REDIS_CONNECT_RETRY_DELAY)
        logger.info("Successfully connected to store at %s", target)
        self.client = client
        return client

    def put(self, object: Any) -> str:
        """Store ``object`` under a new key and return the key.

        Raises the client's StoreError (StoreFull, say) if the store refuses it.
        """
        stored = object
        if self.compression_level is not None and not isinstance(object, np.ndarray):
            data = pickle.dumps(object, protocol=5)
            stored = _Compressed(zlib.compress(data, self.compression_level))
        return self.client.put(stored).hex()

    def get(self, object_key: str) -> Any:
        """The value stored under ``object_key``. Raises ObjectNotFoundError if there is none."""
        try:
            return self.client.get(_redis_key_id(object_key))
        except ObjectNotFound:
            logger.warning("Object %s cannot be found.", object_key)
            raise ObjectNotFoundError(object_key) from None

    def get_list(self, ids: list[str]) -> list[Any]:
        """The values stored under ``ids``, in order, in as few round trips as the server allows.

        Raises ObjectNotFoundError for the first key with no value.
        """
        keys = list(ids)
        try:
            return self._get_many([_redis_key_id(key) for key in keys])
        except ObjectNotFound:
            return [self.get(key) for key in keys]  # raises for the first missing key

    def get_all(self) -> list[Any]:
        """Every value in the store, oldest first; objects deleted meanwhile are left out."""
        object_ids = [info.id for info in self.client.list()]
        try:
            return self._get_many(object_ids)
        except ObjectNotFound:  # the server's cleanup deleted some since the listing
            values = []
            for object_id in object_ids:
                with contextlib.suppress(ObjectNotFound):
                    values.append(self.client.get(object_id))
            return values

    def _get_many(self, object_ids: list[ObjectID]) -> list[Any]:
        """get_many in batches the server accepts."""
        size = self._batch_size or max(len(object_ids), 1)
        values: list[Any] = []
        for start in range(0, len(object_ids), size):
            values.extend(self.client.get_many(object_ids[start : start + size]))
        return values

    def reset(self) -> None:
        """Reset client connection: connect anew.

        The old connection is left open, not closed, so that arrays read
        through it stay valid (closing gives their shared memory back).
        """
        self.client = self.connect_to_server()
        logger.debug("Reset local connection to store at %s", self._target())


def _redis_key_id(key: str | ObjectID) -> ObjectID:
    """The ObjectID a RedisStoreInterface key names; ObjectNotFoundError if it names none."""
    if isinstance(key, ObjectID):
        return key
    try:
        return ObjectID.from_hex(key)
    except (TypeError, ValueError):
        raise ObjectNotFoundError(key) from None


def _inflate(data: bytes) -> Any:
    """The value RedisStoreInterface.put stored compressed; pickle calls it on load.

    Stored pickles name this function: keep its module and name.
    """
    return pickle.loads(zlib.decompress(data))


class _Compressed:
    """A value pickled and zlib-compressed, which unpickles to the value itself.

    So any improv-store client's ``get`` returns the original value.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (_inflate, (self.data,))


StoreInterface = PlasmaStoreInterface  # type: ignore[misc]  # as in improv.store
