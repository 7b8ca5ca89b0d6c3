"""What the walservice tests share: records that name themselves, creating a
timeline, reading a Stream up to an LSN, and a background stream reader.

A *tagged* record is a PagePatch whose first splice carries a text tag
(`writer=3 batch=17 index=2 of=5`), so a test that reads the WAL back can tell
which Append every record came from and whether that Append is whole.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from compute_shim import Client
from strata import ids
from strata.v1 import records_pb2, wal_pb2, wal_pb2_grpc

STREAM_TIMEOUT_S = 10.0


def patch_record(rel: int, blkno: int, data: bytes, offset: int = 0) -> records_pb2.Record:
    return records_pb2.Record(
        patch=records_pb2.PagePatch(rel=rel, blkno=blkno, splices=[records_pb2.Splice(offset=offset, data=data)])
    )


def image_record(rel: int, blkno: int, page: bytes) -> records_pb2.Record:
    return records_pb2.Record(image=records_pb2.PageImage(rel=rel, blkno=blkno, page=page))


@dataclass(frozen=True)
class Tag:
    """Which record of which Append a tagged record is."""

    writer: int
    batch: int
    index: int
    count: int

    def encode(self) -> bytes:
        return f"writer={self.writer} batch={self.batch} index={self.index} of={self.count}".encode()

    @classmethod
    def decode(cls, data: bytes) -> Tag:
        fields = dict(part.split("=") for part in data.decode().split())
        return cls(int(fields["writer"]), int(fields["batch"]), int(fields["index"]), int(fields["of"]))


def tagged_batch(writer: int, batch: int, count: int) -> list[records_pb2.Record]:
    return [patch_record(writer, batch, Tag(writer, batch, i, count).encode()) for i in range(count)]


def record_tag(record: records_pb2.Record) -> Tag:
    return Tag.decode(record.patch.splices[0].data)


@dataclass(frozen=True)
class TimelineKey:
    tenant_id: str
    timeline_id: str

    def ref(self) -> records_pb2.TimelineRef:
        return records_pb2.TimelineRef(tenant_id=self.tenant_id, timeline_id=self.timeline_id)

    def append(self, records: list[records_pb2.Record], expected_end_lsn: int = 0) -> wal_pb2.AppendRequest:
        return wal_pb2.AppendRequest(
            tenant_id=self.tenant_id, timeline_id=self.timeline_id, records=records, expected_end_lsn=expected_end_lsn
        )

    def stream(self, start_lsn: int = 0) -> wal_pb2.StreamRequest:
        return wal_pb2.StreamRequest(tenant_id=self.tenant_id, timeline_id=self.timeline_id, start_lsn=start_lsn)


def create_timeline(stub: wal_pb2_grpc.WalServiceStub, page_size: int = 8192, start_lsn: int = 0) -> TimelineKey:
    key = TimelineKey(ids.new_id(), ids.new_id())
    stub.CreateTimeline(
        wal_pb2.WalTimeline(
            tenant_id=key.tenant_id, timeline_id=key.timeline_id, start_lsn=start_lsn, page_size=page_size
        ),
        timeout=STREAM_TIMEOUT_S,
    )
    return key


def read_stream(
    stub: wal_pb2_grpc.WalServiceStub, key: TimelineKey, until_lsn: int, start_lsn: int = 0
) -> list[records_pb2.SequencedRecord]:
    """Every streamed record with start_lsn < lsn <= until_lsn (until_lsn must be a
    record's LSN, or start_lsn for none). Fails on a stream that stalls or skips past it."""
    out: list[records_pb2.SequencedRecord] = []
    if until_lsn <= start_lsn:
        return out
    call = stub.Stream(key.stream(start_lsn), timeout=STREAM_TIMEOUT_S)
    try:
        for batch in call:
            for rec in batch.records:
                assert rec.lsn <= until_lsn, f"the stream skipped past lsn={until_lsn} to lsn={rec.lsn}"
                out.append(rec)
                if rec.lsn == until_lsn:
                    return out
    finally:
        call.cancel()
    raise AssertionError(f"the stream ended before lsn={until_lsn}")


def append_across_failover(
    client: Client, key: TimelineKey, records: list[records_pb2.Record], end: int, timeout: float = 20.0
) -> int:
    """Appends `records` with expected_end_lsn=`end` while the cluster may be
    changing leaders; returns the batch's end LSN.

    An UNAVAILABLE without a leader hint is ambiguous: a leader killed after
    it sent the batch to a follower may still have it committed by the next
    leader. So the batch is sent again under the same condition: it applies,
    or FAILED_PRECONDITION says the timeline moved, and then the records
    committed just past `end` must be this batch, whole (tests that call this
    are the timeline's only writer)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.append(
                tenant_id=key.tenant_id, timeline_id=key.timeline_id, records=records, expected_end_lsn=end
            ).end_lsn
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                break
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    landed: list[records_pb2.SequencedRecord] = []
    call = client.stream(tenant_id=key.tenant_id, timeline_id=key.timeline_id, start_lsn=end, timeout=STREAM_TIMEOUT_S)
    try:
        for batch in call:
            landed.extend(batch.records)
            if len(landed) >= len(records):
                break
    finally:
        call.cancel()
    got = [r.record.SerializeToString() for r in landed[: len(records)]]
    assert got == [r.SerializeToString() for r in records], f"the timeline moved past lsn={end} with other records"
    return landed[len(records) - 1].lsn


class StreamReader:
    """Reads one Stream on a thread, so a test can wait for records with a timeout."""

    def __init__(self, stub: wal_pb2_grpc.WalServiceStub, key: TimelineKey, start_lsn: int = 0) -> None:
        self.call = stub.Stream(key.stream(start_lsn))
        self.batches: queue.Queue[wal_pb2.WalBatch] = queue.Queue()
        self.ended = threading.Event()
        self.end_code: grpc.StatusCode | None = None
        self._pending: list[records_pb2.SequencedRecord] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for batch in self.call:
                self.batches.put(batch)
            self.end_code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            self.end_code = exc.code()
        finally:
            self.ended.set()

    def next_batch(self, timeout: float = STREAM_TIMEOUT_S) -> wal_pb2.WalBatch:
        try:
            return self.batches.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no WalBatch within {timeout}s (stream ended: {self.end_code})") from None

    def records_until(self, lsn: int, timeout: float = STREAM_TIMEOUT_S) -> list[records_pb2.SequencedRecord]:
        """The records up to and including the one at `lsn`, in the order streamed."""
        out: list[records_pb2.SequencedRecord] = []
        while not out or out[-1].lsn < lsn:
            if not self._pending:
                self._pending = list(self.next_batch(timeout).records)
                continue
            out.append(self._pending.pop(0))
        assert out[-1].lsn == lsn, f"the stream skipped past lsn={lsn} to lsn={out[-1].lsn}"
        return out

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(STREAM_TIMEOUT_S)

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sequenced(records: list[records_pb2.Record], lsns: Sequence[int]) -> list[tuple[int, bytes]]:
    """(lsn, serialized record) pairs, the form tests compare streams in."""
    return [(lsn, rec.SerializeToString()) for lsn, rec in zip(lsns, records, strict=True)]


def streamed(records: list[records_pb2.SequencedRecord]) -> list[tuple[int, bytes]]:
    return [(rec.lsn, rec.record.SerializeToString()) for rec in records]
