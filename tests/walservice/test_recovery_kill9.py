"""Crash safety under load: writer threads append concurrently while the
walservice is SIGKILLed at random moments; after every restart each acknowledged
batch is in the WAL, whole, at the LSNs it was acknowledged with, and no batch is
there in part."""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass, field

import grpc

from strata.v1 import records_pb2, wal_pb2_grpc
from tests.env import Component, StrataEnv
from tests.walservice.harness import (
    STREAM_TIMEOUT_S,
    Tag,
    TimelineKey,
    create_timeline,
    read_stream,
    record_tag,
    sequenced,
    streamed,
    tagged_batch,
)
from walservice.segment import scan_segment

SEED = 0x5EED_0009
WRITERS = 4
KILLS = 5
SEGMENT_BYTES = 65536
PROGRESS_TIMEOUT_S = 20.0
# Reconnect quickly after a restart (gRPC's default backoff starts at 1 s).
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]


@dataclass(frozen=True)
class AckedBatch:
    writer: int
    batch: int
    start_lsn: int
    expected_end_lsn: int
    records: list[tuple[int, bytes]]  # (lsn, serialized record) as acknowledged


@dataclass
class Ledger:
    """What the writers were told, shared between their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: list[AckedBatch] = field(default_factory=list)
    conditional_acked: int = 0
    mismatches: int = 0

    def snapshot(self) -> list[AckedBatch]:
        with self.lock:
            return list(self.acked)

    def count(self) -> int:
        with self.lock:
            return len(self.acked)


def padded_batch(writer: int, batch: int, rng: random.Random) -> list[records_pb2.Record]:
    """1..16 tagged records, each padded with a second splice of 0..500 bytes."""
    records = tagged_batch(writer, batch, rng.randint(1, 16))
    for record in records:
        record.patch.splices.add(offset=1024, data=bytes([batch % 251]) * rng.randint(0, 500))
    return records


class Writer(threading.Thread):
    """Appends until told to stop; about a third of the batches are conditional on
    the end LSN this writer last learned (from an ack or a mismatch message)."""

    def __init__(self, writer: int, address: str, key: TimelineKey, ledger: Ledger, stop: threading.Event) -> None:
        super().__init__(name=f"writer-{writer}", daemon=True)
        self.writer = writer
        self.key = key
        self.ledger = ledger
        self.stop_event = stop
        self.rng = random.Random(SEED + writer)
        self.channel = grpc.insecure_channel(address, options=FAST_RECONNECT)
        self.stub = wal_pb2_grpc.WalServiceStub(self.channel)
        self.known_end = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._write()
        except BaseException as exc:  # reported by the test
            self.failure = exc
        finally:
            self.channel.close()

    def _write(self) -> None:
        batch = 0
        while not self.stop_event.is_set():
            batch += 1  # a fresh tag for every attempt: a batch is never sent twice
            records = padded_batch(self.writer, batch, self.rng)
            expected = self.known_end if self.known_end and self.rng.random() < 0.35 else 0
            try:
                done = self.stub.Append(self.key.append(records, expected_end_lsn=expected), timeout=STREAM_TIMEOUT_S)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    found = re.search(r"current end_lsn=(\d+)", exc.details())
                    assert found, exc.details()
                    self.known_end = int(found.group(1))
                    with self.ledger.lock:
                        self.ledger.mismatches += 1
                    continue
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
                time.sleep(0.02)  # the node is down: back off, then try the next batch
                continue
            self.known_end = done.end_lsn
            acked = AckedBatch(self.writer, batch, done.start_lsn, expected, sequenced(records, done.record_lsns))
            with self.ledger.lock:
                self.ledger.acked.append(acked)
                self.ledger.conditional_acked += bool(expected)


def check_wal(stub: wal_pb2_grpc.WalServiceStub, key: TimelineKey, acked: list[AckedBatch]) -> int:
    """Read the whole WAL back and check it against the acknowledged batches; the
    number of batches found."""
    end = stub.Status(key.ref(), timeout=STREAM_TIMEOUT_S).commit_lsn
    records = read_stream(stub, key, end)
    lsns = [rec.lsn for rec in records]
    assert lsns == sorted(set(lsns)), "LSNs must strictly increase"

    # Every batch in the WAL is whole: its records contiguous, indices 0..count-1.
    found: dict[tuple[int, int], list[tuple[int, bytes]]] = {}
    open_tag: Tag | None = None
    for rec, as_pair in zip(records, streamed(records)):
        tag = record_tag(rec.record)
        if open_tag is None:
            assert tag.index == 0, f"{tag} starts mid-batch"
            assert (tag.writer, tag.batch) not in found, f"{tag} appears twice"
            found[(tag.writer, tag.batch)] = []
        else:
            assert (tag.writer, tag.batch, tag.index) == (open_tag.writer, open_tag.batch, open_tag.index + 1), (
                f"{open_tag} is followed by {tag}: a batch was cut or interleaved"
            )
        found[(tag.writer, tag.batch)].append(as_pair)
        open_tag = tag if tag.index + 1 < tag.count else None
    assert open_tag is None, f"the WAL ends inside a batch at {open_tag}"

    # Every acknowledged batch is there, at exactly the LSNs it was acknowledged with.
    for batch in acked:
        assert found.get((batch.writer, batch.batch)) == batch.records, f"acknowledged {batch} is missing or moved"
        if batch.expected_end_lsn:
            assert batch.start_lsn == batch.expected_end_lsn
    return len(found)


def wait_for_acks(ledger: Ledger, target: int, writers: list[Writer]) -> None:
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    while ledger.count() < target:
        assert time.monotonic() < deadline, f"writers stalled at {ledger.count()} of {target} acknowledged batches"
        assert all(w.failure is None for w in writers), [w.failure for w in writers]
        time.sleep(0.005)


def test_acknowledged_batches_survive_sigkill(strata_env: StrataEnv) -> None:
    rng = random.Random(SEED)
    comp: Component = strata_env.walservice("--segment-bytes", str(SEGMENT_BYTES))
    key = create_timeline(strata_env.wal_stub(comp))
    ledger, stop = Ledger(), threading.Event()
    writers = [Writer(w, comp.address, key, ledger, stop) for w in range(WRITERS)]
    for w in writers:
        w.start()
    try:
        for _ in range(KILLS):
            wait_for_acks(ledger, ledger.count() + rng.randint(30, 150), writers)
            time.sleep(rng.uniform(0, 0.05))  # a random moment, with appends in flight
            comp.kill()
            acked = ledger.snapshot()
            comp.start()
            in_wal = check_wal(strata_env.wal_stub(comp), key, acked)
            assert in_wal >= len(acked)
    finally:
        stop.set()
        for w in writers:
            w.join(STREAM_TIMEOUT_S)
    assert all(w.failure is None for w in writers), [w.failure for w in writers]

    acked = ledger.snapshot()
    check_wal(strata_env.wal_stub(comp), key, acked)
    comp.kill()
    comp.start()
    check_wal(strata_env.wal_stub(comp), key, acked)
    # On disk, END_OF_BATCH marks the last record of every batch and nothing else,
    # and no batch spans segments.
    timeline_dir = comp.data_dir / "timelines" / key.tenant_id / key.timeline_id
    segments = sorted(timeline_dir.glob("*.wal"))
    for path in segments:
        scan = scan_segment(path.read_bytes())
        assert scan.problem is None
        for frame in scan.frames:
            tag = record_tag(records_pb2.Record.FromString(frame.payload))
            assert frame.end_of_batch == (tag.index == tag.count - 1), (path.name, tag)
    # Sealed segments are exactly their frames; the open one runs ahead with zeros
    # (preallocated, walservice/wal_storage.py), which recovery read as a clean end.
    for path in segments[:-1]:
        scan = scan_segment(path.read_bytes())
        assert scan.data_len == scan.batch_end_offset, path.name
    last = scan_segment(segments[-1].read_bytes())
    assert last.zero_tail and (last.data_len > last.batch_end_offset or last.end_lsn - last.header.start_lsn >= SEGMENT_BYTES)
    # The run exercised what it claims to: rollover, and conditional appends both ways.
    assert len(segments) >= 3
    assert ledger.conditional_acked > 0 and ledger.mismatches > 0
    assert comp.log_text().count("event=timeline_recovered") >= KILLS + 1
