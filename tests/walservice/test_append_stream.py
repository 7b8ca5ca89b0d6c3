"""AppendStream and compute_shim.WalWriter: many writers' appends over one stream,
each still its own atomic, durable, individually answered batch (real walservice
processes on loopback)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from compute_shim import AppendFailed, WalWriter
from strata.v1 import records_pb2, wal_pb2
from tests.env import StrataEnv
from tests.walservice.harness import (
    STREAM_TIMEOUT_S,
    create_timeline,
    patch_record,
    read_stream,
    sequenced,
    streamed,
    tagged_batch,
)

GOOD = patch_record(1, 0, b"fine")
BAD = records_pb2.Record()  # no kind: INVALID_ARGUMENT


def test_one_message_answers_each_append_in_order(strata_env: StrataEnv, append_codec: dict[str, str]) -> None:
    comp = strata_env.walservice(env=append_codec)
    stub = strata_env.wal_stub(comp)
    key = create_timeline(stub)
    first, second = tagged_batch(1, 0, 2), tagged_batch(2, 0, 3)
    message = wal_pb2.AppendStreamRequest(appends=[key.append(first), key.append([GOOD, BAD]), key.append(second)])
    (response,) = list(stub.AppendStream(iter([message]), timeout=STREAM_TIMEOUT_S))
    ok1, bad, ok2 = response.outcomes
    assert ok1.error_code == 0 and ok2.error_code == 0
    assert bad.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "records[1]" in bad.error
    # The good appends are consecutive batches; the refused one left no trace between them.
    assert ok2.response.start_lsn == ok1.response.end_lsn
    got = streamed(read_stream(stub, key, ok2.response.end_lsn))
    assert got == sequenced(first + second, [*ok1.response.record_lsns, *ok2.response.record_lsns])


def test_concurrent_writers_share_one_stream_and_every_append_is_whole(strata_env: StrataEnv, append_codec: dict[str, str]) -> None:
    comp = strata_env.walservice(env=append_codec)
    stub = strata_env.wal_stub(comp)
    key = create_timeline(stub)
    writers, appends_each = 40, 15

    async def run() -> list[tuple[list[records_pb2.Record], wal_pb2.AppendResponse]]:
        done: list[tuple[list[records_pb2.Record], wal_pb2.AppendResponse]] = []
        async with WalWriter(comp.address) as wal:

            async def writer(w: int) -> None:
                for i in range(appends_each):
                    records = tagged_batch(w, i, 1 + (w + i) % 4)
                    response = await wal.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=records)
                    done.append((records, response))

            await asyncio.gather(*(writer(w) for w in range(writers)))
        return done

    done = asyncio.run(run())
    assert len(done) == writers * appends_each
    done.sort(key=lambda d: d[1].start_lsn)
    # Batches tile the WAL with no gaps or overlaps, each with its own LSNs.
    for (_, a), (_, b) in zip(done, done[1:]):
        assert b.start_lsn == a.end_lsn
    expected = [pair for records, r in done for pair in sequenced(records, r.record_lsns)]
    assert streamed(read_stream(stub, key, done[-1][1].end_lsn)) == expected


def test_a_conditional_append_is_refused_alone(strata_env: StrataEnv, append_codec: dict[str, str]) -> None:
    comp = strata_env.walservice(env=append_codec)
    stub = strata_env.wal_stub(comp)
    key = create_timeline(stub)

    async def run() -> None:
        async with WalWriter(comp.address) as wal:
            first = await wal.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=[GOOD])
            with pytest.raises(AppendFailed) as caught:
                await wal.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=[GOOD], expected_end_lsn=first.end_lsn + 1)
            assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert f"end_lsn={first.end_lsn}" in caught.value.message
            # The stream is fine: the right expected_end_lsn goes through.
            second = await wal.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=[GOOD], expected_end_lsn=first.end_lsn)
            assert second.start_lsn == first.end_lsn

    asyncio.run(run())


def test_sigkill_mid_stream_loses_nothing_acknowledged(strata_env: StrataEnv) -> None:
    """Writers keep appending through a SIGKILL and a restart: appends in flight
    fail (UNAVAILABLE), the writer reconnects on its own, and after the restart
    every acknowledged append is present, whole, at its LSNs."""
    comp = strata_env.walservice()
    stub = strata_env.wal_stub(comp)
    key = create_timeline(stub)
    acknowledged: list[tuple[list[records_pb2.Record], wal_pb2.AppendResponse]] = []
    failures: list[AppendFailed] = []

    async def run() -> None:
        async with WalWriter(comp.address) as wal:
            stop = asyncio.Event()

            async def writer(w: int) -> None:
                i = 0
                while not stop.is_set():
                    records = tagged_batch(w, i, 2)
                    i += 1
                    try:
                        acknowledged.append((records, await wal.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=records)))
                    except AppendFailed as exc:
                        failures.append(exc)
                        await asyncio.sleep(0.05)

            tasks = [asyncio.create_task(writer(w)) for w in range(16)]
            while len(acknowledged) < 200:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(comp.kill)
            before_restart = len(acknowledged)
            await asyncio.to_thread(comp.start)
            while len(acknowledged) < before_restart + 200:
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*tasks)

    asyncio.run(run())
    assert failures, "no append was in flight when the walservice was killed"
    assert {f.code for f in failures} <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    stub = strata_env.wal_stub(comp)
    acknowledged.sort(key=lambda d: d[1].start_lsn)
    stored = dict(streamed(read_stream(stub, key, acknowledged[-1][1].end_lsn)))
    for records, response in acknowledged:
        for lsn, record in sequenced(records, response.record_lsns):
            assert stored.get(lsn) == record, f"acknowledged record at lsn={lsn} is missing or different"


def test_sigterm_ends_an_idle_append_stream(strata_env: StrataEnv) -> None:
    """A writer that keeps its AppendStream open does not hold a graceful stop for
    the whole 5 s gRPC grace: the stream ends once its appends are answered, the
    process exits, and the writer's next append fails UNAVAILABLE."""
    comp = strata_env.walservice()
    key = create_timeline(strata_env.wal_stub(comp))

    async def run() -> float:
        async with WalWriter(comp.address) as wal:
            first = await wal.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=[GOOD])
            assert first.end_lsn > first.start_lsn
            t0 = asyncio.get_running_loop().time()
            assert await asyncio.to_thread(comp.stop) == 0
            took = asyncio.get_running_loop().time() - t0
            with pytest.raises(AppendFailed) as failed:
                await wal.append(tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=[GOOD])
            assert failed.value.code == grpc.StatusCode.UNAVAILABLE
            return took

    took = asyncio.run(run())
    assert took < 4.0, f"the walservice took {took:.1f}s to stop: it waited for the idle AppendStream (grace 5 s)"
