"""WAL offload (walservice/offload.py) against remote storage that fails in
the ways strata/remote_storage/faults.py injects, in one process: an outage
uploads nothing and records nothing; an upload whose answer was lost is
retried into the very object it already wrote; the layout is whole after."""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from strata.ids import TenantId, TimelineId
from strata.logs import event_logger
from strata.remote_storage.faults import FaultyStorage
from strata.remote_storage.layout import wal_prefix
from strata.remote_storage.local_fs import LocalFsStorage
from walservice.offload import WalOffloader
from walservice.timelines import TimelineSet

T, TL = TenantId("c" * 32), TimelineId("d" * 32)


def test_offload_survives_an_outage_and_lost_answers(tmp_path: Path) -> None:
    async def body() -> None:
        log = event_logger("walservice")
        with ThreadPoolExecutor(max_workers=2) as executor:
            timelines = TimelineSet(tmp_path / "node", executor, log, segment_bytes=4096)
            timelines.load()
            tl = await timelines.create(T, TL, 0, 8192)
            for i in range(40):
                await tl.append([bytes([i]) * 200])
            assert len(tl.wal.segments) >= 3
            storage = FaultyStorage(LocalFsStorage(tmp_path / "remote"))
            offloader = WalOffloader(storage, f"file://{tmp_path / 'remote'}", timelines, log, interval_s=0.05)
            st = offloader._state_of(tl)

            async def one_round() -> None:
                st.retry_at = -math.inf  # no backoff wait between the test's rounds
                await offloader._offload_timeline(st)

            storage.down()
            await one_round()
            assert st.failing and tl.control.backup_lsn == 0
            assert storage.inner.list("") == []

            storage.up()
            storage.lose_answers("upload_bytes")  # the first sealed segment goes up; its answer does not come back
            await one_round()
            assert st.failing and tl.control.backup_lsn == 0  # nothing is recorded without an answer
            assert len(storage.inner.list("")) == 1

            await asyncio.sleep(0.06)  # past the partial upload interval
            await one_round()
            assert not st.failing
            assert tl.control.backup_lsn == tl.commit_lsn
            prefix = wal_prefix(T, TL)
            names = [o.key[len(prefix) :] for o in storage.inner.list(prefix)]
            sealed = [s.path.name for s in tl.wal.segments[:-1]]
            assert names == sealed + [tl.wal.segments[-1].path.name + ".partial"]
            for seg in tl.wal.segments[:-1]:
                assert storage.inner.download_bytes(prefix + seg.path.name) == seg.path.read_bytes()
            offloader._executor.shutdown()
            await timelines.close()

    asyncio.run(body())
