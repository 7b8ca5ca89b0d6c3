"""SQLite on Strata pages: `connect_sqlite(client, tenant, timeline, lsn=None)`.

An apsw VFS (registered once per process as "strata") whose main database file
is one Strata relation (`rel`, default 1) of the tenant's page size; SQLite's
page_size is set to it (an existing database with another page size is refused).

Reads: block b of the file is page (rel, b) at the connection's read LSN, served
from the client's `PageCache` when a cached version is known to equal it, else
fetched (`GetPage` for a lone miss, `GetPages` read-ahead for sequential misses:
the window doubles from 1 up to `MAX_READAHEAD` pages while misses stay
sequential, and while SQLite works through one window the next is fetched on a
background thread).

Reads of a read-write connection: each transaction starts at the timeline's
end. It opens there (the walservice's `flush_lsn` at that moment; a timeline
with an empty WAL is claimed first, see `CLAIM_REL`), and whenever SQLite takes
its SHARED lock, which it does when a transaction starts (each statement in
autocommit mode, or the first read after BEGIN), the connection asks the
walservice for the end again (one Status call, ~0.5 ms) unless it last learned
the end less than `end_check_s` ago (`DEFAULT_END_CHECK_S`, 50 ms: so a burst of
autocommit statements pays one call, not one each; `end_check_s=0` asks at every
transaction): if another writer moved it, the connection drops the cached pages
and reads at the new end (SQLite sees page 1's new change counter and drops its
own cache and schema), so a table another writer created is there. The rule: a
transaction starts at the timeline's end as it was at most `end_check_s` before
the transaction began; a commit stays conditional on the LSN the transaction
read at, so a transaction that started on a stale end can never commit over
another writer's work (it fails with `WriteConflict`, and the next transaction
asks again). Within a transaction it reads at that one LSN; its own commit moves
it to that Append's `end_lsn` (and counts as learning the end). If the walservice cannot be asked at a transaction's
start, the transaction reads at the connection's last LSN (`sqlite_end_unknown`
is logged); its commit is conditional on that LSN all the same.

Writes (read-write connections only): SQLite's rollback journal lives in memory
(`journal_mode=MEMORY` by default; in DELETE, TRUNCATE or PERSIST mode the journal
is an in-memory scratch file, freed when its transaction commits or rolls back,
never sent anywhere) and the pages SQLite writes to the database file, spilled
mid-transaction or written at commit, stay in a local dirty map. The commit point
is the `SQLITE_FCNTL_SYNC` file control on the database file, which SQLite sends
just before it syncs the file and, under `synchronous=OFF`, instead of syncing it
(so every synchronous level commits the same way; `xSync` ships only what that
control did not): the dirty pages are compared with the committed ones and
shipped as ONE append, conditional on the timeline's end
(`expected_end_lsn` = the LSN this connection read at), on the connection's
long-lived AppendStream (compute_shim/commit_stream.py: opened at its first commit,
driven on SQLite's own thread, closed with the connection): a `PagePatch` of the
changed byte ranges where that is smaller than the page, a `PageImage`
otherwise, and a `RelSize` when the file's size changed without a write at its
end. A truncation SQLite makes after the sync (VACUUM shrinking the file) ships
at `SQLITE_FCNTL_COMMIT_PHASETWO`. A file truncated and then written past the cut
again within one transaction reads zeros in between, and its commit starts with
a `RelSize` to the cut. So a transaction is all-or-nothing on Strata, and
closing or SIGKILLing a compute leaves only committed transactions.

A second writer that commits while a transaction is open (between its start and
its commit): the conditional Append is refused (FAILED_PRECONDITION) and the
transaction fails with `WriteConflict` ("another writer moved the timeline");
nothing of it reached Strata. The next transaction starts at the timeline's new
end, as every transaction does, so it sees the other writer's commits.
An Append that fails otherwise (UNAVAILABLE, a deadline) may or may not have been
applied: the transaction fails with `CommitUncertain`, and the next transaction
re-reads the same way, so it builds on whatever the timeline holds.

`lsn=N` opens read-only at the last commit at or below LSN N: time travel with
plain SQL, never half a transaction (compute_shim/commits.py; `read_lsn_of(db)`
says which LSN it opened at; N before the first commit is `NoCommitAtLsn`).

Limits: one transaction must fit one Append (the walservice's
`--max-batch-bytes`, 64 MiB by default; a larger one fails with `CommitRefused`).
PRAGMAs that would break this are refused (`sqlite_pragmas.py`, values read the way
SQLite reads them): journal_mode=OFF or WAL, locking_mode=EXCLUSIVE.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import apsw
import grpc
from compute_shim.client import Client, PageError
from compute_shim.commit_stream import AppendFailed, CommitStream
from compute_shim.commits import commit_lsn_at_or_below, remember_read_lsn
from compute_shim.page_cache import PageCache
from compute_shim.page_records import page_records
from compute_shim.sqlite_pragmas import refused_pragma
from strata.logs import event_logger
from strata.v1 import records_pb2, wal_pb2

log = event_logger("compute")

VFS_NAME = "strata"
SQLITE_REL = 1  # the relation holding the main database file
# An empty relation written once by a writer opening a timeline whose WAL is still
# empty (end LSN 0, where expected_end_lsn=0 would mean "unconditional"), so that
# every later append of that writer is conditional. It touches no other relation.
CLAIM_REL = 0xFFFF_FFF0
MAX_READAHEAD = 128  # pages per GetPages read-ahead
DEFAULT_END_CHECK_S = 0.05  # seconds a read-write transaction may start on an end learned earlier (module doc)
SQLITE_SHARED_LOCK = 1
# Append errors that mean the batch was not applied (other than FAILED_PRECONDITION, a
# conflict); anything else (UNAVAILABLE without a leader hint, a deadline) may have been.
REFUSALS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,  # e.g. the batch is over the walservice's --max-batch-bytes
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.DATA_LOSS,
})

class CommitRefused(Exception):
    """The walservice refused the commit's Append: nothing of the transaction was written."""


