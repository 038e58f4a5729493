"""Hash, GiST and BRIN indexes in the past: the same plans as the present, and
the same answers as native PITR.

A primary (WAL archived) is imported at a clean stop, so every hash, GiST and
BRIN page below comes from our redo of its WAL: the indexes are created and
changed after the import. Two workload steps run (build and load; then
inserts, deletes, vacuum, BRIN summarize/desummarize); after each one the
live primary's EXPLAIN (COSTS OFF) and answers for a set of queries are taken
at its LSN X. The WAL is ingested into a page store; image layers are made
after the first step (they must hold the index pages: no key is left out any
more). Then at each X a historical server materialized from the store must
plan every query with the same node types and index names as the live
primary did, and answer exactly as a PostgreSQL recovered from a base backup
with recovery_target_lsn = X.
"""

from __future__ import annotations

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
from strata.ingest.walingest import WalIngest
from strata.key import KeyKind, KeyRange
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.runtime.cluster import Cluster
from strata.storage.manifest import Level
from strata.wal.segments import iter_records
from tests.conftest import _scratch, make_cluster
from tests.store_import import import_stopped

pytestmark = [pytest.mark.e2e]

SETUP = "CREATE EXTENSION pg_trgm; CREATE EXTENSION btree_gist;"

STEP_BUILD = """
CREATE TABLE h (k int, pad int);
INSERT INTO h SELECT i, i % 97 FROM generate_series(1, 20000) i;
CREATE INDEX h_k ON h USING hash (k);
CREATE TABLE gp (id int, p point);
CREATE INDEX gp_p ON gp USING gist (p);
INSERT INTO gp SELECT i, point(i % 150, i / 150) FROM generate_series(1, 15000) i;
CREATE TABLE gb (id int, b box, g polygon);
INSERT INTO gb SELECT i, box(point(i % 100, i / 100), point(i % 100 + 1, i / 100 + 1)),
       polygon(circle(point(i / 100, i % 100), 0.5))
  FROM generate_series(1, 10000) i;
CREATE INDEX gb_b ON gb USING gist (b);
CREATE INDEX gb_g ON gb USING gist (g);
CREATE TABLE booking (room int, during tsrange,
    EXCLUDE USING gist (room WITH =, during WITH &&));
INSERT INTO booking SELECT i % 50, tsrange('2026-01-01'::timestamp + (i / 50) * interval '1 hour',
    '2026-01-01'::timestamp + (i / 50 + 1) * interval '1 hour') FROM generate_series(1, 10000) i;
CREATE TABLE gt (id int, t text);
INSERT INTO gt SELECT i, md5(i::text) FROM generate_series(1, 10000) i;
CREATE INDEX gt_t ON gt USING gist (t gist_trgm_ops);
CREATE TABLE br (id int, v int, t text);
INSERT INTO br SELECT i, i / 10, 'k' || lpad(i::text, 8, '0') FROM generate_series(1, 200000) i;
CREATE INDEX br_id ON br USING brin (id);
CREATE INDEX br_v ON br USING brin (v int4_minmax_multi_ops);
CREATE INDEX br_t ON br USING brin (t text_bloom_ops);
ANALYZE;
"""

STEP_CHANGE = """
INSERT INTO h SELECT i, i % 97 FROM generate_series(20001, 30000) i;
DELETE FROM h WHERE k % 3 = 0;
INSERT INTO gp SELECT i, point(i % 150 + 0.5, i / 150) FROM generate_series(1, 5000) i;
DELETE FROM gp WHERE id % 4 = 0;
DELETE FROM gb WHERE id % 5 = 0;
INSERT INTO booking SELECT 50 + i % 5, tsrange('2026-03-01'::timestamp + i * interval '1 day',
    '2026-03-01'::timestamp + (i + 1) * interval '1 day') FROM generate_series(1, 500) i;
INSERT INTO gt SELECT i, md5(i::text) FROM generate_series(10001, 12000) i;
INSERT INTO br SELECT i, i / 10, 'k' || lpad(i::text, 8, '0')
  FROM generate_series(200001, 230000) i;
DELETE FROM br WHERE id BETWEEN 1000 AND 2000;
VACUUM h, gp, gb, gt, br;
SELECT brin_summarize_new_values('br_id'), brin_summarize_new_values('br_v');
SELECT brin_desummarize_range('br_t', 128);
ANALYZE;
"""

# (query, the index it must be planned with): the plans are compared node by node
QUERIES: tuple[tuple[str, str], ...] = (
    ("SELECT count(*), sum(pad) FROM h WHERE k = 4243", "h_k"),
    ("SELECT id FROM gp ORDER BY p <-> point(70.2, 40.7), id LIMIT 10", "gp_p"),
    ("SELECT count(*) FROM gp WHERE p <@ box '((10,10),(12,13))'", "gp_p"),
    ("SELECT count(*) FROM gb WHERE b && box '((20,20),(21,22))'", "gb_b"),
    ("SELECT count(*) FROM gb WHERE g && polygon '((30,30),(31,31),(31,30))'", "gb_g"),
    ("SELECT count(*) FROM booking WHERE room = 7 AND "
     "during && tsrange('2026-01-02 03:00', '2026-01-02 09:00')", "booking_room_during_excl"),
    ("SELECT count(*) FROM gt WHERE t LIKE '%abc1%'", "gt_t"),
    ("SELECT count(*), sum(v) FROM br WHERE id BETWEEN 150000 AND 150300", "br_id"),
    ("SELECT count(*) FROM br WHERE v BETWEEN 12000 AND 12010", "br_v"),
    ("SELECT count(*) FROM br WHERE t = 'k00123456'", "br_t"),
)


