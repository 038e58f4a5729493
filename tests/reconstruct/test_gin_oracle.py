"""GIN redo against PostgreSQL's own pages (wal_consistency_checking = 'all').

A PostgreSQL 18.6 primary with wal_consistency_checking = 'all' runs workloads
built to produce every GIN record type of PG 18 (each step says which); every
block reference of every Gin record then carries the server's page after the
change, and our redo of the record, masked as gin_mask masks, must equal it:
zero mismatches, zero redo errors, nothing unsupported, in plain mode (each
record from the server's previous image) and in chained mode (each block from
our own previous result, as GetPage@LSN replays). A GIN record type of the
18.6 headers missing from the WAL fails the test; so does a workload that no
longer reaches the rare branches (posting-list segment actions, posting-tree
page deletion, internal entry splits, linked pending sublists). The parsers
are checked against pg_waldump's descriptions of the same records, with and
without verification images.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pytest

from strata.reconstruct.redo import RM_GIN_ID
from strata.runtime.cluster import Cluster
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import gin as x

from .am_oracle import (
    WCC_OFF,
    assert_descs_match,
    capture_in_db,
    check_plain_and_chained,
    header_record_types,
    records_of,
)
from .conftest import WalCapture

ALL_GIN_TYPES = frozenset(x.GIN_RECORD_NAMES.values())
# SPLIT's pages and VACUUM_PAGE's page are forced full-page images: redo restores
# them, there is nothing to compare (SPLIT's child, block 3, is compared).
IMAGE_ONLY = frozenset({"VACUUM_PAGE"})

GIN_WORKLOAD = """
SET enable_seqscan = off;
-- pt: posting trees built by CREATE INDEX (logged as whole pages, leaves
-- packed full); half-full heap pages then take new rows, whose TIDs land
-- inside full leaves: leaf INSERTs with segment actions, data leaf SPLITs,
-- posting items added to the internal root
CREATE TABLE pt (id int, a int[]) WITH (fillfactor = 50, autovacuum_enabled = off);
INSERT INTO pt SELECT i, ARRAY[1, 2 + i % 2] FROM generate_series(1, 20000) i;
CREATE INDEX pt_a ON pt USING gin (a) WITH (fastupdate = off);
ALTER TABLE pt SET (fillfactor = 100);
VACUUM pt;
INSERT INTO pt SELECT i, ARRAY[1] FROM generate_series(20001, 21000) i;
-- whole leaves die (DELETE_PAGE), others shrink (VACUUM_DATA_LEAF_PAGE)
DELETE FROM pt WHERE id BETWEEN 3000 AND 14000 OR id % 7 = 0;
VACUUM pt;
INSERT INTO pt SELECT i, ARRAY[1, 2] FROM generate_series(1, 1500) i;
-- ga: entry-tree leaf inserts and SPLITs; key 7's posting list outgrows its
-- entry tuple (CREATE_PTREE: one row per heap page makes each TID delta take
-- two bytes); NULL and empty arrays (placeholder entries); VACUUM rewrites
-- entry leaves (VACUUM_PAGE)
CREATE TABLE ga (id int, a int[], pad text DEFAULT repeat('p', 600))
  WITH (fillfactor = 10, autovacuum_enabled = off);
