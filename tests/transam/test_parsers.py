"""Typed parsers of the transam rmgrs against real WAL samples and pg_waldump.

Each sample in tests/data/transam/ is the main data of a record written by
PostgreSQL 18.6; manifest.json has its header fields and pg_waldump's
description line (the oracle). See tests/data/transam/README.md.
"""

from __future__ import annotations

import json
import re
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from strata.errors import UnsupportedRecordError, WalDecodeError
from strata.lsn import Lsn
from strata.pg.timestamp import timestamptz_to_datetime
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import clog, dbase, multixact, relmap, standby, storage, tblspc, xact, xlog

DATA = Path(__file__).resolve().parent.parent / "data" / "transam"
MANIFEST: list[dict[str, Any]] = json.loads((DATA / "manifest.json").read_text())
BY_FILE = {e["file"]: e for e in MANIFEST}

MX_STATUS = {"keysh": 0, "sh": 1, "fornokeyupd": 2, "forupd": 3, "nokeyupd": 4, "upd": 5}


def sample(name: str) -> tuple[DecodedRecord, str]:
    e = BY_FILE[name]
    data = (DATA / name).read_bytes()
    rec = DecodedRecord(lsn=Lsn.parse(e["lsn"]), end_lsn=Lsn.parse(e["end_lsn"]), xl_tot_len=0,
                        xl_xid=e["xl_xid"], xl_prev=Lsn(0), xl_info=e["xl_info"],
                        xl_rmid=e["xl_rmid"], xl_crc=0, blocks=(), main_data=data)
    return rec, e["waldump_desc"]


def ts_text(ts: int) -> str:
    return timestamptz_to_datetime(ts).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def invals_text(desc: str) -> str:
    m = re.search(r"inval msgs:(.*?)(; sync)?$", desc)
    assert m
    return m.group(1).strip()


PARSERS = {0: xlog.parse, 1: xact.parse, 2: storage.parse, 3: clog.parse, 4: dbase.parse,
           5: tblspc.parse, 6: multixact.parse, 7: relmap.parse, 8: standby.parse}


@pytest.mark.parametrize("name", sorted(BY_FILE))
def test_every_sample_parses_without_leftover_errors(name: str) -> None:
    rec, _ = sample(name)
    parsed = PARSERS[rec.xl_rmid](rec)
    assert parsed is not None


def test_samples_cover_every_common_transam_record_type() -> None:
    types = {(e["xl_rmid"], e["type"]) for e in MANIFEST}
    for rmid, t in [(0, "CHECKPOINT_SHUTDOWN"), (0, "CHECKPOINT_ONLINE"), (0, "NEXTOID"),
                    (0, "END_OF_RECOVERY"),
                    (0, "SWITCH"), (0, "BACKUP_END"), (0, "PARAMETER_CHANGE"),
                    (0, "RESTORE_POINT"), (0, "FPW_CHANGE"), (0, "CHECKPOINT_REDO"),
                    (1, "COMMIT"), (1, "ABORT"), (1, "PREPARE"), (1, "COMMIT_PREPARED"),
                    (1, "ABORT_PREPARED"), (1, "ASSIGNMENT"), (1, "INVALIDATION"),
                    (2, "CREATE"), (2, "TRUNCATE"),
                    (3, "ZEROPAGE"), (4, "CREATE_FILE_COPY"), (4, "CREATE_WAL_LOG"), (4, "DROP"),
                    (5, "CREATE"), (5, "DROP"), (6, "ZERO_OFF_PAGE"), (6, "ZERO_MEM_PAGE"),
                    (6, "CREATE_ID"), (7, "UPDATE"), (8, "LOCK"), (8, "RUNNING_XACTS"),
                    (8, "INVALIDATIONS")]:
        assert (rmid, t) in types, (rmid, t)


