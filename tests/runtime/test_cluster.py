from __future__ import annotations

import os
from pathlib import Path

import pytest

from strata.errors import InstanceError, RuntimeSetupError
from strata.runtime import pgbin
from strata.runtime.cluster import Cluster
from strata.runtime.osuser import server_user


def test_finds_postgresql_18() -> None:
    bins = pgbin.find_pg_binaries()
    assert bins.major == 18
    for name in ("postgres", "initdb", "pg_ctl", "psql", "pg_waldump", "pg_resetwal", "pgbench",
                 "pg_basebackup"):
        assert bins.path(name).exists()


def test_refuses_other_major_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    script = fake / "postgres"
    script.write_text("#!/bin/sh\necho 'postgres (PostgreSQL) 17.2'\n")
    script.chmod(0o755)
    monkeypatch.setenv("STRATA_PG_BIN", str(fake))
    pgbin.find_pg_binaries.cache_clear()
    try:
        with pytest.raises(RuntimeSetupError, match="needs PostgreSQL 18"):
            pgbin.find_pg_binaries()
    finally:
        monkeypatch.delenv("STRATA_PG_BIN")
        pgbin.find_pg_binaries.cache_clear()


def test_missing_bin_dir_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_PG_BIN", "/nonexistent/bin")
    pgbin.find_pg_binaries.cache_clear()
    try:
        with pytest.raises(RuntimeSetupError, match="does not exist"):
            pgbin.find_pg_binaries()
    finally:
        monkeypatch.delenv("STRATA_PG_BIN")
        pgbin.find_pg_binaries.cache_clear()


@pytest.mark.pg
def test_primary_runs_as_unprivileged_user(pg_primary: Cluster) -> None:
    rows = pg_primary.sql("SHOW server_version_num")
    assert rows[0][0].startswith("18")
    assert pg_primary.sql("SHOW wal_level")[0][0] == "replica"
    pid = pg_primary.postmaster_pid()
    assert pid is not None
    owner = os.stat(f"/proc/{pid}").st_uid
    user = server_user()
    assert owner == (user.uid if user else os.geteuid())
    assert owner != 0


@pytest.mark.pg
def test_failed_start_reports_log_tail(scratch_dir: Path) -> None:
    c = Cluster(datadir=scratch_dir / "data")
    c.initdb(settings={"shared_buffers": "'nonsense'"})
    with pytest.raises(InstanceError) as ei:
        c.start(timeout=20)
    assert "shared_buffers" in str(ei.value)
    c.stop("immediate")

