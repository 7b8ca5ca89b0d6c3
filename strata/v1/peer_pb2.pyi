from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TermEntry(_message.Message):
    __slots__ = ("term", "start_lsn")
    TERM_FIELD_NUMBER: _ClassVar[int]
    START_LSN_FIELD_NUMBER: _ClassVar[int]
    term: int
    start_lsn: int
    def __init__(self, term: _Optional[int] = ..., start_lsn: _Optional[int] = ...) -> None: ...

class VoteRequest(_message.Message):
    __slots__ = ("tenant_id", "timeline_id", "term", "candidate_id", "last_log_term", "flush_lsn")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    FLUSH_LSN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    term: int
    candidate_id: int
    last_log_term: int
    flush_lsn: int
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ..., term: _Optional[int] = ..., candidate_id: _Optional[int] = ..., last_log_term: _Optional[int] = ..., flush_lsn: _Optional[int] = ...) -> None: ...

class VoteResponse(_message.Message):
    __slots__ = ("term", "granted", "flush_lsn", "last_log_term", "reason", "catching_up")
    TERM_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    FLUSH_LSN_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CATCHING_UP_FIELD_NUMBER: _ClassVar[int]
    term: int
    granted: bool
    flush_lsn: int
    last_log_term: int
    reason: str
    catching_up: bool
    def __init__(self, term: _Optional[int] = ..., granted: _Optional[bool] = ..., flush_lsn: _Optional[int] = ..., last_log_term: _Optional[int] = ..., reason: _Optional[str] = ..., catching_up: _Optional[bool] = ...) -> None: ...

class PeerStreamPortRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerStreamPortResponse(_message.Message):
    __slots__ = ("port", "version")
    PORT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    port: int
    version: int
    def __init__(self, port: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class PeerAppendRequest(_message.Message):
    __slots__ = ("tenant_id", "timeline_id", "term", "leader_id", "term_history", "start_lsn", "frames", "commit_lsn", "remote_consistent_lsn", "backup_lsn", "new_segment")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_HISTORY_FIELD_NUMBER: _ClassVar[int]
    START_LSN_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_LSN_FIELD_NUMBER: _ClassVar[int]
    REMOTE_CONSISTENT_LSN_FIELD_NUMBER: _ClassVar[int]
    BACKUP_LSN_FIELD_NUMBER: _ClassVar[int]
    NEW_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    term: int
    leader_id: int
    term_history: _containers.RepeatedCompositeFieldContainer[TermEntry]
    start_lsn: int
    frames: bytes
    commit_lsn: int
    remote_consistent_lsn: int
    backup_lsn: int
    new_segment: bool
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ..., term: _Optional[int] = ..., leader_id: _Optional[int] = ..., term_history: _Optional[_Iterable[_Union[TermEntry, _Mapping]]] = ..., start_lsn: _Optional[int] = ..., frames: _Optional[bytes] = ..., commit_lsn: _Optional[int] = ..., remote_consistent_lsn: _Optional[int] = ..., backup_lsn: _Optional[int] = ..., new_segment: _Optional[bool] = ...) -> None: ...

class PeerAppendResponse(_message.Message):
    __slots__ = ("term", "ok", "flush_lsn", "remote_consistent_lsn", "reason")
    TERM_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    FLUSH_LSN_FIELD_NUMBER: _ClassVar[int]
    REMOTE_CONSISTENT_LSN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    term: int
    ok: bool
    flush_lsn: int
    remote_consistent_lsn: int
    reason: str
    def __init__(self, term: _Optional[int] = ..., ok: _Optional[bool] = ..., flush_lsn: _Optional[int] = ..., remote_consistent_lsn: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class PeerTimeline(_message.Message):
    __slots__ = ("tenant_id", "timeline_id", "start_lsn", "page_size", "first_lsn", "term", "remote_consistent_lsn", "backup_lsn", "term_history")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    START_LSN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    FIRST_LSN_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    REMOTE_CONSISTENT_LSN_FIELD_NUMBER: _ClassVar[int]
    BACKUP_LSN_FIELD_NUMBER: _ClassVar[int]
    TERM_HISTORY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    start_lsn: int
    page_size: int
    first_lsn: int
    term: int
    remote_consistent_lsn: int
    backup_lsn: int
    term_history: _containers.RepeatedCompositeFieldContainer[TermEntry]
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ..., start_lsn: _Optional[int] = ..., page_size: _Optional[int] = ..., first_lsn: _Optional[int] = ..., term: _Optional[int] = ..., remote_consistent_lsn: _Optional[int] = ..., backup_lsn: _Optional[int] = ..., term_history: _Optional[_Iterable[_Union[TermEntry, _Mapping]]] = ...) -> None: ...

class PeerTimelineResponse(_message.Message):
    __slots__ = ("existed", "term", "flush_lsn")
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    FLUSH_LSN_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    term: int
    flush_lsn: int
    def __init__(self, existed: _Optional[bool] = ..., term: _Optional[int] = ..., flush_lsn: _Optional[int] = ...) -> None: ...

class PeerDeleteTimelineRequest(_message.Message):
    __slots__ = ("tenant_id", "timeline_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ...) -> None: ...

class PeerDeleteTimelineResponse(_message.Message):
    __slots__ = ("existed",)
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    existed: bool
    def __init__(self, existed: _Optional[bool] = ...) -> None: ...
