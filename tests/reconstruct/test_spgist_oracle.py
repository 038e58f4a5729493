"""SP-GiST redo against PostgreSQL's own pages (wal_consistency_checking = 'all').

A PostgreSQL 18.6 primary with wal_consistency_checking = 'all' runs a
workload built to produce every SP-GiST record type of PG 18 over the
built-in operator classes (quad-tree and k-d tree points, radix-tree text,
inet, ranges), with deletes and VACUUM (dead tuples, placeholders, redirects
and their removal). Our redo of every SPGist record, masked as spg_mask masks,
must equal the server's page: zero mismatches, zero redo errors, nothing
unsupported, in plain and in chained mode. A record type of the 18.6 headers
missing from the WAL fails the test; so does a workload that no longer
reaches the rare branches (nulls tree, new pages, every parent placement of
ADD_NODE, root splits, moves and chain relinks in VACUUM_LEAF). The parser is
checked against pg_waldump's descriptions of the same records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pytest

from strata.reconstruct.redo import RM_SPGIST_ID
from strata.runtime.cluster import Cluster
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import spgist as x

from .am_oracle import (
    assert_descs_match,
    capture_in_db,
    check_plain_and_chained,
    header_record_types,
    records_of,
)
from .conftest import WalCapture

ALL_SPGIST_TYPES = frozenset(x.SPGIST_RECORD_NAMES.values())

SPGIST_WORKLOAD = """
SET enable_seqscan = off;
CREATE FUNCTION rndstr(seed int, len int) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT string_agg(chr(48 + get_byte(decode(md5(seed || '/' || k), 'hex'), 0) %% 75), '')
  FROM generate_series(1, len) k $$;
-- p: every built-in operator class; ADD_LEAF into root leaves, root PICKSPLITs
-- (isRootSplit), leaf chains, MOVE_LEAFS, PICKSPLITs below inner tuples; NULLs
-- (a third of the points) fill the nulls trees (ADD_LEAF, MOVE_LEAFS and
-- PICKSPLIT with storesNulls)
CREATE TABLE p (id int, pt point, t text, ip inet, r int4range) WITH (autovacuum_enabled = off);
CREATE INDEX p_quad ON p USING spgist (pt);
CREATE INDEX p_kd ON p USING spgist (pt kd_point_ops);
CREATE INDEX p_t ON p USING spgist (t);
CREATE INDEX p_ip ON p USING spgist (ip);
CREATE INDEX p_r ON p USING spgist (r);
INSERT INTO p SELECT i, CASE WHEN i %% 3 = 0 THEN NULL ELSE point(i %% 200, (i * 37) %% 211) END,
       rndstr(i, 2 + i %% 5), ('10.' || (i %% 256) || '.' || (i / 256 %% 256) || '.1')::inet,
       int4range(i %% 500, i %% 500 + i %% 20 + 1)
FROM generate_series(1, %(rows)s) i;
-- a region emptied, VACUUM: dead tuples, placeholders, redirects (VACUUM_LEAF
-- with moves and chain relinks, VACUUM_REDIRECT); new points in the region
-- replace the DEAD chain heads
DELETE FROM p WHERE (pt[0] < 30 AND pt[1] < 30) OR id %% 5 = 0;
VACUUM p;
INSERT INTO p SELECT i, point(i %% 30, i %% 29), rndstr(i + 100000, 3), '192.168.0.1'::inet,
       int4range(1, 2)
FROM generate_series(1, %(rows)s / 4) i;
-- lp: 800-byte common prefixes: inner tuples with long prefixes; keys that
-- diverge inside a prefix SPLIT_TUPLE (postfix on the same page); new labels
-- ADD_NODE, moving full tuples to other pages (parent on the old page or on a
-- third page)
CREATE TABLE lp (id int, t text) WITH (autovacuum_enabled = off);
CREATE INDEX lp_t ON lp USING spgist (t);
INSERT INTO lp SELECT i, 'P' || (i %% 40) || repeat('q', 800) || chr(65 + (i / 40) %% 20)
FROM generate_series(1, 1600) i;
INSERT INTO lp SELECT i, 'P' || (i %% 40) || repeat('q', 300 + i %% 40) || 'Z'
FROM generate_series(1, 40) i;
INSERT INTO lp SELECT g, CASE WHEN ph = 0 THEN 'P' || g || repeat('q', 300 + g) || chr(33 + j)
                             ELSE 'P' || g || repeat('q', 800) || chr(33 + j) END
FROM generate_series(0, 39) g, generate_series(0, 1) ph, generate_series(0, 29) j
ORDER BY g, ph, j;
-- lv: keys longer than a page: PICKSPLITs of a fresh page (initSrc), a
-- SPLIT_TUPLE onto a new page
CREATE TABLE lv (t text) WITH (autovacuum_enabled = off);
CREATE INDEX lv_t ON lv USING spgist (t);
INSERT INTO lv SELECT string_agg(md5(i || '-' || j), '') FROM generate_series(1, 3) i,
  generate_series(1, 400) j GROUP BY i;
