"""Fixtures for redo tests: WAL written with wal_consistency_checking = 'all'.

`wcc_primary` is a session-scoped PostgreSQL 18 primary whose every record of
a maskable rmgr carries verification images (set at initdb time, so
background processes have it too). `wcc_capture(workload)` runs a workload
against it between a CHECKPOINT and a WAL flush and returns the WAL directory
plus the LSN range the workload wrote; the checkpoint makes the first change
of every block in the range carry an apply-image, so the oracle has a base
for every block. Reused by the btree tests (test_btree*.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from strata.lsn import Lsn
from strata.runtime.cluster import Cluster

WCC_SETTINGS: dict[str, object] = {
    "wal_consistency_checking": "all",
    "wal_keep_size": "2GB",
    "max_wal_size": "2GB",
    "checkpoint_timeout": "1h",  # our checkpoints only: keeps WAL volume predictable
    "autovacuum": "off",  # workloads VACUUM explicitly
    "max_prepared_transactions": "10",
    "shared_buffers": "64MB",
}


@dataclass(frozen=True, slots=True)
class WalCapture:
    """WAL a workload wrote: records with start LSN in [start, end) in `wal_dir`."""

    cluster: Cluster
    wal_dir: Path
    start: Lsn
    end: Lsn


Workload = Callable[[Cluster], None]


@pytest.fixture(scope="session")
def wcc_primary(session_scratch: Path) -> Iterator[Cluster]:
    """A running primary with wal_consistency_checking = 'all' (session-wide)."""
    c = Cluster(datadir=session_scratch / "wcc" / "data")
    c.initdb(settings=WCC_SETTINGS)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def _lsn(c: Cluster, fn: str) -> Lsn:
    return Lsn.parse(str(c.sql(f"SELECT {fn}()")[0][0]))


def capture(c: Cluster, workload: Workload) -> WalCapture:
    c.sql("CHECKPOINT")
    start = _lsn(c, "pg_current_wal_insert_lsn")
    workload(c)
    # Make everything the workload wrote reach the segment files.
    c.sql("SELECT pg_logical_emit_message(false, 'strata-test', 'end')")
    end = _lsn(c, "pg_current_wal_insert_lsn")
    c.sql("CHECKPOINT")
    return WalCapture(c, c.wal_dir(), start, end)


@pytest.fixture
def wcc_capture(wcc_primary: Cluster) -> Callable[[Workload], WalCapture]:
    """`wcc_capture(workload)` -> WalCapture of the WAL that `workload(cluster)` wrote."""

    def run(workload: Workload) -> WalCapture:
        return capture(wcc_primary, workload)

    return run


def run_sql(c: Cluster, sql: str, dbname: str = "postgres") -> None:
    """Run a SQL script through psql (ON_ERROR_STOP)."""
    c.psql("-q", dbname=dbname, input=sql)


def run_pgbench(c: Cluster, *args: str, dbname: str = "postgres") -> None:
    """Run the bundled pgbench against the cluster."""
    subprocess.run([str(c.bins.path("pgbench")), "-h", "127.0.0.1", "-p", str(c.port),
                    "-U", "postgres", *args, dbname], check=True, capture_output=True,
                   text=True)
