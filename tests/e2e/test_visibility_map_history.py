"""The visibility map in the past equals native PITR's, so index-only scans in
the past skip the heap exactly where the primary's would, and never where
they must not.

A primary (WAL archived, autovacuum off) with pg_visibility and an empty table
is imported at a clean stop, so every VM page below comes from WAL. Four steps:
load and VACUUM (VM bits set); delete the upper half and VACUUM (its emptied
pages become all-visible, then the heap and its VM are truncated: the cut VM
page keeps only the bits of the blocks left); update the first rows (bits
cleared, 18.6 names the VM page; the new versions extend the heap past the
cut); insert again and roll back a further insert (new heap pages holding
aborted tuples under the bits the cut cleared: a stale bit would make an
index-only scan count them). At each step's LSN a historical server materialized from the store
must show the same `pg_visibility_map` as a PostgreSQL recovered with
recovery_target_lsn, and the same index-only-scan answers and heap fetches.
Run with data checksums (the primary logs the cut VM page as a full-page
image) and without (ingest cuts the page itself: ingest/visibility_map.py).
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
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.runtime.cluster import Cluster
from tests.conftest import _scratch
from tests.store_import import import_stopped, ingest_through

pytestmark = [pytest.mark.e2e]

SETUP = """CREATE EXTENSION pg_visibility;
CREATE TABLE t (id int PRIMARY KEY, v int) WITH (autovacuum_enabled = off);"""
STEPS = [
    ("vacuumed", "INSERT INTO t SELECT i, 0 FROM generate_series(1, 40000) i; VACUUM t;"),
    ("truncated", "DELETE FROM t WHERE id > 20000; VACUUM t;"),
    ("updated", "UPDATE t SET v = 1 WHERE id <= 5000;"),
    ("regrown", "INSERT INTO t SELECT i, 2 FROM generate_series(20001, 30000) i;\n"
                "BEGIN; INSERT INTO t SELECT i, 3 FROM generate_series(30001, 36000) i; ROLLBACK;"),
]
INDEX_ONLY = ["SELECT count(*) FROM t WHERE id > 0", "SELECT count(*) FROM t WHERE id > 20000"]


@dataclass
class World:
    root: Path
    store: PageStore
    points: list[tuple[str, Lsn]]
    backup: Path
    archive: Path


@pytest.fixture(scope="module", params=[True, False], ids=["checksums", "no-checksums"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    root = _scratch("vmhist-")
    archive = root / "archive"
    primary = Cluster(datadir=root / "primary" / "data")
    primary.initdb(settings={"wal_keep_size": "1GB", "autovacuum": "off",
                             **archive_settings(archive)}, checksums=request.param)
    primary.start()
    store: PageStore | None = None
    try:
        primary.psql("-q", input=SETUP)
        imp = import_stopped(primary, root)
        store = imp.store
        backup = base_backup(primary, root / "backup")
        points: list[tuple[str, Lsn]] = []
        for name, sql in STEPS:
            primary.psql("-q", input=sql)
            points.append((name, Lsn.parse(primary.sql(
                "SELECT pg_current_wal_insert_lsn()::text")[0][0])))
        archive_now(primary)
        primary.stop()
        ingest_through(imp.ingest, primary.wal_dir(), imp.start, points[-1][1])
        yield World(root, store, points, backup, archive)
    finally:
        if store is not None:
            store.close()
        primary.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _visibility(conn: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(pg_visibility_map of t, per index-only query: its count and heap fetches)."""
    vm = conn.execute("SELECT blkno, all_visible, all_frozen FROM pg_visibility_map('t') "
                      "ORDER BY blkno").fetchall()
    conn.execute("SET enable_seqscan = off")
    conn.execute("SET enable_bitmapscan = off")
    conn.execute("SET max_parallel_workers_per_gather = 0")
    scans = []
    for q in INDEX_ONLY:
        plan = "\n".join(r[0] for r in conn.execute(
            f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) {q}").fetchall())
        assert "Index Only Scan" in plan, plan
        fetches = [int(line.split(":")[1]) for line in plan.splitlines() if "Heap Fetches" in line]
        scans.append((conn.execute(q).fetchone()[0], fetches))
    return vm, scans


@pytest.mark.parametrize("step", range(len(STEPS)), ids=[n for n, _ in STEPS])
def test_the_past_has_the_visibility_map_native_pitr_has(world: World, step: int) -> None:
    name, lsn = world.points[step]
    mat = materialize(StoreView(world.store, lsn), world.root / f"hist-{name}" / "data")
    hist = start_instance(mat, invalid_index_ams=UNSUPPORTED_INDEX_AMS)
    pitr: Cluster | None = None
    try:
        pitr = recover_to(world.backup, world.archive, world.root / f"pitr-{name}",
                          RecoveryTarget(lsn=lsn))
        with hist.connect() as hconn, pitr.connect() as pconn:
            got, want = _visibility(hconn), _visibility(pconn)
    finally:
        if pitr is not None:
            pitr.stop("immediate")
        hist.stop()
        hist.remove()
    assert got == want
    vm, scans = got
    visible = sum(1 for _blk, all_visible, _f in vm if all_visible)
    if name in ("vacuumed", "truncated"):  # not trivial: VACUUM set bits, the scans skip the heap
        assert visible == len(vm) > 80 and scans[0] == (40000 if name == "vacuumed" else 20000, [0])
    if name == "updated":
        assert 0 < visible < len(vm) and scans[0][1][0] > 0
    if name == "regrown":  # rows of the rolled-back insert are not counted
        assert scans[1][0] == 10000 and scans[0][0] == 30000
