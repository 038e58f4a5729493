"""ClusterState: encoding, pg_controldata parsing, PostgreSQL's redo rules for
the control values, and pg_resetwal switches."""

from __future__ import annotations

import random
import re
import struct
from pathlib import Path

import pytest

from strata.errors import CorruptionError
from strata.ingest.cluster_state import ClusterStateTracker, cluster_state_from_pg_controldata
from strata.keyspace.cluster import ENCODED_SIZE, ClusterState
from strata.lsn import Lsn
from strata.pg.transam import xid_advance, xid_retreat
from strata.pg.xlogfile import segment_file_name
from strata.wal.record import DecodedRecord

DATA = Path(__file__).resolve().parent.parent / "data" / "transam"
_CKPT = struct.Struct("<QII?3xiQIIIIIII4xqIII4x")


def base_state(**kw: object) -> ClusterState:
    values: dict[str, object] = dict(lsn=Lsn(0x1000), next_full_xid=1000, next_oid=20000,
                                     next_multi=5, next_multi_offset=9, oldest_xid=700,
                                     oldest_xid_db=1, oldest_multi=1, oldest_multi_db=1)
    values.update(kw)
    return ClusterState(**values)  # type: ignore[arg-type]


_lsn = [0x2000]


def rec(rmid: int, info: int, data: bytes = b"", xid: int = 0) -> DecodedRecord:
    _lsn[0] += 0x40
    return DecodedRecord(lsn=Lsn(_lsn[0]), end_lsn=Lsn(_lsn[0] + 0x38), xl_tot_len=0, xl_xid=xid,
                         xl_prev=Lsn(0), xl_info=info, xl_rmid=rmid, xl_crc=0, blocks=(),
                         main_data=data)


def checkpoint(shutdown: bool, *, nfx: int, noid: int, nmulti: int, noff: int, oxid: int,
               omulti: int, tli: int = 1) -> DecodedRecord:
    data = _CKPT.pack(0x1234, tli, tli, True, 1, nfx, noid, nmulti, noff, oxid, 2, omulti, 3,
                      1_700_000_000, 0, 0, 0)
    return rec(0, 0x00 if shutdown else 0x10, data)


def test_encoding_round_trips_every_field() -> None:
    s = base_state(next_full_xid=(7 << 32) | 123, timeline=3, prev_timeline=2, wal_log_hints=True,
                   track_commit_timestamp=True, full_page_writes=False, char_signed=False,
                   checkpoint_redo=Lsn(0xABCDEF), max_prepared_xacts=10, wal_level=2)
    data = s.to_bytes()
    assert len(data) == ENCODED_SIZE == 104
    assert ClusterState.from_bytes(data) == s


@pytest.mark.parametrize("mutate", [lambda b: b"XXXX" + b[4:], lambda b: b[:4] + b"\x02\x00" + b[6:],
                                    lambda b: b[:-1]])
def test_bad_encodings_raise_corruption(mutate) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CorruptionError):
        ClusterState.from_bytes(mutate(base_state().to_bytes()))


def test_from_pg_controldata_reads_a_real_output() -> None:
    text = (DATA / "pg_controldata.txt").read_text()

    def field(label: str) -> str:
        m = re.search(re.escape(label) + r":\s*(\S+)", text)
        assert m, label
        return m.group(1)

    s = cluster_state_from_pg_controldata(text)
    assert s.lsn == Lsn.parse(field("Latest checkpoint location"))
    assert s.checkpoint_redo == Lsn.parse(field("Latest checkpoint's REDO location"))
    assert f"{s.next_xid_epoch}:{s.next_xid}" == field("Latest checkpoint's NextXID")
    assert str(s.next_oid) == field("Latest checkpoint's NextOID")
    assert str(s.next_multi) == field("Latest checkpoint's NextMultiXactId")
    assert str(s.next_multi_offset) == field("Latest checkpoint's NextMultiOffset")
    assert str(s.oldest_xid) == field("Latest checkpoint's oldestXID")
    assert str(s.oldest_xid_db) == field("Latest checkpoint's oldestXID's DB")
    assert str(s.oldest_multi) == field("Latest checkpoint's oldestMultiXid")
    assert str(s.oldest_multi_db) == field("Latest checkpoint's oldestMulti's DB")
    assert str(s.newest_commit_ts_xid) == field("Latest checkpoint's newestCommitTsXid")
    assert str(s.wal_segment_size) == field("Bytes per WAL segment") == str(16 * 1024 * 1024)
    assert str(s.timeline) == field("Latest checkpoint's TimeLineID")
    assert str(s.max_connections) == field("max_connections setting") == "90"
    assert str(s.max_prepared_xacts) == field("max_prepared_xacts setting")
    assert s.char_signed and s.full_page_writes and not s.wal_log_hints


