"""Kill `strata restore` half-way (SIGKILL while its COPY runs): nothing is left
behind, for a table (one transaction) and for a whole database (the guard
process drops the temporary database). Then the same restore succeeds."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.restore_helpers import Strata, start_strata, wait_until
from tests.e2e.workload import fingerprint, first_difference

pytestmark = pytest.mark.e2e

BIG = """
CREATE TABLE big (id int PRIMARY KEY, payload text);
INSERT INTO big SELECT i, repeat(md5(i::text), 6) FROM generate_series(1, 150000) i;
"""


@pytest.fixture(scope="module")
def strata() -> Iterator[Strata]:
    from tests.conftest import _scratch

    yield from start_strata(_scratch("restore-kill-"))


def _count(s: Strata, sql: str) -> int:
    with s.connect() as c:
        return int(c.execute(sql).fetchone()[0])


def _pg_dumps_of(s: Strata) -> list[str]:
    """pg_dump processes started by a restore against this strata's proxy."""
    port = str(s.up.proxy_dsn().split("port=")[1].split()[0])
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "pg_dump" in cmd and f"port={port}" in cmd:
                found.append(cmd)
    return found


def _kill_while_copying(s: Strata, *args: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "strata.cli.main", "restore", "--home",
                             str(s.home), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _count(s, "SELECT count(*) FROM pg_stat_progress_copy p JOIN "
                                     "pg_stat_activity a ON a.pid = p.pid WHERE "
                                     "a.application_name = 'strata restore' AND "
                                     "p.bytes_processed > 0") > 0 or proc.poll() is not None,
                   "the restore's COPY to start", timeout=300)
        assert proc.poll() is None, "the restore finished before it could be killed"
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_until(lambda: _count(s, "SELECT count(*) FROM pg_stat_activity "
                                 "WHERE application_name = 'strata restore'") == 0,
               "the killed restore's sessions to end")
    wait_until(lambda: not _pg_dumps_of(s), "the killed restore's pg_dump to exit")


def test_kill_half_way_leaves_nothing_behind(strata: Strata) -> None:
    with strata.connect() as c:
        for stmt in BIG.strip().split(";\n"):
            c.execute(stmt)
        before = fingerprint(c)
    _, lsn = strata.point()
    with strata.connect() as c:
        c.execute("DROP TABLE big")
    strata.sync()

    _kill_while_copying(strata, "--table", "big", "--at", lsn)
    assert _count(strata, "SELECT count(*) FROM pg_class WHERE relname = 'big'") == 0
    assert _count(strata, "SELECT count(*) FROM pg_namespace "
                          "WHERE nspname LIKE 'strata_restore_%'") == 0

    _kill_while_copying(strata, "--table", "big", "--at", lsn, "--as", "big_then")
    assert _count(strata, "SELECT count(*) FROM pg_class WHERE relname LIKE 'big%'") == 0
    assert _count(strata, "SELECT count(*) FROM pg_namespace "
                          "WHERE nspname LIKE 'strata_restore_%'") == 0

    res = strata.cli("restore", "--table", "big", "--at", lsn)
    assert res.returncode == 0, res.stderr
    with strata.connect() as c:
        assert first_difference(before, fingerprint(c)) is None


def test_kill_half_way_through_a_database(strata: Strata) -> None:
    with strata.connect() as c:
        c.execute("CREATE DATABASE bulk")
    with strata.connect("bulk") as c:
        for stmt in BIG.strip().split(";\n"):
            c.execute(stmt)
    _, lsn = strata.point()
    _kill_while_copying(strata, "--database", "bulk", "--at", lsn, "--as", "bulk_copy")
    wait_until(lambda: _count(strata, "SELECT count(*) FROM pg_database WHERE datname LIKE "
                                      "'strata_restore_%' OR datname = 'bulk_copy'") == 0,
               "the guard to drop the temporary database")
