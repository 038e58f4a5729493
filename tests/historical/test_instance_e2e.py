"""A cleanly stopped primary -> DataDirSource -> materialize -> read-only instance.

One primary per module (un-hinted committed rows, aborted rows, multixact-locked
rows, a hash index, a sequence, a tablespace, a second database) is stopped
cleanly, materialized once (the hash index's pages left out, as the store will
offer an index whose AM has no redo yet) and served with hash indexes marked
invalid; the oracle is the same primary started again on its own files.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from strata.errors import InstanceError
from strata.historical.controlfile import parse_control
from strata.historical.instance import (
    HistoricalInstance,
    launch,
    materialize_and_start,
    prepare,
    start_instance,
)
from strata.historical.materialize import materialize
from strata.historical.pool import InstancePool
from strata.historical.source import DataDirSource
from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from strata.runtime.osuser import make_private_dir
from strata.runtime.procfs import process_alive
from tests.conftest import make_cluster

pytestmark = [pytest.mark.pg, pytest.mark.e2e]

SETUP = [
    ("postgres", "CREATE TABLE t_unhinted (id int PRIMARY KEY, v text)"),
    ("postgres", "INSERT INTO t_unhinted SELECT g, md5(g::text) FROM generate_series(1, 5000) g"),
    ("postgres", "CREATE TABLE t_aborted (id int, v text)"),
    ("postgres", "INSERT INTO t_aborted VALUES (0, 'kept')"),
    ("postgres", "CREATE TABLE t_mx (id int PRIMARY KEY, v int)"),
    ("postgres", "INSERT INTO t_mx SELECT g, g FROM generate_series(1, 200) g"),
    ("postgres", "CREATE TABLE t_hash (k int, v text)"),
    ("postgres", "INSERT INTO t_hash SELECT g % 1000, 'v' || g FROM generate_series(1, 20000) g"),
    ("postgres", "CREATE INDEX t_hash_k ON t_hash USING hash (k)"),
    ("postgres", "CREATE INDEX t_hash_v ON t_hash (v)"),
    ("postgres", "ANALYZE t_hash"),
    ("postgres", "CREATE SEQUENCE s1"),
    ("postgres", "SELECT nextval('s1'), nextval('s1'), nextval('s1')"),
    ("postgres", "CREATE DATABASE db2"),
    ("db2", "CREATE TABLE t2 (id int, v text)"),
    ("db2", "INSERT INTO t2 SELECT g, 'row' || g FROM generate_series(1, 300) g"),
    ("db2", "UPDATE t2 SET v = v || '!' WHERE id % 7 = 0"),
]
FINGERPRINT = [
    ("postgres", "SELECT count(*), md5(string_agg(id || v, ',' ORDER BY id)) FROM t_unhinted"),
    ("postgres", "SELECT count(*), md5(string_agg(id || v, ',' ORDER BY id)) FROM t_aborted"),
    ("postgres", "SELECT count(*), sum(v) FROM t_mx"),
    ("postgres", "SELECT count(*), sum(v) FROM t_mx WHERE id > 100"),
    ("postgres", "SELECT count(*), md5(string_agg(k || v, ',' ORDER BY k, v)) FROM t_hash"),
    ("postgres", "SELECT count(*), md5(string_agg(v, ',' ORDER BY v)) FROM t_hash WHERE k = 42"),
    ("postgres", "SELECT last_value, is_called FROM s1"),
    ("postgres", "SELECT count(*), sum(id) FROM t_ts"),
    ("postgres", "SELECT count(*) FROM pg_class"),
    ("db2", "SELECT count(*), md5(string_agg(id || v, ',' ORDER BY id)) FROM t2"),
]
HASH_QUERY = "SELECT v FROM t_hash WHERE k = 42"
_REL_FILE = re.compile(r"^\d+(_init)?(\.\d+)?$")


@dataclass
class World:
    primary: Cluster
    source: DataDirSource
    expected: list[list[tuple[object, ...]]]
    primary_plan: str
    unhinted_path: str
    instance: HistoricalInstance


def _relation_md5s(datadir: Path) -> dict[str, str]:
    out = {}
    for root, _dirs, files in os.walk(datadir):
        for f in files:
            if _REL_FILE.match(f):
                p = Path(root) / f
                out[str(p.relative_to(datadir))] = hashlib.md5(p.read_bytes()).hexdigest()
    return out


def _run(c: Cluster | HistoricalInstance, queries: list[tuple[str, str]]) -> list[list[tuple[object, ...]]]:
    return [c.sql(q, db) for db, q in queries]


class WithoutPagesOf:
    """A source whose given relation yields no page (its files become zero pages of
    the true length): what the store offers for an index AM without redo."""

    def __init__(self, inner: DataDirSource, relfilenumber: int) -> None:
        self.inner = inner
        self.relfilenumber = relfilenumber

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    @property
    def lsn(self) -> Lsn:
        return self.inner.lsn

    def pages(self, spc: int, db: int, rel: int, fork: int) -> Iterator[tuple[int, bytes]]:
        if rel == self.relfilenumber:
            return iter(())
        return self.inner.pages(spc, db, rel, fork)


@pytest.fixture(scope="module")
def world(session_scratch: Path) -> Iterator[World]:
    base = make_private_dir(session_scratch / "hist-e2e")
    os.chmod(base, 0o755)
    primary = make_cluster(base / "primary", autovacuum="off")
    inst: HistoricalInstance | None = None
    try:
        ts_dir = make_private_dir(base / "ts")
        primary.sql(f"CREATE TABLESPACE ts LOCATION '{ts_dir}'")
        primary.sql("CREATE TABLE t_ts (id int) TABLESPACE ts")
        primary.sql("INSERT INTO t_ts SELECT generate_series(1, 300)")
        for db, q in SETUP:
            primary.sql(q, db)
        with primary.connect(autocommit=False) as c1, primary.connect(autocommit=False) as c2:
            c1.execute("BEGIN")
            c1.execute("INSERT INTO t_aborted SELECT g, 'gone' FROM generate_series(1, 1000) g")
            c1.rollback()
            c1.execute("SELECT * FROM t_mx WHERE id <= 100 FOR SHARE")
            c2.execute("SELECT * FROM t_mx WHERE id <= 100 FOR SHARE")  # a multixact xmax
            c1.commit()
            c2.commit()
        unhinted_path = primary.sql("SELECT pg_relation_filepath('t_unhinted')")[0][0]
        hash_rel = primary.sql("SELECT pg_relation_filenode('t_hash_k')")[0][0]
        primary.stop()
        source = DataDirSource(primary.datadir)
        assert source.controlfile.next_multi > 1
        # the hash index arrives as zero pages, as if its AM had no redo yet
        mat = materialize(WithoutPagesOf(source, int(hash_rel)),  # type: ignore[arg-type]
                          base / "inst" / "data")
        inst = start_instance(mat, invalid_index_ams=["hash"])
        primary.start()
        expected = _run(primary, FINGERPRINT)
        primary_plan = "\n".join(r[0] for r in primary.sql("EXPLAIN " + HASH_QUERY))
        yield World(primary, source, expected, primary_plan, unhinted_path, inst)
    finally:
        if inst is not None:
            inst.remove()
        primary.stop()


def test_copy_serves_the_same_results_as_the_original(world: World) -> None:
    # the heap really was copied without hint bits: first tuple's xmin not marked committed
    page = (world.instance.datadir / world.unhinted_path).read_bytes()[:8192]
    lp = struct.unpack_from("<I", page, 24)[0] & 0x7FFF
    infomask = struct.unpack_from("<H", page, lp + 20)[0]
    assert infomask & 0x0100 == 0  # HEAP_XMIN_COMMITTED
    got = _run(world.instance, FINGERPRINT)
    assert got == world.expected
    assert got[0][0][0] == 5000 and got[1][0][0] == 1 and got[2][0][0] == 200
    assert world.instance.sql("SELECT pg_is_in_recovery()") == [(True,)]


def test_writes_are_refused_with_sqlstate_25006_in_every_database(world: World) -> None:
    for db, stmt in [("postgres", "INSERT INTO t_unhinted VALUES (-1, 'x')"),
                     ("db2", "UPDATE t2 SET v = 'x'"), ("postgres", "CREATE TABLE nope (a int)")]:
        with pytest.raises(psycopg.Error) as e:
            world.instance.sql(stmt, db)
        assert e.value.sqlstate == "25006"


def test_queries_do_not_modify_relation_files_of_the_copy(world: World) -> None:
    inst = world.instance
    before = _relation_md5s(inst.datadir)
    assert any(k.startswith("pg_strata_tblspc/") for k in before)
    _run(inst, FINGERPRINT)
    inst.sql("SELECT count(*) FROM t_unhinted WHERE v LIKE 'a%'")
    inst.stop()  # a shutdown would write out any page the queries dirtied
    try:
        assert _relation_md5s(inst.datadir) == before
    finally:
        inst.cluster = launch(inst.datadir, port=inst.port)


def test_hash_index_marked_invalid_is_not_used_and_results_stay_correct(world: World) -> None:
    assert "t_hash_k" in world.primary_plan  # the original would use it
    inst = world.instance
    assert inst.indexes_marked_invalid == 1
    valid = dict(inst.sql("SELECT indexrelid::regclass::text, indisvalid FROM pg_index "
                          "WHERE indrelid = 't_hash'::regclass"))
    assert valid == {"t_hash_k": False, "t_hash_v": True}
    with inst.connect() as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + HASH_QUERY).fetchall())
    assert "t_hash_k" not in plan
    # its pages are zeros in the copy (see WithoutPagesOf): using it could not work
    hash_file = inst.datadir / inst.sql("SELECT pg_relation_filepath('t_hash_k')")[0][0]
    data = hash_file.read_bytes()
    assert len(data) >= 8192 and data == bytes(len(data))
    assert inst.sql("SELECT count(*) FROM t_hash WHERE k = 42") == [(20,)]


def test_instance_listens_only_on_loopback_and_a_private_socket(world: World) -> None:
    inst = world.instance
    assert inst.sql("SHOW listen_addresses") == [("127.0.0.1",)]
    assert inst.socket_dir.stat().st_mode & 0o777 == 0o700
    assert inst.sql("SHOW autovacuum") == [("off",)]


def test_corrupt_control_file_gives_instance_error_with_log_tail(world: World, scratch_dir: Path
                                                                 ) -> None:
    mat = materialize(world.source, scratch_dir / "bad" / "data")
    control = mat.datadir / "global" / "pg_control"
    good = control.read_bytes()
    control.write_bytes(good[:40] + bytes([good[40] ^ 0xFF]) + good[41:])
    with pytest.raises(InstanceError, match="no valid pg_control"):
        prepare(mat)  # pg_resetwal -f would guess every value: refused
    control.write_bytes(good)
    prepare(mat)
    prepared = control.read_bytes()
    parse_control(prepared)
    control.write_bytes(prepared[:100] + bytes([prepared[100] ^ 0xFF]) + prepared[101:])
    with pytest.raises(InstanceError) as e:
        launch(mat.datadir)
    assert "incorrect checksum in control file" in str(e.value)
    assert not (mat.datadir / "postmaster.pid").exists()


def _pid_alive(pid: int) -> bool:
    return process_alive(pid)


def test_pool_limit_and_idle_timeout_stop_servers_and_remove_directories(
        world: World, scratch_dir: Path) -> None:
    now = [0.0]

    def factory(lsn: Lsn, root: Path) -> HistoricalInstance:
        return materialize_and_start(world.source, root)

    pool = InstancePool(scratch_dir / "pool", factory, max_running=1, idle_timeout=60,
                        clock=lambda: now[0])
    try:
        a = pool.get(Lsn(100))
        a_pid = a.cluster.postmaster_pid()
        assert a.sql("SELECT count(*) FROM t_mx") == [(200,)]
        b = pool.get(Lsn(200))  # over the limit: a is evicted
        b_pid = b.cluster.postmaster_pid()
        pool.wait_disposed()  # a stops in the background
        assert a_pid is not None and b_pid is not None
        assert not _pid_alive(a_pid) and not a.root.exists()
        [row] = pool.stats()
        assert row.lsn == Lsn(200) and row.size_bytes > 1_000_000
        now[0] += 61
        assert pool.reap_idle() == [Lsn(200)]
        assert not _pid_alive(b_pid) and not b.root.exists()
        assert list((scratch_dir / "pool").iterdir()) == []
    finally:
        pool.stop_all()