@pytest.mark.parametrize("name", ["xlog_checkpoint_shutdown.bin", "xlog_checkpoint_online.bin"])
def test_checkpoint_fields_match_waldump(name: str) -> None:
    rec, desc = sample(name)
    ck = xlog.parse(rec)
    assert isinstance(ck, xlog.CheckPoint)
    m = re.match(r"CHECKPOINT_(\w+) redo ([0-9A-F/]+); tli (\d+); prev tli (\d+); fpw (\w+); "
                 r"wal_level (\w+); xid (\d+):(\d+); oid (\d+); multi (\d+); offset (\d+); "
                 r"oldest xid (\d+) in DB (\d+); oldest multi (\d+) in DB (\d+); "
                 r"oldest/newest commit timestamp xid: (\d+)/(\d+); oldest running xid (\d+); (\w+)",
                 desc)
    assert m, desc
    g = m.groups()
    assert ck.shutdown == (g[0] == "SHUTDOWN")
    assert ck.redo == Lsn.parse(g[1])
    assert (ck.this_timeline, ck.prev_timeline) == (int(g[2]), int(g[3]))
    assert ck.full_page_writes == (g[4] == "true")
    assert xlog.WAL_LEVEL_NAMES[ck.wal_level] == g[5]
    assert (ck.next_xid_epoch, ck.next_xid) == (int(g[6]), int(g[7]))
    assert [ck.next_oid, ck.next_multi, ck.next_multi_offset, ck.oldest_xid, ck.oldest_xid_db,
            ck.oldest_multi, ck.oldest_multi_db, ck.oldest_commit_ts_xid, ck.newest_commit_ts_xid,
            ck.oldest_active_xid] == [int(x) for x in g[8:18]]
    assert 2026 <= ck.timestamp.year < 2100


def test_small_xlog_records_match_waldump() -> None:
    rec, desc = sample("xlog_nextoid.bin")
    assert xlog.parse(rec) == xlog.NextOid(ints(desc)[0])
    rec, desc = sample("xlog_backup_end.bin")
    assert xlog.parse(rec) == xlog.BackupEnd(Lsn.parse(desc.split()[1]))
    rec, desc = sample("xlog_fpw_change.bin")
    assert xlog.parse(rec) == xlog.FpwChange(desc.endswith("true"))
    rec, desc = sample("xlog_restore_point.bin")
    rp = xlog.parse(rec)
    assert isinstance(rp, xlog.RestorePoint) and rp.name == desc.removeprefix("RESTORE_POINT ")
    assert abs((rp.timestamp - datetime.now(UTC)).days) < 3650
    rec, desc = sample("xlog_checkpoint_redo.bin")
    assert xlog.parse(rec) == xlog.CheckpointRedo(xlog.WAL_LEVEL_REPLICA)
    assert desc.endswith("replica")
    rec, _ = sample("xlog_switch.bin")
    assert xlog.parse(rec) == xlog.Switch()


def test_parameter_change_matches_waldump() -> None:
    rec, desc = sample("xlog_parameter_change.bin")
    pc = xlog.parse(rec)
    assert isinstance(pc, xlog.ParameterChange)
    kv = dict(re.findall(r"(\w+)=(\w+)", desc))
    assert pc.max_connections == int(kv["max_connections"]) == 90
    assert pc.max_worker_processes == int(kv["max_worker_processes"])
    assert pc.max_wal_senders == int(kv["max_wal_senders"])
    assert pc.max_prepared_xacts == int(kv["max_prepared_xacts"])
    assert pc.max_locks_per_xact == int(kv["max_locks_per_xact"])
    assert xlog.WAL_LEVEL_NAMES[pc.wal_level] == kv["wal_level"]
    assert pc.wal_log_hints == (kv["wal_log_hints"] == "on")
    assert pc.track_commit_timestamp == (kv["track_commit_timestamp"] == "on")


@pytest.mark.parametrize("name", [n for n in sorted(BY_FILE)
                                  if re.match(r"transaction_(commit|abort)", n)])
