"""A timeline's manifest: `index_part.json` (local, and the remote truth later).

It lists the layer files that make up the timeline and its metadata. Written
only after every layer it names is durably written (locally: fsync'd; remotely:
uploaded), so any index that can be read names only whole layers. Files in the
timeline directory that the index does not name are leftovers of a crash
(a layer written but not yet indexed, or replaced by compaction) and are
deleted on load.

Format: a JSON object with `format_version` (FORMAT_VERSION = 1) and a
`checksum` (strata/checksummed_json.py) over the IndexPart fields below; a bad
checksum, another version, a field this build does not know, a missing
required field or a malformed one is CorruptionError with a message naming the
file (decode never drops what it does not understand).
`LayerEntry.remote_checksum` is optional (absent reads as None), so adding it
kept version 1 readable both ways. `commit_times`, `relations` and `truncations`
are stored as arrays of arrays (`[[lsn, time_us], ...]`, `[[rel, exists,
nblocks], ...]`, `[[rel, lsn, nblocks], ...]`) and read into the frozen
dataclasses `CommitTime`, `RelationEntry` and `Truncation`.
`commits` (every commit point at or below disk_consistent_lsn, pageserver/commit_log.py)
is optional: stored as `[[end_lsn, start_lsn, time_us, records, bytes], ...]`,
absent in indexes written before commit points existed (read as None: such a
timeline falls back to its commit-time samples, see commit_log.legacy_commits), so
version 1 stays readable both ways. `name` (the database name, strata/ids.py
`database_name`; "" for an unnamed timeline) is optional too (absent reads as ""), so version 1 indexes written before names
read as unnamed timelines; a name that is not a database name is CorruptionError.

Remote copy (docs/design/0003-remote-storage.md): the upload queue
(remote_timeline.py) uploads the same IndexPart, with `remote_checksum` filled
in for every layer, after every layer it names is uploaded, as the per-
generation object `tenants/<t>/timelines/<tl>/index_part.json-<generation:08x>`;
readers take the highest generation's index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pageserver.commit_log import CommitPoint
from strata import checksummed_json
from strata.durable_file import write_durably
from strata.errors import CorruptionError, InvalidArgument
from strata.ids import MAX_U64, Lsn, TenantId, TimelineId, database_name

FORMAT_VERSION = 1
FILE_NAME = "index_part.json"
# Read back as the uint64s they are on the wire (TimelineInfo): out of range is CorruptionError.
U64_FIELDS = ("ancestor_lsn", "disk_consistent_lsn", "gc_cutoff_lsn", "created_at_us", "expires_at_us", "generation")


@dataclass(frozen=True)
class LayerEntry:
    file_name: str
    file_size: int
    # The layer's own file checksum (its trailer; block_file.file_checksum_of).
    file_checksum: int
    # The xxhash64 of the whole file as remote storage computed it on upload
    # (RemoteObject.checksum): what a download is verified against. None until
    # uploaded (and in indexes written before remote storage: still version 1).
    remote_checksum: int | None = None


@dataclass(frozen=True)
class CommitTime:
    """A commit-time sample: the batch ending at `lsn` committed at `time_us`."""

    lsn: Lsn
    time_us: int


@dataclass(frozen=True)
class RelationEntry:
    """One relation of the relation directory: whether it exists, and its size."""

    rel: int
    exists: bool
    nblocks: int


@dataclass(frozen=True)
class Truncation:
    """A RelSize that shrank relation `rel` at `lsn` to `nblocks` (0: a drop):
    reconstruction drops a block's values older than a truncation that cut it."""

    rel: int
    lsn: Lsn
    nblocks: int


