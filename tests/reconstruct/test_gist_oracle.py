"""GiST redo against PostgreSQL's own pages (wal_consistency_checking = 'all').

A PostgreSQL 18.6 primary with wal_consistency_checking = 'all' runs GiST
indexes on geometry (point, box, polygon), ranges, an exclusion constraint and
pg_trgm text, with splits at every level, vacuum, page deletion and reuse, and
in-insert removal of killed items. Every block reference of every Gist record
carries the server's page after the change; our redo, masked as gist_mask
masks, must equal it: zero mismatches, zero redo errors, and every Gist record
type of 18.6 in the WAL. ASSIGN_LSN is written only for a GiST index of a
table created in the same transaction under wal_level = minimal (gistGetFakeLSN),
so it comes from a minimal cluster of its own.

Replays: the shared oracle (each block from the server's previous image) and
a chained replay from our own pages (what a page store does). Parsers are
compared with pg_waldump's descriptions.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.reconstruct.check import check_wal_dir
from strata.reconstruct.redo import RM_GIST_ID
from strata.reconstruct.redo import gist as gist_redo
from strata.runtime.cluster import Cluster
from strata.runtime.osuser import make_private_dir, run_as_server
from strata.wal.record import BlockRef, DecodedRecord
from strata.wal.rmgr import gist as x

from .am_oracle import (
    assert_descs_match,
    assert_rmgr_clean,
    capture_in_db,
    chained_replay,
    records_of,
    type_counts,
)
from .conftest import WCC_SETTINGS, WalCapture, capture, run_sql

# Every record type of access/gistxlog.h (18.6).
ALL_GIST_TYPES = frozenset(x.GIST_RECORD_NAMES.values())
# Record types that register no block: nothing to redo or compare.
NO_BLOCK = frozenset({"PAGE_REUSE", "ASSIGN_LSN"})

# Extensions for pg_trgm text and the exclusion constraint's int column.
GIST_SETUP = "CREATE EXTENSION pg_trgm; CREATE EXTENSION btree_gist;"

GIST_WORKLOAD = """
SET enable_seqscan = off;
SET enable_bitmapscan = off;
-- points into an index built on an empty table: PAGE_UPDATE (inserts, and
-- the parent's downlink insert that clears the left child's F_FOLLOW_RIGHT:
-- block 1), PAGE_SPLIT (root splits and leaf splits marking F_FOLLOW_RIGHT)
CREATE TABLE gp (p point, pad int) WITH (fillfactor = 10, autovacuum_enabled = off);
CREATE INDEX gp_p ON gp USING gist (p);
INSERT INTO gp SELECT point(i % 40, i / 40), i FROM generate_series(1, 2400) i;
-- dead points an index scan marks LP_DEAD (F_HAS_GARBAGE); more points into
-- the same full leaves remove them first: DELETE
DELETE FROM gp WHERE pad % 3 = 0;
SELECT count(*) FROM gp WHERE p <@ box '((0,0),(40,60))';
INSERT INTO gp SELECT point(i % 40 + 0.5, i / 40), i FROM generate_series(1, 800) i;
-- a corner emptied, VACUUM: PAGE_UPDATE deletions, PAGE_DELETE of empty leaves
DELETE FROM gp WHERE p <@ box '((0,0),(40,35))';
VACUUM gp;
-- two more xids make deleted pages recyclable; VACUUM puts them in the FSM;
-- the next splits take them: PAGE_REUSE
SELECT txid_current();
SELECT txid_current();
VACUUM gp;
INSERT INTO gp SELECT point(i % 40, i / 40), i FROM generate_series(1, 1400) i;
-- boxes and polygons (stored as their bounding boxes)
CREATE TABLE gb (b box, g polygon) WITH (fillfactor = 10, autovacuum_enabled = off);
CREATE INDEX gb_b ON gb USING gist (b);
CREATE INDEX gb_g ON gb USING gist (g);
INSERT INTO gb SELECT box(point(i % 50, i / 50), point(i % 50 + 2, i / 50 + 3)),
       polygon(circle(point(i / 30, i % 30), 1 + i % 4))
  FROM generate_series(1, 700) i;
-- ranges, and an exclusion constraint checked on every insert
CREATE TABLE gr (r int4range) WITH (fillfactor = 10, autovacuum_enabled = off);
CREATE INDEX gr_r ON gr USING gist (r);
INSERT INTO gr SELECT int4range(i, i + 1 + i % 17) FROM generate_series(1, 900) i;
CREATE TABLE booking (room int, during tsrange,
    EXCLUDE USING gist (room WITH =, during WITH &&)) WITH (autovacuum_enabled = off);
INSERT INTO booking SELECT i % 10, tsrange('2026-01-01'::timestamp + i * interval '1 hour',
    '2026-01-01'::timestamp + (i + 1) * interval '1 hour') FROM generate_series(1, 700) i;
UPDATE booking SET during = tsrange(lower(during), lower(during) + interval '30 minutes')
 WHERE room = 3;