def test_commit_and_abort_records_match_waldump(name: str) -> None:
    rec, desc = sample(name)
    r = xact.parse(rec)
    assert isinstance(r, xact.XactCommit | xact.XactAbort)
    assert isinstance(r, xact.XactCommit) == ("COMMIT" in desc.split()[0])
    assert ts_text(r.xact_time) in desc
    if r.prepared:
        assert r.xid == r.twophase_xid == ints(desc)[0] and rec.xl_xid == 0
    else:
        assert r.xid == rec.xl_xid
    m = re.search(r"subxacts: ([\d ]+)", desc)
    assert r.subxacts == (tuple(ints(m.group(1))) if m else ())
    m = re.search(r"rels: ([^;]+)", desc)
    expect_rels = [f"base/{x.db}/{x.rel}" if x.spc == 1663 else str(x) for x in r.rels]
    assert expect_rels == (m.group(1).split() if m else [])
    m = re.search(r"dropped stats: ([^;]+)", desc)
    assert [f"{s.kind}/{s.dboid}/{s.objid}" for s in r.stats] == (m.group(1).split() if m else [])
    if isinstance(r, xact.XactCommit):
        if r.invals:
            assert " ".join(i.describe() for i in r.invals) == invals_text(desc)
        else:
            assert "inval msgs" not in desc
        if "relcache init file inval" in desc:
            assert r.xinfo & xact.XACT_COMPLETION_UPDATE_RELCACHE_FILE
            assert f"dbid {r.db_id} tsid {r.ts_id}" in desc
        assert bool(r.xinfo & xact.XACT_COMPLETION_FORCE_SYNC_COMMIT) == ("; sync" in desc)
    m = re.search(r"origin: node \d+, lsn ([0-9A-F/]+), at (.+ UTC)", desc)
    if m:
        assert r.xinfo & xact.XACT_XINFO_HAS_ORIGIN
        assert Lsn(r.origin_lsn) == Lsn.parse(m.group(1))
        assert ts_text(r.origin_timestamp) == m.group(2)
    else:
        assert not r.xinfo & xact.XACT_XINFO_HAS_ORIGIN


def test_commit_prepared_under_wal_level_logical_carries_its_gid() -> None:
    rec, desc = sample("transaction_commit_prepared_gid.bin")
    r = xact.parse(rec)
    assert isinstance(r, xact.XactCommit) and r.prepared
    assert r.twophase_gid == "gid_logical" and r.xinfo & xact.XACT_XINFO_HAS_GID
    assert r.xid == ints(desc)[0]


def test_transaction_invalidation_record_matches_waldump() -> None:
    rec, desc = sample("transaction_invalidation.bin")
    r = xact.parse(rec)
    assert isinstance(r, xact.XactInvalidations) and r.msgs
    assert " ".join(m.describe() for m in r.msgs) == invals_text(desc)


def test_prepare_matches_waldump() -> None:
    rec, desc = sample("transaction_prepare.bin")
    p = xact.parse(rec)
    assert isinstance(p, xact.XactPrepare)
    assert p.xid == rec.xl_xid
    assert desc.startswith(f"PREPARE gid {p.gid}: ") and p.gid == "p_commit"
    assert ts_text(p.prepared_at) in desc
    assert p.subxacts == tuple(ints(desc.split("subxacts:")[1]))
    assert p.commit_rels == () and p.abort_rels == ()


def test_assignment_matches_waldump() -> None:
    rec, desc = sample("transaction_assignment.bin")
    a = xact.parse(rec)
    assert isinstance(a, xact.XactAssignment)
    nums = ints(desc)
    assert a.xtop == nums[0] and a.xsub == tuple(nums[1:]) and len(a.xsub) == 64


def test_storage_records_match_waldump() -> None:
    rec, desc = sample("storage_create.bin")
    c = storage.parse(rec)
    assert isinstance(c, storage.SmgrCreate) and c.fork == 0
    assert desc == f"CREATE base/{c.rlocator.db}/{c.rlocator.rel}"
    rec, desc = sample("storage_truncate.bin")
    t = storage.parse(rec)
    assert isinstance(t, storage.SmgrTruncate)
    assert desc == f"TRUNCATE base/{t.rlocator.db}/{t.rlocator.rel} to {t.blkno} blocks flags {t.flags}"
    assert t.truncates_heap and t.truncates_vm and t.truncates_fsm


