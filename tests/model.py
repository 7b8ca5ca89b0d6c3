"""A plain in-memory reference model of the contract's redo rules.

Everything the pageserver answers is checked against this: page@LSN and a
relation's size@LSN on every timeline, branches included. It replays records
from the zero state, the slow obvious way, straight from DESIGN.md:

- PageImage: the page becomes `page`; PagePatch: splices overwrite in order;
  writing block b extends the relation to at least b + 1 blocks (creating it);
- RelSize: the size becomes nblocks (creating the relation); blocks at or past
  it are gone (a later extension reads zeros); RelDrop: the relation is gone.
- A branch sees its ancestor's records up to ancestor_lsn, then its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from strata.redo import apply_to_page
from strata.v1 import records_pb2


@dataclass
class RelModel:
    nblocks: int = 0
    pages: dict[int, bytearray] = field(default_factory=dict)


class PageMissing(Exception):
    """The relation does not exist (NOT_FOUND) at that LSN."""


class BlockOutOfRange(Exception):
    """The block is at or past the relation's end (OUT_OF_RANGE) at that LSN."""


@dataclass
class ModelTimeline:
    page_size: int
    ancestor: ModelTimeline | None = None
    ancestor_lsn: int = 0
    records: list[tuple[int, records_pb2.Record]] = field(default_factory=list)

    def add(self, lsn: int, record: records_pb2.Record) -> None:
        assert not self.records or lsn > self.records[-1][0]
        assert lsn > self.ancestor_lsn
        self.records.append((lsn, record))

    @property
    def last_lsn(self) -> int:
        return self.records[-1][0] if self.records else self.ancestor_lsn

    def history(self, lsn: int) -> list[records_pb2.Record]:
        base = self.ancestor.history(min(lsn, self.ancestor_lsn)) if self.ancestor else []
        return base + [r for l, r in self.records if l <= lsn]

    def state(self, lsn: int) -> dict[int, RelModel]:
        rels: dict[int, RelModel] = {}
        for record in self.history(lsn):
            kind = record.WhichOneof("kind")
            if kind in ("image", "patch"):
                body = getattr(record, kind)
                rel = rels.setdefault(body.rel, RelModel())
                page = rel.pages.setdefault(body.blkno, bytearray(self.page_size))
                apply_to_page(page, record)
                rel.nblocks = max(rel.nblocks, body.blkno + 1)
            elif kind == "rel_size":
                rel = rels.setdefault(record.rel_size.rel, RelModel())
                rel.nblocks = record.rel_size.nblocks
                rel.pages = {b: p for b, p in rel.pages.items() if b < rel.nblocks}
            elif kind == "rel_drop":
                rels.pop(record.rel_drop.rel, None)
        return rels

    def page(self, rel: int, blkno: int, lsn: int) -> bytes:
        rels = self.state(lsn)
        if rel not in rels:
            raise PageMissing(rel)
        if blkno >= rels[rel].nblocks:
            raise BlockOutOfRange((rel, blkno))
        return bytes(rels[rel].pages.get(blkno, bytes(self.page_size)))

    def rel_size(self, rel: int, lsn: int) -> tuple[bool, int]:
        rels = self.state(lsn)
        return (True, rels[rel].nblocks) if rel in rels else (False, 0)

    def lsns(self) -> list[int]:
        """Every LSN worth reading at: the branch point and each own record's LSN."""
        return [self.ancestor_lsn, *(l for l, _ in self.records)] if self.ancestor else [l for l, _ in self.records]