class WriteConflict(CommitRefused):
    """Another writer moved the timeline: this transaction was not committed."""


class CommitUncertain(Exception):
    """A commit's Append failed other than by being refused: it may have been applied."""


@dataclass(frozen=True)
class _ReadAhead:
    start: int
    end: int
    future: Future[list[bytes]]  # page@read_lsn of blocks start..end-1


@dataclass
class _DbConfig:
    client: Client
    tenant_id: str
    timeline_id: str
    rel: int
    page_size: int
    read_lsn: int | None  # None: read-write at the timeline's end
    on_commit: Callable[[int], None] | None = None  # called with each commit's end LSN
    end_check_s: float = 0.0  # a read-write transaction re-asks the end if it last learned it longer ago


@dataclass
class _Registry:
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards configs
    configs: dict[str, _DbConfig] = field(default_factory=dict)  # database name -> its config, until opened
    counter: itertools.count = field(default_factory=itertools.count)


_registry = _Registry()
_vfs: StrataVFS | None = None
_vfs_lock = threading.Lock()  # guards _vfs


class _FileDefaults:
    """What both kinds of file answer alike: no OS locks (one process's connections share
    SQLite's own locking; other writers meet the conditional Append), no file controls."""

    def xLock(self, level: int) -> None:
        pass

    def xUnlock(self, level: int) -> None:
        pass

    def xCheckReservedLock(self) -> bool:
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False

    def xSectorSize(self) -> int:
        return 512

    def xDeviceCharacteristics(self) -> int:
        return 0


class _ScratchFile(_FileDefaults):
    """A journal in memory: per-transaction scratch that never leaves this process.
    Its bytes are freed when the database's transaction ends (committed or rolled
    back: nothing reads a journal after that, as there is no hot-journal recovery)
    and when SQLite closes or deletes it."""

    def __init__(self, on_close: Callable[[], None] | None = None) -> None:
        self.data = bytearray()
        self._on_close = on_close

    def release(self) -> int:
        """Frees the contents; returns how many bytes they were."""
        n = len(self.data)
        self.data = bytearray()
        return n

    def xRead(self, amount: int, offset: int) -> bytes:
        return bytes(self.data[offset : offset + amount])

    def xWrite(self, data: bytes, offset: int) -> None:
        if len(self.data) < offset:
            self.data.extend(bytes(offset - len(self.data)))
        self.data[offset : offset + len(data)] = data

    def xTruncate(self, size: int) -> None:
        if size == 0:
            self.release()
        else:
            del self.data[size:]

    def xSync(self, flags: int) -> None:
        pass

    def xFileSize(self) -> int:
        return len(self.data)

    def xClose(self) -> None:
        self.release()
        if self._on_close is not None:
            self._on_close()