def plan_shape(conn: Any, query: str) -> list[tuple[str, str | None]]:
    """(node type, index name) of every node of EXPLAIN (COSTS OFF), depth first."""
    (plan,), = conn.execute(f"EXPLAIN (COSTS OFF, FORMAT JSON) {query}").fetchall()
    out: list[tuple[str, str | None]] = []

    def walk(node: dict[str, Any]) -> None:
        out.append((node["Node Type"], node.get("Index Name")))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return out


def answers(conn: Any) -> list[list[tuple[Any, ...]]]:
    return [conn.execute(q).fetchall() for q, _ in QUERIES]


@dataclass
class Point:
    name: str
    lsn: Lsn
    plans: list[list[tuple[str, str | None]]]


@dataclass
class World:
    root: Path
    store: PageStore
    points: list[Point]
    backup: Path
    archive: Path
    index_rels: dict[str, int]  # index name -> relfilenode
    db: int
    image_lsn: Lsn


def _step(primary: Cluster, name: str, sql: str) -> Point:
    primary.psql("-q", input=sql)
    with primary.connect() as conn:
        lsn = Lsn.parse(conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
        plans = [plan_shape(conn, q) for q, _ in QUERIES]
    return Point(name, lsn, plans)


def _ingest(ingest: WalIngest, wal_dir: Path, start: Lsn, end: Lsn) -> None:
    for rec in iter_records(wal_dir, start):
        if rec.lsn >= end:
            break
        ingest.ingest(rec)
    ingest.advance()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    root = _scratch("amhist-")
    archive = root / "archive"
    primary = make_cluster(root / "primary", autovacuum="off", **archive_settings(archive))
    store: PageStore | None = None
    try:
        primary.psql("-q", input=SETUP)
        imp = import_stopped(primary, root)
        store, ingest, start = imp.store, imp.ingest, imp.start
        backup = base_backup(primary, root / "backup")
        points = [_step(primary, "build", STEP_BUILD)]
        # every index page of the first step from WAL, then image layers over them
        archive_now(primary)
        _ingest(ingest, primary.wal_dir(), start, points[0].lsn)
        store.flush()
        store.create_image_layers(points[0].lsn, threshold=0)
        points.append(_step(primary, "change", STEP_CHANGE))
        archive_now(primary)
        rels = {name: int(rel) for name, rel in primary.sql(
            "SELECT relname, pg_relation_filenode(oid) FROM pg_class WHERE relkind = 'i' "
            "AND relam IN (SELECT oid FROM pg_am WHERE amname IN ('hash', 'gist', 'brin'))")}
        db = int(primary.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'")[0][0])
        primary.stop()
        _ingest(ingest, primary.wal_dir(), points[0].lsn, points[1].lsn)
        yield World(root, store, points, backup, archive, rels, db, points[0].lsn)
    finally:
        if store is not None:
            store.close()
        primary.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def test_image_layers_hold_every_hash_gist_and_brin_page(world: World) -> None:
    """Image creation no longer leaves index keys out: an image layer at the
    first point covers every page of every hash, GiST and BRIN index."""
    images = [le.name for le in world.store.store.manifest.layers
              if le.level == Level.IMAGE and le.name.image_lsn == world.image_lsn]
    assert images
    assert set(world.index_rels) >= {"h_k", "gp_p", "gb_b", "gb_g", "gt_t", "br_id", "br_v",
                                     "br_t", "booking_room_during_excl"}
    for name, rel in world.index_rels.items():
        keys = list(world.store.keys(KeyRange.relation(1663, world.db, rel, 0), world.image_lsn))
        assert keys, name
        for k in keys:
            kb = k.to_bytes()
            assert any(n.key_start <= kb < n.key_end for n in images), f"{name}: {k} not imaged"
        assert all(k.kind == KeyKind.REL_BLOCK for k in keys)


@pytest.mark.parametrize("step", [0, 1], ids=["build", "change"])
def test_past_plans_equal_live_plans_and_answers_equal_native_pitr(world: World, step: int
                                                                    ) -> None:
    point = world.points[step]
    skipped = [(query, index, live) for (query, index), live in zip(QUERIES, point.plans,
                                                                    strict=True)
               if index not in {ix for _node, ix in live}]
    assert not skipped, f"live plans without their index: {skipped}"
    mat = materialize(StoreView(world.store, point.lsn),
                      world.root / f"hist-{point.name}" / "data")
    hist = start_instance(mat, invalid_index_ams=UNSUPPORTED_INDEX_AMS)
    pitr: Cluster | None = None
    try:
        pitr = recover_to(world.backup, world.archive, world.root / f"pitr-{point.name}",
                          RecoveryTarget(lsn=point.lsn))
        assert hist.indexes_marked_invalid == 0
        with hist.connect() as hconn, pitr.connect() as pconn:
            for (query, _index), live in zip(QUERIES, point.plans, strict=True):
                assert plan_shape(hconn, query) == live, query
            got = answers(hconn)
            assert got == answers(pconn)
    finally:
        if pitr is not None:
            pitr.stop("immediate")
        hist.stop()
        hist.remove()
    # non-trivial answers: every query finds rows through its index
    empty = [q for (q, _i), rows in zip(QUERIES, got, strict=True) if not rows or not rows[0][0]]
    assert not empty, empty
