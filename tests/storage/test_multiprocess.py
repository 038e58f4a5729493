"""The store in three processes: a writer (puts, flushes), a maintenance process
(compaction, images, gc) and readers (read-only opens), committing through one
manifest protocol. Every read is compared with the deterministic history's model
(tests/storage/test_crash.py); kill -9 of the maintenance process at every commit
step and mid-job leaves a store the next maintainer recovers."""

from __future__ import annotations

import os
import random
import shutil
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from strata.errors import LsnOutOfRangeError, StrataError
from strata.key import KeyRange
from strata.pagestore import PageStore, StoreReader
from strata.storage import commit, store
from strata.storage.compaction import compact_l0
from strata.storage.config import StorageConfig
from strata.storage.maintenance import open_maintainer, run_maintenance
from strata.storage.manifest import load_manifest
from strata.storage.naming import TMP_SUFFIX, is_layer_filename
from strata.storage.tools import verify_store

from .conftest import append_redo, rk
from .test_crash import KEYS, History, entry_at

CFG = StorageConfig(memtable_bytes=1500, block_bytes=400, target_file_bytes=2500,
                    l0_compaction_trigger=2, image_delta_threshold=1, cache_pages=64,
                    retention_lsn_distance=6000, maintenance_poll_seconds=0.05)


