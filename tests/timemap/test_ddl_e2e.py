"""`strata timeline --ddl` beside a running `strata up`: DDL streamed from the
embedded primary shows up while the daemon runs (the DDL log is read
read-only beside its writer), and survives a restart of the daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from tests.strata_proc import StrataUp

pytestmark = pytest.mark.e2e


def _ddl(home: Path, *args: str) -> list[dict[str, object]]:
    cp = subprocess.run([sys.executable, "-m", "strata.cli.main", "timeline", "--home",
                         str(home), "--ddl", "--json", *args], capture_output=True, text=True,
                        timeout=120, check=False)
    assert cp.returncode == 0, cp.stderr
    return [json.loads(line) for line in cp.stdout.splitlines()]


def _statements(entries: list[dict[str, object]]) -> list[str]:
    return [c["statement"] for e in entries for c in e["changes"]]  # type: ignore[attr-defined, index]


def _wait_listed(home: Path, statement: str, timeout: float = 60) -> list[dict[str, object]]:
    """The DDL log is synced with each ingest batch: poll until it lists `statement`."""
    deadline = time.monotonic() + timeout
    while True:
        entries = _ddl(home)
        if statement in _statements(entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.2)


def test_ddl_while_the_daemon_runs_and_after_a_restart(scratch_dir: Path) -> None:
    home = scratch_dir / "home"
    up = StrataUp(home)
    try:
        dsn = up.primary_dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int)")
            conn.execute("INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 1000) g")
            conn.execute("ANALYZE accounts")
            with conn.transaction():
                conn.execute("DROP TABLE accounts")
                xid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
            end = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert xid is not None and end is not None
        up.wait_ingested(Lsn.parse(end[0]))
        entries = _wait_listed(home, "DROP TABLE public.accounts")
        assert [s for s in _statements(entries) if "accounts" in s] == [
            "CREATE TABLE public.accounts", "CREATE INDEX public.accounts_pkey ON public.accounts",
            "DROP INDEX public.accounts_pkey ON public.accounts", "DROP TABLE public.accounts"]
        drop = next(e for e in entries if "DROP TABLE public.accounts" in _statements([e]))
        assert drop["xid"] == int(xid[0]) and drop["database"] == "postgres"
        assert up.terminate() == 0
        up = StrataUp(home)  # resume from durable_lsn
        dsn = up.primary_dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA after_restart")
        assert "CREATE SCHEMA after_restart" in _statements(
            _wait_listed(home, "CREATE SCHEMA after_restart"))
        assert _statements(_ddl(home)).count("DROP TABLE public.accounts") == 1
        assert up.terminate() == 0
    finally:
        up.kill()
        Cluster(datadir=home / "primary" / "data").stop("immediate")
