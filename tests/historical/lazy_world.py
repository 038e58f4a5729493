"""A page store with a history, for the lazy-mode tests (one per module).

A primary (WAL archived, base backup taken after the import: the native-PITR
oracle) is imported at a clean stop, then runs shared/workloads/history.sql
plus our own steps: a table big enough for readahead and failure injection,
a table and an index in a tablespace, an unlogged table with an index and an unlogged sequence, a hash index. Its
WAL is ingested into a store that is then closed (readers in other processes
open it read-only) and reopened read-only here.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from strata.historical.pitr import archive_now, archive_settings, base_backup
from strata.historical.reader import open_reader
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.runtime.cluster import Cluster
from strata.runtime.osuser import make_private_dir
from tests.conftest import _scratch, make_cluster
from tests.e2e.workload import WORKLOADS, StepPoint, load_steps, run_steps
from tests.store_import import import_stopped, ingest_through

EXTRA_STEPS: list[tuple[str, list[str]]] = [
    ("big", [
        "CREATE TABLE big (id int PRIMARY KEY, pad text)",
        "INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 60000) g",
    ]),
    ("unlogged", [
        "CREATE UNLOGGED TABLE ul (id int PRIMARY KEY, v text)",
        "INSERT INTO ul SELECT g, 'u' || g FROM generate_series(1, 500) g",
        "CREATE UNLOGGED SEQUENCE ul_seq START 7",
        "SELECT nextval('ul_seq')",
        "CREATE TABLE hashed (k int, v text)",
        "INSERT INTO hashed SELECT g % 100, 'h' || g FROM generate_series(1, 3000) g",
        "CREATE INDEX hashed_k ON hashed USING hash (k)",
        "ANALYZE hashed",
    ]),
    ("update_big", [
        "UPDATE big SET pad = 'x' WHERE id % 3 = 0",
        "DELETE FROM big WHERE id % 10 = 0",
    ]),
]


@dataclass
class LazyWorld:
    root: Path
    store_dir: Path
    store: PageStore  # opened read-only (`open_reader`)
    start: Lsn
    points: list[StepPoint]
    backup: Path
    archive: Path
    primary: Cluster

    def point(self, name: str) -> StepPoint:
        return next(p for p in self.points if p.name == name)


def build_world() -> Iterator[LazyWorld]:
    root = _scratch("lazy-")
    archive = root / "archive"
    primary = make_cluster(root / "primary", autovacuum="off", **archive_settings(archive))
    writer: PageStore | None = None
    reader: PageStore | None = None
    try:
        imp = import_stopped(primary, root)
        writer, timemap, start = imp.store, imp.timemap, imp.start
        backup = base_backup(primary, make_private_dir(root / "backup"))
        # in place (pg_tblspc/<oid> is a directory): the PITR oracles recovered from
        # the base backup then never write into the primary's tablespace
        tablespace = ("tablespace", [
            "SET allow_in_place_tablespaces = on",
            "CREATE TABLESPACE lazy_ts LOCATION ''",
            "CREATE TABLE in_ts (id int, v text) TABLESPACE lazy_ts",
            "INSERT INTO in_ts SELECT g, 'ts' || g FROM generate_series(1, 2000) g",
            "CREATE INDEX in_ts_id ON in_ts (id) TABLESPACE lazy_ts",
        ])
        with primary.connect() as conn:
            points = run_steps(conn, [*load_steps(WORKLOADS / "history.sql"),
                                      EXTRA_STEPS[0], tablespace, *EXTRA_STEPS[1:]])
        archive_now(primary)
        primary.stop()
        end = max(Lsn.parse(p.lsn) for p in points)
        ingest_through(imp.ingest, primary.wal_dir(), start, end)
        writer.close(flush=True)
        writer = None
        timemap.close()
        reader = open_reader(root / "layers")
        yield LazyWorld(root, root / "layers", reader, start, points, backup, archive, primary)
    finally:
        if writer is not None:
            writer.close()
        if reader is not None:
            reader.close()
        primary.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
