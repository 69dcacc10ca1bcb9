"""Plain Python views of the store's metadata, info and events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from google.protobuf.message import Message

from improv_store.v1 import store_pb2 as pb

from .ids import ObjectID

_ENCODINGS = {
    pb.ENCODING_RAW: "raw",
    pb.ENCODING_NDARRAY: "ndarray",
    pb.ENCODING_PICKLE: "pickle",
    pb.ENCODING_PICKLE_BUFFERS: "pickle",
}
_EVENT_TYPES = {
    pb.EVENT_TYPE_PUT: "put",
    pb.EVENT_TYPE_DELETE: "delete",
    pb.EVENT_TYPE_REPLACE: "replace",
}
_DURABILITY = {pb.DURABILITY_SYNC: "sync", pb.DURABILITY_ASYNC: "async", pb.DURABILITY_NONE: "none"}
# Any other role takes writes: a server older than replication leaves it unset.
_ROLES = {pb.ROLE_FOLLOWER: "follower"}
_REPLICATION_STATES = {
    pb.REPLICATION_STATE_CONNECTING: "connecting",
    pb.REPLICATION_STATE_STREAMING: "streaming",
    pb.REPLICATION_STATE_RESYNCING: "resyncing",
}


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _time(stamp: Any) -> datetime:
    """A Timestamp as an aware datetime, to the microsecond (a third of the time of
    Timestamp.ToDatetime: a listing makes one per object)."""
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


@dataclass(frozen=True, slots=True)  # slots: a listing makes one per object
class ObjectInfo:
    """Metadata of one stored object."""

    id: ObjectID
    name: str
    size: int
    encoding: str
    sequence: int
    created: datetime
    crc32c: int
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    order: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, meta: pb.ObjectMeta) -> ObjectInfo:
        is_array = meta.encoding == pb.ENCODING_NDARRAY
        return cls(
            id=ObjectID(meta.id),
            name=meta.name,
            size=meta.size,
            encoding=_ENCODINGS.get(meta.encoding, "raw"),
            sequence=meta.sequence,
            created=_time(meta.create_time),
            crc32c=meta.crc32c,
            dtype=meta.array.dtype if is_array else None,
            shape=tuple(meta.array.shape) if is_array else None,
            order=("F" if meta.array.order == pb.ARRAY_ORDER_F else "C") if is_array else None,
            labels=dict(meta.labels) if meta.labels else {},
        )


@dataclass(frozen=True)
class Event:
    """One change: ``type`` is "put", "delete" or "replace".

    ``value`` is the stored object when the subscription asked for values.
    """

    sequence: int
    type: str
    object: ObjectInfo
    replaced: tuple[ObjectID, ...]
    time: datetime
    value: Any = None

    @classmethod
    def from_proto(cls, event: pb.Event, value: Any = None) -> Event:
        return cls(
            sequence=event.sequence,
            type=_EVENT_TYPES.get(event.type, "unknown"),
            object=ObjectInfo.from_proto(event.meta),
            replaced=tuple(ObjectID(raw) for raw in event.replaced_ids),
            time=_time(event.time),
            value=value,
        )


@dataclass(frozen=True)
class ReplicationInfo:
    """A store's place among followers: ``role`` is "primary" or "follower"; the rest
    describes a follower (a primary's are empty): the address it follows, what it is
    doing ("connecting", "streaming" or "resyncing"), how far behind it is, the
    snapshot resyncs since it started and why it last lost its primary."""

    role: str
    primary: str
    state: str
    applied_sequence: int
    primary_sequence: int
    lag_events: int
    lag_seconds: float
    resyncs: int
    last_error: str
    # A primary promoted from a follower: the store_id it had, and the last sequence then.
    promoted_from: str
    promoted_at_sequence: int

    @classmethod
    def from_proto(cls, replication: pb.Replication) -> ReplicationInfo:
        return cls(
            role=_ROLES.get(replication.role, "primary"),
            state=_REPLICATION_STATES.get(replication.state, ""),
            **_copied(replication, _REPLICATION_FIELDS),
        )


@dataclass(frozen=True)
class Promotion:
    """What ``StoreClient.promote`` made: the new primary's ``store_id``, and the
    sequence it had applied as a follower (its first write gets the next)."""

    store_id: str
    last_sequence: int


@dataclass(frozen=True)
class StoreInfo:
    """What ``Info`` reports about a server."""

    version: str
    store_id: str
    durability: str
    object_count: int
    total_bytes: int
    last_sequence: int
    oldest_sequence: int
    committed_sequence: int
    subscriber_count: int
    started: datetime
    max_object_size: int
    inline_limit: int
    max_name_length: int
    max_batch_size: int
    shm_min_size: int
    max_subscribers: int
    subscriber_buffer: int
    max_streams: int
    max_response_size: int
    max_chunk_size: int
    arena_capacity: int
    arena_used: int
    arena_pinned: int
    evictions: int
    resident_objects: int
    segments: int
    object_index: str
    sessions: int
    requests: int
    failed_requests: int
    commits: int
    commit_seconds: float
    committed_changes: int
    subscriber_lag: int
    open_streams: int
    replication: ReplicationInfo

    @classmethod
    def from_proto(cls, info: pb.InfoResponse) -> StoreInfo:
        arena = {name: getattr(info.arena, field) for name, field in _ARENA_FIELDS.items()}
        return cls(
            version=info.version,
            durability=_DURABILITY.get(info.durability, "unknown"),
            started=_time(info.start_time),
            object_index=info.object_index.name,
            replication=ReplicationInfo.from_proto(info.replication),
            **_copied(info, _INFO_FIELDS),
            **_copied(info.limits, _LIMIT_FIELDS),
            **_copied(info.stats, _STAT_FIELDS),
            **arena,
        )


# The StoreInfo fields that have the name of an InfoResponse field, or of one of its parts.
_INFO_FIELDS = (
    "store_id object_count total_bytes last_sequence oldest_sequence committed_sequence"
    " subscriber_count"
)
_LIMIT_FIELDS = (
    "max_object_size inline_limit max_name_length max_batch_size shm_min_size"
    " max_subscribers subscriber_buffer max_streams max_response_size max_chunk_size"
)
_STAT_FIELDS = (
    "requests failed_requests commits commit_seconds committed_changes subscriber_lag"
    " open_streams"
)
_REPLICATION_FIELDS = (
    "primary applied_sequence primary_sequence lag_events lag_seconds resyncs last_error"
    " promoted_from promoted_at_sequence"
)
# StoreInfo field: ArenaUsage field.
_ARENA_FIELDS = {
    "arena_capacity": "capacity", "arena_used": "used", "arena_pinned": "pinned",
    "evictions": "evictions", "resident_objects": "resident_objects",
    "segments": "segments", "sessions": "sessions",
}


def _copied(message: Message, names: str) -> dict[str, Any]:
    """The fields of ``message`` named in ``names`` (space-separated), by name."""
    return {name: getattr(message, name) for name in names.split()}
