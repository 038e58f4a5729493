"""Checksums computed by materialize are the ones PostgreSQL verifies.

Oracle: the server's own `pg_checksums --check` (offline) on the materialized
directory, starting from a cluster initialised *without* checksums, so every
pd_checksum on disk was written by us.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.historical.controlfile import parse_control
from strata.historical.instance import start_instance
from strata.historical.materialize import materialize
from strata.historical.source import DataDirSource
from strata.runtime.cluster import Cluster
from strata.runtime.osuser import run_as_server

pytestmark = [pytest.mark.pg, pytest.mark.e2e]


def test_copy_of_a_cluster_without_checksums_passes_pg_checksums_and_serves(
        scratch_dir: Path) -> None:
    primary = Cluster(datadir=scratch_dir / "primary" / "data")
    primary.initdb(checksums=False, settings={"autovacuum": "off"})
    primary.start()
    try:
        primary.sql("CREATE TABLE t (id int PRIMARY KEY, v text)")
        primary.sql("INSERT INTO t SELECT g, repeat('x', g % 50) FROM generate_series(1, 3000) g")
        expected = primary.sql("SELECT count(*), md5(string_agg(id || v, ',' ORDER BY id)) FROM t")
        heap = primary.sql("SELECT pg_relation_filepath('t')")[0][0]
    finally:
        primary.stop()
    source = DataDirSource(primary.datadir)
    assert source.controlfile.data_checksum_version == 0
    mat = materialize(source, scratch_dir / "copy" / "data")
    assert parse_control((mat.datadir / "global" / "pg_control").read_bytes()
                         ).data_checksum_version == 1
    pg_checksums = primary.bins.path("pg_checksums")
    ok = run_as_server([pg_checksums, "--check", "-D", mat.datadir], check=False)
    assert ok.returncode == 0, ok.stderr
    assert "Bad checksums:  0" in ok.stdout
    scanned = int(next(line for line in ok.stdout.splitlines()
                       if line.startswith("Blocks scanned")).split(":")[1])
    assert scanned >= mat.pages - 50  # (new pages are skipped, not scanned as bad)

    # flip one byte of a heap page: the same tool must now complain
    path = mat.datadir / heap
    data = bytearray(path.read_bytes())
    data[8192 + 4000] ^= 0xFF
    path.write_bytes(bytes(data))
    bad = run_as_server([pg_checksums, "--check", "-D", mat.datadir], check=False)
    assert bad.returncode != 0 and "checksum verification failed" in bad.stderr
    data[8192 + 4000] ^= 0xFF
    path.write_bytes(bytes(data))

    inst = start_instance(mat)
    try:
        assert inst.sql("SELECT count(*), md5(string_agg(id || v, ',' ORDER BY id)) FROM t"
                        ) == expected
        assert inst.sql("SHOW data_checksums") == [("on",)]
    finally:
        inst.remove()