def test_clog_multixact_records_match_waldump() -> None:
    rec, desc = sample("clog_zeropage.bin")
    assert clog.parse(rec) == clog.ClogZeroPage(ints(desc)[0])
    rec, desc = sample("multixact_zero_off_page.bin")
    assert multixact.parse(rec) == multixact.MultiXactZeroPage(False, ints(desc)[0])
    rec, desc = sample("multixact_zero_mem_page.bin")
    assert multixact.parse(rec) == multixact.MultiXactZeroPage(True, ints(desc)[0])
    rec, desc = sample("multixact_create_id.bin")
    c = multixact.parse(rec)
    assert isinstance(c, multixact.MultiXactCreate)
    m = re.match(r"CREATE_ID (\d+) offset (\d+) nmembers (\d+): (.*)$", desc)
    assert m
    assert (c.mid, c.moff, len(c.members)) == tuple(int(x) for x in m.groups()[:3])
    expect = [multixact.MultiXactMember(int(x), MX_STATUS[s])
              for x, s in re.findall(r"(\d+) \((\w+)\)", m.group(4))]
    assert list(c.members) == expect


def test_database_and_tablespace_records_match_waldump() -> None:
    rec, desc = sample("database_create_file_copy.bin")
    fc = dbase.parse(rec)
    assert isinstance(fc, dbase.DbaseCreateFileCopy)
    assert desc == (f"CREATE_FILE_COPY copy dir {fc.src_tablespace_id}/{fc.src_db_id} to "
                    f"{fc.tablespace_id}/{fc.db_id}")
    rec, desc = sample("database_create_wal_log.bin")
    wl = dbase.parse(rec)
    assert isinstance(wl, dbase.DbaseCreateWalLog)
    assert desc == f"CREATE_WAL_LOG create dir {wl.tablespace_id}/{wl.db_id}"
    rec, desc = sample("database_drop.bin")
    d = dbase.parse(rec)
    assert isinstance(d, dbase.DbaseDrop)
    assert desc == "DROP dir " + " ".join(f"{t}/{d.db_id}" for t in d.tablespace_ids)
    rec, desc = sample("tablespace_create.bin")
    tc = tblspc.parse(rec)
    assert isinstance(tc, tblspc.TblspcCreate)
    assert desc == f'CREATE {tc.ts_id} "{tc.path}"'
    rec, desc = sample("tablespace_drop.bin")
    assert tblspc.parse(rec) == tblspc.TblspcDrop(ints(desc)[0])


def test_relmap_update_carries_a_valid_map_file() -> None:
    rec, desc = sample("relmap_update.bin")
    u = relmap.parse(rec)
    assert desc == f"UPDATE database {u.dbid} tablespace {u.tsid} size {len(u.data)}"
    f = u.map_file()
    assert f.filenumber(1259) is not None  # pg_class is mapped
    assert f.to_bytes() == u.data  # unused slots are zero and the CRC matches


def test_standby_records_match_waldump() -> None:
    rec, desc = sample("standby_lock.bin")
    lk = standby.parse(rec)
    assert isinstance(lk, standby.StandbyLocks)
    assert desc.strip() == "LOCK " + " ".join(
        f"xid {x.xid} db {x.db_oid} rel {x.rel_oid}" for x in lk.locks)
    rec, desc = sample("standby_running_xacts.bin")
    rx = standby.parse(rec)
    assert isinstance(rx, standby.RunningXacts)
    assert desc.startswith(f"RUNNING_XACTS nextXid {rx.next_xid} latestCompletedXid "
                           f"{rx.latest_completed_xid} oldestRunningXid {rx.oldest_running_xid}")
    rec, desc = sample("standby_invalidations.bin")
    inv = standby.parse(rec)
    assert isinstance(inv, standby.StandbyInvalidations)
    assert " ".join(m.describe() for m in inv.msgs) == invals_text(desc)


def _rec(rmid: int, info: int, data: bytes, xid: int = 0) -> DecodedRecord:
    return DecodedRecord(lsn=Lsn(0x1000), end_lsn=Lsn(0x1040), xl_tot_len=0, xl_xid=xid,
                         xl_prev=Lsn(0), xl_info=info, xl_rmid=rmid, xl_crc=0, blocks=(),
                         main_data=data)