CREATE INDEX ga_a ON ga USING gin (a) WITH (fastupdate = off);
INSERT INTO ga SELECT i, ARRAY[1000 + i, 7] FROM generate_series(1, 1500) i;
INSERT INTO ga VALUES (0, NULL), (0, '{}'), (0, ARRAY[NULL::int]);
DELETE FROM ga WHERE id % 4 = 0;
VACUUM ga;
-- wk: 1280-byte keys: internal entry pages fill and split (non-leaf INSERT
-- finishing a child's split, SPLIT with a child block)
CREATE TABLE wk (id int, k text[]) WITH (autovacuum_enabled = off);
CREATE INDEX wk_k ON wk USING gin (k) WITH (fastupdate = off);
INSERT INTO wk SELECT i, ARRAY[(SELECT string_agg(md5((i * 100 + j)::text), '')
                               FROM generate_series(1, 40) j)]
  FROM generate_series(1, 120) i;
-- fu: fast update on a two-column index: the pending list fills
-- (INSERT_LISTPAGE; UPDATE_META_PAGE with tail inserts and linked sublists)
-- and is flushed into the tree (DELETE_LISTPAGE)
CREATE TABLE fu (id int, a int[], b int[]) WITH (autovacuum_enabled = off);
CREATE INDEX fu_ab ON fu USING gin (a, b) WITH (fastupdate = on, gin_pending_list_limit = 64);
INSERT INTO fu SELECT i, ARRAY[i % 50, i % 7], ARRAY(SELECT generate_series(i % 100, i % 100 + i % 40))
  FROM generate_series(1, 2000) i;
DELETE FROM fu WHERE id % 3 = 0;
VACUUM fu;
INSERT INTO fu SELECT i, ARRAY[i], NULL FROM generate_series(1, 200) i;
"""

# Full-text, trigram and jsonb operator classes, with fastupdate on and off.
OPCLASS_WORKLOAD = """
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE TABLE docs (id int, body text, tsv tsvector, j jsonb) WITH (autovacuum_enabled = off);
CREATE INDEX docs_tsv ON docs USING gin (tsv) WITH (fastupdate = off);
CREATE INDEX docs_trgm ON docs USING gin (body gin_trgm_ops) WITH (fastupdate = on,
                                                                   gin_pending_list_limit = 64);
CREATE INDEX docs_j ON docs USING gin (j) WITH (fastupdate = off);
CREATE INDEX docs_jp ON docs USING gin (j jsonb_path_ops) WITH (fastupdate = on);
INSERT INTO docs
SELECT i, b, to_tsvector('english', b),
       jsonb_build_object('id', i, 'tags', jsonb_build_array('t' || i %% 13, 't' || i %% 7),
                          'nested', jsonb_build_object('k', i %% 31, 's', 'v' || i %% 5))
FROM (SELECT i, 'word' || i %% 97 || ' term' || i %% 389 || ' the quick brown fox '
                || md5(i::text) AS b
      FROM generate_series(1, %(rows)s) i) s;
DELETE FROM docs WHERE id %% 5 = 0;
VACUUM docs;
INSERT INTO docs SELECT i, 'late ' || i, to_tsvector('late ' || i), '{"late": true}'
FROM generate_series(1, %(rows)s / 5) i;
"""


def _segment_actions(data: bytes) -> Iterable[str]:
    names = {x.GIN_SEGMENT_DELETE: "delete", x.GIN_SEGMENT_INSERT: "insert",
             x.GIN_SEGMENT_REPLACE: "replace", x.GIN_SEGMENT_ADDITEMS: "additems"}
    for a in x.GinRecompressDataLeaf.parse(data).actions:
        yield f"segment {names[a.action]}"


def gin_branches(records: Iterable[DecodedRecord]) -> Counter[str]:
    """Which redo branches a GIN WAL stream exercises."""
    seen: Counter[str] = Counter()
    for rec in records:
        m = x.parse_main(rec.info, rec.main_data)
        b0 = rec.block(0)
        if isinstance(m, x.XlGinInsert):
            seen[f"insert {'data' if m.is_data else 'entry'} "
                 f"{'leaf' if m.is_leaf else 'internal'}"] += 1
            if b0 is not None and m.is_data and m.is_leaf:
                seen.update(_segment_actions(b0.data))
            if b0 is not None and not m.is_data and x.GinInsertEntry.parse(b0.data).is_delete:
                seen["entry tuple replaced"] += 1
        elif isinstance(m, x.XlGinSplit):
            seen[f"split {'data' if m.flags & x.GIN_INSERT_ISDATA else 'entry'} "
                 f"{'leaf' if m.flags & x.GIN_INSERT_ISLEAF else 'internal'}"] += 1
            if m.flags & x.GIN_SPLIT_ROOT:
                seen["root split"] += 1
        elif isinstance(m, x.XlGinUpdateMeta):
            if m.ntuples > 0:
                seen["pending tail insert"] += 1
            elif m.prev_tail != x.INVALID_BLOCK_NUMBER:
                seen["pending sublist linked"] += 1
        elif rec.info == x.XLOG_GIN_VACUUM_DATA_LEAF_PAGE and b0 is not None:
            seen.update(f"vacuum {s}" for s in _segment_actions(b0.data))
    return seen


@pytest.fixture(scope="module")
def gin_wal(wcc_primary: Cluster) -> WalCapture:
    return capture_in_db(wcc_primary, "gin_oracle", GIN_WORKLOAD)


@pytest.fixture(scope="module")
def gin_plain_wal(wcc_primary: Cluster) -> WalCapture:
    """The same workload without verification images (block data desc paths)."""
    return capture_in_db(wcc_primary, "gin_plain", WCC_OFF + GIN_WORKLOAD)


def test_gin_record_types_are_those_of_the_18_6_headers() -> None:
    from_headers = header_record_types("ginxlog.h", "XLOG_GIN_")
    assert {v: k for k, v in from_headers.items()} == {
        name: t for t, name in x.GIN_RECORD_NAMES.items()}


@pytest.mark.pg
def test_every_gin_record_type_matches_server_pages(gin_wal: WalCapture) -> None:
    check_plain_and_chained(gin_wal, "Gin", ALL_GIN_TYPES, IMAGE_ONLY)


@pytest.mark.pg
def test_gin_workload_reaches_the_rare_branches(gin_wal: WalCapture) -> None:
    seen = gin_branches(records_of(gin_wal, RM_GIN_ID))
    want = {"insert entry leaf", "insert entry internal", "insert data leaf",
            "insert data internal", "entry tuple replaced", "segment additems",
            "segment insert", "segment replace", "split entry leaf", "split entry internal",
            "split data leaf", "root split", "pending tail insert", "pending sublist linked",
            "vacuum segment replace", "vacuum segment delete"}
    assert want <= set(seen), sorted(want - set(seen))


@pytest.mark.pg
def test_gin_desc_equals_pg_waldump_with_verification_images(gin_wal: WalCapture) -> None:
    assert_descs_match(gin_wal, RM_GIN_ID, x.gin_desc, 5000)


@pytest.mark.pg
def test_gin_desc_equals_pg_waldump_from_block_data(gin_plain_wal: WalCapture) -> None:
    assert_descs_match(gin_plain_wal, RM_GIN_ID, x.gin_desc, 5000)
    seen = gin_branches(records_of(gin_plain_wal, RM_GIN_ID))
    assert {"insert data internal", "segment additems", "entry tuple replaced"} <= set(seen)


def _check_opclasses(wcc_primary: Cluster, rows: int) -> None:
    cap = capture_in_db(wcc_primary, f"gin_opclasses_{rows}", OPCLASS_WORKLOAD % {"rows": rows})
    check_plain_and_chained(cap, "Gin", frozenset({"INSERT", "SPLIT", "UPDATE_META_PAGE",
                                                    "INSERT_LISTPAGE", "DELETE_LISTPAGE",
                                                    "VACUUM_PAGE"}),
                            IMAGE_ONLY | {"SPLIT"})


@pytest.mark.pg
def test_gin_opclasses_trgm_tsvector_jsonb_match_server_pages(wcc_primary: Cluster) -> None:
    _check_opclasses(wcc_primary, 400)


@pytest.mark.pg
@pytest.mark.slow
def test_gin_opclasses_at_scale_match_server_pages(wcc_primary: Cluster) -> None:
    _check_opclasses(wcc_primary, 5000)
