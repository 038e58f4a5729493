"""GIN and SP-GiST indexes in the past: same plans as the live primary, same
answers as native PITR.

A primary (WAL archived, a base backup taken first) is imported at a clean
stop into a page store; then a workload builds GIN (tsvector, pg_trgm, int[]
with fastupdate off, jsonb_path_ops) and SP-GiST (quad-tree points, ranges,
inet, text) indexes and churns them (inserts through the pending list and
into the trees, deletes, VACUUM, a pending list left unflushed at the end).
Its WAL is ingested; historical servers are materialised from the store at
the LSN after each step, as `HistoryService` does (indexes of the AMs still
without redo marked invalid: none of these).

Oracles: EXPLAIN (COSTS OFF) of every query on the live primary at the end
of the workload (node types and index names; every plan uses one of the
GIN/SP-GiST indexes) equals the historical server's at the same LSN; at every
step's LSN, each query answers on the historical server (index scans forced)
exactly as on a server recovered natively from the base backup with
``recovery_target_lsn`` = that LSN. Image layers made at the end rebuild
every page of these indexes (none skipped as unrebuildable), and the answers
read through them still equal PITR.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from strata.historical.instance import start_instance
from strata.historical.materialize import materialize
from strata.historical.modes import UNSUPPORTED_INDEX_AMS
from strata.historical.pitr import (
    RecoveryTarget,
    archive_now,
    archive_settings,
    base_backup,
    recover_to,
)
from strata.historical.store_view import StoreView
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.runtime.cluster import Cluster
from tests.conftest import _scratch, make_cluster
from tests.store_import import import_stopped, ingest_through

pytestmark = [pytest.mark.e2e]

DB = "idx"
SETUP = "CREATE EXTENSION pg_trgm;"
STEPS: tuple[tuple[str, str], ...] = (
    ("build", """
CREATE TABLE docs (id int PRIMARY KEY, body text, tsv tsvector, tags int[], j jsonb)
  WITH (autovacuum_enabled = off);
INSERT INTO docs
SELECT i, b, to_tsvector('english', b), ARRAY[i % 50, i % 997],
       jsonb_build_object('k', i % 40, 'tag', 't' || i % 13)
FROM (SELECT i, 'word' || i % 211 || ' term' || i % 389 || ' ' || md5(i::text) AS b
      FROM generate_series(1, 15000) i) s;
CREATE INDEX docs_tsv ON docs USING gin (tsv);
CREATE INDEX docs_trgm ON docs USING gin (body gin_trgm_ops);
CREATE INDEX docs_tags ON docs USING gin (tags) WITH (fastupdate = off);
CREATE INDEX docs_j ON docs USING gin (j jsonb_path_ops);
CREATE TABLE geo (id int PRIMARY KEY, pt point, r int4range, ip inet, name text)
  WITH (autovacuum_enabled = off);
INSERT INTO geo
SELECT i, point(i % 211, (i * 37) % 199), int4range(i % 3000, i % 3000 + 1 + i % 7),
       ('10.' || i % 200 || '.' || i / 200 % 250 || '.' || i % 7)::inet, md5(i::text)
FROM generate_series(1, 15000) i;
CREATE INDEX geo_pt ON geo USING spgist (pt);
CREATE INDEX geo_r ON geo USING spgist (r);
CREATE INDEX geo_ip ON geo USING spgist (ip);
CREATE INDEX geo_name ON geo USING spgist (name);
ANALYZE docs, geo;
"""),
    ("grow", """
INSERT INTO docs
SELECT i, b, to_tsvector('english', b), ARRAY[i % 50, i % 997],
       jsonb_build_object('k', i % 40, 'tag', 't' || i % 13)
FROM (SELECT i, 'word' || i % 211 || ' term' || i % 389 || ' ' || md5(i::text) AS b
      FROM generate_series(15001, 20000) i) s;
INSERT INTO geo
SELECT i, point(i % 211, (i * 37) % 199), int4range(i % 3000, i % 3000 + 1 + i % 7),
       ('10.' || i % 200 || '.' || i / 200 % 250 || '.' || i % 7)::inet, md5(i::text)
FROM generate_series(15001, 20000) i;
"""),
    ("churn", """
DELETE FROM docs WHERE id % 3 = 0;
DELETE FROM geo WHERE id % 3 = 0 OR pt <@ box '((0,0),(40,40))';
VACUUM docs, geo;
INSERT INTO docs SELECT i, 'late word' || i % 211, to_tsvector('english', 'late word' || i % 211),
       ARRAY[i % 50], '{"k": 5}' FROM generate_series(30000, 31500) i;
INSERT INTO geo SELECT i, point(i % 40, i % 39), int4range(i % 3000, i % 3000 + 2),
       '10.1.2.3'::inet, 'late' || i FROM generate_series(30000, 31500) i;
ANALYZE docs, geo;
"""),
    ("pending", """
INSERT INTO docs SELECT i, 'pending word7 term13 ' || i, to_tsvector('english', 'pending word7 term13'),
       ARRAY[17, i], '{"k": 5, "pending": true}' FROM generate_series(40000, 40200) i;
