"""Lazy historical servers (FUSE) against materialize mode, the recorded live
state and native PITR, on one store with a history (`lazy_world`).

Oracles: the fingerprint the live primary had after each step
(tests/e2e/workload.py), and a PostgreSQL recovered from a base backup with
``recovery_target_lsn = X`` (`historical.pitr`), which no one here wrote.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from strata.historical.instance import HistoricalInstance
from strata.historical.lazy import READAHEAD_KB, fuse_mounts
from strata.historical.modes import HistoricalFactory, HistoricalMode, make_factory
from strata.historical.pitr import RecoveryTarget, recover_to
from strata.lsn import Lsn
from tests.e2e.workload import fingerprint, first_difference
from tests.historical.lazy_world import LazyWorld, build_world

# Where /dev/fuse exists, install.sh installs what lazy mode needs: a missing
# binding then fails these tests (make_factory says why) instead of skipping them.
pytestmark = [pytest.mark.pg, pytest.mark.e2e,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"),
                                 reason="no /dev/fuse on this machine: lazy mode cannot run")]

# compared where the oracle is a hot standby too (no unlogged table there)
QUERIES = [
    "SELECT count(*), md5(string_agg(id || pad, ',' ORDER BY id)) FROM big",
    "SELECT count(*), sum(id) FROM big WHERE id BETWEEN 1000 AND 1999",
    "SELECT count(*), md5(string_agg(v, ',' ORDER BY v)) FROM hashed WHERE k = 42",
    "SELECT count(*) FROM pg_class",
]


@pytest.fixture(scope="module")
def world() -> Iterator[LazyWorld]:
    yield from build_world()


@pytest.fixture(scope="module")
def lazy(world: LazyWorld) -> Iterator[HistoricalFactory]:
    f = make_factory(world.store, world.store_dir, mode="lazy",
                     instances_root=world.root / "instances")
    yield f
    f.close()


@pytest.fixture(scope="module")
def materialized(world: LazyWorld) -> HistoricalFactory:
    return make_factory(world.store, world.store_dir, mode="materialize", workers=1)


def _rows(inst: HistoricalInstance | Any, queries: list[str]) -> list[list[tuple[Any, ...]]]:
    return [inst.sql(q) for q in queries]


def _start(factory: HistoricalFactory, world: LazyWorld, lsn: Lsn, name: str
           ) -> HistoricalInstance:
    return factory(lsn, world.root / "instances" / f"{factory.mode}-{name}")


def _fingerprint(inst: HistoricalInstance) -> dict[str, Any]:
    with inst.connect() as conn:
        return fingerprint(conn)


def test_lazy_server_reproduces_every_step_like_materialize(
        world: LazyWorld, lazy: HistoricalFactory, materialized: HistoricalFactory) -> None:
    names = ["fill", "add_column", "rolled_back", "partitions", "drop_table", "bulk",
             "tablespace"]
    failures = []
    for name in names:
        p = world.point(name)
        lsn = Lsn.parse(p.lsn)
        inst = _start(lazy, world, lsn, name)
        try:
            assert inst.mode == "lazy" and inst.mount is not None
            assert inst.datadir in fuse_mounts()
            if os.geteuid() == 0:  # the mount reads ahead READAHEAD_KB (set by root)
                dev = inst.datadir.stat().st_dev
                knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
                assert int(knob.read_text()) == READAHEAD_KB
            got = _fingerprint(inst)
            if name == "tablespace":
                path = inst.sql("SELECT pg_relation_filepath('in_ts')")[0][0]
                assert path.startswith("pg_tblspc/") and (inst.datadir / path).stat().st_size > 0
                assert inst.sql("SELECT count(*) FROM in_ts WHERE id = 77") == [(1,)]
        finally:
            inst.remove()
        diff = first_difference(p.fingerprint, got)
        if diff:
            failures.append(f"lazy at {name} ({lsn}): {diff}")
        if name in ("fill", "tablespace"):
            m = _start(materialized, world, lsn, name)
            try:
                assert _fingerprint(m) == got
            finally:
                m.remove()
    assert not failures, "\n".join(failures)
    assert fuse_mounts(world.root) == []


@pytest.mark.usefixtures("fds_above_setsize")
def test_a_lazy_server_starts_from_a_process_with_descriptors_above_1024(
        world: LazyWorld) -> None:
    """The daemon holds one descriptor per layer file: the pipes to its file system
    processes are then numbered above FD_SETSIZE (select.select refused them)."""
    factory = make_factory(world.store, world.store_dir, mode="lazy",
                           instances_root=world.root / "instances-high-fds")
    try:
        p = world.point("fill")
        inst = _start(factory, world, Lsn.parse(p.lsn), "high-fds")
        try:
            assert first_difference(p.fingerprint, _fingerprint(inst)) is None
        finally:
            inst.remove()
    finally:
        factory.close()
    assert fuse_mounts(world.root) == []


def test_lazy_and_materialize_answer_as_native_pitr(
        world: LazyWorld, lazy: HistoricalFactory, materialized: HistoricalFactory) -> None:
    for name in ("unlogged", "update_big"):
        lsn = Lsn.parse(world.point(name).lsn)
        oracle = recover_to(world.backup, world.archive, world.root / f"pitr-{name}",
                            RecoveryTarget(lsn=lsn))
        try:
            expected = _rows(oracle, QUERIES)
        finally:
            oracle.stop("immediate")
        for factory in (lazy, materialized):
            inst = _start(factory, world, lsn, f"pitr-{name}")
            try:
                assert _rows(inst, QUERIES) == expected, f"{factory.mode} at {name}"
            finally:
                inst.remove()


def test_unlogged_tables_read_empty_and_hash_indexes_stay_valid(
        world: LazyWorld, lazy: HistoricalFactory, materialized: HistoricalFactory) -> None:
    lsn = Lsn.parse(world.point("unlogged").lsn)
    for factory in (lazy, materialized):
        inst = _start(factory, world, lsn, "unlogged")
        try:
            assert inst.sql("SELECT count(*) FROM ul") == [(0,)]
            assert inst.sql("SELECT count(*) FROM ul WHERE id = 5") == [(0,)]
            assert inst.sql("SELECT last_value, is_called FROM ul_seq") == [(7, False)]
            # hash has redo (issue 12): its index is rebuilt, valid and used
            assert inst.sql("SELECT indisvalid FROM pg_index "
                            "WHERE indexrelid = 'hashed_k'::regclass") == [(True,)]
            with inst.connect() as conn:
                conn.execute("SET enable_seqscan = off")
                plan = str(conn.execute("EXPLAIN SELECT * FROM hashed WHERE k = 4").fetchall())
                assert "hashed_k" in plan
                assert conn.execute("SELECT count(*) FROM hashed WHERE k = 4").fetchone() == (30,)
            # the table is still there in the present's catalog sense: writes refused
            with pytest.raises(psycopg.Error) as e:
                inst.sql("INSERT INTO ul VALUES (-1, 'x')")
            assert e.value.sqlstate == "25006"
        finally:
            inst.remove()


def _tree_md5(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def test_server_writes_go_to_the_overlay_and_the_store_is_unchanged(
        world: LazyWorld, lazy: HistoricalFactory) -> None:
    before = _tree_md5(world.store_dir)
    inst = _start(lazy, world, Lsn.parse(world.point("big").lsn), "overlay")
    try:
        inst.sql("SELECT count(*) FROM big")
        # a file the server wrote (its pid file) is in the overlay, not in the store
        assert (inst.root / "overlay" / "postmaster.pid").exists()
        rel = inst.sql("SELECT pg_relation_filepath('big')")[0][0]
        path = inst.datadir / rel
        st = path.stat()
        assert st.st_size % 8192 == 0 and st.st_size > 8192 * 100
        assert (st.st_mode & 0o777) == 0o600
        assert not (inst.root / "overlay" / rel).exists()  # served, never copied
        # root writes through the mount: copied up block by block, the store untouched
        page0 = path.read_bytes()[:8192]
        with open(path, "r+b") as f:
            f.seek(8192 * 3 + 100)
            f.write(b"overlay!")
        data = path.read_bytes()
        assert data[:8192] == page0 and data[8192 * 3 + 100:8192 * 3 + 108] == b"overlay!"
        assert (inst.root / "overlay" / rel).exists()
        # a copied-up file keeps the kernel's page cache across opens (a parallel
        # worker's open would otherwise drop it: every scan rebuilt from the store)
        # and across a write followed by a size check (the server writes hint bits,
        # then asks the size with lseek: with the kernel's own mtime after a write
        # differing from ours, that getattr dropped the whole file's cache);
        # `fincore` opens the file itself, then counts its cached pages
        with open(path, "r+b") as f:
            f.seek(8192 * 5)
            f.write(b"\x01" * 8192)
            f.flush()
            os.fsync(f.fileno())
        for _ in range(2):
            fd = os.open(path, os.O_RDONLY)
            try:
                assert os.lseek(fd, 0, os.SEEK_END) == st.st_size
            finally:
                os.close(fd)
            assert path.stat().st_size == st.st_size
        cached = subprocess.run(["fincore", "--noheadings", "--raw", "--output", "PAGES",
                                 str(path)], check=True, capture_output=True, text=True)
        assert int(cached.stdout) >= st.st_size // 4096 // 2, cached.stdout
        data = data[:8192 * 5] + b"\x01" * 8192 + data[8192 * 6:]
        assert path.read_bytes() == data  # and what it holds is what we wrote
    finally:
        inst.remove()
    assert _tree_md5(world.store_dir) == before


def _corrupt_blocks_of(store_copy: Path, rel: int) -> int:
    """Flip a byte in every layer block holding only keys of relation `rel`."""
    from strata.key import Key
    from strata.storage.layerfile import open_layer

    lo = Key.rel_block(1663, 5, rel, 0, 0).to_bytes()
    hi = Key.rel_block(1663, 5, rel, 1, 0).to_bytes()
    n = 0
    for path in store_copy.iterdir():
        if not path.name.endswith((".delta", ".image")):
            continue
        lf = open_layer(path)
        targets = [b for b in lf.blocks if b.first_key >= lo and b.last_key < hi]
        lf.close()
        with open(path, "r+b") as f:
            for b in targets:
                f.seek(b.offset + b.comp_len // 2)
                byte = f.read(1)
                f.seek(b.offset + b.comp_len // 2)
                f.write(bytes([byte[0] ^ 0xFF]))
                n += 1
    return n


def test_a_page_the_store_cannot_read_fails_the_query_never_answers_wrong(
        world: LazyWorld) -> None:
    import shutil

    lsn = Lsn.parse(world.point("update_big").lsn)
    copy = world.root / "layers-corrupt"
    shutil.copytree(world.store_dir, copy)
    f = make_factory(world.store, copy, mode="lazy")
    inst = f(lsn, world.root / "instances" / "corrupt")
    try:
        relfilenode = inst.sql("SELECT pg_relation_filenode('big')")[0][0]
        assert _corrupt_blocks_of(copy, relfilenode) > 0
        with pytest.raises(psycopg.Error) as e:
            inst.sql("SELECT count(*), sum(length(pad)) FROM big")
        assert "could not read" in str(e.value) and "Input/output error" in str(e.value)
        # other relations still answer
        assert inst.sql("SELECT count(*) FROM hashed") == [(3000,)]
        assert "CorruptionError" in (inst.root / "lazyfs.log").read_text()
    finally:
        inst.remove()
        f.close()


def test_kill9_of_the_file_system_fails_the_session_and_leaves_no_mount(
        world: LazyWorld, lazy: HistoricalFactory) -> None:
    from strata.historical.pool import InstancePool

    lsn = Lsn.parse(world.point("big").lsn)
    pool = InstancePool(world.root / "kill9-pool", lazy, max_running=2)
    try:
        inst = pool.acquire(lsn)
        assert inst.mount is not None
        with inst.connect() as conn:
            conn.execute("SELECT count(*) FROM pg_class")
            os.kill(inst.mount.pid, 9)
            inst.mount.proc.wait()
            with pytest.raises(psycopg.Error) as e:
                conn.execute("SELECT count(*), md5(string_agg(pad, ',')) FROM big").fetchall()
        print("the client got:", e.value)
        assert "Transport endpoint is not connected" in str(e.value)
        pool.release(lsn)
        again = pool.acquire(lsn)  # the next session at that point gets a new server
        assert again is not inst and again.healthy()
        assert again.sql("SELECT count(*) FROM big") == [(60000,)]
        pool.wait_disposed()  # the dead one is removed in the background
        assert not inst.root.exists()
        assert fuse_mounts(world.root) == [again.datadir]
        pool.release(lsn)
    finally:
        pool.stop_all()
    assert fuse_mounts(world.root) == []


def test_socket_only_instance_has_no_tcp_listener_and_refuses_other_os_users(
        world: LazyWorld) -> None:
    f = make_factory(world.store, world.store_dir, mode=HistoricalMode.LAZY, socket_only=True)
    inst = f(Lsn.parse(world.point("fill").lsn), world.root / "instances" / "sock")
    try:
        assert inst.sql("SHOW listen_addresses") == [("",)]
        assert inst.socket_dir.stat().st_mode & 0o777 == 0o700
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"host=127.0.0.1 port={inst.port} user=postgres dbname=postgres",
                            connect_timeout=5)
        psql = str(inst.cluster.bins.path("psql"))
        for host in (str(inst.socket_dir), "127.0.0.1"):
            cp = subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", psql, "-X",
                 "-h", host, "-p", str(inst.port), "-U", "postgres", "-d", "postgres",
                 "-c", "SELECT 1"], capture_output=True, text=True, timeout=30,
                env={"PATH": os.environ.get("PATH", "")})
            assert cp.returncode != 0, cp.stdout
            assert "Permission denied" in cp.stderr or "Connection refused" in cp.stderr, \
                cp.stderr
    finally:
        inst.remove()
        f.close()


def _relation_md5s(datadir: Path) -> dict[str, str]:
    import re

    rel_file = re.compile(r"^\d+(_init)?(\.\d+)?$")
    return {str(p.relative_to(datadir)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(datadir.rglob("*")) if p.is_file() and rel_file.match(p.name)}


def test_parallel_materialize_writes_what_one_process_writes(world: LazyWorld) -> None:
    from strata.historical.materialize import materialize
    from strata.historical.parallel import materialize_parallel
    from strata.historical.served import ServedView
    from strata.historical.store_view import StoreView

    lsn = Lsn.parse(world.point("update_big").lsn)
    one = ServedView(StoreView(world.store, lsn), ("hash",))
    mat1 = materialize(one, world.root / "m1" / "data")
    mat2, marked = materialize_parallel(world.store_dir, StoreView(world.store, lsn),
                                        world.root / "m2" / "data", workers=2,
                                        invalid_index_ams=("hash",), chunk_blocks=100)
    assert marked == one.indexes_marked_invalid == 2  # account_owner_hash, hashed_k
    assert mat2.pages == mat1.pages and mat2.relations == mat1.relations
    a, b = _relation_md5s(mat1.datadir), _relation_md5s(mat2.datadir)
    assert len(a) > 100 and a == b


def test_cleanup_unmounts_what_a_crashed_file_system_left(world: LazyWorld) -> None:
    from strata.historical.lazy import LazyMount, cleanup_mounts
    from strata.historical.skeleton import build_skeleton

    root = world.root / "crashed"
    root.mkdir()
    overlay = build_skeleton(root / "overlay")
    (root / "data").mkdir()
    m = LazyMount.start(world.store_dir, Lsn.parse(world.point("fill").lsn), root / "data",
                        overlay, logfile=root / "lazyfs.log")
    assert (root / "data" / "PG_VERSION").read_text() == "18\n"
    assert any(p.name.isdigit() for p in (root / "data" / "global").iterdir())
    os.kill(m.pid, 9)  # as if strata had crashed: the mount is left behind
    m.proc.wait()
    assert fuse_mounts(world.root) == [root / "data"]
    assert cleanup_mounts(world.root) == [root / "data"]
    assert fuse_mounts(world.root) == []
    assert cleanup_mounts(world.root) == []


def test_cleanup_after_a_crash_stops_servers_and_unmounts_dead_or_alive_mounts(
        world: LazyWorld, lazy: HistoricalFactory) -> None:
    from strata.historical.modes import cleanup_instances
    from strata.runtime.procfs import process_alive

    root = world.root / "crash-instances"
    lsn = Lsn.parse(world.point("fill").lsn)
    alive = lazy(lsn, root / "a")  # strata killed: the server and its file system stay
    dead = lazy(lsn, root / "b")  # ... and this file system was killed too
    assert dead.mount is not None and alive.mount is not None
    os.kill(dead.mount.pid, 9)
    dead.mount.proc.wait()
    pids = [alive.pid, dead.pid]
    assert all(p is not None and process_alive(p) for p in pids)
    assert sorted(cleanup_instances(root)) == [root / "a", root / "b"]
    assert not any(p is not None and process_alive(p) for p in pids)
    alive.mount.proc.wait(timeout=30)  # unmounted: the process ended by itself
    assert fuse_mounts(world.root) == [] and list(root.iterdir()) == []


class _SequentialReads:
    """Views of the biggest relation file at world's "update_big" point, and that
    file read through a view in 128 kB steps, as the kernel reads it."""

    def __init__(self, world: LazyWorld) -> None:
        from strata.historical.controlfile import parse_control
        from strata.historical.store_view import StoreView

        self.src = StoreView(world.store, Lsn.parse(world.point("update_big").lsn))
        self.cf = parse_control(self.src.control_template())
        plain = self.view()
        self.path = max(plain.files, key=lambda p: plain.files[p].size)
        self.size = plain.files[self.path].size
        self.pages = self.size // 8192
        self.want = self.read_all(plain)

    def view(self) -> Any:
        from strata.historical.lazyview import LazyView

        return LazyView(self.src, self.cf.catalog_version_dir, self.cf.relseg_size)

    def read_all(self, v: Any) -> bytes:
        # a view's read is valid until its next read (`LazyView.read`): copied at once
        return b"".join(bytes(v.read(self.path, off, 131072))
                        for off in range(0, self.size, 131072))


def test_readahead_helpers_serve_the_same_bytes_and_outlive_a_dead_helper(
        world: LazyWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """`LazyView.start_helpers`: a file read sequentially gives the same bytes with
    helpers as without, the helpers really rebuilt part of it (every window
    shared: `SPLIT_MIN_US` 0), a helper killed -9 is dropped and its part rebuilt
    here, and `close_helpers` reaps every helper; with pages cheaper than
    `SPLIT_MIN_US` (and no stream running ahead), no window is shared."""
    from strata.historical import lazyview
    from strata.historical.lazyview import SPLIT_MIN

    monkeypatch.setattr(lazyview, "SPLIT_MIN_US", 0.0)
    monkeypatch.setattr(lazyview, "SHARE_STEP", 0.0)  # windows ahead: half each, fixed
    r = _SequentialReads(world)
    assert r.pages >= 4 * SPLIT_MIN, "the biggest file is too small to share windows"
    helped = r.view()
    assert helped.start_helpers(2) == 2
    pids = [h.pid for h in helped._helpers]
    try:
        assert r.read_all(helped) == r.want
        assert helped.helped_pages > r.pages // 3
        os.kill(pids[0], signal.SIGKILL)
        assert r.read_all(helped) == r.want  # read again: new windows, one helper gone
        assert [h.pid for h in helped._helpers] == pids[1:]
    finally:
        helped.close_helpers()
    cheap = r.view()
    assert cheap.start_helpers(1) == 1
    pids.append(cheap._helpers[0].pid)
    try:
        monkeypatch.setattr(lazyview, "SPLIT_MIN_US", 1e9)  # every page counts as cheap
        monkeypatch.setattr(lazyview, "RUN_AHEAD_MIN", 10**9)  # and no stream runs ahead
        assert r.read_all(cheap) == r.want and cheap.helped_pages == 0
    finally:
        cheap.close_helpers()
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


@pytest.mark.parametrize("dear", [False, True], ids=["cheap-pages", "dear-pages"])
def test_a_helper_running_ahead_serves_the_same_bytes_and_a_dead_one_is_replaced(
        world: LazyWorld, monkeypatch: pytest.MonkeyPatch, dear: bool) -> None:
    """A stream whose window reached `RUN_AHEAD_MIN` blocks runs ahead on a helper:
    the same bytes as without helpers. Cheap pages: the helper rebuilds whole
    windows (more than half the file); dear pages (`SPLIT_MIN_US`): the second
    half of each window, this process the first (the share held fixed). A helper
    killed -9 while it runs ahead is dropped, its windows rebuilt here, and it is
    reaped."""
    from strata.historical import lazyview

    monkeypatch.setattr(lazyview, "SPLIT_MIN_US", 0.0 if dear else 1e9)
    monkeypatch.setattr(lazyview, "RUN_AHEAD_MIN", 32)
    monkeypatch.setattr(lazyview, "SHARE_STEP", 0.0)
    r = _SequentialReads(world)
    v = r.view()
    assert v.start_helpers(1) == 1
    pid = v._helpers[0].pid
    try:
        assert r.read_all(v) == r.want
        if dear:
            assert r.pages // 8 < v.helped_pages < r.pages * 3 // 4
        else:
            assert v.helped_pages > r.pages // 2
        os.kill(pid, signal.SIGKILL)
        before = v.helped_pages
        assert r.read_all(v) == r.want
        assert v._helpers == [] and v.helped_pages == before
    finally:
        v.close_helpers()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_windows_ahead_are_borrowed_and_copied_only_when_their_slot_is_reused(
        world: LazyWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache borrows a helper's window ahead (no copy) and `_run_ahead` releases
    a slot before handing it out again: a reader that leaves every other 128 kB of
    each window for later still reads the bytes read without helpers, once the
    helper has rewritten every slot many times over. Not vacuous: windows were
    borrowed, and some were copied on release (`lazyview.AHEAD_SLOTS`)."""
    from strata.historical import lazyview
    from strata.historical.pagecache import WindowCache

    monkeypatch.setattr(lazyview, "RUN_AHEAD_MIN", 32)
    monkeypatch.setattr(lazyview, "SHARE_STEP", 0.0)
    borrowed, copied = [0], [0]
    put, release = WindowCache.put, WindowCache.release

    def spy_put(self: WindowCache, *args: Any) -> None:
        borrowed[0] += len(args) > 3 and args[3] is not None
        put(self, *args)

    def spy_release(self: WindowCache, owner: Any) -> int:
        n = release(self, owner)
        copied[0] += n
        return n

    monkeypatch.setattr(WindowCache, "put", spy_put)
    monkeypatch.setattr(WindowCache, "release", spy_release)
    r = _SequentialReads(world)
    v = r.view()
    v.max_window = 64
    step = 131072
    assert v.start_helpers(1) == 1
    try:
        got = {off: bytes(v.read(r.path, off, step)) for off in range(0, r.size, 2 * step)}
        got |= {off: bytes(v.read(r.path, off, step)) for off in range(step, r.size, 2 * step)}
        assert b"".join(got[off] for off in sorted(got)) == r.want
        assert borrowed[0] > 2 * lazyview.AHEAD_SLOTS and copied[0] > 0, (borrowed, copied)
    finally:
        v.close_helpers()


