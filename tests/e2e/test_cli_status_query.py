"""`strata status`, `strata query` and `strata timeline` against a running `strata up`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from tests.strata_proc import StrataUp


def _strata(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "strata.cli.main", *args], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.e2e
def test_status_query_and_timeline(scratch_dir: Path) -> None:
    home = scratch_dir / "home"
    up = StrataUp(home)
    try:
        dsn = up.primary_dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE q (x int)")
            conn.execute("INSERT INTO q VALUES (1), (2)")
            at = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
            when = conn.execute("SELECT clock_timestamp()::text").fetchone()
            conn.execute("INSERT INTO q VALUES (3)")
            conn.execute("DROP TABLE q")
            end = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert at is not None and when is not None and end is not None
        up.wait_ingested(Lsn.parse(end[0]))

        by_lsn = _strata("query", "--home", str(home), "--at", at[0],
                         "SELECT sum(x) AS total, 'ok' AS word FROM q")
        assert by_lsn.returncode == 0, by_lsn.stderr
        # psql's aligned format: a header, a rule, the row, the count
        assert by_lsn.stdout.splitlines()[:4] == [" total | word ", "-------+------",
                                                  "     3 | ok", "(1 row)"], by_lsn.stdout
        as_json = _strata("query", "--home", str(home), "--at", at[0], "--json",
                          "SELECT x, x > 1 AS big FROM q ORDER BY x")
        assert json.loads(as_json.stdout) == [{"x": 1, "big": False}, {"x": 2, "big": True}]
        by_time = _strata("query", "--home", str(home), "--at", when[0], "--csv",
                          "SELECT x FROM q ORDER BY x")
        assert by_time.returncode == 0, by_time.stderr
        assert by_time.stdout.split() == ["x", "1", "2"]
        future = _strata("query", "--home", str(home), "--at", "2999-01-01 00:00+00", "SELECT 1")
        assert future.returncode == 1
        assert "in the future" in future.stderr and "SQLSTATE 22023" in future.stderr
        bad = _strata("query", "--home", str(home), "--at", "not a time", "SELECT 1")
        assert bad.returncode == 1 and "SQLSTATE 22007" in bad.stderr

        # status.json is rewritten every progress interval: wait until it shows the
        # historical server the queries above started (pooled, so still running)
        status = _status_when(home, lambda st: bool(st["instances"]) and Lsn.parse(
            st["ingested_lsn"]) >= Lsn.parse(end[0]))
        assert status["running"] is True
        assert status["lag_bytes"] is not None and status["lag_seconds"] is not None
        assert status["history_start_lsn"] and status["history_start_time"]
        assert {Lsn.parse(inst["lsn"]) for inst in status["instances"]} >= {Lsn.parse(at[0])}
        text = _strata("status", "--home", str(home))
        assert "history:" in text.stdout and "lag:" in text.stdout

        tl = _strata("timeline", "--home", str(home), "--json")
        assert tl.returncode == 0, tl.stderr
        entries = [json.loads(line) for line in tl.stdout.splitlines()]
        assert any(e["ddl"] for e in entries)  # CREATE TABLE / DROP TABLE
        assert sum(1 for e in entries if e["kind"] == "commit") >= 4
        assert up.terminate() == 0
    finally:
        up.kill()
        Cluster(datadir=home / "primary" / "data").stop("immediate")
    st = _strata("status", "--home", str(home))
    assert st.returncode == 0 and "not running" in st.stdout
    # LSNs are always X/Y, running or not
    assert re.search(r"durable [0-9A-F]+/[0-9A-F]+\b", st.stdout), st.stdout
    stopped = json.loads(_strata("status", "--home", str(home), "--json").stdout)
    for field in ("newest_lsn", "durable_lsn", "history_start_lsn"):
        Lsn.parse(stopped[field])


def _status_when(home: Path, ok: Callable[[dict[str, Any]], bool],
                 timeout: float = 60) -> dict[str, Any]:
    """`strata status --json` once `ok` holds for it (it is rewritten every progress
    interval); fails with the last status after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        st = _strata("status", "--home", str(home), "--json")
        assert st.returncode == 0, st.stderr
        status: dict[str, Any] = json.loads(st.stdout)
        if ok(status) or time.monotonic() > deadline:
            assert ok(status), status
            return status
