"""`strata up --retention` (issue 11): history older than the window is collected
once image layers hold it; `strata status` shows the window and the bytes of
history per database and per relation; travelling below the horizon gives the
"before history starts" error naming the oldest point, and a point inside the
window answers as before. The time map loses its blocks before the horizon too
(timemap/FORMAT.md, "Trimming"), and travel by time inside the window still
lands where it did."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from strata.home import HomeLayout
from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from strata.storage.manifest import load_manifest
from strata.timemap.timemap import BLOCK_ENTRIES
from tests.strata_proc import StrataUp, flush_lsn, processes_under


def _status(home: Path, *extra: str) -> dict[str, Any]:
    cp = subprocess.run([sys.executable, "-m", "strata.cli.main", "status", "--home", str(home),
                         "--json", *extra], capture_output=True, text=True, timeout=120,
                        check=False)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)  # type: ignore[no-any-return]


@pytest.mark.e2e
def test_history_older_than_the_window_is_collected(scratch_dir: Path) -> None:
    home = scratch_dir / "home"
    up = StrataUp(home, "--retention", "4MB", "--flush-interval", "0.5")
    try:
        dsn = up.primary_dsn()
        proxy = up.proxy_dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE keep (x int)")
            conn.execute("INSERT INTO keep SELECT generate_series(1, 10)")
            conn.execute("CREATE TABLE tick (x int)")
            for i in range(BLOCK_ENTRIES + 200):  # more than a block of the time map
                conn.execute("INSERT INTO tick VALUES (%s)", (i,))
            old = flush_lsn(conn)
            for i in range(12):  # ~24 MB of WAL: the window moves far past `old`
                conn.execute(f"INSERT INTO keep SELECT g FROM generate_series(1, 40000) g "
                             f"WHERE {i} >= 0")
            recent = flush_lsn(conn)
            conn.execute("INSERT INTO keep VALUES (-1)")
            after_recent = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            conn.execute("INSERT INTO keep VALUES (-2)")
            last = flush_lsn(conn)
        up.wait_ingested(last)
        deadline = time.monotonic() + 300
        while True:  # the maintenance service collects in the background
            st = _status(home)
            if Lsn.parse(st["history_start_lsn"]) > old:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.5)
        with psycopg.connect(proxy, autocommit=True) as conn:
            with pytest.raises(psycopg.Error, match="before history starts") as ei:
                conn.execute(f"SET strata.travel_lsn = '{old}'")
            # the oldest point, named: the collector may have moved on since `st` was read,
            # so the named point lies between that status and the manifest's horizon read
            # after the error (status.json is rewritten only every few seconds: a status read
            # after the error can still show an older horizon than the proxy saw)
            named = re.search(r"the oldest point is LSN (\S+)", str(ei.value))
            assert named is not None, str(ei.value)
            manifest = load_manifest(HomeLayout(home).layers)
            assert manifest is not None
            after = Lsn(manifest.retention_lsn)
            assert Lsn.parse(st["history_start_lsn"]) <= Lsn.parse(named.group(1)) <= after
            assert f"nearest valid point is {named.group(1)}" in str(ei.value)
            conn.execute(f"SET strata.travel_lsn = '{recent}'")
            assert conn.execute("SELECT count(*) FROM keep").fetchone() == (480010,)
        timemap = home / "timemap" / "timemap.dat"
        while int.from_bytes(timemap.read_bytes()[12:16], "little") == 0:  # the head block
            assert time.monotonic() < deadline, "the time map was not trimmed"
            time.sleep(0.5)
        with psycopg.connect(proxy, autocommit=True) as conn:
            conn.execute(f"SET strata.travel_time = '{after_recent.isoformat()}'")
            assert conn.execute("SELECT count(*) FROM keep").fetchone() == (480011,)
            conn.execute("RESET strata.travel_time")
        hb = _status(home, "--bytes")["history_bytes"]
        assert any(d["name"] == "postgres" and d["bytes"] > 0 for d in hb["databases"])
        assert any(r["name"] == "keep" and r["bytes"] > 0 for r in hb["relations"])
        assert up.terminate() == 0
    finally:
        up.kill()
        Cluster(datadir=home / "primary" / "data").stop("immediate")
    assert processes_under(home) == []
