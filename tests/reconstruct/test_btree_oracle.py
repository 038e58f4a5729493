"""Btree redo against PostgreSQL's own pages (wal_consistency_checking = 'all').

A PostgreSQL 18.6 primary with wal_consistency_checking = 'all' runs a
workload built to produce every btree record type of PG 18 (each step of
BTREE_WORKLOAD says which). Every block reference of every Btree record then
carries the server's page after the change. Our redo of the record, masked
as btree_mask masks, must equal it: zero mismatches, zero redo errors. A btree
record type the workload produces without redo fails the test (it is counted
unsupported), and so does a record type missing from the workload.

Two replays are checked: the shared oracle (`reconstruct.check`, each block
redone from the server's previous image of it) and a chained replay where each
block is redone from *our own* previous result, as a page store does. The
parsers are checked against pg_waldump's descriptions of the same records.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Iterator

import pytest

from strata.lsn import Lsn
from strata.reconstruct.check import CheckReport, check_wal_dir
from strata.reconstruct.mask import masked
from strata.reconstruct.redo import RM_BTREE_ID, RM_XLOG_ID, redo_block, restore_image
from strata.runtime.cluster import Cluster
from strata.wal.record import DecodedRecord, RelFileLocator
from strata.wal.rmgr import btree as x
from strata.wal.segments import iter_records

from .conftest import WalCapture, capture, run_pgbench, run_sql
from .test_redo_oracle import chain_equals_reference

ALL_BTREE_TYPES = frozenset(x.BTREE_RECORD_NAMES.values())

# Narrow heaps (fillfactor 10/20, an int column) keep heap page images small;
# expression indexes give wide keys, so pages split after few inserts.
BTREE_WORKLOAD = """
SET enable_seqscan = off;
SET enable_bitmapscan = off;
-- n: 128-byte ascending keys: NEWROOT (level 0, then 1), rightmost SPLIT_R, INSERT_UPPER
CREATE TABLE n (k int) WITH (fillfactor = 10, autovacuum_enabled = off);
CREATE UNIQUE INDEX n_k ON n ((lpad(k::text, 120, '0')));
INSERT INTO n SELECT generate_series(1, 400);
-- dead rows, an index scan marks their items LP_DEAD, inserts into the full
-- leaves remove them first: DELETE
DELETE FROM n WHERE k BETWEEN 20 AND 200;
SELECT count(*) FROM n
 WHERE lpad(k::text, 120, '0') BETWEEN lpad('1', 120, '0') AND lpad('300', 120, '0');
