"""A tenant on a real pageserver, mirrored by tests/model.py, and the checks
that compare the two.

`World` appends records through the walservice (recording each record's LSN
in the model), creates root timelines and branches, and `check` reads every
page of every relation at an LSN (GetPages, plus a few GetPage calls) and every
relation's size (GetRelSize) and compares them with the model: page bytes,
NOT_FOUND for a missing relation, OUT_OF_RANGE at the relation's end.

`RecordGen` draws random record batches from a `random.Random`, so one seed
gives one program; the hypothesis tests feed it seeds. `image`, `patch`,
`rel_size` and `rel_drop` build records for hand-written scenarios.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field

import grpc

from compute_shim.client import Client, PageError
from strata.v1 import records_pb2
from tests.model import ModelTimeline, RelModel

# Relation numbers: 0 and 0xFFFFFFFF are the ends of the key space.
RELS = (0, 1, 2, 0xFFFFFFFF)
MAX_BLOCKS = 16  # relation sizes stay small: a check reads every block
READ_TIMEOUT_S = 30.0
# Small layers so that freezes, L0 flushes, compaction and image layers happen.
SMALL_LAYERS = (
    "--checkpoint-bytes", "4096",
    "--compaction-threshold", "3",
    "--image-threshold", "2",
    "--l1-target-bytes", "8192",
)


def new_id() -> str:
    return secrets.token_hex(16)


# Record constructors for hand-written scenarios.


def image(rel: int, blkno: int, fill: int, page_size: int = 512) -> records_pb2.Record:
    return records_pb2.Record(image=records_pb2.PageImage(rel=rel, blkno=blkno, page=bytes([fill]) * page_size))


def patch(rel: int, blkno: int, offset: int, data: bytes) -> records_pb2.Record:
    return records_pb2.Record(
        patch=records_pb2.PagePatch(rel=rel, blkno=blkno, splices=[records_pb2.Splice(offset=offset, data=data)])
    )


def rel_size(rel: int, nblocks: int) -> records_pb2.Record:
    return records_pb2.Record(rel_size=records_pb2.RelSize(rel=rel, nblocks=nblocks))


def rel_drop(rel: int) -> records_pb2.Record:
    return records_pb2.Record(rel_drop=records_pb2.RelDrop(rel=rel))


class RecordGen:
    """Random record batches over RELS, aware of the relations' current sizes
    so that writes land inside, at and past the end."""

    def __init__(self, rng: random.Random, page_size: int) -> None:
        self.rng = rng
        self.page_size = page_size

    def record(self, sizes: dict[int, int]) -> records_pb2.Record:
        rng = self.rng
        rel = rng.choice(RELS)
        nblocks = sizes.get(rel, 0)
        kind = rng.choices(("image", "patch", "size", "drop"), weights=(4, 4, 2, 1))[0]
        blkno = rng.randrange(0, min(MAX_BLOCKS, nblocks + 3))
        if kind == "image":
            page = rng.randbytes(self.page_size) if rng.random() < 0.7 else bytes([rng.randrange(256)]) * self.page_size
            return records_pb2.Record(image=records_pb2.PageImage(rel=rel, blkno=blkno, page=page))
        if kind == "patch":
            splices = []
            for _ in range(rng.randint(1, 3)):
                length = rng.choice((0, 1, 7, 33))
                offset = rng.choice((0, self.page_size - length, rng.randrange(0, self.page_size - length + 1)))
                splices.append(records_pb2.Splice(offset=offset, data=rng.randbytes(length)))
            return records_pb2.Record(patch=records_pb2.PagePatch(rel=rel, blkno=blkno, splices=splices))
        if kind == "size":
            nblocks = rng.choice((0, rng.randrange(0, MAX_BLOCKS), max(0, nblocks - 1), min(MAX_BLOCKS, nblocks + 2)))
            return records_pb2.Record(rel_size=records_pb2.RelSize(rel=rel, nblocks=nblocks))
        return records_pb2.Record(rel_drop=records_pb2.RelDrop(rel=rel))

    def batch(self, sizes: dict[int, int], max_records: int = 6) -> list[records_pb2.Record]:
        """A batch; `sizes` is updated as the records would change it."""
        out = []
        for _ in range(self.rng.randint(1, max_records)):
            record = self.record(sizes)
            apply_size(sizes, record)
            out.append(record)
        return out


def apply_size(sizes: dict[int, int], record: records_pb2.Record) -> None:
    kind = record.WhichOneof("kind")
    if kind in ("image", "patch"):
        body = getattr(record, kind)
        sizes[body.rel] = max(sizes.get(body.rel, 0), body.blkno + 1)
    elif kind == "rel_size":
        sizes[record.rel_size.rel] = record.rel_size.nblocks
    else:
        sizes.pop(record.rel_drop.rel, None)


def _expected(state: dict[int, RelModel], rel: int, blkno: int, page_size: int) -> bytes | grpc.StatusCode:
    if rel not in state:
        return grpc.StatusCode.NOT_FOUND
    if blkno >= state[rel].nblocks:
        return grpc.StatusCode.OUT_OF_RANGE
    return bytes(state[rel].pages.get(blkno, bytes(page_size)))


def _describe(value: bytes | grpc.StatusCode | PageError) -> str:
    if isinstance(value, bytes):
        return f"page[{len(value)}] starting {value[:12].hex()}"
    if isinstance(value, PageError):
        return str(value)
    return value.name


@dataclass
class World:
    client: Client
    tenant_id: str
    page_size: int
    timelines: dict[str, ModelTimeline] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # timeline id -> "main", "main/b1", ...
    # timeline id -> the end LSNs of its own Appends (its commit points), ascending
    commit_ends: dict[str, list[int]] = field(default_factory=dict)
    parents: dict[str, str] = field(default_factory=dict)  # branch id -> its ancestor's id

    @classmethod
    def create(cls, client: Client, page_size: int) -> World:
        tenant_id = client.create_tenant(page_size=page_size).tenant_id
        return cls(client, tenant_id, page_size)

    # -- building -------------------------------------------------------------------

    def create_root(self, name: str = "main") -> str:
        timeline_id = new_id()
        self.client.create_timeline(tenant_id=self.tenant_id, timeline_id=timeline_id)
        self.timelines[timeline_id] = ModelTimeline(self.page_size)
        self.names[timeline_id] = name
        return timeline_id

    def commit_at_or_below(self, timeline_id: str, lsn: int) -> int | None:
        """The model's last commit at or below `lsn` (docs/design/0006-commit-points.md):
        the timeline's own, else its branch point, else its ancestor's; None: none."""
        while True:
            own = [end for end in self.commit_ends.get(timeline_id, []) if end <= lsn]
            if own:
                return own[-1]
            model = self.timelines[timeline_id]
            if timeline_id not in self.parents:
                return None
            if lsn >= model.ancestor_lsn:
                return model.ancestor_lsn
            timeline_id = self.parents[timeline_id]

    def branch(self, parent: str, lsn: int) -> str | None:
        """A branch of `parent` at `lsn` (0: the parent's latest, as the
        pageserver answers it), rounded down to the last commit at or below it;
        None (checked: FAILED_PRECONDITION) when there is none."""
        timeline_id = new_id()
        expected = self.commit_at_or_below(parent, lsn) if lsn else None
        if lsn and expected is None:
            try:
                self.client.create_timeline(
                    tenant_id=self.tenant_id, timeline_id=timeline_id, ancestor_timeline_id=parent, ancestor_lsn=lsn,
                    timeout=READ_TIMEOUT_S,
                )
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
                return None
            raise AssertionError(f"a branch at lsn={lsn}, before the first commit, was not refused")
        info = self.client.create_timeline(
            tenant_id=self.tenant_id, timeline_id=timeline_id, ancestor_timeline_id=parent, ancestor_lsn=lsn,
            timeout=READ_TIMEOUT_S,
        )
        assert info.ancestor_timeline_id == parent
        if lsn:
            assert info.ancestor_lsn == expected, f"asked for ancestor_lsn={lsn}, expected {expected}, got {info.ancestor_lsn}"
        else:
            parent_model = self.timelines[parent]
            assert parent_model.ancestor_lsn <= info.ancestor_lsn <= parent_model.last_lsn, info
        self.timelines[timeline_id] = ModelTimeline(self.page_size, self.timelines[parent], info.ancestor_lsn)
        self.parents[timeline_id] = parent
        self.names[timeline_id] = f"{self.names[parent]}/b{len(self.timelines)}"
        return timeline_id

    def append(self, timeline_id: str, records: list[records_pb2.Record]) -> int:
        """Append a batch; returns its end LSN."""
        resp = self.client.append(tenant_id=self.tenant_id, timeline_id=timeline_id, records=records)
        assert len(resp.record_lsns) == len(records), resp
        model = self.timelines[timeline_id]
        for lsn, record in zip(resp.record_lsns, records):
            model.add(lsn, record)
        assert resp.end_lsn == resp.record_lsns[-1]
        self.commit_ends.setdefault(timeline_id, []).append(resp.end_lsn)
        return resp.end_lsn

    def append_random(self, timeline_id: str, gen: RecordGen, batches: int, max_records: int = 6) -> int:
        """Append `batches` random batches; returns the last LSN."""
        sizes = self.sizes(timeline_id)
        lsn = 0
        for _ in range(batches):
            lsn = self.append(timeline_id, gen.batch(sizes, max_records))
        return lsn

    def sizes(self, timeline_id: str) -> dict[int, int]:
        model = self.timelines[timeline_id]
        return {rel: m.nblocks for rel, m in model.state(model.last_lsn).items()}

    # -- checking -------------------------------------------------------------------

    def read_lsns(self, timeline_id: str, rng: random.Random | None = None, limit: int | None = None) -> list[int]:
        """LSNs worth reading at: the branch point, each record's LSN and the
        LSN just below it (a byte position inside the record's frame reads the
        state before it); sampled down to `limit` (always keeping the first and
        the last)."""
        model = self.timelines[timeline_id]
        lsns = set()
        for lsn in model.lsns():
            if lsn > 0:
                lsns.add(lsn)
            if lsn - 1 > max(model.ancestor_lsn, 0):
                lsns.add(lsn - 1)
        ordered = sorted(lsns)
        if limit is not None and len(ordered) > limit:
            rng = rng or random.Random(0)
            middle = rng.sample(ordered[1:-1], max(0, limit - 2))
            ordered = sorted({ordered[0], ordered[-1], *middle})
        return ordered

    def check(self, timeline_id: str, lsn: int, rng: random.Random | None = None, single_reads: int = 2) -> None:
        """Every page and relation size of `timeline_id` at `lsn` equals the model.
        lsn=0 reads the latest: the caller must have waited for the model's last LSN."""
        model = self.timelines[timeline_id]
        read_at = lsn or model.last_lsn
        state = model.state(read_at)
        where = f"timeline {self.names[timeline_id]} ({timeline_id}) lsn={lsn}"
        keys: list[tuple[int, int]] = []
        for rel in RELS:
            nblocks = state[rel].nblocks if rel in state else 0
            keys.extend((rel, b) for b in range(nblocks + 1))
        results = self.client.read_pages(
            tenant_id=self.tenant_id, timeline_id=timeline_id, keys=keys, lsn=lsn, timeout=READ_TIMEOUT_S
        )
        assert len(results) == len(keys), f"{where}: {len(keys)} requests, {len(results)} answers"
        for (rel, blkno), got in zip(keys, results):
            self._compare(where, state, rel, blkno, got)
        for rel in RELS:
            resp = self.client.get_rel_size(
                tenant_id=self.tenant_id, timeline_id=timeline_id, rel=rel, lsn=lsn, timeout=READ_TIMEOUT_S
            )
            want = (True, state[rel].nblocks) if rel in state else (False, 0)
            assert (resp.exists, resp.nblocks) == want, f"{where} rel={rel}: size {resp.exists, resp.nblocks}, model {want}"
            assert resp.lsn == read_at, f"{where}: GetRelSize read at lsn={resp.lsn}, expected {read_at}"
        rng = rng or random.Random(lsn)
        for rel, blkno in rng.sample(keys, min(single_reads, len(keys))):
            try:
                resp = self.client.get_page(
                    tenant_id=self.tenant_id, timeline_id=timeline_id, rel=rel, blkno=blkno, lsn=lsn, timeout=READ_TIMEOUT_S
                )
                got: bytes | PageError = resp.page
                assert resp.lsn == read_at, f"{where}: GetPage read at lsn={resp.lsn}, expected {read_at}"
            except grpc.RpcError as exc:
                got = PageError(exc.code(), exc.details())
            self._compare(where + " (GetPage)", state, rel, blkno, got)

    def _compare(self, where: str, state: dict[int, RelModel], rel: int, blkno: int, got: bytes | PageError) -> None:
        want = _expected(state, rel, blkno, self.page_size)
        if isinstance(want, bytes):
            ok = isinstance(got, bytes) and got == want
            if not ok and isinstance(got, bytes) and len(got) == len(want):
                first = next(i for i in range(len(want)) if got[i] != want[i])
                raise AssertionError(
                    f"{where} rel={rel} blkno={blkno}: pages differ from byte {first}: "
                    f"got {got[first:first + 8].hex()}, model {want[first:first + 8].hex()}"
                )
        else:
            ok = isinstance(got, PageError) and got.code == want
            if ok:
                assert f"rel={rel}" in got.message, f"{where}: the error does not name the relation: {got}"
        assert ok, f"{where} rel={rel} blkno={blkno}: got {_describe(got)}, model {_describe(want)}"

    def wait_ingested(self, timeline_id: str) -> None:
        """Block until the pageserver has ingested the model's last LSN (a read at it waits)."""
        lsn = self.timelines[timeline_id].last_lsn
        if lsn:
            self.client.get_rel_size(tenant_id=self.tenant_id, timeline_id=timeline_id, rel=RELS[0], lsn=lsn, timeout=READ_TIMEOUT_S)

    def check_timeline(self, timeline_id: str, rng: random.Random, limit: int | None) -> None:
        """The latest state (LSN 0) and a sample of past LSNs."""
        self.wait_ingested(timeline_id)
        self.check(timeline_id, 0, rng)
        for lsn in self.read_lsns(timeline_id, rng, limit):
            self.check(timeline_id, lsn, rng)

    def check_all(self, rng: random.Random, limit: int | None = 12) -> None:
        for timeline_id in self.timelines:
            self.check_timeline(timeline_id, rng, limit)
