"""The bucket layout: every key in remote storage, who writes it, who reads it.

Every key is built and parsed here; nothing else spells a path. One tenant's
objects sit under `tenants/<tenant_id>/`::

    | key (below tenants/<t>/)                             | object                                   | format                                  | written by                         | read by                                   |
    | ---------------------------------------------------- | ---------------------------------------- | --------------------------------------- | ---------------------------------- | ----------------------------------------- |
    | tenant.json                                          | TenantConfig (create-only)               | strata/checksummed_json.py              | pageserver (CreateTenant)          | pageserver (attach)                       |
    | generations/<N:08x>                                  | one claimed generation (create-only)     | pageserver/generation.py                | pageserver (start, attach)         | pageserver (fencing)                      |
    | timelines/<tl>/index_part.json-<G:08x>               | IndexPart of generation G (overwritten   | pageserver/index_part.py                | pageserver (remote_timeline.py)    | pageserver, gpu/ (snapshot_reader)        |
    |                                                      | by generation G's pageserver only)       |                                         |                                    |                                           |
    | timelines/<tl>/<layer file name>                     | delta or image layer (create-only; the   | pageserver/layers/                      | pageserver (remote_timeline.py)    | pageserver, gpu/ (snapshot_reader)        |
    |                                                      | name carries the writer's generation)    |                                         |                                    |                                           |
    | timelines/<tl>/deleted                               | DeletionMark: the timeline is being      | strata/checksummed_json.py              | pageserver (timeline_deletion.py)  | pageserver (restart, attach)              |
    |                                                      | deleted                                  |                                         |                                    |                                           |
    | timelines/<tl>/wal/<start_lsn:016x>.wal              | a sealed WAL segment                     | walservice/segment.py                   | walservice (offload.py)            | walservice (recovery of evicted WAL)      |
    | timelines/<tl>/wal/<start_lsn:016x>.wal.partial      | the open segment's committed prefix      | walservice/segment.py                   | walservice (offload.py)            | walservice                                |
    |                                                      | (overwritten as it grows)                |                                         |                                    |                                           |
    | timelines/<tl>/vector_indexes/<name>/<lsn:016X>.ivf  | an IVF index of collection <name> built  | the IVF index format                    | gpu/ (index builds)                | compute_shim/vectors.py, pageserver (GC)  |
    |                                                      | at snapshot LSN <lsn> (create-only)      |                                         |                                    |                                           |

Three folders sit directly under a timeline: its layers, indexes and mark as
plain objects, `wal/` and `vector_indexes/` as sub-prefixes, so a listing with
the delimiter (`RemoteStorage.list_delimited`) of `timelines/` finds a
tenant's timelines, and one of a timeline's prefix finds its indexes and
layers, without walking its WAL segments or vector indexes.

# Keys

Keys are relative '/'-separated paths. Every segment is non-empty and does not
start with '.', so a key is never absolute, never holds '.', '..' or '//', and
never collides with the file:// backend's own hidden files (`check_key`).
The object for key K is `PREFIX/K` in the bucket, or the file `DIR/K`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from strata.ids import Lsn, TenantId, TimelineId

TENANT_CONFIG = "tenant.json"
INDEX_PART = "index_part.json"
INDEX_PREFIX = INDEX_PART + "-"
DELETION_MARK = "deleted"
WAL_DIR = "wal"
WAL_SUFFIX = ".wal"
PARTIAL_SUFFIX = ".partial"
VECTOR_INDEX_DIR = "vector_indexes"
VECTOR_INDEX_SUFFIX = ".ivf"

_GENERATION_RE = re.compile(r"[0-9a-f]{8}")
_INDEX_NAME_RE = re.compile(re.escape(INDEX_PREFIX) + r"([0-9a-f]{8})")
_WAL_NAME_RE = re.compile(r"([0-9a-f]{16})" + re.escape(WAL_SUFFIX) + "(" + re.escape(PARTIAL_SUFFIX) + ")?")
_VECTOR_INDEX_NAME_RE = re.compile(r"([0-9A-F]{16})" + re.escape(VECTOR_INDEX_SUFFIX))


def check_key(key: str, what: str = "key") -> str:
    """`key` if it is a valid remote storage key; ValueError saying why otherwise."""
    example = "expected a relative '/'-separated path like tenants/<t>/timelines/<tl>/index_part.json"
    if not isinstance(key, str) or not key:
        raise ValueError(f"{what}={key!r} is invalid: it is empty; {example}")
    if key.startswith("/"):
        raise ValueError(f"{what}={key!r} is invalid: it is absolute; {example}")
    if "\0" in key:
        raise ValueError(f"{what}={key!r} is invalid: it contains a NUL character")
    for segment in key.split("/"):
        if segment == "":
            raise ValueError(f"{what}={key!r} is invalid: it has an empty segment ('//' or a trailing '/'); {example}")
        if segment in (".", ".."):
            raise ValueError(f"{what}={key!r} is invalid: it contains {segment!r}; {example}")
        if segment.startswith("."):
            raise ValueError(
                f"{what}={key!r} is invalid: segment {segment!r} starts with '.', which is reserved "
                f"for the file:// backend's temp and checksum files"
            )
    return key


def check_prefix(prefix: str) -> str:
    """`prefix` if it can start keys ('' lists everything); ValueError otherwise.
    Like S3, a prefix matches keys as strings: 'tenants/ab' matches 'tenants/abc/x'."""
    if prefix == "":
        return prefix
    try:
        # A prefix is valid when some valid key starts with it.
        check_key(prefix + "x" if isinstance(prefix, str) and prefix.endswith("/") else prefix)
    except ValueError as exc:
        reason = str(exc).partition(" is invalid: ")[2]
        raise ValueError(f"prefix={prefix!r} is invalid: no valid key starts with it ({reason})") from None
    return prefix


# -- tenants ---------------------------------------------------------------------------


def tenant_prefix(tenant: TenantId) -> str:
    """The prefix that holds all of a tenant's objects (ends with '/')."""
    return check_key(f"tenants/{tenant}") + "/"


