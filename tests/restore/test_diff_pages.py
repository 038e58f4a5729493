"""The page-level diff against a full comparison, on two real servers.

Two states of one cluster: a copy of its data directory taken at T1 (a
server of its own) and the original, changed further, at T2. The changed
blocks are those whose bytes differ between the two copies of the table's
file (an oracle independent of the layer store). Reading only those blocks
must find exactly what a full comparison finds, and read far fewer rows."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.restore.diff import diff_table
from strata.restore.tables import read_rows, tables_at
from strata.runtime.cluster import Cluster
from tests.conftest import make_cluster

pytestmark = pytest.mark.pg

SETUP = """
CREATE TABLE t (id int PRIMARY KEY, v text, n numeric, g int GENERATED ALWAYS AS (id * 2) STORED);
INSERT INTO t SELECT i, 'row ' || i, i / 7.0 FROM generate_series(1, 20000) i;
CREATE TABLE bag (a int, b text);
INSERT INTO bag SELECT i % 50, 'x' FROM generate_series(1, 5000) i;
VACUUM FREEZE t;
VACUUM FREEZE bag;
CHECKPOINT;
"""
CHANGES = """
UPDATE t SET v = 'changed' WHERE id IN (10, 15000);
UPDATE t SET n = NULL WHERE id = 7777;
DELETE FROM t WHERE id = 19999;
INSERT INTO t (id, v, n) VALUES (20001, 'new', 1), (-1, E'tab\\there', 2);
DELETE FROM bag WHERE ctid = (SELECT ctid FROM bag WHERE a = 3 LIMIT 1);
INSERT INTO bag VALUES (3, 'x'), (3, 'x'), (NULL, NULL);
CHECKPOINT;
"""


@pytest.fixture
def two_points(scratch_dir: Path) -> Iterator[tuple[Cluster, Cluster]]:
    now = make_cluster(scratch_dir / "now")
    then: Cluster | None = None
    try:
        for stmt in SETUP.strip().split(";\n"):
            now.sql(stmt)
        now.stop()
        (scratch_dir / "then").mkdir()
        subprocess.run(["cp", "-a", str(now.datadir), str(scratch_dir / "then" / "data")],
                       check=True)
        then = Cluster(datadir=scratch_dir / "then" / "data")
        then.start()
        now.start()
        for stmt in CHANGES.strip().split(";\n"):
            now.sql(stmt)
        yield then, now
    finally:
        for c in (then, now):
            if c is not None:
                c.stop("immediate")


def _differing_blocks(a: Cluster, b: Cluster, table: str) -> list[int]:
    path = a.sql(f"SELECT pg_relation_filepath('{table}')")[0][0]
    fa = (a.datadir / path).read_bytes()
    fb = (b.datadir / path).read_bytes()
    n = max(len(fa), len(fb)) // 8192
    return [i for i in range(n) if fa[i * 8192:(i + 1) * 8192] != fb[i * 8192:(i + 1) * 8192]]


def test_changed_pages_find_what_a_full_comparison_finds(two_points: tuple[Cluster, Cluster]
                                                         ) -> None:
    then, now = two_points
    with then.connect() as c1, now.connect() as c2:
        for name in ("t", "bag"):
            (a,) = [x for x in tables_at(c1) if x.name == name]
            (b,) = [x for x in tables_at(c2) if x.name == name]
            assert (a.oid, a.filenode) == (b.oid, b.filenode)
            blocks = _differing_blocks(then, now, name)
            pages = diff_table(c1, c2, a, b, blocks, "changed pages")
            full = diff_table(c1, c2, a, b, None, "full")
            assert (pages.added, pages.removed, pages.changed) == \
                (full.added, full.removed, full.changed)
            assert pages.rows_read < full.rows_read / 10
    with then.connect() as c1, now.connect() as c2:
        (a,) = [x for x in tables_at(c1) if x.name == "t"]
        (b,) = [x for x in tables_at(c2) if x.name == "t"]
        td = diff_table(c1, c2, a, b, _differing_blocks(then, now, "t"), "changed pages")
    assert td.key == ("id",)
    assert [r[0] for r in td.added] == ["-1", "20001"]
    assert td.added[0][1] == "tab\there"
    assert [r[0] for r in td.removed] == ["19999"]
    assert [(o[0], td.changed_columns(o, n)) for o, n in td.changed] == \
        [("10", ["v"]), ("15000", ["v"]), ("7777", ["n"])]


def test_tid_range_reads_touch_only_the_given_blocks(two_points: tuple[Cluster, Cluster]) -> None:
    _, now = two_points
    with now.connect() as c:
        (t,) = [x for x in tables_at(c) if x.name == "t"]
        rows = list(read_rows(c, t, ["id"], [0, 1, 2, 50]))
        per_block = c.execute("SELECT (ctid::text::point)[0]::int, count(*) FROM t WHERE "
                              "(ctid::text::point)[0]::int IN (0, 1, 2, 50) GROUP BY 1"
                              ).fetchall()
        assert len(rows) == sum(n for _, n in per_block)
        plan = "\n".join(r[0] for r in c.execute(
            "EXPLAIN SELECT id FROM ONLY t WHERE ctid >= '(0,0)'::tid AND ctid < '(3,0)'::tid"))
        assert "Tid Range Scan" in plan
