from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PageImage(_message.Message):
    __slots__ = ("rel", "blkno", "page")
    REL_FIELD_NUMBER: _ClassVar[int]
    BLKNO_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    rel: int
    blkno: int
    page: bytes
    def __init__(self, rel: _Optional[int] = ..., blkno: _Optional[int] = ..., page: _Optional[bytes] = ...) -> None: ...

class Splice(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PagePatch(_message.Message):
    __slots__ = ("rel", "blkno", "splices")
    REL_FIELD_NUMBER: _ClassVar[int]
    BLKNO_FIELD_NUMBER: _ClassVar[int]
    SPLICES_FIELD_NUMBER: _ClassVar[int]
    rel: int
    blkno: int
    splices: _containers.RepeatedCompositeFieldContainer[Splice]
    def __init__(self, rel: _Optional[int] = ..., blkno: _Optional[int] = ..., splices: _Optional[_Iterable[_Union[Splice, _Mapping]]] = ...) -> None: ...

class RelSize(_message.Message):
    __slots__ = ("rel", "nblocks")
    REL_FIELD_NUMBER: _ClassVar[int]
    NBLOCKS_FIELD_NUMBER: _ClassVar[int]
    rel: int
    nblocks: int
    def __init__(self, rel: _Optional[int] = ..., nblocks: _Optional[int] = ...) -> None: ...

class RelDrop(_message.Message):
    __slots__ = ("rel",)
    REL_FIELD_NUMBER: _ClassVar[int]
    rel: int
    def __init__(self, rel: _Optional[int] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("image", "patch", "rel_size", "rel_drop")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    REL_SIZE_FIELD_NUMBER: _ClassVar[int]
    REL_DROP_FIELD_NUMBER: _ClassVar[int]
    image: PageImage
    patch: PagePatch
    rel_size: RelSize
    rel_drop: RelDrop
    def __init__(self, image: _Optional[_Union[PageImage, _Mapping]] = ..., patch: _Optional[_Union[PagePatch, _Mapping]] = ..., rel_size: _Optional[_Union[RelSize, _Mapping]] = ..., rel_drop: _Optional[_Union[RelDrop, _Mapping]] = ...) -> None: ...

class TimelineRef(_message.Message):
    __slots__ = ("tenant_id", "timeline_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    timeline_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., timeline_id: _Optional[str] = ...) -> None: ...

class SequencedRecord(_message.Message):
    __slots__ = ("lsn", "record", "commit_time_us", "term", "end_of_batch")
    LSN_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIME_US_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    END_OF_BATCH_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    record: Record
    commit_time_us: int
    term: int
    end_of_batch: bool
    def __init__(self, lsn: _Optional[int] = ..., record: _Optional[_Union[Record, _Mapping]] = ..., commit_time_us: _Optional[int] = ..., term: _Optional[int] = ..., end_of_batch: _Optional[bool] = ...) -> None: ...