@dataclass(frozen=True)
class IndexPart:
    tenant_id: TenantId
    timeline_id: TimelineId
    ancestor_timeline_id: str  # "" for a root timeline
    ancestor_lsn: Lsn
    # Records with LSN <= disk_consistent_lsn are all in the listed layers.
    disk_consistent_lsn: Lsn
    layers: tuple[LayerEntry, ...] = ()
    gc_cutoff_lsn: Lsn = Lsn(0)
    created_at_us: int = 0
    expires_at_us: int = 0
    generation: int = 0
    # Commit time samples, ascending, for GetLsnByTimestamp.
    commit_times: tuple[CommitTime, ...] = ()
    # The relation directory at disk_consistent_lsn: every relation this
    # timeline (or its ancestor up to the branch point) ever had, ascending, so
    # sizes and listings never scan layer files.
    relations: tuple[RelationEntry, ...] = ()
    # Every truncation and drop of this timeline up to disk_consistent_lsn.
    truncations: tuple[Truncation, ...] = ()
    # The database name, unique within the tenant ("" = unnamed).
    name: str = ""
    # Every commit point at or below disk_consistent_lsn (above the GC cutoff but
    # the newest at or below it), ascending; None: an index from before they were kept.
    commits: tuple[CommitPoint, ...] | None = None
    format_version: int = FORMAT_VERSION

    def with_layers(self, layers: list[LayerEntry], disk_consistent_lsn: Lsn) -> IndexPart:
        return replace(self, layers=tuple(layers), disk_consistent_lsn=disk_consistent_lsn)

    def encode(self) -> bytes:
        body = asdict(self)
        del body["format_version"]
        body["commit_times"] = [[c.lsn, c.time_us] for c in self.commit_times]
        body["relations"] = [[r.rel, r.exists, r.nblocks] for r in self.relations]
        body["truncations"] = [[t.rel, t.lsn, t.nblocks] for t in self.truncations]
        if not self.name:
            del body["name"]  # an unnamed timeline's index reads the same in builds from before names
        if self.commits is None:
            del body["commits"]
        else:
            body["commits"] = [[c.end_lsn, c.start_lsn, c.time_us, c.records, c.bytes] for c in self.commits]
        return checksummed_json.encode(body, FORMAT_VERSION)

    @classmethod
    def decode(cls, data: bytes, where: str = FILE_NAME) -> IndexPart:
        """The index in `data`. CorruptionError (naming `where`) for a bad checksum,
        another format_version, an unknown or missing field, or a field of the
        wrong shape: never silently ignored."""
        body = checksummed_json.decode(data, where, FORMAT_VERSION)
        fields = set(cls.__dataclass_fields__) - {"format_version"}
        required = {"tenant_id", "timeline_id", "ancestor_timeline_id", "ancestor_lsn", "disk_consistent_lsn", "layers"}
        checksummed_json.check_fields(body, fields, where, required)
        checksummed_json.check_ints(body, where, {name: (0, MAX_U64) for name in U64_FIELDS})
        entry_fields = set(LayerEntry.__dataclass_fields__)
        try:
            layers = []
            for i, entry in enumerate(body["layers"]):
                if not isinstance(entry, dict):
                    raise CorruptionError(f"{where}: layers[{i}] is not an object")
                checksummed_json.check_fields(
                    entry, entry_fields, f"{where} layers[{i}]", {"file_name", "file_size", "file_checksum"}
                )
                layers.append(LayerEntry(**entry))
            body["layers"] = tuple(layers)
            body["commit_times"] = tuple(CommitTime(Lsn(int(l)), int(t)) for l, t in body.get("commit_times", ()))
            body["relations"] = tuple(RelationEntry(int(r), bool(e), int(n)) for r, e, n in body.get("relations", ()))
            body["truncations"] = tuple(Truncation(int(r), Lsn(int(l)), int(n)) for r, l, n in body.get("truncations", ()))
            if "commits" in body:
                body["commits"] = tuple(
                    CommitPoint(Lsn(int(e)), Lsn(int(s)), int(t), int(r), int(b)) for e, s, t, r, b in body["commits"]
                )
        except (TypeError, ValueError) as exc:
            raise CorruptionError(f"{where}: a field has the wrong shape: {exc}") from exc
        name = body.get("name", "")
        if name != "":
            try:
                database_name(name)
            except InvalidArgument as exc:
                raise CorruptionError(f"{where}: {exc}") from None
        return cls(**body)


def write_index_part(timeline_dir: Path, index: IndexPart) -> None:
    write_durably(timeline_dir / FILE_NAME, index.encode())


def read_index_part(timeline_dir: Path) -> IndexPart:
    path = timeline_dir / FILE_NAME
    return IndexPart.decode(path.read_bytes(), where=str(path))