def tenant_config_key(tenant: TenantId) -> str:
    return tenant_prefix(tenant) + TENANT_CONFIG


def generations_prefix(tenant: TenantId) -> str:
    return tenant_prefix(tenant) + "generations/"


def generation_key(tenant: TenantId, generation: int) -> str:
    return generations_prefix(tenant) + f"{generation:08x}"


def parse_generation_name(name: str) -> int | None:
    """The generation a `generations/` object's name claims; None if the name is not one."""
    return int(name, 16) if _GENERATION_RE.fullmatch(name) else None


# -- timelines -------------------------------------------------------------------------


def timelines_prefix(tenant: TenantId) -> str:
    """The prefix below which each timeline of the tenant has a folder (ends with '/')."""
    return tenant_prefix(tenant) + "timelines/"


def timeline_prefix(tenant: TenantId, timeline: TimelineId) -> str:
    """The prefix that holds all of a timeline's objects (ends with '/')."""
    return check_key(f"{timelines_prefix(tenant)}{timeline}") + "/"


def timeline_key(tenant: TenantId, timeline: TimelineId, file_name: str) -> str:
    """The key of one of a timeline's plain objects: an index, a layer file, the deletion mark."""
    return check_key(timeline_prefix(tenant, timeline) + file_name)


def timeline_of_prefix(tenant: TenantId, prefix: str) -> TimelineId | None:
    """The timeline whose folder `prefix` (a `list_delimited` prefix under
    `timelines_prefix`) is; None if it is not one."""
    parent = timelines_prefix(tenant)
    if not prefix.startswith(parent) or not prefix.endswith("/"):
        return None
    name = prefix[len(parent) : -1]
    return TimelineId(name) if name and "/" not in name else None


def index_key(tenant: TenantId, timeline: TimelineId, generation: int) -> str:
    """The key of generation `generation`'s index of the timeline."""
    return timeline_key(tenant, timeline, f"{INDEX_PREFIX}{generation:08x}")


def index_generation(file_name: str) -> int | None:
    """The generation of an index object's file name; None if the name is not an index's."""
    m = _INDEX_NAME_RE.fullmatch(file_name)
    return int(m.group(1), 16) if m else None


def deletion_mark_key(tenant: TenantId, timeline: TimelineId) -> str:
    return timeline_key(tenant, timeline, DELETION_MARK)


# -- the walservice's offloaded WAL -------------------------------------------------------


def wal_prefix(tenant: TenantId, timeline: TimelineId) -> str:
    """The prefix of a timeline's offloaded WAL (ends with '/')."""
    return timeline_prefix(tenant, timeline) + WAL_DIR + "/"


def wal_segment_key(tenant: TenantId, timeline: TimelineId, start_lsn: Lsn, *, partial: bool = False) -> str:
    """The key of the segment starting at `start_lsn`: sealed (`.wal`), or the
    open segment's committed prefix (`.wal.partial`)."""
    return wal_prefix(tenant, timeline) + f"{start_lsn:016x}{WAL_SUFFIX}" + (PARTIAL_SUFFIX if partial else "")


@dataclass(frozen=True)
class WalObjectName:
    """What an offloaded WAL object's name says."""

    start_lsn: Lsn
    partial: bool


def parse_wal_name(name: str) -> WalObjectName | None:
    """The segment a `wal/` object's name is; None if it is not one."""
    m = _WAL_NAME_RE.fullmatch(name)
    return WalObjectName(Lsn(int(m.group(1), 16)), m.group(2) is not None) if m else None


# -- vector indexes --------------------------------------------------------------------


def vector_indexes_prefix(tenant: TenantId, timeline: TimelineId) -> str:
    """The prefix of every vector index of the timeline (ends with '/')."""
    return timeline_prefix(tenant, timeline) + VECTOR_INDEX_DIR + "/"


def vector_index_prefix(tenant: TenantId, timeline: TimelineId, collection: str) -> str:
    """The prefix of one collection's indexes (ends with '/')."""
    return check_key(vector_indexes_prefix(tenant, timeline) + collection) + "/"


def vector_index_key(tenant: TenantId, timeline: TimelineId, collection: str, lsn: Lsn) -> str:
    """The key of the collection's index built at snapshot LSN `lsn`."""
    return vector_index_prefix(tenant, timeline, collection) + f"{lsn:016X}{VECTOR_INDEX_SUFFIX}"


def parse_vector_index_name(name: str) -> Lsn | None:
    """The snapshot LSN of an index object's name (below its collection's prefix); None if not one."""
    m = _VECTOR_INDEX_NAME_RE.fullmatch(name)
    return Lsn(int(m.group(1), 16)) if m else None


@dataclass(frozen=True)
class VectorIndexKey:
    """What a key below `vector_indexes_prefix` says."""

    collection: str
    lsn: Lsn


def parse_vector_index_key(prefix: str, key: str) -> VectorIndexKey | None:
    """The collection and LSN of `key` below a timeline's `vector_indexes_prefix`
    `prefix`; None if the key is not `<collection>/<16 hex>.ivf` there."""
    if not key.startswith(prefix):
        return None
    collection, slash, name = key[len(prefix) :].partition("/")
    lsn = parse_vector_index_name(name) if slash and collection else None
    return VectorIndexKey(collection, lsn) if lsn is not None else None
