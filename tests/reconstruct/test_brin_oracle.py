"""BRIN redo against PostgreSQL's own pages (wal_consistency_checking = 'all').

A PostgreSQL 18.6 primary with wal_consistency_checking = 'all' runs BRIN
minmax, minmax-multi and bloom indexes through builds, summary updates,
brin_summarize_new_values, brin_desummarize_range, summaries that outgrow
their page, a revmap that needs a second page where a regular page stood,
and autosummarize (autovacuum work items). Every block reference of every
BRIN record carries the server's page after the change; our redo, masked as
brin_mask masks, must equal it: zero mismatches, zero redo errors, and every
BRIN record type of 18.6 (INIT variants included) in the WAL.

Replays: the shared oracle (each block from the server's previous image) and
a chained replay from our own pages. Parsers are compared with pg_waldump.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from strata.reconstruct.check import check_wal_dir
from strata.reconstruct.redo import RM_BRIN_ID
from strata.runtime.cluster import Cluster
from strata.wal.rmgr import brin as x

from .am_oracle import (
    assert_descs_match,
    assert_rmgr_clean,
    capture_in_db,
    chained_replay,
    records_of,
    type_counts,
)
from .conftest import WalCapture, capture, run_sql

# Every record type of access/brin_xlog.h (18.6), with the INIT_PAGE variants.
ALL_BRIN_TYPES = frozenset(x.BRIN_RECORD_NAMES.values())

BRIN_WORKLOAD = """
SET enable_seqscan = off;
-- minmax, minmax-multi and bloom built on a full table: CREATE_INDEX,
-- REVMAP_EXTEND (the first revmap page), INSERT+INIT and INSERT (summaries)
CREATE TABLE b (id int, v int, t text) WITH (fillfactor = 10, autovacuum_enabled = off);
INSERT INTO b SELECT i, (i * 37) % 1000, md5(i::text) FROM generate_series(1, 1500) i;
CREATE INDEX b_id ON b USING brin (id) WITH (pages_per_range = 1);
CREATE INDEX b_v ON b USING brin (v int4_minmax_multi_ops) WITH (pages_per_range = 2);
CREATE INDEX b_t ON b USING brin (t text_bloom_ops) WITH (pages_per_range = 4);
-- changes inside summarized ranges widen their summaries: SAMEPAGE_UPDATE
UPDATE b SET v = v + 5000 WHERE id % 40 = 0;
-- rows in new heap pages stay unsummarized until brin_summarize_new_values:
-- INSERT of a placeholder, then SAMEPAGE_UPDATE of the real summary
INSERT INTO b SELECT i, i % 1000, md5(i::text) FROM generate_series(1501, 1900) i;
SELECT brin_summarize_new_values('b_id'), brin_summarize_new_values('b_v'),
       brin_summarize_new_values('b_t');
-- DESUMMARIZE, then a range summarized again
SELECT brin_desummarize_range('b_id', 0), brin_desummarize_range('b_id', 7),
       brin_desummarize_range('b_v', 10), brin_desummarize_range('b_t', 40);
SELECT brin_summarize_range('b_id', 7);
SELECT count(*) FROM b WHERE id BETWEEN 100 AND 120;
-- wide text summaries fill their pages; a summary that grows past the room
-- left on its page moves: UPDATE+INIT (to a new page), UPDATE (to a page
-- with room). Hex digits do not compress, so summaries stay wide.
CREATE TABLE w (t text) WITH (fillfactor = 10, autovacuum_enabled = off);
INSERT INTO w SELECT md5(i::text) || md5((i + 1)::text) || md5((i + 2)::text)
  FROM generate_series(1, 400) i;
CREATE INDEX w_t ON w USING brin (t) WITH (pages_per_range = 1);
UPDATE w SET t = 'f' || (SELECT string_agg(md5(g::text || w.t), '') FROM generate_series(1, 12) g)
 WHERE ctid IN ('(0,1)', '(3,1)', '(6,1)', '(9,1)', '(12,1)', '(15,1)');
