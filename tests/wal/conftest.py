"""Fixtures for the WAL reader/decoder tests: real WAL from PostgreSQL 18 runs.

Each workload fixture (session scope) starts its own cluster, records the
insert LSN, runs the workload, notes what the tests need (relation file
paths), stops the server cleanly and hands over the now-quiet pg_wal. The
clusters are removed at the end of the session.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pglast
import pytest

from strata.lsn import INVALID_LSN, Lsn
from strata.runtime.cluster import Cluster
from strata.runtime.osuser import run_as_server
from strata.wal.segments import iter_raw_records
from tests.conftest import _scratch, make_cluster
from tests.e2e.workload import HISTORY_SQL


@dataclass
class WalRun:
    """A finished workload: where its WAL is and where the workload began."""

    cluster: Cluster
    start: Lsn
    end: Lsn  # pg_current_wal_insert_lsn() after the workload, before shutdown
    relfiles: dict[str, Path] = field(default_factory=dict)

    @property
    def wal_dir(self) -> Path:
        return self.cluster.wal_dir()


def _insert_lsn(c: Cluster) -> Lsn:
    return Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])


def _relfile(c: Cluster, rel: str) -> Path:
    path = c.sql(f"SELECT pg_relation_filepath('{rel}')")[0][0]
    return c.datadir / path


@pytest.fixture(scope="session")
def wal_scratch() -> Iterator[Path]:
    d = _scratch("wal-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _pgbench(c: Cluster, *args: str) -> None:
    run_as_server([c.bins.path("pgbench"), "-h", "127.0.0.1", "-p", str(c.port), "-U",
                   "postgres", *args, "postgres"], timeout=300)


@pytest.fixture(scope="session")
def pgbench_wal(wal_scratch: Path) -> Iterator[WalRun]:
    """pgbench -i -s 1, then pgbench -c 2 -j 2 -t 300."""
    c = make_cluster(wal_scratch / "pgbench")
    try:
        start = _insert_lsn(c)
        _pgbench(c, "-i", "-s", "1", "-q")
        _pgbench(c, "-c", "2", "-j", "2", "-t", "300", "-n")
        rels = {r: _relfile(c, r) for r in ("pgbench_branches", "pgbench_tellers",
                                            "pgbench_accounts")}
        end = _insert_lsn(c)
    finally:
        c.stop()
    yield WalRun(c, start, end, rels)


def history_statements() -> list[str]:
    return [str(s) for s in pglast.split(HISTORY_SQL.read_text())]


@pytest.fixture(scope="session")
def history_wal(wal_scratch: Path) -> Iterator[WalRun]:
    """tests/data/workloads/history.sql, statement by statement, autocommit."""
    c = make_cluster(wal_scratch / "history")
    try:
        start = _insert_lsn(c)
        with c.connect() as conn:
            for stmt in history_statements():
                conn.execute(stmt)  # type: ignore[arg-type]
        end = _insert_lsn(c)
    finally:
        c.stop()
    yield WalRun(c, start, end)


@pytest.fixture(scope="session")
def pglz_wal(wal_scratch: Path) -> Iterator[WalRun]:
    """wal_compression = pglz with a checkpoint so that updates log compressed FPIs."""
    c = make_cluster(wal_scratch / "pglz", wal_compression="pglz")
    try:
        start = _insert_lsn(c)
        with c.connect() as conn:
            conn.execute("CREATE TABLE t (a int PRIMARY KEY, b text, c int[])")
            conn.execute("INSERT INTO t SELECT g, repeat(md5(g::text), g % 5), "
                         "ARRAY[g, g * 2] FROM generate_series(1, 20000) g")
            conn.execute("CHECKPOINT")
            conn.execute("UPDATE t SET b = b || 'u' WHERE a % 10 = 0")
            conn.execute("CHECKPOINT")
            conn.execute("DELETE FROM t WHERE a % 17 = 0")
            conn.execute("VACUUM t")
        end = _insert_lsn(c)
    finally:
        c.stop()
    yield WalRun(c, start, end)


MESSAGE = bytes(range(256)) * 400  # 102,400 bytes: spans pages and, placed well, a segment


@dataclass
class BoundaryRun(WalRun):
    segment_size: int = 1024 * 1024
    message_lsn: Lsn = INVALID_LSN
    switch_end: Lsn = INVALID_LSN


@pytest.fixture(scope="session")
def boundary_wal(wal_scratch: Path) -> Iterator[BoundaryRun]:
    """A cluster with 1 MB segments: a logical message written across a segment
    boundary, some DML, pg_switch_wal(), more DML; then a clean shutdown."""
    c = Cluster(datadir=wal_scratch / "boundary" / "data")
    c.initdb(settings={"wal_keep_size": "1GB", "max_wal_size": "1GB"},
             extra_args=("--wal-segsize=1",))
    c.start()
    seg = 1024 * 1024
    try:
        with c.connect() as conn:
            conn.execute("CREATE TABLE k (a int PRIMARY KEY, b text)")
            start = _insert_lsn(c)
            conn.execute("INSERT INTO k SELECT g, md5(g::text) FROM generate_series(1, 2000) g")
            pos = _insert_lsn(c)
            to_end = seg - pos % seg
            if to_end < 40_000:  # too close: move into the next segment first
                conn.execute("SELECT pg_logical_emit_message(false, 'pad', repeat('p', %s))",
                             (to_end + 1000,))
                pos = _insert_lsn(c)
                to_end = seg - pos % seg
            conn.execute("SELECT pg_logical_emit_message(false, 'pad', repeat('p', %s))",
                         (to_end - 30_000,))
            row = conn.execute("SELECT pg_logical_emit_message(false, 'cross', %s)::text",
                               (MESSAGE,)).fetchone()
            assert row is not None
            msg_end = Lsn.parse(row[0])
            conn.execute("UPDATE k SET b = b || 'x' WHERE a % 10 = 0")
            sw = conn.execute("SELECT pg_switch_wal()::text").fetchone()
            assert sw is not None
            switch_end = Lsn.parse(sw[0])
            conn.execute("INSERT INTO k VALUES (-1, 'after the switch')")
            end = _insert_lsn(c)
    finally:
        c.stop()
    msg_lsn = next(r.lsn for r in iter_raw_records(c.wal_dir(), start)
                   if r.end_lsn == msg_end)
    yield BoundaryRun(c, start, end, {}, seg, msg_lsn, switch_end)
