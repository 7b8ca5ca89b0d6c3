"""Model-based test of a real walservice + pageserver against tests/model.py.

Hypothesis drives a state machine over one pageserver with small layers (so
in-memory layers freeze, L0s flush, compaction writes L1s and image layers):
random record batches over several relations (images, patches with splices,
relation sizes shrinking and growing, drops, writes past the end), branches at
random past LSNs of any timeline (branches of branches included), Compact, and
restarts (SIGTERM and SIGKILL). Checks read every page and relation size at
the latest LSN and at past LSNs and compare with the model; at the end of each
example every timeline is checked at every LSN it had. STRATA_MODEL_EXAMPLES
(default 15) sets how many examples run.
"""

from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test

from compute_shim import Client
from tests.env import Component
from tests.pageserver.world import SMALL_LAYERS, RecordGen, World

MAX_TIMELINES = 6
MAX_RESTARTS = 3  # per example: each costs a process start
SEEDS = st.integers(0, 2**32 - 1)


class PageserverMachine(RuleBasedStateMachine):
    pageserver: Component  # set by the test
    client: Client

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None
        self.restarts = 0

    @property
    def w(self) -> World:
        assert self.world is not None
        return self.world

    def _timeline(self, data: st.DataObject) -> str:
        # Draw a name, not an id: ids are random, and hypothesis replays draws.
        by_name = {name: timeline_id for timeline_id, name in self.w.names.items()}
        return by_name[data.draw(st.sampled_from(sorted(by_name)), label="timeline")]

    @initialize(page_size=st.sampled_from((512, 1024)))
    def create(self, page_size: int) -> None:
        self.world = World.create(self.client, page_size)
        self.w.create_root()

    @rule(data=st.data(), batches=st.integers(1, 6), seed=SEEDS)
    def append(self, data: st.DataObject, batches: int, seed: int) -> None:
        timeline_id = self._timeline(data)
        self.w.append_random(timeline_id, RecordGen(random.Random(seed), self.w.page_size), batches)

    @precondition(lambda self: len(self.w.timelines) < MAX_TIMELINES)
    @rule(data=st.data(), where=st.sampled_from(("latest", "record", "between", "branch_point")))
    def branch(self, data: st.DataObject, where: str) -> None:
        parent = self._timeline(data)
        model = self.w.timelines[parent]
        own = [lsn for lsn, _ in model.records]
        if where == "latest" or not own:
            lsn = 0 if where == "latest" or model.last_lsn == 0 else model.last_lsn
        elif where == "record":
            lsn = data.draw(st.sampled_from(own), label="lsn")
        elif where == "between":
            lsn = data.draw(st.integers(max(1, model.ancestor_lsn), model.last_lsn), label="lsn")
        else:
            lsn = model.ancestor_lsn or own[0]
        self.w.branch(parent, lsn)

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        timeline_id = self._timeline(data)
        self.w.wait_ingested(timeline_id)
        info = self.client.compact(tenant_id=self.w.tenant_id, timeline_id=timeline_id, timeout=60)
        # Compact flushes what was in memory first.
        assert info.disk_consistent_lsn == info.last_record_lsn, info

    @precondition(lambda self: self.restarts < MAX_RESTARTS)
    @rule(kill=st.booleans())
    def restart(self, kill: bool) -> None:
        self.restarts += 1
        if kill:
            self.pageserver.kill()
        else:
            assert self.pageserver.stop() == 0
        self.pageserver.start()

    @rule(data=st.data(), seed=SEEDS)
    def check_some(self, data: st.DataObject, seed: int) -> None:
        timeline_id = self._timeline(data)
        self.w.check_timeline(timeline_id, random.Random(seed), limit=3)

    def teardown(self) -> None:
        if self.world is not None:
            self.w.check_all(random.Random(0), limit=None)


def test_pageserver_matches_model(strata_env) -> None:
    wal = strata_env.walservice()
    ps = strata_env.pageserver(wal, *SMALL_LAYERS)

    class Machine(PageserverMachine):
        pageserver = ps
        client = Client(pageserver=ps.address, walservice=wal.address)

    try:
        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=int(os.environ.get("STRATA_MODEL_EXAMPLES", "15")),
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            ),
        )
    finally:
        Machine.client.close()
    # The small tunables really exercised the layer machinery.
    log = ps.log_text()
    for event in ("layer_flushed", "compacted_l0", "created_images"):
        assert f"event={event}" in log, f"no {event} in the pageserver log: tune the test's layer sizes"