"""),
)

QUERIES: tuple[str, ...] = (
    "SELECT id FROM docs WHERE tsv @@ to_tsquery('english', 'word7 & term13') ORDER BY id",
    "SELECT id FROM docs WHERE body LIKE '%4f2a%' ORDER BY id",
    "SELECT id FROM docs WHERE tags @> ARRAY[17] ORDER BY id",
    "SELECT id FROM docs WHERE j @> '{\"k\": 5, \"tag\": \"t3\"}' ORDER BY id",
    "SELECT id FROM geo WHERE pt <@ box '((10,10),(14,14))' ORDER BY id",
    "SELECT id, pt <-> point '(100,100)' AS d FROM geo ORDER BY pt <-> point '(100,100)', id LIMIT 7",
    "SELECT id FROM geo WHERE r && int4range(100, 102) ORDER BY id",
    "SELECT id FROM geo WHERE ip << inet '10.17.3.0/24' ORDER BY id",
    "SELECT id FROM geo WHERE name ^@ 'abc' ORDER BY id",
)
GIN_SPGIST_INDEXES = frozenset({"docs_tsv", "docs_trgm", "docs_tags", "docs_j", "geo_pt", "geo_r",
                                "geo_ip", "geo_name"})


@dataclass
class IndexHistory:
    store: PageStore
    points: list[tuple[str, Lsn]]
    live_plans: dict[str, list[tuple[str, str]]]
    root: Path
    archive: Path
    backup: Path


def plan_nodes(conn: Any, query: str) -> list[tuple[str, str]]:
    """(node type, index name) of every node of EXPLAIN (COSTS OFF)'s plan, depth first."""
    (doc,) = conn.execute(f"EXPLAIN (COSTS OFF, FORMAT JSON) {query}").fetchone()
    plan = (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
    out: list[tuple[str, str]] = []

    def walk(node: dict[str, Any]) -> None:
        out.append((node["Node Type"], node.get("Index Name", "")))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan)
    return out


def answers(conn: Any, *, force_index: bool) -> dict[str, list[tuple[Any, ...]]]:
    if force_index:
        conn.execute("SET enable_seqscan = off")
    return {q: conn.execute(q).fetchall() for q in QUERIES}


def _lsn(c: Cluster) -> Lsn:
    return Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()")[0][0])


@pytest.fixture(scope="module")
def index_history() -> Iterator[IndexHistory]:
    root = _scratch("ginspg-")
    archive = root / "archive"
    primary = make_cluster(root / "primary", autovacuum="off", **archive_settings(archive))
    store: PageStore | None = None
    try:
        primary.sql(f"CREATE DATABASE {DB}")
        primary.psql("-q", dbname=DB, input=SETUP)
        backup = base_backup(primary, root / "backup")
        imp = import_stopped(primary, root)
        store, start = imp.store, imp.start
        points: list[tuple[str, Lsn]] = []
        for name, sql in STEPS:
            primary.psql("-q", dbname=DB, input=sql)
            points.append((name, _lsn(primary)))
        with primary.connect(DB) as conn:
            live_plans = {q: plan_nodes(conn, q) for q in QUERIES}
        archive_now(primary)
        primary.stop()
        end = points[-1][1]
        ingest_through(imp.ingest, primary.wal_dir(), start, end)
        yield IndexHistory(store, points, live_plans, root, archive, backup)
    finally:
        if store is not None:
            store.close()
        primary.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _historical(h: IndexHistory, name: str, lsn: Lsn) -> Any:
    mat = materialize(StoreView(h.store, lsn), h.root / f"h-{name}" / "data")
    inst = start_instance(mat, invalid_index_ams=UNSUPPORTED_INDEX_AMS)
    assert inst.indexes_marked_invalid == 0
    return inst


def test_every_live_plan_uses_a_gin_or_spgist_index(index_history: IndexHistory) -> None:
    for q, nodes in index_history.live_plans.items():
        assert {ix for _t, ix in nodes} & GIN_SPGIST_INDEXES, f"{q}: {nodes}"


def test_historical_plans_equal_live_plans(index_history: IndexHistory) -> None:
    name, lsn = index_history.points[-1]
    inst = _historical(index_history, f"plans-{name}", lsn)
    try:
        with inst.connect(DB) as conn:
            valid = conn.execute(
                "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_am a ON a.oid = c.relam WHERE a.amname IN ('gin', 'spgist') "
                "AND i.indisvalid").fetchone()[0]
            assert valid == len(GIN_SPGIST_INDEXES)
            for q, live in index_history.live_plans.items():
                assert plan_nodes(conn, q) == live, q
    finally:
        inst.remove()


def _assert_answers_equal_pitr(h: IndexHistory, name: str, lsn: Lsn) -> None:
    inst = _historical(h, name, lsn)
    pitr = None
    try:
        pitr = recover_to(h.backup, h.archive, h.root / f"pitr-{name}", RecoveryTarget(lsn=lsn))
        with inst.connect(DB) as conn:
            ours = answers(conn, force_index=True)
        with pitr.connect(DB) as conn:
            theirs = answers(conn, force_index=False)
        assert any(ours.values())
        for q in QUERIES:
            assert ours[q] == theirs[q], f"{name} at {lsn}: {q}"
    finally:
        inst.remove()
        if pitr is not None:
            pitr.stop("immediate")


@pytest.mark.parametrize("step", [name for name, _sql in STEPS[1:]])
def test_index_answers_equal_native_pitr(index_history: IndexHistory, step: str) -> None:
    _assert_answers_equal_pitr(index_history, step, dict(index_history.points)[step])


def test_image_layers_keep_gin_and_spgist_pages(index_history: IndexHistory,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """Image creation rebuilds every GIN and SP-GiST page (none is skipped as
    unrebuildable), and the past read from those images still equals PITR."""
    _name, lsn = index_history.points[-1]
    index_history.store.flush()
    with caplog.at_level(logging.INFO, logger="strata.storage.store"):
        made = index_history.store.create_image_layers(lsn, threshold=-1)
    assert made
    skipped = [r.getMessage() for r in caplog.records if "skip" in r.getMessage()]
    assert not skipped, skipped
    _assert_answers_equal_pitr(index_history, "images", lsn)
