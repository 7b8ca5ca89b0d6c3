from strata.v1 import records_pb2 as _records_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WalTimeline(_message.Message):
    __slots__ = ("tenant_id", "timeline_id", "start_lsn", "page_size")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    START_LSN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    start_lsn: int
    page_size: int
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ..., start_lsn: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("tenant_id", "timeline_id", "records", "expected_end_lsn")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_END_LSN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    records: _containers.RepeatedCompositeFieldContainer[_records_pb2.Record]
    expected_end_lsn: int
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ..., records: _Optional[_Iterable[_Union[_records_pb2.Record, _Mapping]]] = ..., expected_end_lsn: _Optional[int] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("start_lsn", "end_lsn", "record_lsns", "term")
    START_LSN_FIELD_NUMBER: _ClassVar[int]
    END_LSN_FIELD_NUMBER: _ClassVar[int]
    RECORD_LSNS_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    start_lsn: int
    end_lsn: int
    record_lsns: _containers.RepeatedScalarFieldContainer[int]
    term: int
    def __init__(self, start_lsn: _Optional[int] = ..., end_lsn: _Optional[int] = ..., record_lsns: _Optional[_Iterable[int]] = ..., term: _Optional[int] = ...) -> None: ...

class AppendStreamRequest(_message.Message):
    __slots__ = ("appends",)
    APPENDS_FIELD_NUMBER: _ClassVar[int]
    appends: _containers.RepeatedCompositeFieldContainer[AppendRequest]
    def __init__(self, appends: _Optional[_Iterable[_Union[AppendRequest, _Mapping]]] = ...) -> None: ...

class AppendOutcome(_message.Message):
    __slots__ = ("response", "error_code", "error", "leader", "not_leader")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    response: AppendResponse
    error_code: int
    error: str
    leader: str
    not_leader: bool
    def __init__(self, response: _Optional[_Union[AppendResponse, _Mapping]] = ..., error_code: _Optional[int] = ..., error: _Optional[str] = ..., leader: _Optional[str] = ..., not_leader: _Optional[bool] = ...) -> None: ...

class AppendStreamResponse(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[AppendOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[AppendOutcome, _Mapping]]] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("tenant_id", "timeline_id", "start_lsn")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    START_LSN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    start_lsn: int
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ..., start_lsn: _Optional[int] = ...) -> None: ...

class WalBatch(_message.Message):
    __slots__ = ("records", "commit_lsn")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_LSN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[_records_pb2.SequencedRecord]
    commit_lsn: int
    def __init__(self, records: _Optional[_Iterable[_Union[_records_pb2.SequencedRecord, _Mapping]]] = ..., commit_lsn: _Optional[int] = ...) -> None: ...

class PersistedRequest(_message.Message):
    __slots__ = ("tenant_id", "timeline_id", "remote_consistent_lsn")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    REMOTE_CONSISTENT_LSN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    remote_consistent_lsn: int
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ..., remote_consistent_lsn: _Optional[int] = ...) -> None: ...

class WalStatus(_message.Message):
    __slots__ = ("start_lsn", "flush_lsn", "commit_lsn", "backup_lsn", "remote_consistent_lsn", "term", "page_size", "tenant_id", "timeline_id", "leader_node_id")
    START_LSN_FIELD_NUMBER: _ClassVar[int]
    FLUSH_LSN_FIELD_NUMBER: _ClassVar[int]
    COMMIT_LSN_FIELD_NUMBER: _ClassVar[int]
    BACKUP_LSN_FIELD_NUMBER: _ClassVar[int]
    REMOTE_CONSISTENT_LSN_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    start_lsn: int
    flush_lsn: int
    commit_lsn: int
    backup_lsn: int
    remote_consistent_lsn: int
    term: int
    page_size: int
    tenant_id: str
    timeline_id: str
    leader_node_id: int
    def __init__(self, start_lsn: _Optional[int] = ..., flush_lsn: _Optional[int] = ..., commit_lsn: _Optional[int] = ..., backup_lsn: _Optional[int] = ..., remote_consistent_lsn: _Optional[int] = ..., term: _Optional[int] = ..., page_size: _Optional[int] = ..., tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ..., leader_node_id: _Optional[int] = ...) -> None: ...

class WalDeleteTimelineRequest(_message.Message):
    __slots__ = ("tenant_id", "timeline_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ...) -> None: ...

class WalDeleteTimelineResponse(_message.Message):
    __slots__ = ("existed", "nodes_deleted")
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    NODES_DELETED_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    nodes_deleted: int
    def __init__(self, existed: _Optional[bool] = ..., nodes_deleted: _Optional[int] = ...) -> None: ...
