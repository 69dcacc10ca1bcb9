import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_RAW: _ClassVar[Encoding]
    ENCODING_NDARRAY: _ClassVar[Encoding]
    ENCODING_PICKLE: _ClassVar[Encoding]
    ENCODING_PICKLE_BUFFERS: _ClassVar[Encoding]

class LaneMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LANE_METHOD_UNSPECIFIED: _ClassVar[LaneMethod]
    LANE_METHOD_PUT: _ClassVar[LaneMethod]
    LANE_METHOD_GET: _ClassVar[LaneMethod]
    LANE_METHOD_BATCH_GET: _ClassVar[LaneMethod]
    LANE_METHOD_DELETE: _ClassVar[LaneMethod]
    LANE_METHOD_REPLACE: _ClassVar[LaneMethod]
    LANE_METHOD_CREATE: _ClassVar[LaneMethod]
    LANE_METHOD_SEAL: _ClassVar[LaneMethod]
    LANE_METHOD_ABORT: _ClassVar[LaneMethod]
    LANE_METHOD_RELEASE: _ClassVar[LaneMethod]
    LANE_METHOD_INFO: _ClassVar[LaneMethod]
    LANE_METHOD_LIST: _ClassVar[LaneMethod]
    LANE_METHOD_BATCH_PUT: _ClassVar[LaneMethod]
    LANE_METHOD_OPEN: _ClassVar[LaneMethod]
    LANE_METHOD_SUBSCRIBE: _ClassVar[LaneMethod]
    LANE_METHOD_DELETE_MATCHING: _ClassVar[LaneMethod]

class Transfer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_UNSPECIFIED: _ClassVar[Transfer]
    TRANSFER_INLINE: _ClassVar[Transfer]
    TRANSFER_SHM: _ClassVar[Transfer]
    TRANSFER_AUTO: _ClassVar[Transfer]

class ArrayOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARRAY_ORDER_UNSPECIFIED: _ClassVar[ArrayOrder]
    ARRAY_ORDER_C: _ClassVar[ArrayOrder]
    ARRAY_ORDER_F: _ClassVar[ArrayOrder]

class Durability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DURABILITY_UNSPECIFIED: _ClassVar[Durability]
    DURABILITY_SYNC: _ClassVar[Durability]
    DURABILITY_ASYNC: _ClassVar[Durability]
    DURABILITY_NONE: _ClassVar[Durability]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_PRIMARY: _ClassVar[Role]
    ROLE_FOLLOWER: _ClassVar[Role]

class ReplicationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICATION_STATE_UNSPECIFIED: _ClassVar[ReplicationState]
    REPLICATION_STATE_CONNECTING: _ClassVar[ReplicationState]
    REPLICATION_STATE_STREAMING: _ClassVar[ReplicationState]
    REPLICATION_STATE_RESYNCING: _ClassVar[ReplicationState]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_PUT: _ClassVar[EventType]
    EVENT_TYPE_DELETE: _ClassVar[EventType]
    EVENT_TYPE_REPLACE: _ClassVar[EventType]