-- pg_trgm with a wide signature: internal tuples of 2 kB, so internal pages
-- split too and the tree grows to several levels (PAGE_SPLIT with block 0)
CREATE TABLE gt (t text) WITH (fillfactor = 10, autovacuum_enabled = off);
CREATE INDEX gt_t ON gt USING gist (t gist_trgm_ops (siglen = 2000));
INSERT INTO gt SELECT md5(i::text) || md5((i * 7)::text) FROM generate_series(1, 600) i;
SELECT count(*) FROM gt WHERE t % 'c4ca4238a0b923820dcc509a6f75849b';
-- an index built on a full table (XLOG FPIs), then changed by WAL
CREATE TABLE gf (p point) WITH (fillfactor = 10, autovacuum_enabled = off);
INSERT INTO gf SELECT point(i, i) FROM generate_series(1, 1500) i;
CREATE INDEX gf_p ON gf USING gist (p);
INSERT INTO gf SELECT point(i, -i) FROM generate_series(1, 200) i;
"""

# ASSIGN_LSN: under wal_level = minimal a GiST index created in this
# transaction is not WAL-logged; gistGetFakeLSN writes an ASSIGN_LSN record
# whenever two changes would otherwise get the same LSN.
ASSIGN_LSN_WORKLOAD = """
BEGIN;
CREATE TABLE fake (p point);
CREATE INDEX fake_p ON fake USING gist (p);
INSERT INTO fake SELECT point(i, i) FROM generate_series(1, 2000) i;
COMMIT;
"""


@pytest.fixture(scope="module")
def gist_wal(wcc_primary: Cluster) -> WalCapture:
    return capture_in_db(wcc_primary, "gist_oracle", GIST_WORKLOAD, GIST_SETUP)


@pytest.fixture(scope="module")
def minimal_gist_wal(session_scratch: Path) -> Iterator[WalCapture]:
    c = Cluster(datadir=session_scratch / "gist-minimal" / "data")
    c.initdb(settings={**WCC_SETTINGS, "wal_level": "minimal", "max_wal_senders": 0})
    c.start()
    try:
        yield capture(c, lambda cl: run_sql(cl, ASSIGN_LSN_WORKLOAD))
    finally:
        c.stop()


@pytest.mark.pg
def test_every_gist_record_type_matches_server_pages(gist_wal: WalCapture) -> None:
    """Gist/DELETE pages differ from the server's in F_TUPLES_DELETED alone:
    PostgreSQL's redo sets it, its primary does not (see the slow test below:
    PostgreSQL's own standby stops on it). Every other block matches."""
    rep = check_wal_dir(str(gist_wal.wal_dir), gist_wal.start, gist_wal.end)
    assert rep.consistency_records > 0
    assert_rmgr_clean(rep, "Gist", ALL_GIST_TYPES - {"ASSIGN_LSN"}, no_block_types=NO_BLOCK,
                      upstream_types=frozenset({"DELETE"}))
    delete = rep.stats[("Gist", "DELETE")]
    assert delete.upstream == delete.blocks_checked > 0


@pytest.mark.pg
def test_chained_gist_redo_from_our_own_pages_matches_server(gist_wal: WalCapture) -> None:
    """From our own pages, F_TUPLES_DELETED set by a Gist/DELETE stays on the
    page (as on a standby) until the page is rebuilt; nothing else may differ."""
    res = chained_replay(gist_wal, RM_GIST_ID)
    assert set(res.checked) == ALL_GIST_TYPES - NO_BLOCK
    assert res.upstream["DELETE"] == res.checked["DELETE"]


def strict_gist_mask(rec: DecodedRecord, block: BlockRef, page: bytes) -> bytes:
    """gist_mask without hiding the NSN and F_FOLLOW_RIGHT, except on the left
    child whose split a record completes (block 1 of PAGE_UPDATE, block 0 of
    PAGE_SPLIT): the primary sets that child's NSN and clears its flag after
    writing the record, so its image cannot show them. Every other image
    shows what redo sets (a split copies the old NSN to its pages, and marks
    F_FOLLOW_RIGHT, before the record is written), so this checks the NSN and
    follow-right logic that gist_mask hides."""
    out = bytearray(page)
    nsn, flags = gist_redo.get_nsn(out), gist_redo.get_flags(out)
    gist_redo.gist_mask(out, block.blkno)
    child = ((rec.info == x.XLOG_GIST_PAGE_UPDATE and block.block_id == 1)
             or (rec.info == x.XLOG_GIST_PAGE_SPLIT and block.block_id == 0))
    if not child:
        gist_redo.set_nsn(out, nsn)
        follow = flags & gist_redo.F_FOLLOW_RIGHT
        gist_redo.set_flags(out, (gist_redo.get_flags(out) & ~gist_redo.F_FOLLOW_RIGHT) | follow)
    return bytes(out)