def test_every_record_xid_advances_next_xid_past_it() -> None:
    t = ClusterStateTracker(base_state())
    assert t.apply(rec(10, 0x00, xid=1000))  # a heap insert by xid 1000
    assert t.state.next_full_xid == 1001
    assert not t.apply(rec(10, 0x00, xid=900))  # older xids do not move it
    assert t.state.next_full_xid == 1001 and t.state.lsn == Lsn(_lsn[0] + 0x38)


def test_next_xid_wraps_into_the_next_epoch_skipping_special_xids() -> None:
    t = ClusterStateTracker(base_state(next_full_xid=0xFFFFFFF0))
    t.apply(rec(10, 0x00, xid=0xFFFFFFFF))
    assert (t.state.next_xid_epoch, t.state.next_xid) == (1, 3)
    t2 = ClusterStateTracker(base_state(next_full_xid=0xFFFFFFF0))
    t2.apply(rec(10, 0x00, xid=5))  # already wrapped: 5 follows 0xFFFFFFF0
    assert (t2.state.next_xid_epoch, t2.state.next_xid) == (1, 6)
    assert xid_advance(0xFFFFFFFF) == 3 and xid_retreat(3) == 0xFFFFFFFF


def test_commit_advances_past_its_largest_subxact() -> None:
    t = ClusterStateTracker(base_state())
    data = struct.pack("<qI", 0, 0x02) + struct.pack("<i3I", 3, 1001, 1500, 1200)
    t.apply(rec(1, 0x80, data, xid=1000))
    assert t.state.next_full_xid == 1501


def test_commit_prepared_advances_past_the_twophase_xid() -> None:
    t = ClusterStateTracker(base_state())
    data = struct.pack("<qI", 0, 0x10) + struct.pack("<I", 1700)
    t.apply(rec(1, 0x30 | 0x80, data, xid=0))
    assert t.state.next_full_xid == 1701


def test_shutdown_checkpoint_is_believed_exactly_online_only_as_minimum() -> None:
    t = ClusterStateTracker(base_state(next_full_xid=5000, next_oid=30000, next_multi=50,
                                       next_multi_offset=90))
    t.apply(checkpoint(False, nfx=4000, noid=10000, nmulti=40, noff=80, oxid=800, omulti=3))
    s = t.state
    assert (s.next_full_xid, s.next_oid, s.next_multi, s.next_multi_offset) == (5000, 30000, 50, 90)
    assert (s.oldest_xid, s.oldest_xid_db, s.oldest_multi, s.oldest_multi_db) == (800, 2, 3, 3)
    t.apply(checkpoint(False, nfx=6000, noid=10000, nmulti=60, noff=95, oxid=750, omulti=2))
    s = t.state
    assert (s.next_full_xid, s.next_multi, s.next_multi_offset) == (6000, 60, 95)
    assert (s.oldest_xid, s.oldest_multi) == (800, 3)  # never moves back online
    t.apply(checkpoint(True, nfx=4000, noid=10000, nmulti=40, noff=80, oxid=750, omulti=2))
    s = t.state
    assert (s.next_full_xid, s.next_oid, s.next_multi, s.next_multi_offset) == (4000, 10000, 40, 80)
    assert s.oldest_xid == 750 and s.oldest_multi == 3  # oldest multi only advances
    assert s.checkpoint_redo == Lsn(0x1234)


def test_nextoid_is_believed_exactly() -> None:
    t = ClusterStateTracker(base_state(next_oid=30000))
    t.apply(rec(0, 0x30, struct.pack("<I", 24576)))
    assert t.state.next_oid == 24576


def test_multixact_create_and_truncate_move_the_multixact_counters() -> None:
    t = ClusterStateTracker(base_state())
    t.apply(rec(6, 0x20, struct.pack("<IIi", 7, 20, 2) + struct.pack("<IiIi", 1000, 1, 2000, 0),
                xid=1000))
    s = t.state
    assert (s.next_multi, s.next_multi_offset, s.next_full_xid) == (8, 22, 2001)
    t.apply(rec(6, 0x20, struct.pack("<IIi", 6, 10, 1) + struct.pack("<Ii", 1000, 1)))
    assert (t.state.next_multi, t.state.next_multi_offset) == (8, 22)  # never backwards
    t.apply(rec(6, 0x30, struct.pack("<IIIII", 4, 1, 6, 0, 10)))
    assert (t.state.oldest_multi, t.state.oldest_multi_db) == (6, 4)