ENCODING_UNSPECIFIED: Encoding
ENCODING_RAW: Encoding
ENCODING_NDARRAY: Encoding
ENCODING_PICKLE: Encoding
ENCODING_PICKLE_BUFFERS: Encoding
LANE_METHOD_UNSPECIFIED: LaneMethod
LANE_METHOD_PUT: LaneMethod
LANE_METHOD_GET: LaneMethod
LANE_METHOD_BATCH_GET: LaneMethod
LANE_METHOD_DELETE: LaneMethod
LANE_METHOD_REPLACE: LaneMethod
LANE_METHOD_CREATE: LaneMethod
LANE_METHOD_SEAL: LaneMethod
LANE_METHOD_ABORT: LaneMethod
LANE_METHOD_RELEASE: LaneMethod
LANE_METHOD_INFO: LaneMethod
LANE_METHOD_LIST: LaneMethod
LANE_METHOD_BATCH_PUT: LaneMethod
LANE_METHOD_OPEN: LaneMethod
LANE_METHOD_SUBSCRIBE: LaneMethod
LANE_METHOD_DELETE_MATCHING: LaneMethod
TRANSFER_UNSPECIFIED: Transfer
TRANSFER_INLINE: Transfer
TRANSFER_SHM: Transfer
TRANSFER_AUTO: Transfer
ARRAY_ORDER_UNSPECIFIED: ArrayOrder
ARRAY_ORDER_C: ArrayOrder
ARRAY_ORDER_F: ArrayOrder
DURABILITY_UNSPECIFIED: Durability
DURABILITY_SYNC: Durability
DURABILITY_ASYNC: Durability
DURABILITY_NONE: Durability
ROLE_UNSPECIFIED: Role
ROLE_PRIMARY: Role
ROLE_FOLLOWER: Role
REPLICATION_STATE_UNSPECIFIED: ReplicationState
REPLICATION_STATE_CONNECTING: ReplicationState
REPLICATION_STATE_STREAMING: ReplicationState
REPLICATION_STATE_RESYNCING: ReplicationState
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_PUT: EventType
EVENT_TYPE_DELETE: EventType
EVENT_TYPE_REPLACE: EventType

class ArrayLayout(_message.Message):
    __slots__ = ("dtype", "shape", "order")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    order: ArrayOrder
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., order: _Optional[_Union[ArrayOrder, str]] = ...) -> None: ...