@pytest.mark.pg
def test_nsn_and_follow_right_match_server_pages(gist_wal: WalCapture) -> None:
    """The NSN and F_FOLLOW_RIGHT, which gist_mask hides, match wherever the
    server's image can show them: from our own pages (chained), so a child's
    NSN set by the record that completed its split is checked by the next
    image of that child."""
    res = chained_replay(gist_wal, RM_GIST_ID, mask=strict_gist_mask)
    assert set(res.checked) == ALL_GIST_TYPES - NO_BLOCK


@pytest.mark.pg
def test_workload_reaches_the_rare_gist_branches(gist_wal: WalCapture) -> None:
    """The oracle only proves what the WAL exercises: root and non-root splits,
    splits into three or more pages, internal-page splits that complete a
    child's split (block 0), follow-right marks, one-for-one tuple
    replacement, and deletions on leaf and internal pages."""
    seen: Counter[str] = Counter()
    for rec in records_of(gist_wal, RM_GIST_ID):
        m = x.parse_main(rec.info, rec.main_data)
        if isinstance(m, x.GistxlogPageSplit):
            first = rec.block(1)
            assert first is not None
            seen["root_split" if first.blkno == 0 else "split"] += 1
            if m.npage >= 3:
                seen["split_3_or_more"] += 1
            if m.markfollowright and first.blkno != 0:
                seen["split_marks_follow_right"] += 1
            if rec.block(0) is not None:
                seen["split_completes_child_split"] += 1
            if not m.origleaf:
                seen["internal_split"] += 1
        if isinstance(m, x.GistxlogPageUpdate):
            if m.ntodelete == 1 and m.ntoinsert == 1:
                seen["update_replaces_tuple"] += 1
            if m.ntodelete > 0 and m.ntoinsert == 0:
                seen["update_deletes"] += 1
            if rec.block(1) is not None:
                seen["update_completes_child_split"] += 1
    assert set(seen) == {"root_split", "split", "split_3_or_more", "split_marks_follow_right",
                         "split_completes_child_split", "internal_split",
                         "update_replaces_tuple", "update_deletes",
                         "update_completes_child_split"}, seen


@pytest.mark.pg
def test_gist_desc_equals_pg_waldump_for_every_record(gist_wal: WalCapture) -> None:
    assert_descs_match(gist_wal, RM_GIST_ID, x.gist_desc, min_records=1000)


@pytest.mark.pg
def test_assign_lsn_under_wal_level_minimal_is_parsed_and_has_no_page(
        minimal_gist_wal: WalCapture) -> None:
    counts = type_counts(minimal_gist_wal, RM_GIST_ID)
    assert counts["ASSIGN_LSN"] > 0, counts
    for rec in records_of(minimal_gist_wal, RM_GIST_ID):
        assert x.parse_main(rec.info, rec.main_data) is None
        assert rec.blocks == ()
    assert_descs_match(minimal_gist_wal, RM_GIST_ID, x.gist_desc, min_records=1)
    rep = check_wal_dir(str(minimal_gist_wal.wal_dir), minimal_gist_wal.start,
                        minimal_gist_wal.end)
    assert_rmgr_clean(rep, "Gist", frozenset({"ASSIGN_LSN"}), no_block_types=NO_BLOCK)



# The killed-items part of GIST_WORKLOAD, alone: enough for one Gist/DELETE.
PRUNE_WORKLOAD = GIST_WORKLOAD[:GIST_WORKLOAD.index("-- a corner emptied")]


@pytest.mark.pg
@pytest.mark.slow
def test_postgres_own_standby_stops_on_gist_delete(scratch_dir: Path) -> None:
    """The difference counted as `upstream` is PostgreSQL's, not ours: a 18.6
    standby replaying a primary's Gist/DELETE (wal_consistency_checking on)
    stops with "inconsistent page found" on exactly that record type."""
    primary = Cluster(datadir=scratch_dir / "p" / "data")
    primary.initdb(settings=WCC_SETTINGS)
    primary.start()
    standby = Cluster(datadir=scratch_dir / "s" / "data")
    try:
        make_private_dir(standby.datadir)
        run_as_server([primary.bins.path("pg_basebackup"), "-h", "127.0.0.1", "-p",
                       str(primary.port), "-U", "postgres", "-D", standby.datadir, "-R",
                       "-X", "stream", "-c", "fast"])
        standby.start()
        run_sql(primary, PRUNE_WORKLOAD)
        deadline = time.monotonic() + 120
        while standby.is_running():
            assert time.monotonic() < deadline, "the standby replayed Gist/DELETE"
            time.sleep(0.1)
        log = standby.logfile.read_text() if standby.logfile else ""
        fatal = [ln for ln in log.splitlines() if "inconsistent page found" in ln]
        assert fatal, log[-2000:]
        assert re.search(r"WAL redo at \S+ for Gist/DELETE", log), log[-2000:]
    finally:
        if standby.is_running():
            standby.stop("immediate")
        primary.stop()