-- one heap page per row and one range per page: 1500 ranges need a second
-- revmap page where the build's first regular page stands; its summaries are
-- moved away first (UPDATE of an evacuated page), then REVMAP_EXTEND
CREATE TABLE big (id int, pad text) WITH (fillfactor = 10, autovacuum_enabled = off);
INSERT INTO big SELECT i, repeat('x', 780) FROM generate_series(1, 1500) i;
CREATE INDEX big_id ON big USING brin (id) WITH (pages_per_range = 1);
"""


@pytest.fixture(scope="module")
def brin_wal(wcc_primary: Cluster) -> WalCapture:
    return capture_in_db(wcc_primary, "brin_oracle", BRIN_WORKLOAD)


@pytest.mark.pg
def test_every_brin_record_type_matches_server_pages(brin_wal: WalCapture) -> None:
    rep = check_wal_dir(str(brin_wal.wal_dir), brin_wal.start, brin_wal.end)
    assert rep.consistency_records > 0
    assert_rmgr_clean(rep, "BRIN", ALL_BRIN_TYPES)


@pytest.mark.pg
def test_chained_brin_redo_from_our_own_pages_matches_server(brin_wal: WalCapture) -> None:
    res = chained_replay(brin_wal, RM_BRIN_ID)
    assert set(res.checked) == ALL_BRIN_TYPES
    assert not res.upstream


@pytest.mark.pg
def test_workload_reaches_the_rare_brin_branches(brin_wal: WalCapture) -> None:
    """The oracle only proves what the WAL exercises: a second revmap page,
    summaries in the second revmap page, and UPDATE both to a new page and to
    an existing one."""
    seen: Counter[str] = Counter()
    for rec in records_of(brin_wal, RM_BRIN_ID):
        m = x.parse_main(rec.info, rec.main_data)
        if isinstance(m, x.XlBrinRevmapExtend) and m.target_blk > 1:
            seen["second_revmap_page"] += 1
        if isinstance(m, x.XlBrinInsert) and m.heap_blk // m.pages_per_range >= 1360:
            seen["range_in_second_revmap_page"] += 1
        if isinstance(m, x.XlBrinUpdate):
            seen["update_init" if rec.info & x.XLOG_BRIN_INIT_PAGE else "update"] += 1
    assert set(seen) == {"second_revmap_page", "range_in_second_revmap_page", "update_init",
                         "update"}, seen


@pytest.mark.pg
def test_brin_desc_equals_pg_waldump_for_every_record(brin_wal: WalCapture) -> None:
    assert_descs_match(brin_wal, RM_BRIN_ID, x.brin_desc, min_records=100)


AUTOSUMMARIZE_SETUP = "CREATE EXTENSION pageinspect;"
AUTOSUMMARIZE_TABLE = """
CREATE TABLE a (id int) WITH (fillfactor = 10, autovacuum_enabled = off);
CREATE INDEX a_id ON a USING brin (id) WITH (pages_per_range = 2, autosummarize = on);
INSERT INTO a SELECT generate_series(1, 3000);
"""
# summarized ranges: one index tuple each on the regular page (block 2)
_SUMMARIZED = ("SELECT count(*) FROM brin_page_items(get_raw_page('a_id', 2), 'a_id') "
               "WHERE NOT allnulls OR hasnulls")


@pytest.mark.pg
def test_autosummarize_records_match_server_pages(wcc_primary: Cluster) -> None:
    """autosummarize: inserting into a new range queues a work item that an
    autovacuum worker runs (brin_summarize_range); its records are replayed
    like any other. Autovacuum runs only while the work items are pending."""
    db = "brin_autosummarize"
    wcc_primary.sql(f"DROP DATABASE IF EXISTS {db}")
    wcc_primary.sql(f"CREATE DATABASE {db}")
    run_sql(wcc_primary, AUTOSUMMARIZE_SETUP, dbname=db)

    def workload(c: Cluster) -> None:
        run_sql(c, AUTOSUMMARIZE_TABLE, dbname=db)
        c.sql("ALTER SYSTEM SET autovacuum = on")
        c.sql("ALTER SYSTEM SET autovacuum_naptime = 1")
        c.sql("SELECT pg_reload_conf()")
        try:
            deadline = time.monotonic() + 180
            while c.sql(_SUMMARIZED, dbname=db)[0][0] == 0:
                assert time.monotonic() < deadline, "autosummarize did not run"
                time.sleep(0.2)
        finally:
            c.sql("ALTER SYSTEM RESET autovacuum")
            c.sql("ALTER SYSTEM RESET autovacuum_naptime")
            c.sql("SELECT pg_reload_conf()")
            # workers still running would hold back the xmin horizon of later tests
            deadline = time.monotonic() + 120
            while c.sql("SELECT count(*) FROM pg_stat_activity "
                        "WHERE backend_type = 'autovacuum worker'")[0][0]:
                assert time.monotonic() < deadline, "autovacuum workers did not finish"
                time.sleep(0.2)

    cap = capture(wcc_primary, workload)
    counts = type_counts(cap, RM_BRIN_ID)
    # a summary starts as a placeholder tuple (the first one on a new page)
    assert counts["INSERT+INIT"] + counts["INSERT"] > 0 and counts["SAMEPAGE_UPDATE"] > 0, counts
    rep = check_wal_dir(str(cap.wal_dir), cap.start, cap.end)
    assert_rmgr_clean(rep, "BRIN", frozenset({"CREATE_INDEX", "SAMEPAGE_UPDATE"}))