INSERT INTO n SELECT generate_series(20, 200);
-- all but the rightmost leaf die: VACUUM, MARK_PAGE_HALFDEAD, UNLINK_PAGE,
-- UNLINK_PAGE_META (the fast root moves down to the lone leaf), META_CLEANUP
DELETE FROM n WHERE k < 390;
VACUUM n;
-- two more xids make the deleted pages recyclable; this VACUUM puts them in the FSM
SELECT txid_current();
SELECT txid_current();
VACUUM n;
-- the lone leaf splits: INSERT_META (fast root back up), REUSE_PAGE of the freed pages
INSERT INTO n SELECT generate_series(401, 800);
-- w: 488-byte keys in random order: SPLIT_L and SPLIT_R, upper splits, a level-2 root
CREATE TABLE w (v int) WITH (fillfactor = 10, autovacuum_enabled = off);
CREATE INDEX w_k ON w ((repeat(md5(v::text), 15)));
INSERT INTO w SELECT generate_series(1, 600);
-- a key range covering whole subtrees: internal pages are unlinked too
DELETE FROM w WHERE repeat(md5(v::text), 15) < 'b';
VACUUM w;
-- s: one key value: DEDUP builds posting lists; VACUUM rewrites them (posting
-- updates); with deduplication then switched off, new rows reusing freed heap
-- TIDs split posting lists (INSERT_POST) until a full leaf splits in the middle
-- of one (SPLIT_L with postingoff)
CREATE TABLE s (k int, pad int) WITH (fillfactor = 10, autovacuum_enabled = off);
CREATE INDEX s_k ON s (k);
INSERT INTO s SELECT 1, i FROM generate_series(1, 1200) i;
DELETE FROM s WHERE pad % 4 = 0;
VACUUM s;
ALTER INDEX s_k SET (deduplicate_items = off);
INSERT INTO s SELECT 1, i FROM generate_series(1, 300) i;
"""

# Bottom-up deletion: non-HOT updates (u is indexed) that leave b_k logically
# unchanged fill its leaves with versions; DELETE then rewrites posting lists.
BOTTOM_UP_WORKLOAD = """
CREATE TABLE b (k int, u int) WITH (fillfactor = 10, autovacuum_enabled = off);
CREATE INDEX b_k ON b (k);
CREATE INDEX b_u ON b (u);
INSERT INTO b SELECT i % 5, i FROM generate_series(1, 250) i;
UPDATE b SET u = u + 1000;
UPDATE b SET u = u + 1000;
UPDATE b SET u = u + 1000;
UPDATE b SET u = u + 1000;
UPDATE b SET u = u + 1000;
UPDATE b SET u = u + 1000;
"""


def _capture_in_db(c: Cluster, db: str, sql: str) -> WalCapture:
    # REUSE_PAGE needs deleted pages to become recyclable during the workload:
    # nothing else on this shared server may hold back the xmin horizon.
    holders = c.sql("SELECT gid FROM pg_prepared_xacts UNION ALL "
                    "SELECT pid::text FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND backend_xmin IS NOT NULL")
    assert not holders, f"xmin horizon held back by {holders}"
    c.sql(f"DROP DATABASE IF EXISTS {db}")
    c.sql(f"CREATE DATABASE {db}")  # before the capture: its WAL is not checked
    return capture(c, lambda cl: run_sql(cl, sql, dbname=db))


@pytest.fixture(scope="module")
def btree_wal(wcc_primary: Cluster) -> WalCapture:
    return _capture_in_db(wcc_primary, "btree_oracle", BTREE_WORKLOAD)


def _btree_records(cap: WalCapture) -> Iterator[DecodedRecord]:
    for rec in iter_records(cap.wal_dir, cap.start, cap.end):
        if rec.xl_rmid == RM_BTREE_ID:
            yield rec


def _type_name(rec: DecodedRecord) -> str:
    name = x.btree_identify(rec.xl_info)
    assert name is not None, f"unknown btree record type at {rec.lsn}"
    return name


def assert_btree_clean(rep: CheckReport, expected_types: frozenset[str]) -> None:
    """Zero mismatches/errors/unsupported for Btree; every expected type redone and
    (if it has blocks) compared block by block."""
    detail = "\n" + rep.format_table()
    for m in (rep.first_mismatch, rep.first_error):
        if m is not None:
            detail += "\n" + m.describe()
    bt = {rt: s for (rm, rt), s in rep.stats.items() if rm == "Btree"}
    assert expected_types <= set(bt), f"not in the WAL: {sorted(expected_types - set(bt))}{detail}"
    for rt, s in bt.items():
        assert s.unsupported == 0, f"Btree/{rt} has no redo{detail}"
        assert s.mismatches == 0, f"Btree/{rt} mismatches{detail}"
        assert s.errors == 0, f"Btree/{rt} redo errors{detail}"
        assert s.no_base == 0, f"Btree/{rt} blocks without a base{detail}"
        if rt != "REUSE_PAGE":  # the one record type that registers no block
            assert s.blocks_checked > 0 and s.matches == s.blocks_checked, f"Btree/{rt}{detail}"


@pytest.mark.pg
def test_every_btree_record_type_matches_server_pages(btree_wal: WalCapture) -> None:
    rep = check_wal_dir(str(btree_wal.wal_dir), btree_wal.start, btree_wal.end)
    assert rep.consistency_records > 0
    assert_btree_clean(rep, ALL_BTREE_TYPES)


BlockKey = tuple[RelFileLocator, int, int]


@pytest.mark.pg
def test_chained_btree_redo_from_our_own_pages_matches_server(btree_wal: WalCapture) -> None:
    """Each btree block is redone from our previous result (not the server's
    image), as GetPage@LSN does; every verification image must still match."""
    ours: dict[BlockKey, bytes] = {}  # blocks btree records touched: our pages
    fpis: dict[BlockKey, bytes] = {}  # other blocks: last XLOG full-page image
    checked: Counter[str] = Counter()
    for rec in iter_records(btree_wal.wal_dir, btree_wal.start, btree_wal.end):
        for b in rec.blocks:
            key: BlockKey = (b.rlocator, b.fork, b.blkno)
            if rec.xl_rmid == RM_BTREE_ID:
                prev = None
                if not (b.apply_image or b.will_init):
                    prev = ours.get(key, fpis.get(key))
                    assert prev is not None, f"no base for {key} at {rec.lsn}"
                page = redo_block(rec, b.block_id, prev)
                if b.image is not None and not b.apply_image:
                    server = restore_image(b)
                    assert masked(RM_BTREE_ID, page, b.blkno) == masked(
                        RM_BTREE_ID, server, b.blkno), (
                        f"Btree/{_type_name(rec)} at {rec.lsn} block {b.block_id} ({key})")
                    checked[_type_name(rec)] += 1
                ours[key] = page
            elif key in ours:
                # only full-page images may touch an index page outside btree redo
                assert rec.xl_rmid == RM_XLOG_ID and b.apply_image, f"{rec.lsn} touches {key}"
                ours[key] = redo_block(rec, b.block_id, None)
            elif rec.xl_rmid == RM_XLOG_ID and b.apply_image:
                fpis[key] = redo_block(rec, b.block_id, None)
    assert set(checked) == ALL_BTREE_TYPES - {"REUSE_PAGE"}


@pytest.mark.pg
def test_workload_reaches_the_rare_btree_branches(btree_wal: WalCapture) -> None:
    """The oracle above only proves what the WAL exercises: make sure the
    workload still reaches posting-list rewrites, internal-page deletion, a
    level-2 root and a page split inside a posting list."""
    seen: Counter[str] = Counter()
    for rec in _btree_records(btree_wal):
        m = x.parse_main(rec.info, rec.main_data)
        if isinstance(m, x.XlBtreeVacuum) and m.nupdated > 0:
            seen["vacuum_updates_posting"] += 1
        if isinstance(m, x.XlBtreeUnlinkPage) and m.level > 0:
            seen["unlink_internal"] += 1
            assert rec.block(3) is not None, f"internal target without its leaf at {rec.lsn}"
        if isinstance(m, x.XlBtreeMarkPageHalfdead) and m.topparent != 0xFFFFFFFF:
            seen["halfdead_with_topparent"] += 1
        if isinstance(m, x.XlBtreeNewroot) and m.level >= 2:
            seen["newroot_level2"] += 1
        if isinstance(m, x.XlBtreeSplit) and m.level > 0:
            seen["upper_split"] += 1
        if isinstance(m, x.XlBtreeSplit) and m.postingoff > 0:
            seen["split_inside_posting_list"] += 1
    assert set(seen) == {"vacuum_updates_posting", "unlink_internal",
                         "halfdead_with_topparent", "newroot_level2", "upper_split",
                         "split_inside_posting_list"}, seen


def _waldump_btree_descs(cap: WalCapture) -> dict[Lsn, str]:
    out = subprocess.run(
        [str(cap.cluster.bins.path("pg_waldump")), "-p", str(cap.wal_dir), "-s", str(cap.start),
         "-e", str(cap.end), "-r", "Btree"],
        capture_output=True, text=True, check=False).stdout
    descs: dict[Lsn, str] = {}
    for line in out.splitlines():
        m = re.search(r"lsn: (\S+), prev \S+, desc: (.*)$", line)
        if m:
            descs[Lsn.parse(m.group(1))] = m.group(2).split(", blkref #")[0]
    return descs


@pytest.mark.pg
def test_btree_desc_equals_pg_waldump_for_every_record(btree_wal: WalCapture) -> None:
    expected = _waldump_btree_descs(btree_wal)
    ours = {rec.lsn: f"{_type_name(rec)} {x.btree_desc(rec)}".rstrip()
            for rec in _btree_records(btree_wal)}
    assert len(ours) > 1000
    assert ours.keys() == expected.keys()
    diffs = [(lsn, ours[lsn], expected[lsn]) for lsn in ours if ours[lsn] != expected[lsn]]
    assert not diffs, diffs[:3]


@pytest.mark.pg
@pytest.mark.slow
def test_bottom_up_deletion_rewrites_posting_lists_like_server(wcc_primary: Cluster) -> None:
    cap = _capture_in_db(wcc_primary, "btree_bottomup", BOTTOM_UP_WORKLOAD)
    partial = 0
    for rec in _btree_records(cap):
        m = x.parse_main(rec.info, rec.main_data)
        if isinstance(m, x.XlBtreeDelete) and m.nupdated > 0:
            partial += 1
    assert partial > 0, "no DELETE record rewrote a posting list"
    rep = check_wal_dir(str(cap.wal_dir), cap.start, cap.end)
    assert_btree_clean(rep, frozenset({"INSERT_LEAF", "INSERT_POST", "DELETE", "SPLIT_R",
                                       "NEWROOT", "INSERT_UPPER", "DEDUP"}))


@pytest.mark.pg
@pytest.mark.slow
def test_pgbench_btree_records_match_server_pages(wcc_primary: Cluster) -> None:
    db = "btree_pgbench"
    wcc_primary.sql(f"DROP DATABASE IF EXISTS {db}")
    wcc_primary.sql(f"CREATE DATABASE {db}")

    def workload(c: Cluster) -> None:
        run_pgbench(c, "-i", "-s", "1", "-q", dbname=db)
        run_pgbench(c, "-n", "-t", "300", "-c", "2", dbname=db)

    cap = capture(wcc_primary, workload)
    rep = check_wal_dir(str(cap.wal_dir), cap.start, cap.end)
    assert_btree_clean(rep, frozenset({"INSERT_LEAF"}))


@pytest.mark.pg
def test_btree_inserts_in_the_compiled_chain_match_the_reference_and_server(
        btree_wal: WalCapture, monkeypatch: pytest.MonkeyPatch) -> None:
    """INSERT_LEAF's and INSERT_UPPER's new tuple is added by the compiled chain (the
    splits, deduplication and vacuum records between them by the Python redo): every
    page state equals the Python reference's, and redone as the page store does
    (`stored`), every server image of every btree record type still matches."""
    rep = check_wal_dir(str(btree_wal.wal_dir), btree_wal.start, btree_wal.end,
                        chain=True, stored=True)
    assert_btree_clean(rep, ALL_BTREE_TYPES)
    leaf = (RM_BTREE_ID, x.XLOG_BTREE_INSERT_LEAF)
    upper = (RM_BTREE_ID, x.XLOG_BTREE_INSERT_UPPER)
    assert chain_equals_reference(btree_wal, monkeypatch, op=leaf) > 1000
    assert chain_equals_reference(btree_wal, monkeypatch, op=upper) > 10
