"""Reads that wait for WAL their timeline has not ingested yet.

A read at an LSN past `last_record_lsn` (a compute reading right after its
commit, a branch at a fresh LSN, a pageserver re-ingesting after a restart)
waits here until ingest gets there, its deadline passes, or the timeline is
deleted. While it waits it is counted in `Timeline.lsn_waiters`, and it asks the
WAL receiver for the WAL (`Timeline.wal_wanted`): a parked receiver streams again
at once, and one streaming keeps its stream open (pageserver/ingest.py).

Everything here runs on the pageserver's event loop, like the Timeline it reads:
ingest replaces `Timeline.lsn_event` (set, then a fresh one) after each batch.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from strata.errors import DeadlineExceeded, Unavailable

if TYPE_CHECKING:
    from pageserver.timeline import Timeline


async def wait_own_lsn(tl: Timeline, lsn: int, deadline: float, wait_s: float) -> None:
    """Wait (until the monotonic `deadline`) for `tl` itself to ingest `lsn`."""
    if lsn <= tl.last_record_lsn:
        return
    tl.lsn_waiters += 1
    tl.wal_wanted()
    try:
        while lsn > tl.last_record_lsn:
            if tl.deleted:
                raise Unavailable(f"{tl} was deleted while waiting for lsn={lsn}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"tenant_id={tl.tenant_id} timeline_id={tl.timeline_id}: lsn={lsn} not reached "
                    f"within {wait_s:.1f}s (last_record_lsn={tl.last_record_lsn})"
                )
            try:
                await asyncio.wait_for(tl.lsn_event.wait(), remaining)
            except TimeoutError:
                pass
    finally:
        tl.lsn_waiters -= 1
