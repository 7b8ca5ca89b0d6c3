"""Pure pieces of replication (docs/design/0005-replication.md): the divergence
point of two term histories, last_log_term, and the control file's version 1
(read), version 2 (read) and version 3 (written) formats."""

from __future__ import annotations

import json
import struct

import pytest
import xxhash

from strata.errors import CorruptionError

from walservice.control_file import ABSTAIN, NO_VOTE, TimelineControl
from walservice.peers import ClusterConfig
from walservice.term_history import TermStart, divergence_lsn, history, history_up_to

T, TL = "a" * 32, "b" * 32
UNBOUNDED = 1 << 64


def test_divergence_cuts_an_older_terms_suffix() -> None:
    # The follower holds term-2 records up to 400; the leader's term 3 began at 250.
    follower = history((1, 0), (2, 100))
    leader = history((1, 0), (2, 100), (3, 250))
    assert divergence_lsn(follower, 400, leader, UNBOUNDED) == 250


def test_divergence_keeps_a_prefix_of_the_leaders_log() -> None:
    # Behind in the same term: nothing to cut.
    assert divergence_lsn(history((1, 0), (2, 100)), 180, history((1, 0), (2, 100), (3, 250)), UNBOUNDED) == 180
    # Synced with this leader before a restart, records of its term past its epoch start.
    assert divergence_lsn(history((1, 0), (3, 250)), 900, history((1, 0), (3, 250)), UNBOUNDED) == 900


def test_divergence_at_a_term_the_leader_never_had() -> None:
    # The follower's term 2 (started at 100) lost: the leader went from term 1 to term 4 at 150.
    assert divergence_lsn(history((1, 0), (2, 100)), 400, history((1, 0), (4, 150)), UNBOUNDED) == 100


def test_history_entries_past_the_flush_do_not_count() -> None:
    c = TimelineControl(T, TL, 0, 8192, term=5, term_history=history((1, 0), (3, 250)))
    assert c.last_log_term(200) == 1
    assert c.last_log_term(250) == 3
    assert history_up_to(c.term_history, 249) == history((1, 0))


def test_control_file_reads_version_1_and_writes_the_current_version() -> None:
    body = json.dumps(
        {"tenant_id": T, "timeline_id": TL, "start_lsn": 0, "page_size": 8192, "term": 1,
         "term_history": [[1, 0]], "remote_consistent_lsn": 7, "backup_lsn": 3}, sort_keys=True
    ).encode()
    v1 = struct.pack("<4sB3xIQ", b"SWCF", 1, len(body), xxhash.xxh64_intdigest(body)) + body
    old = TimelineControl.decode(v1)
    assert (old.voted_for, old.commit_lsn, old.remote_consistent_lsn, old.term_history) == (NO_VOTE, 0, 7, history((1, 0)))
    new = TimelineControl(T, TL, 0, 8192, term=9, term_history=history((1, 0), (9, 80)), voted_for=ABSTAIN, commit_lsn=80)
    data = new.encode()
    assert data[4] == 4
    assert TimelineControl.decode(data) == new
    # The history is stored as [[term, start_lsn], ...], as every version wrote it.
    assert json.loads(data[20:])["term_history"] == [[1, 0], [9, 80]]
    assert new.term_history[1] == TermStart(9, 80)


def test_control_file_reads_version_2_and_writes_catchup_lsn() -> None:
    body = json.dumps(
        {"tenant_id": T, "timeline_id": TL, "start_lsn": 0, "page_size": 8192, "term": 4, "term_history": [[1, 0], [4, 60]],
         "remote_consistent_lsn": 7, "backup_lsn": 3, "voted_for": 2, "commit_lsn": 90}, sort_keys=True
    ).encode()
    v2 = struct.pack("<4sB3xIQ", b"SWCF", 2, len(body), xxhash.xxh64_intdigest(body)) + body
    old = TimelineControl.decode(v2)
    assert (old.term, old.voted_for, old.commit_lsn, old.catchup_lsn) == (4, 2, 90, None)
    catching_up = TimelineControl(T, TL, 0, 8192, term=5, voted_for=ABSTAIN, commit_lsn=40, catchup_lsn=120)
    data = catching_up.encode()
    assert data[4] == 4 and TimelineControl.decode(data) == catching_up
    damaged = bytearray(data)
    damaged[-3] ^= 1
    with pytest.raises(CorruptionError, match="checksum"):
        TimelineControl.decode(bytes(damaged))


def test_control_file_reads_version_3_and_writes_floor_lsn_in_version_4() -> None:
    body = json.dumps(
        {"tenant_id": T, "timeline_id": TL, "start_lsn": 0, "page_size": 8192, "term": 2, "term_history": [[1, 0], [2, 30]],
         "remote_consistent_lsn": 7, "backup_lsn": 3, "voted_for": 1, "commit_lsn": 90, "catchup_lsn": None}, sort_keys=True
    ).encode()
    v3 = struct.pack("<4sB3xIQ", b"SWCF", 3, len(body), xxhash.xxh64_intdigest(body)) + body
    old = TimelineControl.decode(v3)
    assert (old.term, old.commit_lsn, old.catchup_lsn, old.floor_lsn) == (2, 90, None, 0)
    floored = TimelineControl(T, TL, 0, 8192, commit_lsn=90, floor_lsn=150)
    data = floored.encode()
    assert data[4] == 4 and TimelineControl.decode(data).floor_lsn == 150


def test_cluster_config() -> None:
    assert ClusterConfig.parse(1, "") is None
    c = ClusterConfig.parse(2, "h:1,h:2,h:3")
    assert c is not None and c.majority == 2 and c.others == [1, 3] and c.address(3) == "h:3"


def test_control_file_with_a_malformed_history_is_corruption() -> None:
    body = json.dumps(
        {"tenant_id": T, "timeline_id": TL, "start_lsn": 0, "page_size": 8192, "term": 2, "term_history": [[1, 0, 5]]}
    ).encode()
    data = struct.pack("<4sB3xIQ", b"SWCF", 4, len(body), xxhash.xxh64_intdigest(body)) + body
    with pytest.raises(CorruptionError, match="wrong shape"):
        TimelineControl.decode(data, "ctl")
