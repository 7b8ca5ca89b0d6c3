"""A timeline's term history: which term sequenced which part of its log.

The history is a tuple of `TermStart(term, start_lsn)` entries, oldest first,
terms strictly increasing: records with LSN > `start_lsn` (up to the next
entry's `start_lsn`, or the log's end) were sequenced by the leader of `term`
(docs/design/0005-replication.md, "Election"). It travels in the control file
(as JSON `[[term, start_lsn], ...]`) and in PeerAppend (`peer_pb2.TermEntry`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from strata.ids import Lsn, Term
from strata.v1 import peer_pb2


@dataclass(frozen=True)
class TermStart:
    """One history entry: `term` sequenced the records after `start_lsn`."""

    term: Term
    start_lsn: Lsn


TermHistory = tuple[TermStart, ...]


def history(*pairs: tuple[int, int]) -> TermHistory:
    """A history from (term, start_lsn) pairs, oldest first."""
    return tuple(TermStart(Term(t), Lsn(lsn)) for t, lsn in pairs)


def history_to_json(entries: TermHistory) -> list[list[int]]:
    return [[e.term, e.start_lsn] for e in entries]


def history_from_json(raw: Iterable[Iterable[int]]) -> TermHistory:
    """The history a control file stored; ValueError/TypeError for a malformed one."""
    return history(*((int(t), int(lsn)) for t, lsn in raw))


def history_to_proto(entries: TermHistory) -> list[peer_pb2.TermEntry]:
    return [peer_pb2.TermEntry(term=e.term, start_lsn=e.start_lsn) for e in entries]


def history_from_proto(entries: Iterable[peer_pb2.TermEntry]) -> TermHistory:
    return history(*((e.term, e.start_lsn) for e in entries))


def history_up_to(entries: TermHistory, lsn: Lsn) -> TermHistory:
    """The entries that start at or below `lsn` (what a log ending at `lsn` holds)."""
    return tuple(e for e in entries if e.start_lsn <= lsn)


def last_log_term(entries: TermHistory, flush_lsn: Lsn) -> Term:
    """The term of the last entry starting at or below `flush_lsn` (0: none)."""
    term = Term(0)
    for e in entries:
        if e.start_lsn <= flush_lsn:
            term = e.term
    return term


def divergence_lsn(mine: TermHistory, my_end: Lsn, theirs: TermHistory, their_end: int) -> Lsn:
    """The highest LSN up to which two logs agree, from their term histories: the
    last common entry's term ends (next entry's start, or the log's end) at
    possibly different points in each; the smaller one. `their_end` may be 2**64
    (a leader's log, unbounded for this purpose)."""
    a, b = history_up_to(mine, my_end), history_up_to(theirs, Lsn(their_end))
    i = 0
    while i < len(a) and i < len(b) and a[i] == b[i]:
        i += 1
    if i == 0:
        return Lsn(min(a[0].start_lsn if a else my_end, b[0].start_lsn if b else their_end))
    end_a = a[i].start_lsn if i < len(a) else my_end
    end_b = b[i].start_lsn if i < len(b) else their_end
    return Lsn(min(end_a, end_b))
