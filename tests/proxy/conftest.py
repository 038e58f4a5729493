"""Fixtures for the proxy's end-to-end tests: two plain PostgreSQL 18 clusters
("live" and a read-only "historical" one holding different data), a test
`HistoryProvider` that maps every point to the historical cluster, and the
proxy itself on its own event-loop thread."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from strata.errors import IngestBehindError, LsnOutOfRangeError
from strata.lsn import Lsn
from strata.proxy.history import IngestProgress, Progress, ResolvedPoint
from strata.proxy.server import ProxyConfig, ProxyThread
from strata.runtime.cluster import Cluster
from strata.runtime.pgbin import find_pg_binaries
from tests.conftest import SCRATCH_ROOT, make_cluster

ALICE_PASSWORD = "s3cret-Ålice"
NEWEST_LSN = Lsn.parse("F/0")
OLDEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)

ROLES_SQL = """
CREATE ROLE strata_time_travel NOLOGIN;
CREATE ROLE alice LOGIN;
CREATE ROLE bob LOGIN;
CREATE ROLE carol LOGIN IN ROLE strata_time_travel;
GRANT strata_time_travel TO alice;
"""


@dataclass
class FakeHistory:
    """Every point in [OLDEST_TIME, now] / [0/0, F/0] lives on one server.

    `behind`: ingest needs that many (simulated) seconds to cover a target:
    a resolve reports progress once per second of its `wait`, and fails with
    IngestBehindError when `wait` is shorter. `commits`: xid -> its commit.
    """

    host: str
    port: int
    calls: list[tuple[str, object]] = field(default_factory=list)
    behind: int = 0
    commits: dict[int, ResolvedPoint] = field(default_factory=dict)

    def _catch_up(self, target: Lsn, wait: float, progress: Progress | None) -> None:
        for second in range(self.behind):
            if second >= wait:
                raise IngestBehindError(f"LSN {target} is not ingested yet", nearest=Lsn(0x100))
            if progress is not None:
                progress(IngestProgress(Lsn(0x100 + second), target, Lsn(0xF000000),
                                        None if second == 0 else float(self.behind - second)))

    def resolve_time(self, when: datetime, *, literal: str, timezone: str, wait: float,
                     progress: Progress | None = None) -> ResolvedPoint:
        self.calls.append(("time", (when, literal, timezone)))
        newest = datetime.now(UTC) + timedelta(seconds=5)
        if when > newest:
            raise LsnOutOfRangeError(f"{when.isoformat()} is in the future", nearest=newest)
        if when < OLDEST_TIME:
            raise LsnOutOfRangeError(f"{when.isoformat()} is before history starts",
                                     nearest=OLDEST_TIME)
        self._catch_up(Lsn(0x3000028), wait, progress)
        return ResolvedPoint(Lsn(0x3000028), 742, when)

    def resolve_lsn(self, lsn: Lsn, *, wait: float,
                    progress: Progress | None = None) -> ResolvedPoint:
        self.calls.append(("lsn", lsn))
        if lsn > NEWEST_LSN:
            raise LsnOutOfRangeError(f"LSN {lsn} is past the ingested WAL", nearest=NEWEST_LSN)
        self._catch_up(lsn, wait, progress)
        return ResolvedPoint(lsn, 741, datetime(2026, 4, 6, 10, 0, tzinfo=UTC))

    def server_for(self, point: ResolvedPoint, dbname: str) -> tuple[str, int]:
        self.calls.append(("server", (point.lsn, dbname)))
        return self.host, self.port

    def may_time_travel(self, user: str) -> bool:
        return True

    def commit_of_xid(self, xid: int) -> ResolvedPoint | None:
        return self.commits.get(xid)


@dataclass
class ProxyEnv:
    live: Cluster
    hist: Cluster
    history: FakeHistory
    proxy: ProxyThread

    @property
    def port(self) -> int:
        return self.proxy.port

    def dsn(self, dbname: str = "postgres", user: str = "postgres", **extra: str) -> str:
        parts = [f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"]
        parts += [f"{k}={v}" for k, v in extra.items()]
        return " ".join(parts)


def _prepend_hba(c: Cluster, line: str) -> None:
    hba = c.datadir / "pg_hba.conf"
    hba.write_text(line + "\n" + hba.read_text())
    c.sql("SELECT pg_reload_conf()")


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[Cluster, Cluster]]:
    SCRATCH_ROOT.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="proxy-", dir=SCRATCH_ROOT))
    base.chmod(0o755)
    live = hist = None
    try:
        live = make_cluster(base / "live")
        hist = make_cluster(base / "hist")
        for c, tag in ((live, "live"), (hist, "history")):
            with c.connect() as conn:
                conn.execute(ROLES_SQL)
                conn.execute("CREATE TABLE t (v text)")
                conn.execute("INSERT INTO t VALUES (%s)", [tag])
                conn.execute("GRANT SELECT, INSERT ON t TO PUBLIC")
        live.sql(f"ALTER ROLE alice PASSWORD '{ALICE_PASSWORD}'")
        _prepend_hba(live, "host all alice 127.0.0.1/32 scram-sha-256")
        # a database that only the past knows
        hist.sql("CREATE DATABASE gone")
        with hist.connect("gone") as conn:
            conn.execute("CREATE TABLE t (v text)")
            conn.execute("INSERT INTO t VALUES ('gone-history')")
            conn.execute("GRANT SELECT ON t TO PUBLIC")
        hist.configure({"default_transaction_read_only": "on"})
        hist.sql("SELECT pg_reload_conf()")
        yield live, hist
    finally:
        for c in (hist, live):
            if c is not None:
                c.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def env(clusters: tuple[Cluster, Cluster]) -> Iterator[ProxyEnv]:
    live, hist = clusters
    history = FakeHistory("127.0.0.1", hist.port)
    proxy = ProxyThread(ProxyConfig(primary_host="127.0.0.1", primary_port=live.port), history)
    with proxy:
        yield ProxyEnv(live, hist, history, proxy)


# -- client helpers -----------------------------------------------------------------
def connect(env: ProxyEnv, **kw: Any) -> psycopg.Connection[Any]:
    kw.setdefault("autocommit", True)
    dbname = kw.pop("dbname", "postgres")
    user = kw.pop("user", "postgres")
    return psycopg.connect(env.dsn(dbname, user), **kw)


def notices(conn: psycopg.Connection[Any]) -> list[str]:
    got: list[str] = []
    conn.add_notice_handler(lambda d: got.append(d.message_primary or ""))
    return got


def value(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT v FROM t").fetchone()
    assert row is not None
    return str(row[0])


def psql(env: ProxyEnv, sql: str, *, user: str = "postgres", password: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    envvars = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password is not None:
        envvars["PGPASSWORD"] = password
    return subprocess.run(
        [str(find_pg_binaries().path("psql")), "-X", "-A", "-t", "-h", "127.0.0.1",
         "-p", str(env.port), "-U", user, "-d", "postgres", "-c", sql],
        capture_output=True, text=True, env=envvars, check=check, timeout=60)


def cancel_while_sleeping(conn: psycopg.Connection[Any]) -> None:
    """Cancel a pg_sleep(30) on `conn`, repeatedly until it ends: it must end
    canceled (never by running its 30 s)."""
    done = threading.Event()

    def cancel_until_done() -> None:
        # repeat: a cancel that arrives before the query starts is a no-op
        while not done.wait(0.5):
            conn.cancel_safe()

    t = threading.Thread(target=cancel_until_done)
    t.start()
    try:
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
    finally:
        done.set()
        t.join()
