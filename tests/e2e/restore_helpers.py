"""Helpers of the restore-family end-to-end tests: one `strata up` per module,
the `strata` CLI as a subprocess, points in time, and PostgreSQL's own view of
an object (pg_dump --schema-only) as the oracle of its definition."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from strata.runtime.pgbin import find_pg_binaries
from tests.strata_proc import StrataUp

_RESTRICT = re.compile(r"^\\(un)?restrict .*$", re.M)


@dataclass
class Strata:
    up: StrataUp
    home: Path
    dsn: str  # the primary, directly

    def connect(self, dbname: str = "postgres") -> Any:
        return psycopg.connect(self.dsn.replace("dbname=postgres", f"dbname={dbname}"),
                               autocommit=True)

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "strata.cli.main", args[0], "--home",
                               str(self.home), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def point(self) -> tuple[str, str]:
        """(time, LSN) of now, after waiting for ingest to reach it: the state of
        every commit so far."""
        with self.connect() as c:
            lsn, when = c.execute("SELECT pg_current_wal_insert_lsn()::text, "
                                  "clock_timestamp()::text").fetchone()
        self.up.wait_ingested(Lsn.parse(lsn))
        return when, lsn

    def sync(self) -> None:
        """Wait until ingest has everything the primary wrote so far."""
        self.point()

    def schema_dump(self, dbname: str, *selection: str) -> str:
        """pg_dump --schema-only of the primary: PostgreSQL's own account of a
        definition (owner, grants, comments, indexes, constraints, triggers...)."""
        out = subprocess.run([str(find_pg_binaries().path("pg_dump")), "--schema-only",
                              "--no-statistics", *selection,
                              "-d", self.dsn.replace("dbname=postgres", f"dbname={dbname}")],
                             capture_output=True, text=True, check=True, timeout=120).stdout
        return _RESTRICT.sub("", out)


def store_readable() -> bool:
    """Whether this build reads the layer store while `strata up` writes it
    (storage's StoreReader with changed_keys): then diff reads changed pages
    only and history works; else diff compares in full and history refuses."""
    from strata.pagestore import PageStore

    return hasattr(PageStore, "open_readonly") and hasattr(PageStore, "changed_keys")


def start_strata(scratch: Path, *args: str) -> Iterator[Strata]:
    home = scratch / "home"
    up = StrataUp(home, *args)
    try:
        dsn = up.primary_dsn()
        up.proxy_dsn()
        yield Strata(up, home, dsn)
        assert up.terminate() == 0
    finally:
        up.kill()
        Cluster(datadir=home / "primary" / "data").stop("immediate")


def wait_until(cond: Any, what: str, timeout: float = 60) -> None:
    """Wait for a condition (polled): `what` names it in the failure."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