def test_running_xacts_advances_next_xid() -> None:
    t = ClusterStateTracker(base_state())
    t.apply(rec(8, 0x10, struct.pack("<ii?3xIII", 0, 0, False, 1800, 1800, 1799)))
    assert t.state.next_full_xid == 1800


def test_parameter_change_and_end_of_recovery_update_settings_and_timeline() -> None:
    t = ClusterStateTracker(base_state())
    t.apply(rec(0, 0x60, struct.pack("<iiiiii??2x", 90, 8, 10, 10, 64, 1, True, False)))
    assert (t.state.max_connections, t.state.max_prepared_xacts, t.state.wal_log_hints) == (90, 10, True)
    t.apply(rec(0, 0x90, struct.pack("<qIIi4x", 0, 2, 1, 1)))
    assert (t.state.timeline, t.state.prev_timeline) == (2, 1)


def test_the_next_xid_fast_path_encodes_what_apply_does() -> None:
    """`advance_xid` + `value` (ingest's hot path: no ClusterState per transaction)
    against `apply` of the same records + `state.to_bytes()`, through random xids
    (older ones, an epoch wrap) and records that move other fields in between."""
    rnd = random.Random(7)
    start = base_state(next_full_xid=0xFFFFFE00)
    fast, slow = ClusterStateTracker(start), ClusterStateTracker(start)
    others = [lambda: rec(0, 0x30, struct.pack("<I", rnd.randrange(16384, 1 << 31))),
              lambda: rec(6, 0x20, struct.pack("<IIi", rnd.randrange(5, 900),
                                               rnd.randrange(9, 900), 1)
                          + struct.pack("<Ii", 3, 1))]
    moved = 0
    for i in range(600):
        if i % 37 == 36:
            r = rnd.choice(others)()
            assert fast.apply(r) == slow.apply(r)
        else:
            nxt = fast.state.next_xid if i % 50 == 0 else slow.state.next_xid
            xid = (nxt + rnd.randrange(-20, 40)) & 0xFFFFFFFF
            r = rec(10, 0x00, xid=max(xid, 3))
            changed = fast.advance_xid(r.xl_xid, r.end_lsn)
            assert changed == slow.apply(r)
            moved += changed
        assert fast.value() == slow.state.to_bytes()
    assert fast.state == slow.state and fast.state.next_xid_epoch == 1 and moved > 200


def test_wal_file_names_split_segment_numbers_like_postgresql() -> None:
    assert segment_file_name(1, 2, 16 << 20) == "000000010000000000000002"
    assert segment_file_name(3, 257, 16 << 20) == "000000030000000100000001"
    assert segment_file_name(1, 5, 1 << 30) == "000000010000000100000001"


@pytest.mark.parametrize("next_xid", [0xFFFFFF00, 1000, 0x7FFFFFF0])
def test_advancing_many_xids_at_once_equals_advancing_them_one_by_one(next_xid: int) -> None:
    """`advance_xids` + `values_at` (ingest's runs of plain commits) against
    `advance_xid` + `value` per xid: the same moves, next XIDs and encodings, through
    older xids, repeats, runs that wrap the counter (the loop) and runs that do not
    (numpy), whatever the batch sizes."""
    import numpy as np

    rnd = random.Random(next_xid)
    start = base_state(next_full_xid=(5 << 32) | next_xid)
    one, many = ClusterStateTracker(start), ClusterStateTracker(start)
    lsn, nxt, numpy_runs = 1000, next_xid, 0
    for _ in range(60):
        size = rnd.choice([1, 2, 7, 40, 300])
        xids, ends = [], []
        for _ in range(size):
            nxt = (nxt + rnd.randrange(-3, 5)) & 0xFFFFFFFF
            xids.append(max(nxt, 3))  # callers pass normal xids only
            lsn += rnd.randrange(1, 200)
            ends.append(lsn)
        expect_moved, expect_values = [], []
        for i, (x, e) in enumerate(zip(xids, ends, strict=True)):
            if one.advance_xid(x, Lsn(e)):
                expect_moved.append(i)
                expect_values.append(one.value())
        moved, nexts = many.advance_xids(xids, ends)
        numpy_runs += min(xids) >= 3 and not any(x < 0x100 for x in xids)
        assert moved == expect_moved
        rows = many.values_at(np.array(ends)[moved], np.array(nexts, dtype=np.uint64))
        assert [r.tobytes() for r in rows] == expect_values
        assert many.value() == one.value() and many.state == one.state
    assert numpy_runs > 10
    if next_xid == 0xFFFFFF00:
        assert one.state.next_xid_epoch == 6  # the counter wrapped on the way
