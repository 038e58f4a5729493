"""No superuser for the asking (issue 11): the embedded primary `strata up` runs
requires a password for every connection, kept in ``<home>/primary/pgpass``
(mode 0600), which strata's own commands use. Another OS user (``nobody``)
gets no connection without it, directly or through the proxy."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from strata.runtime.cluster import Cluster
from strata.runtime.pgbin import find_pg_binaries
from tests.strata_proc import StrataUp, processes_under


def _psql_as_nobody(port: int, *, password: str | None = None, sql: str = "SELECT 1"
                    ) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGCONNECT_TIMEOUT": "10"}
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
         str(find_pg_binaries().path("psql")), "-X", "-w", "-h", "127.0.0.1", "-p", str(port),
         "-U", "postgres", "-d", "postgres", "-Atc", sql],
        capture_output=True, text=True, timeout=60, env=env, cwd="/", check=False)


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another OS user")
def test_the_embedded_primary_needs_the_password_from_the_home(scratch_dir: Path) -> None:
    home = scratch_dir / "home"
    up = StrataUp(home)
    try:
        primary_port = int(up.wait_for(r"PostgreSQL 18 primary: .*port=(\d+)").group(1))
        proxy_port = int(up.wait_for(r"time travel proxy: .*port=(\d+)").group(1))
        passfile = home / "primary" / "pgpass"
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
        password = passfile.read_text().strip().rsplit(":", 1)[1]
        for port in (primary_port, proxy_port):
            denied = _psql_as_nobody(port)
            assert denied.returncode != 0, f"port {port} let nobody in: {denied.stdout}"
            assert "password" in denied.stderr, denied.stderr
            wrong = _psql_as_nobody(port, password="not-" + password)
            assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
            ok = _psql_as_nobody(port, password=password)
            assert ok.returncode == 0 and ok.stdout.strip() == "1", ok.stderr
        # the proxy relays to the embedded primary over its unix socket (cheaper per
        # round trip than loopback TCP): the primary sees no client address from it
        sql = "SELECT inet_client_addr() IS NULL"
        seen = {port: _psql_as_nobody(port, password=password, sql=sql).stdout.strip()
                for port in (primary_port, proxy_port)}
        assert seen == {primary_port: "f", proxy_port: "t"}, seen
        # strata's own commands find the password by themselves
        out = subprocess.run([sys.executable, "-m", "strata.cli.main", "psql", "--home", str(home),
                              "-Atc", "SELECT 2"], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "2", out.stderr
        assert up.terminate() == 0
    finally:
        up.kill()
        Cluster(datadir=home / "primary" / "data").stop("immediate")
    assert processes_under(home) == []
