"""pg_control and the shutdown-checkpoint segment written without pg_resetwal,
checked by PostgreSQL's own pg_controldata and pg_waldump, and by a hot
standby that starts on them and answers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from strata.historical.checkpoint import ServerLimits, startup_files, write_startup_files
from strata.historical.controlfile import parse_control
from strata.historical.instance import launch
from strata.historical.materialize import materialize
from strata.historical.source import DataDirSource
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.runtime.osuser import run_as_server
from tests.conftest import make_cluster

TEMPLATE = Path(__file__).parent / "data" / "pg_control_18.bin"


def test_startup_files_put_the_values_at_x_and_a_valid_crc() -> None:
    template = TEMPLATE.read_bytes()
    values = ClusterState(lsn=Lsn.parse("0/3A00100"), next_full_xid=(2 << 32) | 1000,
                          next_oid=40000, next_multi=7, next_multi_offset=19, oldest_xid=744,
                          oldest_xid_db=1, oldest_multi=1, oldest_multi_db=1)
    sf = startup_files(template, values, Lsn.parse("0/3A00100"), limits=ServerLimits(), now=1)
    cf = parse_control(sf.pg_control)  # CRC checked
    assert cf.checkpoint == cf.redo == sf.checkpoint == Lsn.parse("0/4000028")
    assert sf.wal_name == "000000010000000000000004"
    assert (cf.next_full_xid, cf.next_oid, cf.next_multi, cf.next_multi_offset) == (
        (2 << 32) | 1000, 40000, 7, 19)
    assert cf.state == 1 and len(sf.wal_first_page) == 8192


@pytest.mark.pg
def test_pg_tools_and_a_hot_standby_accept_them(scratch_dir: Path) -> None:
    primary = make_cluster(scratch_dir / "p", autovacuum="off")
    try:
        primary.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
    finally:
        primary.stop()
    source = DataDirSource(primary.datadir)
    (scratch_dir / "i").mkdir()
    os.chmod(scratch_dir / "i", 0o755)
    mat = materialize(source, scratch_dir / "i" / "data")
    sf = write_startup_files(mat.datadir, source.control_template(), source.control(),
                             source.lsn)
    assert sf.checkpoint > source.lsn
    out = run_as_server([primary.bins.path("pg_controldata"), "-D", mat.datadir]).stdout
    assert "Database cluster state:               shut down" in out
    assert f"Latest checkpoint location:           {sf.checkpoint}" in out
    assert "wal_level setting:                    replica" in out
    assert "max_connections setting:              20" in out
    assert "Data page checksum version:           1" in out
    cp = run_as_server([primary.bins.path("pg_waldump"), mat.datadir / "pg_wal" / sf.wal_name],
                       check=False)
    assert cp.stdout.count("rmgr: XLOG") == 1
    assert f"lsn: {sf.checkpoint}" in cp.stdout.replace("lsn: 0/0", "lsn: 0/")
    assert "CHECKPOINT_SHUTDOWN" in cp.stdout and "wal_level replica" in cp.stdout
    assert "invalid record length" in cp.stderr  # the end of WAL, not a CRC error
    c = launch(mat.datadir)
    try:
        assert c.sql("SELECT count(*), pg_is_in_recovery() FROM t") == [(1000, True)]
    finally:
        c.stop()