def test_a_sparse_reader_gets_its_pages_alone_and_a_scan_still_gets_windows(
        world: LazyWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """`LazyView._fetch`: one-page misses in ascending order with gaps wider than
    `SPARSE_GAP` but inside `SEQ_SLACK` (an index scan's heap or leaf pages)
    rebuild those pages alone, not the gaps between them nor windows ahead; with
    smaller gaps, windows from 2 blocks that cover several reads each; a reader
    of one page at a time without gaps, and the kernel's 128 kB readahead, still
    read in windows growing from 16 blocks. Every read gives the bytes of the
    whole-file read."""
    from strata.historical import lazyview

    rebuilt: list[int] = []
    fill = lazyview.LazyView._fill

    def spy_fill(self: Any, f: Any, blk: int, end: int) -> None:
        rebuilt.append(end - blk)
        fill(self, f, blk, end)

    monkeypatch.setattr(lazyview.LazyView, "_fill", spy_fill)
    r = _SequentialReads(world)
    assert r.pages >= 200, "the biggest file is too small"
    want = [r.want[i * 8192:(i + 1) * 8192] for i in range(r.pages)]
    rebuilt.clear()
    v = r.view()
    gap = lazyview.SPARSE_GAP + 1
    assert gap + 1 < lazyview.SEQ_SLACK
    sparse = list(range(3, r.pages, gap + 1))
    assert [bytes(v.read(r.path, p * 8192, 8192)) for p in sparse] == [want[p] for p in sparse]
    assert rebuilt == [1] * len(sparse)
    rebuilt.clear()
    v = r.view()
    near = list(range(3, 120, 3))  # gaps of 2 pages
    assert [bytes(v.read(r.path, p * 8192, 8192)) for p in near] == [want[p] for p in near]
    assert len(rebuilt) < len(near) // 2 and rebuilt[:3] == [1, 4, 5], rebuilt
    for step in (8192, 131072):  # one page at a time, then as the kernel reads ahead
        rebuilt.clear()
        v = r.view()
        got = b"".join(bytes(v.read(r.path, off, step)) for off in range(0, r.size, step))
        assert got == r.want
        assert len(rebuilt) < r.pages // 8 and max(rebuilt) >= 32, (step, rebuilt)


@pytest.mark.parametrize("slots", [1, 2])
def test_two_streams_sharing_the_helpers_slots_read_the_right_bytes(
        world: LazyWorld, monkeypatch: pytest.MonkeyPatch, slots: int) -> None:
    """Two sequential readers of one file, far apart and taking turns, so that the
    helper's slots go to their windows alternately and a read that crosses from one
    window into the next may hold a span of a slot the fetch hands out again
    (`LazyView.pages` copies such spans first): every read is the bytes read
    without helpers. Few slots make the reuse as close as it gets."""
    from strata.historical import lazyview

    monkeypatch.setattr(lazyview, "RUN_AHEAD_MIN", 16)
    monkeypatch.setattr(lazyview, "SHARE_STEP", 0.0)
    monkeypatch.setattr(lazyview, "AHEAD_SLOTS", slots)
    r = _SequentialReads(world)
    v = r.view()
    v.max_window = 32
    step, half = 3 * 8192 + 4096, (r.size // 2) // 8192 * 8192  # reads cross windows
    assert v.start_helpers(1) == 1
    try:
        for k in range(half // step + 1):
            for base in (0, half):
                off = base + k * step
                if off < min(base + half, r.size):
                    got = v.read(r.path, off, step)
                    assert bytes(got) == r.want[off:off + step], (base, off)
        assert v.helped_pages > 0
    finally:
        v.close_helpers()


def test_the_share_of_a_window_ahead_follows_the_helper(
        world: LazyWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ahead_share` moves once per window ahead a reader collects (never for a
    window no reader reached), with whether the helper's part was ready; the
    bytes stay those read without helpers, whatever the share."""
    from strata.historical import lazyview

    monkeypatch.setattr(lazyview, "RUN_AHEAD_MIN", 32)
    calls: list[tuple[float, bool]] = []
    real = lazyview.next_share

    def spy(share: float, ready: bool) -> float:
        calls.append((share, ready))
        return real(share, ready)

    monkeypatch.setattr(lazyview, "next_share", spy)
    r = _SequentialReads(world)
    v = r.view()
    v.max_window = 64
    assert v.start_helpers(1) == 1
    try:
        assert r.read_all(v) == r.want
        collected = r.pages // 64 - 2  # windows ahead: all but the first few
        assert collected <= len(calls) <= -(-r.pages // 64)
        shares = [c[0] for c in calls] + [v.ahead_share]
        for (share, ready), after in zip(calls, shares[1:], strict=True):
            assert after == real(share, ready)
        assert v.ahead_share is not None and 0.0 <= v.ahead_share <= lazyview.MAX_SHARE
    finally:
        v.close_helpers()


@pytest.mark.unit
def test_next_share_gives_the_helper_more_when_it_waits_and_less_when_it_lags() -> None:
    from strata.historical.lazyview import MAX_SHARE, SHARE_STEP, next_share

    assert next_share(0.5, helper_ready=True) == 0.5 - SHARE_STEP
    assert next_share(0.5, helper_ready=False) == 0.5 + SHARE_STEP
    assert next_share(0.0, helper_ready=True) == 0.0
    assert next_share(MAX_SHARE, helper_ready=False) == MAX_SHARE


def test_a_lazy_server_prices_random_reads_above_reads_in_order(
        world: LazyWorld, lazy: HistoricalFactory, materialized: HistoricalFactory) -> None:
    """`modes.LAZY_SETTINGS`: a lazy server's random_page_cost is 6 (a cold random
    read is a FUSE round trip for one page), a materialized one keeps
    PostgreSQL's 4, and a caller's own settings win over both."""
    lsn = Lsn.parse(world.point("fill").lsn)
    own = make_factory(world.store, world.store_dir, mode="lazy",
                       settings={"random_page_cost": "3"})
    started: list[HistoricalInstance] = []
    try:
        for factory, name, want in ((lazy, "rpc", "6"), (materialized, "rpc", "4"),
                                    (own, "rpc-own", "3")):
            inst = _start(factory, world, lsn, name)
            started.append(inst)
            assert inst.sql("SHOW random_page_cost") == [(want,)], factory.mode
    finally:
        for inst in started:
            inst.remove()
        own.close()


def test_the_compiled_window_path_lays_every_page_as_the_python_reference(
        world: LazyWorld, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`scan_pages` (what a lazy file system and its helpers read) builds the chains
    of a window in C (`reconstruct.Reconstructor.into`, `_pagec.redo_window`): every
    fork of every relation, at steps of the history before and after image layers
    made halfway, byte for byte what the Python redo (the reference: the compiled
    chain switched off) lays out. The C path really built chains on an image and
    from no page at all (an image delta, a WILL_INIT record), so the comparison is
    not vacuous."""
    from strata.key import Key, KeyKind, KeyRange
    from strata.keyspace.relation import decode_rel_size
    from strata.pagestore import PageStore
    from strata.reconstruct import reconstruct

    compiled = reconstruct.pagec
    assert compiled is not None and reconstruct.compiled_chain is not None
    built = {"on_image": 0, "from_nothing": 0}

    class Counted:
        def __getattr__(self, name: str) -> Any:
            return getattr(compiled, name)

        def redo_window(self, *args: Any) -> int:
            n = int(compiled.redo_window(*args))
            kinds, first, done = args[6], args[9], args[12].view(bool)
            built["on_image"] += int(((kinds[first] == 0) & done).sum())
            built["from_nothing"] += int(((kinds[first] != 0) & done).sum())
            return n

    monkeypatch.setattr(reconstruct, "pagec", Counted())
    shutil.copytree(world.store_dir, tmp_path / "layers")
    mid = Lsn.parse(world.points[len(world.points) // 2].lsn)
    with PageStore.open(tmp_path / "layers", reconstruct.reconstruct_value,
                        background=False) as store:
        assert store.create_image_layers(mid, threshold=0)
        forks = 0
        for p in world.points[::3] + world.points[-1:]:
            lsn = Lsn.parse(p.lsn)
            for size_key in store.keys(KeyRange.kind(KeyKind.REL_SIZE), lsn):
                value = store.get_page(size_key, lsn)
                n = decode_rel_size(value) if value is not None else 0
                if not n:
                    continue
                first = Key.rel_block(size_key.spc, size_key.db, size_key.rel, size_key.fork, 0)
                ours = store.scan_pages(first, n, lsn, 8192)
                monkeypatch.setattr(reconstruct, "compiled_chain", None)
                ref = store.scan_pages(first, n, lsn, 8192)
                monkeypatch.setattr(reconstruct, "compiled_chain", compiled.redo_chain)
                assert ours == ref, f"{size_key} at {p.name}"
                forks += 1
    assert forks > 100
    assert built["on_image"] > 100 and built["from_nothing"] > 100, built
