"""Hash index redo against PostgreSQL's own pages (wal_consistency_checking = 'all').

A PostgreSQL 18.6 primary with wal_consistency_checking = 'all' runs a
workload built to produce every hash record type of PG 18 (each step of
HASH_WORKLOAD says which). Every block reference of every Hash record then
carries the server's page after the change; our redo, masked as hash_mask
masks, must equal it: zero mismatches, zero redo errors. A hash record type
missing from the workload fails the test, and so does one without redo.

Two replays are checked: the shared oracle (each block redone from the
server's previous image of it) and a chained replay from our own previous
pages, as a page store does. The parsers are checked against pg_waldump's
descriptions of the same records.
"""

from __future__ import annotations

from collections import Counter

import pytest

from strata.reconstruct.check import check_wal_dir
from strata.reconstruct.redo import RM_HASH_ID
from strata.runtime.cluster import Cluster
from strata.wal.rmgr import hash as x

from .am_oracle import (
    assert_descs_match,
    assert_rmgr_clean,
    capture_in_db,
    chained_replay,
    records_of,
)
from .conftest import WalCapture

# Every record type of access/hash_xlog.h (18.6).
ALL_HASH_TYPES = frozenset(x.HASH_RECORD_NAMES.values())
# SPLIT_PAGE always carries its page as an apply-image (REGBUF_FORCE_IMAGE):
# its redo is the image, there is no verification image to compare.
IMAGE_ONLY = frozenset({"SPLIT_PAGE"})

# Narrow heaps (fillfactor 10) keep heap page images small.
HASH_WORKLOAD = """
SET enable_seqscan = off;
SET enable_bitmapscan = off;
-- an index built on an empty table: INIT_META_PAGE, INIT_BITMAP_PAGE (the two
-- bucket pages are XLOG FPIs)
CREATE TABLE h (k int, pad int) WITH (fillfactor = 10, autovacuum_enabled = off);
CREATE INDEX h_k ON h USING hash (k);
-- distinct keys: INSERT, bucket splits (SPLIT_ALLOCATE_PAGE, with and without
-- new masks and splitpoints, SPLIT_PAGE, SPLIT_COMPLETE), overflow pages
-- (ADD_OVFL_PAGE)
INSERT INTO h SELECT i, i FROM generate_series(1, 1500) i;
-- one key many times: a chain of overflow pages in one bucket
INSERT INTO h SELECT 7, i FROM generate_series(1, 1600) i;
-- holes all along the chain, then VACUUM: DELETE (also of the moved-by-split
-- tuples, and SPLIT_CLEANUP of the split buckets), MOVE_PAGE_CONTENTS and
-- SQUEEZE_PAGE (the chain is squeezed, freed pages go back to the bitmap),
-- UPDATE_META_PAGE
DELETE FROM h WHERE k = 7 AND pad % 7 <> 0;
VACUUM h;
-- the squeezed chain grows again: ADD_OVFL_PAGE reuses freed pages
INSERT INTO h SELECT 7, i FROM generate_series(1, 800) i;
-- dead rows whose items an index scan marks LP_DEAD; an insert into the full
-- primary bucket page removes them first: VACUUM_ONE_PAGE
DELETE FROM h WHERE k = 7;
SELECT count(*) FROM h WHERE k = 7;
INSERT INTO h SELECT 7, i FROM generate_series(1, 50) i;
-- an index built on a full table (its metapage sized from the row count)
CREATE TABLE f (k int) WITH (fillfactor = 10, autovacuum_enabled = off);
INSERT INTO f SELECT generate_series(1, 1000);
CREATE INDEX f_k ON f USING hash (k);
-- an unlogged table: its index's metapage and bitmap page in the init fork
CREATE UNLOGGED TABLE u (k int);
CREATE INDEX u_k ON u USING hash (k);
"""


@pytest.fixture(scope="module")
def hash_wal(wcc_primary: Cluster) -> WalCapture:
    return capture_in_db(wcc_primary, "hash_oracle", HASH_WORKLOAD)


@pytest.mark.pg
def test_every_hash_record_type_matches_server_pages(hash_wal: WalCapture) -> None:
    rep = check_wal_dir(str(hash_wal.wal_dir), hash_wal.start, hash_wal.end)
    assert rep.consistency_records > 0
    assert_rmgr_clean(rep, "Hash", ALL_HASH_TYPES, image_only_types=IMAGE_ONLY)


@pytest.mark.pg
def test_chained_hash_redo_from_our_own_pages_matches_server(hash_wal: WalCapture) -> None:
    res = chained_replay(hash_wal, RM_HASH_ID)
    assert set(res.checked) == ALL_HASH_TYPES - IMAGE_ONLY
    assert not res.upstream


@pytest.mark.pg
def test_workload_reaches_the_rare_hash_branches(hash_wal: WalCapture) -> None:
    """The oracle only proves what the WAL exercises: the workload must reach
    both metapage updates of a split, squeezes into the previous page and
    into the primary bucket page, freed-page reuse, deletes on overflow
    pages, and the init fork. (Not reachable here: ADD_OVFL_PAGE's new bitmap
    page, after 32768 overflow pages; SQUEEZE_PAGE's next page, as the squeeze
    always frees the chain's last page.)"""
    seen: Counter[str] = Counter()
    for rec in records_of(hash_wal, RM_HASH_ID):
        m = x.parse_main(rec.info, rec.main_data)
        if isinstance(m, x.XlHashSplitAllocatePage):
            if m.flags & x.XLH_SPLIT_META_UPDATE_MASKS:
                seen["split_new_masks"] += 1
            if m.flags & x.XLH_SPLIT_META_UPDATE_SPLITPOINT:
                seen["split_new_splitpoint"] += 1
        if isinstance(m, x.XlHashSqueezePage):
            if m.is_prev_bucket_same_wrt:
                seen["squeeze_into_prev_page"] += 1
            if m.is_prim_bucket_same_wrt:
                seen["squeeze_into_primary_page"] += 1
        if isinstance(m, x.XlHashAddOvflPage) and m.bmpage_found:
            seen["ovfl_page_reused"] += 1
        if isinstance(m, x.XlHashDelete) and not m.is_primary_bucket_page:
            seen["delete_on_overflow_page"] += 1
        if any(b.fork == 3 for b in rec.blocks):
            seen["init_fork"] += 1
    assert set(seen) == {"split_new_masks", "split_new_splitpoint", "squeeze_into_prev_page",
                         "squeeze_into_primary_page",
                         "ovfl_page_reused", "delete_on_overflow_page", "init_fork"}, seen


@pytest.mark.pg
def test_hash_desc_equals_pg_waldump_for_every_record(hash_wal: WalCapture) -> None:
    assert_descs_match(hash_wal, RM_HASH_ID, x.hash_desc, min_records=1000)
