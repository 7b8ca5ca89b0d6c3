from strata.v1 import records_pb2 as _records_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateTenantRequest(_message.Message):
    __slots__ = ("tenant_id", "page_size", "pitr_seconds")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PITR_SECONDS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    page_size: int
    pitr_seconds: int
    def __init__(self, tenant_id: _Optional[str] = ..., page_size: _Optional[int] = ..., pitr_seconds: _Optional[int] = ...) -> None: ...

class TenantInfo(_message.Message):
    __slots__ = ("tenant_id", "page_size", "pitr_seconds", "timeline_count", "generation", "state", "remote_storage")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PITR_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_COUNT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_STORAGE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    page_size: int
    pitr_seconds: int
    timeline_count: int
    generation: int
    state: str
    remote_storage: str
    def __init__(self, tenant_id: _Optional[str] = ..., page_size: _Optional[int] = ..., pitr_seconds: _Optional[int] = ..., timeline_count: _Optional[int] = ..., generation: _Optional[int] = ..., state: _Optional[str] = ..., remote_storage: _Optional[str] = ...) -> None: ...

class TenantRef(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[TenantInfo]
    def __init__(self, tenants: _Optional[_Iterable[_Union[TenantInfo, _Mapping]]] = ...) -> None: ...

class CreateTimelineRequest(_message.Message):
    __slots__ = ("tenant_id", "timeline_id", "ancestor_timeline_id", "ancestor_lsn", "ttl_seconds", "name")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    ANCESTOR_TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    ANCESTOR_LSN_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    ancestor_timeline_id: str
    ancestor_lsn: int
    ttl_seconds: int
    name: str
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ..., ancestor_timeline_id: _Optional[str] = ..., ancestor_lsn: _Optional[int] = ..., ttl_seconds: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class TimelineInfo(_message.Message):
    __slots__ = ("tenant_id", "timeline_id", "ancestor_timeline_id", "ancestor_lsn", "last_record_lsn", "disk_consistent_lsn", "remote_consistent_lsn", "gc_cutoff_lsn", "logical_size", "physical_size", "expires_at_us", "state", "name")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    ANCESTOR_TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    ANCESTOR_LSN_FIELD_NUMBER: _ClassVar[int]
    LAST_RECORD_LSN_FIELD_NUMBER: _ClassVar[int]
    DISK_CONSISTENT_LSN_FIELD_NUMBER: _ClassVar[int]
    REMOTE_CONSISTENT_LSN_FIELD_NUMBER: _ClassVar[int]
    GC_CUTOFF_LSN_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_US_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    ancestor_timeline_id: str
    ancestor_lsn: int
    last_record_lsn: int
    disk_consistent_lsn: int
    remote_consistent_lsn: int
    gc_cutoff_lsn: int
    logical_size: int
    physical_size: int
    expires_at_us: int
    state: str
    name: str
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ..., ancestor_timeline_id: _Optional[str] = ..., ancestor_lsn: _Optional[int] = ..., last_record_lsn: _Optional[int] = ..., disk_consistent_lsn: _Optional[int] = ..., remote_consistent_lsn: _Optional[int] = ..., gc_cutoff_lsn: _Optional[int] = ..., logical_size: _Optional[int] = ..., physical_size: _Optional[int] = ..., expires_at_us: _Optional[int] = ..., state: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class TimelineNameRef(_message.Message):
    __slots__ = ("tenant_id", "name")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListTimelinesResponse(_message.Message):
    __slots__ = ("timelines",)
    TIMELINES_FIELD_NUMBER: _ClassVar[int]
    timelines: _containers.RepeatedCompositeFieldContainer[TimelineInfo]
    def __init__(self, timelines: _Optional[_Iterable[_Union[TimelineInfo, _Mapping]]] = ...) -> None: ...

class LsnByTimestampRequest(_message.Message):
    __slots__ = ("tenant_id", "timeline_id", "timestamp_us")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_US_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    timestamp_us: int
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ..., timestamp_us: _Optional[int] = ...) -> None: ...

class LsnByTimestampResponse(_message.Message):
    __slots__ = ("lsn", "kind")
    LSN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    kind: str
    def __init__(self, lsn: _Optional[int] = ..., kind: _Optional[str] = ...) -> None: ...

class ListCommitsRequest(_message.Message):
    __slots__ = ("tenant_id", "timeline_id", "start_lsn", "end_lsn", "limit", "newest_first", "include_ancestors")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    START_LSN_FIELD_NUMBER: _ClassVar[int]
    END_LSN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ANCESTORS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    start_lsn: int
    end_lsn: int
    limit: int
    newest_first: bool
    include_ancestors: bool
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ..., start_lsn: _Optional[int] = ..., end_lsn: _Optional[int] = ..., limit: _Optional[int] = ..., newest_first: _Optional[bool] = ..., include_ancestors: _Optional[bool] = ...) -> None: ...

class Commit(_message.Message):
    __slots__ = ("end_lsn", "start_lsn", "commit_time_us", "records", "bytes", "timeline_id")
    END_LSN_FIELD_NUMBER: _ClassVar[int]
    START_LSN_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    end_lsn: int
    start_lsn: int
    commit_time_us: int
    records: int
    bytes: int
    timeline_id: str
    def __init__(self, end_lsn: _Optional[int] = ..., start_lsn: _Optional[int] = ..., commit_time_us: _Optional[int] = ..., records: _Optional[int] = ..., bytes: _Optional[int] = ..., timeline_id: _Optional[str] = ...) -> None: ...

class ListCommitsResponse(_message.Message):
    __slots__ = ("commits", "gc_cutoff_lsn")
    COMMITS_FIELD_NUMBER: _ClassVar[int]
    GC_CUTOFF_LSN_FIELD_NUMBER: _ClassVar[int]
    commits: _containers.RepeatedCompositeFieldContainer[Commit]
    gc_cutoff_lsn: int
    def __init__(self, commits: _Optional[_Iterable[_Union[Commit, _Mapping]]] = ..., gc_cutoff_lsn: _Optional[int] = ...) -> None: ...
