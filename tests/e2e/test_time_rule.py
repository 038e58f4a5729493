"""The time rule through `strata up` (issue 11): a time T resolves to the end of
the last commit before the first commit later than T, so non-transactional WAL
written after that commit never leaks into the past.

- a sequence by time shows its live value at T (within the SEQ_LOG_VALS values
  nextval() WAL-logs ahead), not the next transaction's nextval() batch;
- DROP DATABASE's in-place invalidation precedes its commit: travel to just
  before it works in every database, and into the dropped one by time;
- the same T gives the same LSN every time.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from tests.e2e.workload import SEQ_LOG_VALS
from tests.strata_proc import StrataUp, flush_lsn, processes_under


def _now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]



def _travel(conn: psycopg.Connection[Any], when: datetime) -> Lsn:
    conn.execute(f"SET strata.travel_time = '{when.isoformat()}'")
    row = conn.execute("SHOW strata.travel_time").fetchone()  # (the time, its LSN)
    assert row is not None
    return Lsn.parse(row[1])


@pytest.mark.e2e
def test_time_travel_leaves_out_wal_after_the_last_commit(scratch_dir: Path) -> None:
    home = scratch_dir / "home"
    up = StrataUp(home)
    try:
        dsn = up.proxy_dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE olddb")
            conn.execute("CREATE SEQUENCE s")
            for _ in range(3):
                conn.execute("SELECT nextval('s')")
            t_seq = _now(conn)  # live: s stands at 3
            with conn.transaction():  # WAL-logs nextval() batches long before its commit
                conn.execute("SELECT count(nextval('s')) FROM generate_series(1, 5000)")
        with psycopg.connect(dsn.replace("dbname=postgres", "dbname=olddb"),
                             autocommit=True) as old:
            old.execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g")
        with psycopg.connect(dsn, autocommit=True) as conn:
            t_before_drop = _now(conn)
            conn.execute("DROP DATABASE olddb")
            conn.execute("CREATE TABLE later (x int)")  # a commit after the drop
            up.wait_ingested(flush_lsn(conn))

            # a sequence by time: its value at T, not the next transaction's batch
            _travel(conn, t_seq)
            row = conn.execute("SELECT last_value FROM s").fetchone()
            assert row is not None and 3 <= row[0] <= 3 + SEQ_LOG_VALS, row

            # just before DROP DATABASE: every database connects, olddb is there
            at_drop = _travel(conn, t_before_drop)
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = 'olddb'"
                                ).fetchone() == (1,)
            assert conn.execute("SELECT to_regclass('later')").fetchone() == (None,)
            # the same T again, after more commits: the same LSN (one server)
            conn.execute("RESET strata.travel_time")
            conn.execute("INSERT INTO later VALUES (1)")
            up.wait_ingested(flush_lsn(conn))
            assert _travel(conn, t_before_drop) == at_drop
            conn.execute("RESET strata.travel_time")
        # into the dropped database, by time, from the start of the session
        options = f"-c strata.travel_time={t_before_drop.isoformat().replace(' ', 'T')}"
        with psycopg.connect(dsn.replace("dbname=postgres", "dbname=olddb"), autocommit=True,
                             options=options) as old:
            assert old.execute("SELECT count(*) FROM t").fetchone() == (10,)
        assert up.terminate() == 0
    finally:
        up.kill()
        Cluster(datadir=home / "primary" / "data").stop("immediate")
    assert processes_under(home) == []