def ingest(ps: PageStore, start: int, upto: int, flush_every: int = 40) -> int:
    """Put the history (test_crash.entry_at) in (start, upto]; returns the last LSN."""
    lsn = start
    while lsn + 8 <= upto:
        lsn += 8
        k, v = entry_at(lsn)
        ps.put(rk(k), lsn, v)
        ps.advance(lsn)
        if (lsn // 8) % flush_every == 0:
            ps.flush()
    ps.flush()
    return lsn


def check_reads(r: StoreReader | PageStore, history: History, rnd: random.Random,
                n: int = 6, scan: bool = True) -> None:
    """`n` random point reads and one full scan in [retention_lsn, durable_lsn]."""
    lo, hi = int(r.retention_lsn), int(r.durable_lsn)
    if hi == 0:
        return
    m = history.at(hi)
    for _ in range(n):
        lsn, k = rnd.randint(lo, hi), rnd.randrange(KEYS)
        assert r.get_page(rk(k), lsn) == m.get(rk(k), lsn), (k, lsn)
    if scan:
        lsn = rnd.randint(lo, hi)
        assert list(r.scan(KeyRange.everything(), lsn)) == m.scan(lsn), lsn


def leftovers(directory: Path) -> list[str]:
    m = load_manifest(directory)
    assert m is not None
    live = m.names()
    return sorted(fn for fn in os.listdir(directory)
                  if fn.endswith(TMP_SUFFIX) or (is_layer_filename(fn) and fn not in live))


def fork(body: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def test_reader_process_reads_exact_history_while_writer_and_maintenance_processes_run(
        tmp_path: Path) -> None:
    d = tmp_path / "layers"
    upto = 8 * 6000
    ready_r, ready_w = os.pipe()

    def writer() -> None:
        ps = PageStore.open(d, append_redo, CFG, maintenance=False)
        os.write(ready_w, b"x")
        ingest(ps, 0, upto)
        ps.close()

    pids = [fork(writer)]
    try:
        assert os.read(ready_r, 1) == b"x"  # the store exists: start maintenance
        pids.append(fork(lambda: run_maintenance(d, append_redo, CFG)))
        rnd, history = random.Random(5), History()
        reads, generations = 0, set()
        with PageStore.open_readonly(d, append_redo, CFG) as r:
            while os.waitpid(pids[0], os.WNOHANG) == (0, 0):
                r.refresh()
                generations.add(r.generation)
                check_reads(r, history, rnd, scan=reads % 10 == 0)
                reads += 1
            pids.pop(0)
            r.refresh()
            assert r.durable_lsn == upto
            check_reads(r, history, rnd, n=50)
        assert reads > 20 and len(generations) > 5, (reads, generations)
        os.kill(pids[0], signal.SIGTERM)
        _, status = os.waitpid(pids.pop(), 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    summary = verify_store(d)
    assert summary.ok, summary.errors
    assert summary.leftovers == []
    m = load_manifest(d)
    assert m is not None and m.retention_lsn > 0, "gc never ran"
    assert {le.level.name for le in m.layers} >= {"L1", "IMAGE"}


KILL_POINTS = ["compact:renamed", "compact:committed", "image:renamed", "image:committed",
               "retention:committed", "gc:renamed", "gc:committed", "retire:unlinked-one",
               "checkpoint:1/3", "checkpoint:2/3"]  # of the job's checkpoints


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_of_maintenance_at_any_step_then_writer_reader_and_next_maintainer_recover(
        tmp_path: Path, point: str) -> None:
    d = tmp_path / "layers"
    history, rnd = History(), random.Random(point)
    cfg = replace(CFG, image_delta_threshold=0)  # images after every compaction
    ps = PageStore.open(d, append_redo, cfg, background=False, maintenance=False)
    try:
        # history whose oldest part the next job can collect: L1s and images below
        # the horizon, and new L0s to compact and image above it
        last = ingest(ps, 0, 8 * 1500)
        m = open_maintainer(d, append_redo, cfg)
        while m.run_once():
            pass
        m.store.close()
        last = ingest(ps, last, 8 * 3000)
        kill_at = 0
        if point.startswith("checkpoint:"):  # count the job's checkpoints on a copy
            shutil.copytree(d, tmp_path / "dry")
            dry = open_maintainer(tmp_path / "dry", append_redo, cfg)
            calls = [0]
            dry.store.checkpoint_hook = lambda: calls.__setitem__(0, calls[0] + 1)
            while dry.run_once():
                pass
            dry.store.close()
            num, den = point.split(":")[1].split("/")
            kill_at = calls[0] * int(num) // int(den)
            assert kill_at > 1

        def maintainer() -> None:
            m = open_maintainer(d, append_redo, cfg)
            kill = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
            if kill_at:
                calls = [0]

                def hook() -> None:
                    calls[0] += 1
                    if calls[0] == kill_at:
                        kill()
                m.store.checkpoint_hook = hook
            else:
                commit.crash_point = lambda p: kill() if p == point else None
            while m.run_once():
                pass
            os._exit(3)  # the point was never reached

        pid = fork(maintainer)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        # the writer goes on, committing on top of whatever the dead maintainer committed
        last = ingest(ps, last, last + 8 * 300)
        check_reads(ps, history, rnd)
        with PageStore.open_readonly(d, append_redo, cfg) as r:
            assert r.durable_lsn == last
            check_reads(r, history, rnd)
        # the next maintainer cleans up after the dead one, then does the work
        m = open_maintainer(d, append_redo, cfg)
        try:
            assert not [fn for fn in leftovers(d) if not fn.startswith("layer-w-")]
            while m.run_once():
                pass
        finally:
            m.store.close()
        ps.refresh()
        check_reads(ps, history, rnd, n=30)
        rep = verify_store(d)
        assert rep.ok and rep.leftovers == [], (rep.errors, rep.leftovers)
    finally:
        ps.close()


def test_reader_keeps_reading_its_snapshot_after_its_files_are_retired(tmp_path: Path) -> None:
    d = tmp_path / "layers"
    history, rnd = History(), random.Random(1)
    with PageStore.open(d, append_redo, CFG, background=False) as ps:
        last = ingest(ps, 0, 8 * 800)
        r = PageStore.open_readonly(d, append_redo, CFG)
        try:
            before = {la.name.filename() for la in r.store.view().layer_map.layers}
            old_retention = int(r.retention_lsn)
            ps.compact()
            ps.create_image_layers(threshold=0)
            ps.set_retention_lsn(last)
            on_disk = set(os.listdir(d))
            assert not before & on_disk, "compaction and gc retired every file of the snapshot"
            check_reads(r, history, rnd, n=40)  # still its snapshot: old LSNs too
            assert int(r.retention_lsn) == old_retention < last
            assert r.refresh()
            assert r.retention_lsn == last
            with pytest.raises(LsnOutOfRangeError):
                r.get_page(rk(1), last - 8)
            check_reads(r, history, rnd)
        finally:
            r.close()


def test_reader_retries_from_the_newer_manifest_when_a_file_is_retired_before_it_opens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant 15: the race between reading the manifest and opening its files."""
    d = tmp_path / "layers"
    with PageStore.open(d, append_redo, CFG, background=False) as ps:
        ingest(ps, 0, 8 * 400)
        real = store.open_named
        calls: list[int] = []

        def racing(directory: Path, manifest: object, have: dict, verify: bool = False) -> list:  # type: ignore[type-arg]
            if not have:  # the reader's snapshot (the writer's commits reuse its layers)
                calls.append(1)
                if len(calls) == 1:  # between the reader's manifest read and its opens
                    assert ps.compact()
            return real(directory, manifest, have, verify)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "open_named", racing)
        with PageStore.open_readonly(d, append_redo, CFG) as r:
            assert len(calls) == 2 and r.generation == ps.store.manifest.generation
            check_reads(r, History(), random.Random(2))


def test_reader_refuses_lsns_above_its_snapshots_durable_lsn_and_writes_nothing(
        tmp_path: Path) -> None:
    d = tmp_path / "layers"
    with PageStore.open(d, append_redo, CFG, background=False) as ps:
        last = ingest(ps, 0, 8 * 100)
        for name in ("LOCK", "MAINT", "COMMIT"):
            (d / name).unlink()  # the reader must not create them
        listing = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
        with PageStore.open_readonly(d, append_redo, CFG) as r:
            with pytest.raises(LsnOutOfRangeError, match="not durable"):
                r.get_page(rk(1), last + 1)
            check_reads(r, History(), random.Random(3))
            assert not r.refresh()
        assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == listing


def test_one_maintainer_at_a_time_and_a_writer_without_maintenance_refuses_it(
        tmp_path: Path) -> None:
    d = tmp_path / "layers"
    with PageStore.open(d, append_redo, CFG, background=False, maintenance=False) as ps:
        ingest(ps, 0, 8 * 100)
        with pytest.raises(StrataError, match="maintenance process"):
            ps.compact()
        m = open_maintainer(d, append_redo, CFG)
    try:
        with pytest.raises(StrataError, match="already has a maintainer"):
            open_maintainer(d, append_redo, CFG)
        # a writer that would run maintenance itself is refused too
        with pytest.raises(StrataError, match="already has a maintainer"):
            PageStore.open(d, append_redo, CFG)
    finally:
        m.store.close()
    PageStore.open(d, append_redo, CFG).close()  # and welcome once the maintainer is gone
    with pytest.raises(StrataError, match="no layer store"):
        open_maintainer(tmp_path / "nothing", append_redo, CFG)


def test_an_edit_whose_inputs_are_gone_conflicts_and_leaves_no_file(tmp_path: Path) -> None:
    """A compaction planned on a stale manifest (its L0s compacted meanwhile) is refused
    by the commit's validation against the newest manifest; its outputs are deleted."""
    d = tmp_path / "layers"
    with PageStore.open(d, append_redo, CFG, background=False, maintenance=False) as ps:
        ingest(ps, 0, 8 * 300)
        m = open_maintainer(d, append_redo, CFG)
        try:
            stale = m.store.manifest, list(m.store.view().layer_map.layers)
            assert m.store.view().layer_map.l0() and compact_l0(m.store)
            newest = load_manifest(d)
            m.store.install(*stale)  # as if this maintainer had not seen its own commit
            with pytest.raises(commit.EditConflict, match="no longer live"):
                compact_l0(m.store, force=True)
            assert load_manifest(d) == newest
            assert not [fn for fn in os.listdir(d) if fn.endswith(TMP_SUFFIX)]
        finally:
            m.store.close()