@pytest.mark.parametrize("name", sorted(n for n in BY_FILE if (DATA / n).stat().st_size > 0))
def test_truncated_main_data_raises_decode_error_never_garbage(name: str) -> None:
    rec, _ = sample(name)
    short = _rec(rec.xl_rmid, rec.xl_info, rec.main_data[:-1], rec.xl_xid)
    with pytest.raises(WalDecodeError):
        PARSERS[rec.xl_rmid](short)


@pytest.mark.parametrize("rmid,info", [(0, 0xC0), (1, 0x70), (2, 0x30), (3, 0x20), (4, 0x30),
                                       (5, 0x20), (6, 0x40), (7, 0x10), (8, 0x30)])
def test_unknown_record_types_raise_unsupported(rmid: int, info: int) -> None:
    with pytest.raises(UnsupportedRecordError):
        PARSERS[rmid](_rec(rmid, info, bytes(64)))


def test_commit_with_origin_and_twophase_gid_parses_the_unaligned_tail() -> None:
    """Crafted from the layout (no 18.6 sample: needs logical replication)."""
    xinfo = xact.XACT_XINFO_HAS_TWOPHASE | xact.XACT_XINFO_HAS_GID | xact.XACT_XINFO_HAS_ORIGIN
    data = (struct.pack("<qI", 123456789, xinfo) + struct.pack("<I", 4242) + b"my-gid\x00"
            + struct.pack("<Qq", 0x1_0000_0028, 987654321))
    r = xact.parse(_rec(1, xact.XLOG_XACT_COMMIT_PREPARED | xact.XLOG_XACT_HAS_INFO, data))
    assert isinstance(r, xact.XactCommit)
    assert (r.xid, r.twophase_gid, r.origin_lsn, r.origin_timestamp) == (
        4242, "my-gid", 0x1_0000_0028, 987654321)
    assert r.prepared and r.xact_time == 123456789


def test_end_of_recovery_from_a_promoted_standby_matches_waldump_and_moves_the_timeline() -> None:
    from strata.ingest.cluster_state import ClusterStateTracker
    from strata.keyspace.cluster import ClusterState

    rec, desc = sample("xlog_end_of_recovery.bin")
    eor = xlog.parse(rec)
    assert isinstance(eor, xlog.EndOfRecovery)
    m = re.match(r"END_OF_RECOVERY tli (\d+); prev tli (\d+); time (.+ UTC); wal_level (\w+)", desc)
    assert m, desc
    assert (eor.this_timeline, eor.prev_timeline) == (int(m.group(1)), int(m.group(2))) == (2, 1)
    assert ts_text(eor.end_time) == m.group(3)
    assert xlog.WAL_LEVEL_NAMES[eor.wal_level] == m.group(4)
    t = ClusterStateTracker(ClusterState(Lsn(0), 1000, 20000, 1, 0, 700, 1, 1, 1))
    assert t.apply(rec)
    assert (t.state.timeline, t.state.prev_timeline) == (2, 1)


def test_records_without_an_18_6_sample_parse_from_their_layout() -> None:
    """OVERWRITE_CONTRECORD needs a crash mid-record, NOOP is never emitted by core."""
    r = xlog.parse(_rec(0, xlog.XLOG_OVERWRITE_CONTRECORD, struct.pack("<Qq", 0x2_0000_1000, 42)))
    assert r == xlog.OverwriteContrecord(Lsn(0x2_0000_1000), 42)
    assert xlog.parse(_rec(0, xlog.XLOG_NOOP, b"")) == xlog.Noop()
    assert xlog.parse(_rec(0, xlog.XLOG_FPI_FOR_HINT, b"")) == xlog.XlogFpi(True)
    trunc = clog.parse(_rec(3, clog.CLOG_TRUNCATE, struct.pack("<qII", 32, 1_049_405, 5)))
    assert trunc == clog.ClogTruncate(32, 1_049_405, 5)
    mt = multixact.parse(_rec(6, multixact.XLOG_MULTIXACT_TRUNCATE_ID,
                              struct.pack("<IIIII", 5, 65000, 65700, 52000, 53400)))
    assert mt == multixact.MultiXactTruncate(5, 65000, 65700, 52000, 53400)
