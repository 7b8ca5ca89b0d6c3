"""page@LSN from pageserver.reconstruct, in process, against tests/model.py.

Real `Timeline` objects (no gRPC, no WAL service) ingest records; layer
boundaries are placed on purpose: everything in memory, a flush (L0 file)
between any two records, L0 -> L1 compaction, image layers. The truncation,
drop and branch rules must hold whichever layers the history is spread over.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pageserver import reconstruct
from pageserver.index_part import IndexPart, RelationEntry
from pageserver.layers.block_cache import BlockCache
from pageserver.timeline import Timeline, TimelineConfig, relation_directory
from strata.errors import NotFound, OutOfRange
from strata.logs import event_logger
from strata.v1 import records_pb2
from tests.model import ModelTimeline
from tests.pageserver.world import RELS, RecordGen, image, new_id, patch, rel_drop, rel_size

PAGE_SIZE = 512  # image() pages are 512 bytes
TENANT = new_id()
# Image layers after two deltas, small L1 files: every mechanism in play.
CONFIG = TimelineConfig(compaction_threshold=3, image_threshold=2, l1_target_bytes=2048)


class Harness:
    """Timelines in one directory, each mirrored by a ModelTimeline. Methods
    that write layer files are coroutines: run inside `run()`."""

    def __init__(self, root: Path, executor: ThreadPoolExecutor, how: str = "memory") -> None:
        self.how = how  # where layer boundaries fall after each write(): see SPLITS
        self.root = root
        self.executor = executor
        self.cache = BlockCache(1 << 20)
        self.log = event_logger("test")
        self.lock = asyncio.Lock()
        self.models: dict[Timeline, ModelTimeline] = {}
        self.next_lsn = 0

    def timeline(self, ancestor: Timeline | None = None, ancestor_lsn: int = 0) -> Timeline:
        timeline_id = new_id()
        directory = self.root / timeline_id
        directory.mkdir()
        relations: tuple[RelationEntry, ...] = ()
        if ancestor is not None:
            # What Tenant.create_timeline records: the directory at the branch point.
            relations = relation_directory(
                {rel: reconstruct.rel_state(ancestor, rel, ancestor_lsn)[0] for rel in ancestor.rel_states}
            )
        index = IndexPart(
            tenant_id=TENANT,
            timeline_id=timeline_id,
            ancestor_timeline_id=ancestor.timeline_id if ancestor else "",
            ancestor_lsn=ancestor_lsn,
            disk_consistent_lsn=ancestor_lsn,
            relations=relations,
        )
        tl = Timeline(
            tenant_id=TENANT, timeline_id=timeline_id, page_size=PAGE_SIZE, directory=directory, index=index,
            ancestor=ancestor, config=CONFIG, block_cache=self.cache, executor=self.executor, log=self.log,
        )
        self.models[tl] = ModelTimeline(PAGE_SIZE, self.models[ancestor] if ancestor else None, ancestor_lsn)
        return tl

    def ingest(self, tl: Timeline, *records: records_pb2.Record) -> int:
        """Ingest records at fresh LSNs (10 apart, so that LSNs between records
        exist); returns the last one."""
        for record in records:
            self.next_lsn = max(self.next_lsn, tl.last_record_lsn) + 10
            record_bytes = record.SerializeToString() if record.HasField("patch") else b""
            tl.ingest(self.next_lsn, record, record_bytes)
            self.models[tl].add(self.next_lsn, record)
        return self.next_lsn

    async def flush(self, tl: Timeline) -> None:
        """Freeze what is in memory and write it as an L0 delta."""
        await tl.checkpoint()
        assert tl.disk_consistent_lsn == tl.last_record_lsn

    async def compact(self, tl: Timeline) -> None:
        """Flush, then L0 -> L1 and image layers where due."""
        await self.flush(tl)
        await tl.compact(self.lock, force=True)

    async def write(self, tl: Timeline, *records: records_pb2.Record) -> int:
        """Ingest, then end the layer there as `how` says; returns the last LSN."""
        lsn = self.ingest(tl, *records)
        if self.how == "flush":
            await self.flush(tl)
        elif self.how == "compact":
            await self.compact(tl)
        return lsn

    def check(self, tl: Timeline, lsns: list[int] | None = None) -> None:
        """Every page and size of every relation equals the model at each LSN
        (default: the branch point, every record's LSN and the LSN below it)."""
        model = self.models[tl]
        if lsns is None:
            lsns = sorted({l for r in model.lsns() for l in (r - 1, r) if l >= model.ancestor_lsn and l > 0})
        for lsn in lsns:
            state = model.state(lsn)
            for rel in RELS:
                got_state = tl.get_rel_state(rel, lsn)
                want = (True, state[rel].nblocks) if rel in state else (False, 0)
                assert (got_state.exists, got_state.nblocks if got_state.exists else 0) == want, f"rel={rel} lsn={lsn}"
                nblocks = state[rel].nblocks if rel in state else 0
                for blkno in range(nblocks + 1):
                    if rel not in state:
                        with pytest.raises(NotFound):
                            tl.get_page(rel, blkno, lsn)
                    elif blkno >= nblocks:
                        with pytest.raises(OutOfRange):
                            tl.get_page(rel, blkno, lsn)
                    else:
                        want_page = bytes(state[rel].pages.get(blkno, bytes(PAGE_SIZE)))
                        got = tl.get_page(rel, blkno, lsn)
                        assert got == want_page, f"rel={rel} blkno={blkno} lsn={lsn}: got {got[:8].hex()}, model {want_page[:8].hex()}"

    def layers(self, tl: Timeline) -> list[str]:
        return sorted(l.name.file_name for l in tl.layer_map.historic)


def run(tmp_path: Path, body: Callable[[Harness], Coroutine[Any, Any, None]], how: str = "memory") -> None:
    with ThreadPoolExecutor(2) as executor:
        h = Harness(tmp_path, executor, how)

        async def main() -> None:
            try:
                await body(h)
            finally:
                for tl in h.models:
                    tl.layer_map.close()

        asyncio.run(main())


# Where layer boundaries fall between the steps of a scenario: nowhere
# (everything in memory), an L0 file per step, or compaction after each step.
SPLITS = ["memory", "flush", "compact"]


def scenario(body: Callable[[Harness], Coroutine[Any, Any, None]]) -> Callable[[Path, str], None]:
    """A test running `body` once per way of splitting it into layers (h.how)."""

    @pytest.mark.parametrize("how", SPLITS)
    def test(tmp_path: Path, how: str) -> None:
        run(tmp_path, body, how)

    test.__name__, test.__doc__ = body.__name__, body.__doc__
    return test


@scenario
async def test_truncation_then_extension_reads_zeros(h: Harness) -> None:
    tl = h.timeline()
    await h.write(tl, image(1, 0, 0x11), image(1, 1, 0x22), image(1, 2, 0x33), patch(1, 3, 5, b"abc"))
    await h.write(tl, rel_size(1, 1))  # blocks 1..3 are gone
    await h.write(tl, rel_size(1, 3))  # back, as zeros
    # A patch on a re-extended block applies to zeros, not to the old page;
    # a write past the end extends with zeros in between.
    await h.write(tl, patch(1, 2, 0, b"xy"), patch(1, 5, 1, b"z"))
    last = await h.write(tl, rel_size(1, 2), rel_size(1, 4))
    assert tl.get_page(1, 1, last) == bytes(PAGE_SIZE)
    assert tl.get_page(1, 2, last) == bytes(PAGE_SIZE)
    assert tl.get_page(1, 0, last) == bytes([0x11]) * PAGE_SIZE
    h.check(tl)
    if h.how == "compact":
        assert any(name.endswith(".image") for name in h.layers(tl)), h.layers(tl)


@scenario
async def test_drop_then_recreate(h: Harness) -> None:
    tl = h.timeline()
    await h.write(tl, image(2, 0, 0x44), image(2, 1, 0x55), image(3, 0, 0x66))
    await h.write(tl, rel_drop(2))
    with pytest.raises(NotFound):
        tl.get_page(2, 0, tl.last_record_lsn)
    # Recreated by a size: old pages stay gone; by a patch: it starts from zeros.
    await h.write(tl, rel_size(2, 2), patch(2, 1, 10, b"new"))
    await h.write(tl, rel_drop(3), patch(3, 0, 0, b"again"))
    last = tl.last_record_lsn
    assert tl.get_page(2, 0, last) == bytes(PAGE_SIZE)
    assert tl.get_page(2, 1, last) == bytes(10) + b"new" + bytes(PAGE_SIZE - 13)
    assert tl.get_page(3, 0, last) == b"again" + bytes(PAGE_SIZE - 5)
    # Dropping a relation that does not exist is still a drop.
    await h.write(tl, rel_drop(0xFFFFFFFF), rel_drop(2), image(2, 3, 0x77))
    h.check(tl)


@scenario
async def test_branch_reads_ancestor_at_branch_point_not_past_it(h: Harness) -> None:
    main = h.timeline()
    await h.write(main, image(1, 0, 0x01), image(1, 1, 0x02), image(2, 0, 0x03))
    point = h.ingest(main, patch(1, 0, 0, b"at-branch-point"))
    # The ancestor goes on: none of this is the branch's.
    await h.write(main, image(1, 0, 0xEE), rel_size(1, 1), rel_drop(2), image(0, 0, 0xDD))
    branch = h.timeline(main, point)
    assert branch.get_page(1, 0, point) == b"at-branch-point" + bytes([0x01]) * (PAGE_SIZE - 15)
    assert branch.get_page(1, 1, point) == bytes([0x02]) * PAGE_SIZE
    assert branch.get_page(2, 0, point) == bytes([0x03]) * PAGE_SIZE
    with pytest.raises(NotFound):
        branch.get_page(0, 0, point)
    # The branch's own writes, truncation included, are invisible to the ancestor.
    await h.write(branch, rel_size(1, 1), patch(2, 0, 1, b"b"), rel_size(1, 2))
    assert branch.get_page(1, 1, branch.last_record_lsn) == bytes(PAGE_SIZE)
    # A branch of the branch, below the branch's own records.
    twig = h.timeline(branch, point + 5)
    await h.write(twig, patch(1, 1, 0, b"twig"))
    await h.write(main, image(1, 1, 0x99))
    for tl in (main, branch, twig):
        h.check(tl)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    steps=st.lists(st.sampled_from(["batch", "batch", "batch", "flush", "compact", "branch"]), min_size=1, max_size=30),
)
def test_random_histories_match_the_model(tmp_path_factory: pytest.TempPathFactory, seed: int, steps: list[str]) -> None:
    """Random records over several relations on a root and its branches, with
    flushes, compactions and branches anywhere; every LSN equals the model."""
    rng = random.Random(seed)

    async def body(h: Harness) -> None:
        timelines = [h.timeline()]
        gen = RecordGen(rng, PAGE_SIZE)
        for step in steps:
            tl = rng.choice(timelines)
            if step == "batch":
                model = h.models[tl]
                sizes = {rel: m.nblocks for rel, m in model.state(model.last_lsn).items()}
                h.ingest(tl, *gen.batch(sizes))
            elif step == "flush":
                await h.flush(tl)
            elif step == "compact":
                await h.compact(tl)
            else:
                model = h.models[tl]
                lsn = rng.randint(model.ancestor_lsn, max(model.ancestor_lsn, model.last_lsn))
                timelines.append(h.timeline(tl, lsn))
        for tl in timelines:
            h.check(tl)

    run(tmp_path_factory.mktemp("random"), body)