INSERT INTO lv SELECT 'short' || i FROM generate_series(1, 10) i;
-- small: a root that is still a leaf: VACUUM_ROOT
CREATE TABLE small (pt point) WITH (autovacuum_enabled = off);
CREATE INDEX small_i ON small USING spgist (pt);
INSERT INTO small SELECT point(i, i) FROM generate_series(1, 50) i;
DELETE FROM small WHERE pt[0] < 20;
VACUUM small;
"""


# Branches of spgxlog.c the workload reaches. Two are not reached: MOVE_LEAFS
# replacing a DEAD chain head (the dead tuple's page must be full when the next
# key for that node arrives) and ADD_NODE with parentBlk 1 (the parent must sit
# on the very page the enlarged tuple moves to, which the triple-parity page
# choice of spgAddNodeAction makes rare).
REACHED_BRANCHES = frozenset({
    "ADD_LEAF newpage", "ADD_LEAF nulls", "ADD_LEAF parent", "ADD_LEAF replaces dead",
    "ADD_LEAF chained", "ADD_NODE newpage", "ADD_NODE parentBlk -1", "ADD_NODE parentBlk 0",
    "ADD_NODE parentBlk 2", "MOVE_LEAFS newpage", "MOVE_LEAFS nulls", "PICKSPLIT root split",
    "PICKSPLIT init src", "PICKSPLIT init dest", "PICKSPLIT init inner",
    "PICKSPLIT inner is parent", "PICKSPLIT parent block", "PICKSPLIT nulls",
    "SPLIT_TUPLE same page", "SPLIT_TUPLE other page", "SPLIT_TUPLE newpage",
    "VACUUM_LEAF dead", "VACUUM_LEAF placeholder", "VACUUM_LEAF move", "VACUUM_LEAF chain",
    "VACUUM_REDIRECT to placeholder", "VACUUM_REDIRECT trailing placeholders removed",
    "VACUUM_ROOT"})


def spgist_branches(records: Iterable[DecodedRecord]) -> Counter[str]:
    """Which redo branches an SP-GiST WAL stream exercises."""
    seen: Counter[str] = Counter()
    for rec in records:
        r = x.parse_main(rec.info, rec.main_data)
        name = x.spg_identify(rec.xl_info)
        flags: dict[str, bool] = {}
        if isinstance(r, x.SpgxlogAddLeaf):
            flags = {"newpage": r.new_page, "nulls": r.stores_nulls,
                     "replaces dead": r.offnum_leaf == r.offnum_head_leaf,
                     "chained": r.offnum_head_leaf not in (0, r.offnum_leaf),
                     "parent": r.offnum_parent != 0}
        elif isinstance(r, x.SpgxlogMoveLeafs):
            flags = {"newpage": r.new_page, "replaces dead": r.replace_dead, "nulls": r.stores_nulls}
        elif isinstance(r, x.SpgxlogAddNode):
            flags = {"newpage": r.new_page, f"parentBlk {r.parent_blk}": True}
        elif isinstance(r, x.SpgxlogSplitTuple):
            flags = {"newpage": r.new_page, "same page": r.postfix_blk_same,
                     "other page": not r.postfix_blk_same}
        elif isinstance(r, x.SpgxlogPickSplit):
            flags = {"root split": r.is_root_split, "inner is parent": r.inner_is_parent,
                     "init src": r.init_src, "init dest": r.init_dest,
                     "init inner": r.init_inner, "nulls": r.stores_nulls,
                     "parent block": rec.block(3) is not None,
                     "dest block": rec.block(1) is not None}
        elif isinstance(r, x.SpgxlogVacuumLeaf):
            flags = {"dead": r.n_dead > 0, "placeholder": r.n_placeholder > 0,
                     "move": r.n_move > 0, "chain": r.n_chain > 0}
        elif isinstance(r, x.SpgxlogVacuumRedirect):
            flags = {"trailing placeholders removed": r.first_placeholder != 0,
                     "to placeholder": r.n_to_placeholder > 0}
        seen[str(name)] += 1
        seen.update(f"{name} {f}" for f, on in flags.items() if on)
    return seen


@pytest.fixture(scope="module")
def spgist_wal(wcc_primary: Cluster) -> WalCapture:
    return capture_in_db(wcc_primary, "spgist_oracle", SPGIST_WORKLOAD % {"rows": 4000})


def test_spgist_record_types_are_those_of_the_18_6_headers() -> None:
    from_headers = header_record_types("spgxlog.h", "XLOG_SPGIST_")
    assert {v: k for k, v in from_headers.items()} == {
        name: t for t, name in x.SPGIST_RECORD_NAMES.items()}


@pytest.mark.pg
def test_every_spgist_record_type_matches_server_pages(spgist_wal: WalCapture) -> None:
    check_plain_and_chained(spgist_wal, "SPGist", ALL_SPGIST_TYPES)


@pytest.mark.pg
def test_spgist_workload_reaches_the_rare_branches(spgist_wal: WalCapture) -> None:
    seen = spgist_branches(records_of(spgist_wal, RM_SPGIST_ID))
    assert set(seen) >= REACHED_BRANCHES, sorted(REACHED_BRANCHES - set(seen))


@pytest.mark.pg
def test_spgist_desc_equals_pg_waldump(spgist_wal: WalCapture) -> None:
    assert_descs_match(spgist_wal, RM_SPGIST_ID, x.spg_desc, 5000)


@pytest.mark.pg
@pytest.mark.slow
def test_spgist_at_scale_matches_server_pages(wcc_primary: Cluster) -> None:
    cap = capture_in_db(wcc_primary, "spgist_scale", SPGIST_WORKLOAD % {"rows": 12000})
    check_plain_and_chained(cap, "SPGist", ALL_SPGIST_TYPES)