class StrataDbFile(_FileDefaults):
    """The main database file: block b is page (rel, b) of the timeline.

    SQLite calls one connection's file methods from one thread at a time (the
    connection's mutex), so the fields below need no lock of their own; the
    shared page cache has its own.
    """

    def __init__(self, config: _DbConfig, on_transaction_end: Callable[[], None] | None = None) -> None:
        self.cfg = config
        self._on_transaction_end = on_transaction_end  # frees this database's journal scratch
        self.client = config.client
        self.cache: PageCache = config.client.page_cache
        self.ps = config.page_size
        self.readonly = config.read_lsn is not None
        self.epoch = 0
        if config.read_lsn is not None:
            self.read_lsn = config.read_lsn
        else:
            self.read_lsn = self._writer_start()
        self.committed_nblocks = self._nblocks_at(self.read_lsn)
        self.size_blocks = self.committed_nblocks  # SQLite's view, dirty writes included
        # Blocks at or past `floor` were truncated away by the open transaction: until they are
        # written again they read as zeros, and its commit cuts them (RelSize) before its pages.
        self.floor = self.committed_nblocks
        self.dirty: dict[int, bytes] = {}  # blkno -> page written by the open transaction
        # Set when a commit's Append failed (refused, or its outcome unknown); while set, SQLite's
        # rollback is not shipped; cleared when SQLite ends the transaction (then `stale`).
        self.failed: Exception | None = None
        self.stale = False  # a failed commit ended: re-read the timeline's end before the next transaction
        self._end_learned = time.monotonic()  # when read_lsn was last known to be the timeline's end
        self._next_sequential = -1  # the block after the last read-ahead
        self._window = 1  # read-ahead pages for the next sequential miss
        self._ahead: list[_ReadAhead] = []  # windows fetched in the background, oldest first (at most 2)
        self._pool: ThreadPoolExecutor | None = None  # the read-ahead thread, started on the first sequential miss
        self._commits: CommitStream | None = None  # this connection's AppendStream, opened at its first commit

    # -- positioning --------------------------------------------------------------

    def _ids(self) -> dict[str, str]:
        return {"tenant_id": self.cfg.tenant_id, "timeline_id": self.cfg.timeline_id}

    def _writer_start(self, end: int | None = None) -> int:
        """The timeline's end (`end` if the caller just read it), claimed with one
        append if the WAL is still empty; tracked in the cache."""
        if end is None:
            end = self.client.status(**self._ids()).flush_lsn
        if end == 0:
            claim = records_pb2.Record(rel_size=records_pb2.RelSize(rel=CLAIM_REL, nblocks=0))
            end = self.client.append(records=[claim], **self._ids()).end_lsn
            log.info("sqlite_claim", tenant=self.cfg.tenant_id, timeline=self.cfg.timeline_id, lsn=end)
        self.epoch = self.cache.track(self.cfg.tenant_id, self.cfg.timeline_id, end)
        return end

    def _nblocks_at(self, lsn: int) -> int:
        resp = self.client.get_rel_size(rel=self.cfg.rel, lsn=lsn, **self._ids())
        return resp.nblocks if resp.exists else 0

    # -- reads --------------------------------------------------------------------

    def _committed_page(self, blkno: int) -> bytes:
        if blkno >= self.committed_nblocks:
            return bytes(self.ps)
        for i, ahead in enumerate(self._ahead):  # usually empty: only during a sequential scan
            if ahead.start <= blkno < ahead.end:
                try:
                    pages = ahead.future.result()
                except Exception as exc:  # noqa: BLE001 - read it again below, where an error reaches SQLite
                    log.warning("sqlite_read_ahead_failed", tenant=self.cfg.tenant_id, timeline=self.cfg.timeline_id,
                                lsn=self.read_lsn, blkno=blkno, error=repr(exc))
                    self._forget_read_ahead()
                    break
                if i == len(self._ahead) - 1:
                    # The scan reached the newest window: fetch the next one while SQLite works on this one.
                    self._window = min(self._window * 2, MAX_READAHEAD)
                    self._read_ahead(ahead.end)
                del self._ahead[:i]
                return pages[blkno - ahead.start]
        cached = self.cache.get(self.cfg.tenant_id, self.cfg.timeline_id, self.cfg.rel, blkno, self.read_lsn)
        if cached is not None:
            return cached
        sequential = blkno == self._next_sequential
        self._window = min(self._window * 2, MAX_READAHEAD) if sequential else 1
        last = min(blkno + self._window, self.committed_nblocks)
        self._next_sequential = last
        pages = self._fetch(list(range(blkno, last)), self.read_lsn)
        if sequential:
            self._ahead.clear()
            self._read_ahead(last)
        return pages[0]

    def _read_ahead(self, start: int) -> None:
        """Fetch the `_window` blocks from `start` in the background (GetPages)."""
        end = min(start + self._window, self.committed_nblocks)
        if start >= end:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="strata-read-ahead")
        self._ahead.append(_ReadAhead(start, end, self._pool.submit(self._fetch, list(range(start, end)), self.read_lsn)))
        self._next_sequential = end

    def _forget_read_ahead(self) -> None:
        """The read LSN or the committed size moved: windows read before are not to be served."""
        self._ahead.clear()
        self._next_sequential = -1

    def _fetch(self, blknos: list[int], lsn: int) -> list[bytes]:
        """page@lsn of each block, from the pageserver; each put in the cache. Runs on
        SQLite's thread or the read-ahead thread: it touches only the client and the cache."""
        if len(blknos) == 1:
            pages: list[bytes | PageError] = [
                self.client.get_page(rel=self.cfg.rel, blkno=blknos[0], lsn=lsn, **self._ids()).page
            ]
        else:
            pages = self.client.read_pages(keys=[(self.cfg.rel, b) for b in blknos], lsn=lsn, batch=64, **self._ids())
        out: list[bytes] = []
        for blkno, page in zip(blknos, pages):
            if isinstance(page, PageError):
                raise OSError(
                    f"tenant={self.cfg.tenant_id} timeline={self.cfg.timeline_id} rel={self.cfg.rel} "
                    f"blkno={blkno} lsn={lsn}: GetPages failed: {page}"
                )
            self.cache.put(self.cfg.tenant_id, self.cfg.timeline_id, self.cfg.rel, blkno, lsn, page)
            out.append(page)
        return out

    def _page(self, blkno: int) -> bytes:
        page = self.dirty.get(blkno)
        if page is not None:
            return page
        if blkno >= self.floor:
            return bytes(self.ps)  # truncated by this transaction, then extended past again
        return self._committed_page(blkno)

    def xRead(self, amount: int, offset: int) -> bytes:
        if amount == self.ps and offset % amount == 0 and offset < self.size_blocks * amount:
            return self._page(offset // amount)  # the common case: one whole page
        end = min(offset + amount, self.size_blocks * self.ps)
        if offset >= end:
            return b""  # apsw zero-fills a short read and reports SQLITE_IOERR_SHORT_READ
        first, last = offset // self.ps, (end - 1) // self.ps
        if first == last:
            start = offset - first * self.ps
            return self._page(first)[start : start + end - offset]
        data = b"".join(self._page(b) for b in range(first, last + 1))
        start = offset - first * self.ps
        return data[start : start + end - offset]

    def xFileSize(self) -> int:
        return self.size_blocks * self.ps

    # -- writes -------------------------------------------------------------------

    def _refuse_readonly(self) -> None:
        if self.readonly:
            raise apsw.ReadOnlyError(
                f"tenant={self.cfg.tenant_id} timeline={self.cfg.timeline_id} is open read-only at lsn={self.read_lsn}; "
                "open it with lsn=None to write"
            )

    def xWrite(self, data: bytes, offset: int) -> None:
        self._refuse_readonly()
        pos = 0
        while pos < len(data):
            blkno, within = divmod(offset + pos, self.ps)
            n = min(self.ps - within, len(data) - pos)
            if within == 0 and n == self.ps:
                page = bytes(data[pos : pos + n])
            else:
                buf = bytearray(self._page(blkno) if blkno < self.size_blocks else bytes(self.ps))
                buf[within : within + n] = data[pos : pos + n]
                page = bytes(buf)
            self.dirty[blkno] = page
            self.size_blocks = max(self.size_blocks, blkno + 1)
            pos += n

    def xTruncate(self, size: int) -> None:
        self._refuse_readonly()
        if size % self.ps:
            raise OSError(f"truncate to {size} bytes: a Strata database file holds whole {self.ps}-byte pages")
        self.size_blocks = size // self.ps
        self.floor = min(self.floor, self.size_blocks)
        for blkno in [b for b in self.dirty if b >= self.size_blocks]:
            del self.dirty[blkno]

    def xSync(self, flags: int) -> None:
        """SQLite sends SQLITE_FCNTL_SYNC just before this (see `xFileControl`), which
        shipped the changes already; this ships only what a sync without it would leave."""
        self._ship()

    def _ship(self) -> None:
        """SQLite's commit point (and the end of a rollback that spilled): ship the changes.
        A no-op when there is nothing to ship, so the sync file control and xSync can both call it."""
        if self.readonly or self.failed is not None:
            return
        if not self.dirty and self.size_blocks == self.committed_nblocks and self.floor == self.committed_nblocks:
            return
        self._commit()

    def _commit(self) -> None:
        started = time.monotonic()
        final = self.size_blocks
        # A transaction that truncated the file below its committed size and grew it again
        # ships the cut first: the blocks it did not write again then read as zeros on Strata
        # (a RelSize cuts blocks at or past it; a later extension reads zeros).
        cut_to = min(self.floor, final)
        records: list[records_pb2.Record] = []
        base_nblocks = self.committed_nblocks  # blocks the changes apply to (past it: zeros)
        if cut_to < self.committed_nblocks and final > cut_to:
            records.append(records_pb2.Record(rel_size=records_pb2.RelSize(rel=self.cfg.rel, nblocks=cut_to)))
            base_nblocks = cut_to
        blknos = sorted(b for b in self.dirty if b < final)
        old_pages: dict[int, bytes] = {}
        missing: list[int] = []
        for b in blknos:
            if b >= base_nblocks:
                old_pages[b] = bytes(self.ps)
            elif (cached := self.cache.get(self.cfg.tenant_id, self.cfg.timeline_id, self.cfg.rel, b, self.read_lsn)) is not None:
                old_pages[b] = cached
            else:
                missing.append(b)
        if missing:
            old_pages.update(zip(missing, self._fetch(missing, self.read_lsn)))
        changed = page_records(self.cfg.rel, [(b, old_pages[b], self.dirty[b]) for b in blknos])
        records += [record for _, record in changed]
        written = {(self.cfg.rel, b): self.dirty[b] for b, _ in changed}
        last_written = max((b for _, b in written), default=-1)
        if final < base_nblocks or (final > base_nblocks and last_written != final - 1):
            records.append(records_pb2.Record(rel_size=records_pb2.RelSize(rel=self.cfg.rel, nblocks=final)))
        if not records:
            self.dirty.clear()
            self.floor = self.committed_nblocks
            return
        request = wal_pb2.AppendRequest(records=records, expected_end_lsn=self.read_lsn, **self._ids())
        if self._commits is None:
            self._commits = CommitStream(self.client.walservice, append_timeout=self.client.timeout, tls_ca=self.client.tls_ca)
        try:
            resp = self._commits.append(request.SerializeToString(), **self._ids())
        except AppendFailed as exc:
            self.failed = self._append_failure(exc.code, exc.message, len(records))
            raise self.failed from None
        cut = [(self.cfg.rel, b) for b in range(cut_to, self.committed_nblocks)]
        self.cache.advance(self.cfg.tenant_id, self.cfg.timeline_id, self.epoch, resp.end_lsn, written, cut)
        log.info(
            "sqlite_commit",
            tenant=self.cfg.tenant_id,
            timeline=self.cfg.timeline_id,
            lsn=resp.end_lsn,
            records=len(records),
            pages=len(written),
            nblocks=final,
            ms=round((time.monotonic() - started) * 1000, 2),
        )
        self.read_lsn = resp.end_lsn
        self._end_learned = time.monotonic()
        self.committed_nblocks = self.floor = final
        self.dirty.clear()
        if self.cfg.on_commit is not None:
            self.cfg.on_commit(resp.end_lsn)
        self._forget_read_ahead()

    def _append_failure(self, code: grpc.StatusCode, details: str, n_records: int) -> Exception:
        """What a failed commit raises (and logs): refused, a conflict, or an unknown outcome."""
        where = f"tenant={self.cfg.tenant_id} timeline={self.cfg.timeline_id}"
        fields = {"tenant": self.cfg.tenant_id, "timeline": self.cfg.timeline_id, "lsn": self.read_lsn, "code": code.name}
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            log.warning("sqlite_write_conflict", **fields)
            return WriteConflict(
                f"{where}: another writer moved the timeline past lsn={self.read_lsn}, the LSN this transaction read "
                f"at ({details}); nothing of this transaction was written. Run it again: the next transaction "
                "reads the timeline's new end"
            )
        if code in REFUSALS:
            log.warning("sqlite_commit_refused", **fields)
            return CommitRefused(
                f"{where}: the walservice refused the commit's Append ({n_records} records) with {code.name}: "
                f"{details}; nothing of this transaction was written"
            )
        # Not refused: the append may or may not have been applied (a lost reply). The next
        # transaction re-reads the timeline's end, so it builds on whatever is there.
        log.warning("sqlite_commit_uncertain", **fields)
        return CommitUncertain(
            f"{where}: the commit's Append failed with {code.name}: {details}; it may or may not have been "
            "applied. The next transaction re-reads the timeline: check there whether this one is in it before "
            "running it again"
        )

    # -- locks and the rest ---------------------------------------------------------

    def xFileControl(self, op: int, ptr: int) -> bool:
        """SQLITE_FCNTL_SYNC: SQLite's commit point, sent just before it syncs the database
        file, and in place of that sync under synchronous=OFF: ship the transaction.
        SQLITE_FCNTL_COMMIT_PHASETWO: the commit is done, after SQLite truncated the file
        (VACUUM, auto_vacuum): ship that shrink. SQLITE_FCNTL_PRAGMA: refuse the PRAGMAs
        that would break commits (SQLite asks the VFS first)."""
        if op == apsw.SQLITE_FCNTL_SYNC:
            self._ship()
            return True
        if op == apsw.SQLITE_FCNTL_COMMIT_PHASETWO:
            self._ship_shrink()
            return True
        if op != apsw.SQLITE_FCNTL_PRAGMA:
            return False
        pragma = apsw.VFSFcntlPragma(ptr)
        why = refused_pragma(pragma.name, pragma.value)
        if why is not None:
            raise apsw.SQLError(f"PRAGMA {pragma.name}={pragma.value} is refused on a Strata database: {why}")
        return False

    def _ship_shrink(self) -> None:
        """Ships a truncation SQLite made after the commit's sync. Shipped on its own, it
        can fail while the commit stands: the file is then longer than SQLite's header
        says, which SQLite ignores."""
        if self.readonly or self.failed is not None or self.dirty or self.size_blocks >= self.committed_nblocks:
            return
        try:
            self._commit()
        except (CommitRefused, CommitUncertain) as exc:
            log.warning("sqlite_truncate_not_shipped", tenant=self.cfg.tenant_id, timeline=self.cfg.timeline_id,
                        lsn=self.read_lsn, nblocks=self.size_blocks, error=str(exc))

    def xUnlock(self, level: int) -> None:
        if level > SQLITE_SHARED_LOCK:
            return  # still in a write transaction
        if self._on_transaction_end is not None:
            self._on_transaction_end()  # the journal is dead now (committed or rolled back)
        if (not self.dirty and self.failed is None and self.size_blocks == self.committed_nblocks
                and self.floor == self.committed_nblocks):
            return  # after a read-only transaction, or a shipped commit: nothing to do
        # A shrink not shipped at SQLITE_FCNTL_COMMIT_PHASETWO (a SQLite that sends none).
        self._ship_shrink()
        # The write transaction is over: whatever is still dirty was rolled back.
        self.dirty.clear()
        self.size_blocks = self.floor = self.committed_nblocks
        if self.failed is not None:
            self.failed = None
            self.stale = True  # re-read at the next transaction's start (the services may be down now)

    def xLock(self, level: int) -> None:
        """SQLite takes SHARED (from no lock) when a transaction starts: a read-write
        connection starts it at the timeline's end (the module docstring)."""
        if self.readonly or level != SQLITE_SHARED_LOCK:
            return
        if self.stale:
            self._reread()  # after a failed commit, whatever the outcome was
            return
        asked_at = time.monotonic()
        if asked_at - self._end_learned < self.cfg.end_check_s:
            return  # the end was learned recently enough (the module docstring's rule)
        try:
            end = self.client.status(**self._ids()).flush_lsn
        except grpc.RpcError as exc:
            log.warning("sqlite_end_unknown", tenant=self.cfg.tenant_id, timeline=self.cfg.timeline_id,
                        lsn=self.read_lsn, code=exc.code().name, action="reading at the connection's last LSN")
            return
        if end > self.read_lsn:  # another writer committed since: start at the new end
            self._reread(end)
        self._end_learned = asked_at

    def _reread(self, end: int | None = None) -> None:
        """Move to the timeline's end (`end` if just read): drop the cached pages of the old
        read LSN. SQLite then sees a new change counter in page 1 and drops its own cache."""
        self.cache.untrack(self.cfg.tenant_id, self.cfg.timeline_id)
        self.read_lsn = self._writer_start(end)
        self.committed_nblocks = self.size_blocks = self.floor = self._nblocks_at(self.read_lsn)
        self._forget_read_ahead()
        self.stale = False
        log.info("sqlite_reread", tenant=self.cfg.tenant_id, timeline=self.cfg.timeline_id, lsn=self.read_lsn)

    def xClose(self) -> None:
        self.dirty.clear()
        self._forget_read_ahead()
        if self._commits is not None:
            self._commits.close()
            self._commits = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class StrataVFS(apsw.VFS):
    """Main database files are Strata relations; journals live in memory; temp files
    go to the default VFS (local temp, deleted on close)."""

    def __init__(self) -> None:
        super().__init__(VFS_NAME, base="")
        self._lock = threading.Lock()  # guards _scratch
        self._scratch: dict[str, _ScratchFile] = {}

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> object:
        filename = name.filename() if isinstance(name, apsw.URIFilename) else name
        if filename is None:
            return super().xOpen(name, flags)
        if flags[0] & apsw.SQLITE_OPEN_MAIN_DB:
            with _registry.lock:
                config = _registry.configs.pop(filename, None)
            if config is None:
                raise apsw.CantOpenError(f"{filename!r} is not a database opened with compute_shim.connect_sqlite")
            return StrataDbFile(config, on_transaction_end=lambda: self.release_scratch(filename))
        if flags[0] & apsw.SQLITE_OPEN_WAL:
            raise apsw.CantOpenError(
                f"{filename!r}: journal_mode=WAL is not supported on Strata (each commit is already one atomic "
                "append); keep journal_mode=MEMORY"
            )
        with self._lock:
            scratch = self._scratch.get(filename)
            if scratch is None:
                scratch = self._scratch[filename] = _ScratchFile(on_close=lambda: self._forget_scratch(filename))
            return scratch

    def xAccess(self, pathname: str, flags: int) -> bool:
        return False  # no hot journals: nothing of an unfinished transaction outlives it

    def xDelete(self, filename: str, syncdir: bool) -> None:
        with self._lock:
            scratch = self._scratch.pop(filename, None)
        if scratch is not None:
            scratch.release()

    def _forget_scratch(self, filename: str) -> None:
        """SQLite closed the file: nothing reads it again (there is no hot-journal recovery)."""
        with self._lock:
            self._scratch.pop(filename, None)

    def release_scratch(self, db_filename: str) -> None:
        """The transaction on `db_filename` ended: free its journals' bytes (journal_mode
        TRUNCATE or PERSIST keep the journal; MEMORY never makes one; DELETE deletes it)."""
        prefix = db_filename + "-"
        with self._lock:
            files = [f for name, f in self._scratch.items() if name.startswith(prefix)]
        for f in files:
            f.release()

    def scratch_bytes(self) -> int:
        """Bytes held by in-memory journals of all open transactions."""
        with self._lock:
            return sum(len(f.data) for f in self._scratch.values())

    def xFullPathname(self, name: str) -> str:
        return name


def _ensure_vfs() -> None:
    global _vfs
    with _vfs_lock:
        if _vfs is None:
            _vfs = StrataVFS()


def connect_sqlite(
    client: Client,
    tenant: str,
    timeline: str,
    lsn: int | None = None,
    *,
    rel: int = SQLITE_REL,
    on_commit: Callable[[int], None] | None = None,
    end_check_s: float = DEFAULT_END_CHECK_S,
) -> apsw.Connection:
    """An apsw.Connection on the timeline's SQLite database: read-write (lsn=None),
    each transaction starting at the timeline's end (another writer's commit
    during a transaction fails it with `WriteConflict`); or
    read-only at the last commit at or below LSN `lsn` (0: the current end; which
    LSN: `read_lsn_of(db)`, see the module's docstring). `on_commit(end_lsn)` is called after each
    commit this connection makes (the LSN to read it at later, e.g. `lsn=`).
    `end_check_s`: a read-write transaction starts at the timeline's end as known
    at most this many seconds ago (0: asks the walservice at every transaction)."""
    if not end_check_s >= 0:
        raise ValueError(f"end_check_s={end_check_s!r}: give a number of seconds >= 0")
    status = client.status(tenant_id=tenant, timeline_id=timeline)
    page_size = status.page_size
    if lsn is not None:
        if lsn == 0:
            lsn = status.flush_lsn
        if lsn > status.flush_lsn:
            raise ValueError(
                f"tenant={tenant} timeline={timeline}: lsn={lsn} is past the timeline's end {status.flush_lsn}; "
                f"pass an LSN at or below it"
            )
        if lsn == 0:
            raise ValueError(f"tenant={tenant} timeline={timeline} has no records yet: there is nothing to read")
        info = client.get_timeline(tenant_id=tenant, timeline_id=timeline)
        lsn = commit_lsn_at_or_below(client, tenant, timeline, lsn, info.gc_cutoff_lsn)
    _ensure_vfs()
    name = f"strata-{tenant}-{timeline}-{'rw' if lsn is None else lsn}-{next(_registry.counter)}.db"
    with _registry.lock:
        _registry.configs[name] = _DbConfig(client, tenant, timeline, rel, page_size, lsn, on_commit, end_check_s)
    flags = apsw.SQLITE_OPEN_READONLY if lsn is not None else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    try:
        db = apsw.Connection(name, flags=flags, vfs=VFS_NAME)
    finally:
        with _registry.lock:
            _registry.configs.pop(name, None)
    try:
        _check_page_size(db, tenant, timeline, page_size, readonly=lsn is not None)
    except Exception:
        db.close()
        raise
    if lsn is not None:
        remember_read_lsn(db, lsn)
    return db


def _check_page_size(db: apsw.Connection, tenant: str, timeline: str, page_size: int, readonly: bool) -> None:
    if not readonly:
        db.execute(f"PRAGMA page_size={page_size}").fetchall()  # takes effect on a new database only
        db.execute("PRAGMA journal_mode=MEMORY").fetchall()
    else:
        db.execute("PRAGMA query_only=1").fetchall()
    actual = db.execute("PRAGMA page_size").fetchall()[0][0]
    empty = db.execute("PRAGMA page_count").fetchall()[0][0] == 0
    if actual != page_size and not empty:
        raise ValueError(
            f"tenant={tenant} timeline={timeline}: the database's SQLite page_size is {actual} but the tenant's page "
            f"size is {page_size}; a Strata SQLite database must use the tenant's page size"
        )
