from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetPageRequest(_message.Message):
    __slots__ = ("tenant_id", "timeline_id", "rel", "blkno", "lsn")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    REL_FIELD_NUMBER: _ClassVar[int]
    BLKNO_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    rel: int
    blkno: int
    lsn: int
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ..., rel: _Optional[int] = ..., blkno: _Optional[int] = ..., lsn: _Optional[int] = ...) -> None: ...

class GetPageResponse(_message.Message):
    __slots__ = ("page", "lsn")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    page: bytes
    lsn: int
    def __init__(self, page: _Optional[bytes] = ..., lsn: _Optional[int] = ...) -> None: ...

class GetPagesRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[GetPageRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[GetPageRequest, _Mapping]]] = ...) -> None: ...

class PageResult(_message.Message):
    __slots__ = ("page", "lsn", "error_code", "error")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    page: bytes
    lsn: int
    error_code: int
    error: str
    def __init__(self, page: _Optional[bytes] = ..., lsn: _Optional[int] = ..., error_code: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class GetPagesResponse(_message.Message):
    __slots__ = ("responses", "more")
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[PageResult]
    more: bool
    def __init__(self, responses: _Optional[_Iterable[_Union[PageResult, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class RelRequest(_message.Message):
    __slots__ = ("tenant_id", "timeline_id", "rel", "lsn")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    REL_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    rel: int
    lsn: int
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ..., rel: _Optional[int] = ..., lsn: _Optional[int] = ...) -> None: ...

class RelSizeResponse(_message.Message):
    __slots__ = ("exists", "nblocks", "lsn")
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    NBLOCKS_FIELD_NUMBER: _ClassVar[int]
    LSN_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    nblocks: int
    lsn: int
    def __init__(self, exists: _Optional[bool] = ..., nblocks: _Optional[int] = ..., lsn: _Optional[int] = ...) -> None: ...