class ObjectSpec(_message.Message):
    __slots__ = ("id", "name", "encoding", "array", "crc32c", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    ARRAY_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    name: str
    encoding: Encoding
    array: ArrayLayout
    crc32c: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[bytes] = ..., name: _Optional[str] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., array: _Optional[_Union[ArrayLayout, _Mapping]] = ..., crc32c: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ObjectMeta(_message.Message):
    __slots__ = ("id", "name", "size", "encoding", "array", "create_time", "sequence", "crc32c", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    ARRAY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    name: str
    size: int
    encoding: Encoding
    array: ArrayLayout
    create_time: _timestamp_pb2.Timestamp
    sequence: int
    crc32c: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[bytes] = ..., name: _Optional[str] = ..., size: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., array: _Optional[_Union[ArrayLayout, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sequence: _Optional[int] = ..., crc32c: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ShmHandle(_message.Message):
    __slots__ = ("segment", "offset", "length", "lease_id")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    segment: str
    offset: int
    length: int
    lease_id: int
    def __init__(self, segment: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., lease_id: _Optional[int] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: bytes
    name: str
    def __init__(self, id: _Optional[bytes] = ..., name: _Optional[str] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("spec", "data")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    spec: ObjectSpec
    data: bytes
    def __init__(self, spec: _Optional[_Union[ObjectSpec, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("meta",)
    META_FIELD_NUMBER: _ClassVar[int]
    meta: ObjectMeta
    def __init__(self, meta: _Optional[_Union[ObjectMeta, _Mapping]] = ...) -> None: ...

class PutStreamHeader(_message.Message):
    __slots__ = ("spec", "size", "replace")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    spec: ObjectSpec
    size: int
    replace: bool
    def __init__(self, spec: _Optional[_Union[ObjectSpec, _Mapping]] = ..., size: _Optional[int] = ..., replace: _Optional[bool] = ...) -> None: ...

class PutStreamRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PutStreamHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[PutStreamHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class PutStreamResponse(_message.Message):
    __slots__ = ("meta", "replaced_ids")
    META_FIELD_NUMBER: _ClassVar[int]
    REPLACED_IDS_FIELD_NUMBER: _ClassVar[int]
    meta: ObjectMeta
    replaced_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, meta: _Optional[_Union[ObjectMeta, _Mapping]] = ..., replaced_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("ref", "wait", "metadata_only", "transfer", "session_id")
    REF_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    METADATA_ONLY_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ref: ObjectRef
    wait: _duration_pb2.Duration
    metadata_only: bool
    transfer: Transfer
    session_id: str
    def __init__(self, ref: _Optional[_Union[ObjectRef, _Mapping]] = ..., wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., metadata_only: _Optional[bool] = ..., transfer: _Optional[_Union[Transfer, str]] = ..., session_id: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("meta", "data", "payload_omitted", "handle")
    META_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_OMITTED_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    meta: ObjectMeta
    data: bytes
    payload_omitted: bool
    handle: ShmHandle
    def __init__(self, meta: _Optional[_Union[ObjectMeta, _Mapping]] = ..., data: _Optional[bytes] = ..., payload_omitted: _Optional[bool] = ..., handle: _Optional[_Union[ShmHandle, _Mapping]] = ...) -> None: ...

class GetStreamRequest(_message.Message):
    __slots__ = ("ref", "wait", "chunk_size", "offset", "length")
    REF_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    ref: ObjectRef
    wait: _duration_pb2.Duration
    chunk_size: int
    offset: int
    length: int
    def __init__(self, ref: _Optional[_Union[ObjectRef, _Mapping]] = ..., wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., chunk_size: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class GetStreamResponse(_message.Message):
    __slots__ = ("meta", "chunk")
    META_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    meta: ObjectMeta
    chunk: bytes
    def __init__(self, meta: _Optional[_Union[ObjectMeta, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class BatchGetRequest(_message.Message):
    __slots__ = ("refs", "wait", "transfer", "session_id")
    REFS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    refs: _containers.RepeatedCompositeFieldContainer[ObjectRef]
    wait: _duration_pb2.Duration
    transfer: Transfer
    session_id: str
    def __init__(self, refs: _Optional[_Iterable[_Union[ObjectRef, _Mapping]]] = ..., wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., transfer: _Optional[_Union[Transfer, str]] = ..., session_id: _Optional[str] = ...) -> None: ...

class BatchGetResult(_message.Message):
    __slots__ = ("code", "message", "meta", "data", "payload_omitted", "handle")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_OMITTED_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    meta: ObjectMeta
    data: bytes
    payload_omitted: bool
    handle: ShmHandle
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., meta: _Optional[_Union[ObjectMeta, _Mapping]] = ..., data: _Optional[bytes] = ..., payload_omitted: _Optional[bool] = ..., handle: _Optional[_Union[ShmHandle, _Mapping]] = ...) -> None: ...

class BatchGetResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchGetResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchGetResult, _Mapping]]] = ...) -> None: ...

class BatchPutRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[PutRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[PutRequest, _Mapping]]] = ...) -> None: ...

class BatchPutResult(_message.Message):
    __slots__ = ("code", "message", "meta")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    meta: ObjectMeta
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., meta: _Optional[_Union[ObjectMeta, _Mapping]] = ...) -> None: ...

class BatchPutResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchPutResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchPutResult, _Mapping]]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: ObjectRef
    def __init__(self, ref: _Optional[_Union[ObjectRef, _Mapping]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted_ids", "deleted_count")
    DELETED_IDS_FIELD_NUMBER: _ClassVar[int]
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted_ids: _containers.RepeatedScalarFieldContainer[bytes]
    deleted_count: int
    def __init__(self, deleted_ids: _Optional[_Iterable[bytes]] = ..., deleted_count: _Optional[int] = ...) -> None: ...

class DeleteMatchingRequest(_message.Message):
    __slots__ = ("prefix", "before_sequence", "created_before", "all")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    BEFORE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    before_sequence: int
    created_before: _timestamp_pb2.Timestamp
    all: bool
    def __init__(self, prefix: _Optional[str] = ..., before_sequence: _Optional[int] = ..., created_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., all: _Optional[bool] = ...) -> None: ...

class DeleteMatchingResponse(_message.Message):
    __slots__ = ("deleted_count", "last_sequence")
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    last_sequence: int
    def __init__(self, deleted_count: _Optional[int] = ..., last_sequence: _Optional[int] = ...) -> None: ...

class ReplaceRequest(_message.Message):
    __slots__ = ("spec", "data")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    spec: ObjectSpec
    data: bytes
    def __init__(self, spec: _Optional[_Union[ObjectSpec, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ReplaceResponse(_message.Message):
    __slots__ = ("meta", "replaced_ids")
    META_FIELD_NUMBER: _ClassVar[int]
    REPLACED_IDS_FIELD_NUMBER: _ClassVar[int]
    meta: ObjectMeta
    replaced_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, meta: _Optional[_Union[ObjectMeta, _Mapping]] = ..., replaced_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("release_lease_ids",)
    RELEASE_LEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    release_lease_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, release_lease_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("session_id", "pin_table", "pin_slots")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PIN_TABLE_FIELD_NUMBER: _ClassVar[int]
    PIN_SLOTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    pin_table: str
    pin_slots: int
    def __init__(self, session_id: _Optional[str] = ..., pin_table: _Optional[str] = ..., pin_slots: _Optional[int] = ...) -> None: ...

class LaneError(_message.Message):
    __slots__ = ("message", "trailing_metadata")
    class TrailingMetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRAILING_METADATA_FIELD_NUMBER: _ClassVar[int]
    message: str
    trailing_metadata: _containers.ScalarMap[str, str]
    def __init__(self, message: _Optional[str] = ..., trailing_metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LaneOpenRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class CreateRequest(_message.Message):
    __slots__ = ("session_id", "spec", "size", "replace")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    spec: ObjectSpec
    size: int
    replace: bool
    def __init__(self, session_id: _Optional[str] = ..., spec: _Optional[_Union[ObjectSpec, _Mapping]] = ..., size: _Optional[int] = ..., replace: _Optional[bool] = ...) -> None: ...

class CreateResponse(_message.Message):
    __slots__ = ("handle",)
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    handle: ShmHandle
    def __init__(self, handle: _Optional[_Union[ShmHandle, _Mapping]] = ...) -> None: ...

class SealRequest(_message.Message):
    __slots__ = ("session_id", "handle", "keep_lease", "crc32c", "reserve_next", "spec", "replace")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    KEEP_LEASE_FIELD_NUMBER: _ClassVar[int]
    CRC32C_FIELD_NUMBER: _ClassVar[int]
    RESERVE_NEXT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    handle: ShmHandle
    keep_lease: bool
    crc32c: int
    reserve_next: int
    spec: ObjectSpec
    replace: bool
    def __init__(self, session_id: _Optional[str] = ..., handle: _Optional[_Union[ShmHandle, _Mapping]] = ..., keep_lease: _Optional[bool] = ..., crc32c: _Optional[int] = ..., reserve_next: _Optional[int] = ..., spec: _Optional[_Union[ObjectSpec, _Mapping]] = ..., replace: _Optional[bool] = ...) -> None: ...

class SealResponse(_message.Message):
    __slots__ = ("meta", "replaced_ids", "handle", "next_handle")
    META_FIELD_NUMBER: _ClassVar[int]
    REPLACED_IDS_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    NEXT_HANDLE_FIELD_NUMBER: _ClassVar[int]
    meta: ObjectMeta
    replaced_ids: _containers.RepeatedScalarFieldContainer[bytes]
    handle: ShmHandle
    next_handle: ShmHandle
    def __init__(self, meta: _Optional[_Union[ObjectMeta, _Mapping]] = ..., replaced_ids: _Optional[_Iterable[bytes]] = ..., handle: _Optional[_Union[ShmHandle, _Mapping]] = ..., next_handle: _Optional[_Union[ShmHandle, _Mapping]] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ("session_id", "handle")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    handle: ShmHandle
    def __init__(self, session_id: _Optional[str] = ..., handle: _Optional[_Union[ShmHandle, _Mapping]] = ...) -> None: ...

class AbortResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("session_id", "lease_ids")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_IDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    lease_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., lease_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("prefix", "page_size", "page_token")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    page_size: int
    page_token: str
    def __init__(self, prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("objects", "next_page_token")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectMeta]
    next_page_token: str
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectMeta, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_object_size", "inline_limit", "max_name_length", "max_batch_size", "max_message_size", "shm_min_size", "max_subscribers", "subscriber_buffer", "max_streams", "max_response_size", "max_chunk_size")
    MAX_OBJECT_SIZE_FIELD_NUMBER: _ClassVar[int]
    INLINE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_NAME_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHM_MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBER_BUFFER_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    MAX_RESPONSE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    max_object_size: int
    inline_limit: int
    max_name_length: int
    max_batch_size: int
    max_message_size: int
    shm_min_size: int
    max_subscribers: int
    subscriber_buffer: int
    max_streams: int
    max_response_size: int
    max_chunk_size: int
    def __init__(self, max_object_size: _Optional[int] = ..., inline_limit: _Optional[int] = ..., max_name_length: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_message_size: _Optional[int] = ..., shm_min_size: _Optional[int] = ..., max_subscribers: _Optional[int] = ..., subscriber_buffer: _Optional[int] = ..., max_streams: _Optional[int] = ..., max_response_size: _Optional[int] = ..., max_chunk_size: _Optional[int] = ...) -> None: ...

class ArenaUsage(_message.Message):
    __slots__ = ("capacity", "used", "pinned", "evictions", "segments", "sessions", "resident_objects")
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    capacity: int
    used: int
    pinned: int
    evictions: int
    segments: int
    sessions: int
    resident_objects: int
    def __init__(self, capacity: _Optional[int] = ..., used: _Optional[int] = ..., pinned: _Optional[int] = ..., evictions: _Optional[int] = ..., segments: _Optional[int] = ..., sessions: _Optional[int] = ..., resident_objects: _Optional[int] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("store_id", "version", "durability", "limits", "object_count", "total_bytes", "last_sequence", "oldest_sequence", "committed_sequence", "start_time", "subscriber_count", "arena", "locality_token_name", "locality_token", "stats", "lane_socket", "object_index", "replication")
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    OLDEST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBER_COUNT_FIELD_NUMBER: _ClassVar[int]
    ARENA_FIELD_NUMBER: _ClassVar[int]
    LOCALITY_TOKEN_NAME_FIELD_NUMBER: _ClassVar[int]
    LOCALITY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    LANE_SOCKET_FIELD_NUMBER: _ClassVar[int]
    OBJECT_INDEX_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FIELD_NUMBER: _ClassVar[int]
    store_id: str
    version: str
    durability: Durability
    limits: Limits
    object_count: int
    total_bytes: int
    last_sequence: int
    oldest_sequence: int
    committed_sequence: int
    start_time: _timestamp_pb2.Timestamp
    subscriber_count: int
    arena: ArenaUsage
    locality_token_name: str
    locality_token: bytes
    stats: ServerStats
    lane_socket: str
    object_index: ObjectIndex
    replication: Replication
    def __init__(self, store_id: _Optional[str] = ..., version: _Optional[str] = ..., durability: _Optional[_Union[Durability, str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., object_count: _Optional[int] = ..., total_bytes: _Optional[int] = ..., last_sequence: _Optional[int] = ..., oldest_sequence: _Optional[int] = ..., committed_sequence: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., subscriber_count: _Optional[int] = ..., arena: _Optional[_Union[ArenaUsage, _Mapping]] = ..., locality_token_name: _Optional[str] = ..., locality_token: _Optional[bytes] = ..., stats: _Optional[_Union[ServerStats, _Mapping]] = ..., lane_socket: _Optional[str] = ..., object_index: _Optional[_Union[ObjectIndex, _Mapping]] = ..., replication: _Optional[_Union[Replication, _Mapping]] = ...) -> None: ...

class Replication(_message.Message):
    __slots__ = ("role", "primary", "state", "applied_sequence", "primary_sequence", "lag_events", "lag_seconds", "resyncs", "last_error", "promoted_from", "promoted_at_sequence")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAG_EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESYNCS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FROM_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_AT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    role: Role
    primary: str
    state: ReplicationState
    applied_sequence: int
    primary_sequence: int
    lag_events: int
    lag_seconds: float
    resyncs: int
    last_error: str
    promoted_from: str
    promoted_at_sequence: int
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., primary: _Optional[str] = ..., state: _Optional[_Union[ReplicationState, str]] = ..., applied_sequence: _Optional[int] = ..., primary_sequence: _Optional[int] = ..., lag_events: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., resyncs: _Optional[int] = ..., last_error: _Optional[str] = ..., promoted_from: _Optional[str] = ..., promoted_at_sequence: _Optional[int] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PromoteResponse(_message.Message):
    __slots__ = ("store_id", "last_sequence")
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    store_id: str
    last_sequence: int
    def __init__(self, store_id: _Optional[str] = ..., last_sequence: _Optional[int] = ...) -> None: ...

class ObjectIndex(_message.Message):
    __slots__ = ("name", "slots", "slot_size", "max_probe", "segment_prefix", "max_payload", "views")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    SLOT_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_PROBE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    slots: int
    slot_size: int
    max_probe: int
    segment_prefix: str
    max_payload: int
    views: bool
    def __init__(self, name: _Optional[str] = ..., slots: _Optional[int] = ..., slot_size: _Optional[int] = ..., max_probe: _Optional[int] = ..., segment_prefix: _Optional[str] = ..., max_payload: _Optional[int] = ..., views: _Optional[bool] = ...) -> None: ...

class ServerStats(_message.Message):
    __slots__ = ("requests", "failed_requests", "commits", "commit_seconds", "committed_changes", "subscriber_lag", "open_streams")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_CHANGES_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBER_LAG_FIELD_NUMBER: _ClassVar[int]
    OPEN_STREAMS_FIELD_NUMBER: _ClassVar[int]
    requests: int
    failed_requests: int
    commits: int
    commit_seconds: float
    committed_changes: int
    subscriber_lag: int
    open_streams: int
    def __init__(self, requests: _Optional[int] = ..., failed_requests: _Optional[int] = ..., commits: _Optional[int] = ..., commit_seconds: _Optional[float] = ..., committed_changes: _Optional[int] = ..., subscriber_lag: _Optional[int] = ..., open_streams: _Optional[int] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("prefix", "since_sequence", "transfer", "session_id", "store_id", "from_oldest", "batch_size", "payload_limit")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SINCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_OLDEST_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_LIMIT_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    since_sequence: int
    transfer: Transfer
    session_id: str
    store_id: str
    from_oldest: bool
    batch_size: int
    payload_limit: int
    def __init__(self, prefix: _Optional[str] = ..., since_sequence: _Optional[int] = ..., transfer: _Optional[_Union[Transfer, str]] = ..., session_id: _Optional[str] = ..., store_id: _Optional[str] = ..., from_oldest: _Optional[bool] = ..., batch_size: _Optional[int] = ..., payload_limit: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("sequence", "type", "meta", "replaced_ids", "time")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    REPLACED_IDS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    type: EventType
    meta: ObjectMeta
    replaced_ids: _containers.RepeatedScalarFieldContainer[bytes]
    time: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., type: _Optional[_Union[EventType, str]] = ..., meta: _Optional[_Union[ObjectMeta, _Mapping]] = ..., replaced_ids: _Optional[_Iterable[bytes]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("event", "handle", "events", "payloads")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    event: Event
    handle: ShmHandle
    events: _containers.RepeatedCompositeFieldContainer[Event]
    payloads: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ..., handle: _Optional[_Union[ShmHandle, _Mapping]] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., payloads: _Optional[_Iterable[bytes]] = ...) -> None: ...
