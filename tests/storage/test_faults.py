"""Power cuts, not kills: the store runs on the fault-injecting file system
(faultfs.py), which loses every write and directory entry not fsynced when the
power goes. A deterministic history of flushes, compactions, image creations and
gc runs once per cut point; after each cut the store reopens at its last
committed manifest: durable_lsn at least what the last completed flush returned,
every layer verifying, nothing left over, every read equal to the model.

The same sweep with one fsync removed through a hook (not by editing code) must
find a cut point that breaks the store: that is what shows this test can see a
missing fsync, which kill -9 (the OS keeps its page cache) never could."""

from __future__ import annotations

import gc as pygc
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from strata import durable
from strata.errors import StrataError
from strata.key import KeyRange
from strata.pagestore import PageStore
from strata.storage.config import StorageConfig
from strata.storage.tools import verify_store

from .conftest import append_redo, rk
from .faultfs import FaultFS, PowerCut
from .test_crash import KEYS, History, entry_at
from .test_multiprocess import leftovers

CFG = StorageConfig(memtable_bytes=1 << 20, block_bytes=300, target_file_bytes=1500,
                    l0_compaction_trigger=2, image_delta_threshold=0, cache_pages=0,
                    background_maintenance=False)
ROUNDS = 8


def workload(ps: PageStore, ffs: FaultFS, acked: list[int]) -> None:
    """Flushes, compactions, image layers and gc, in a fixed order."""
    lsn = int(ps.durable_lsn)
    for r in range(ROUNDS):
        ffs.phase = "flush"
        for _ in range(30):
            lsn += 8
            k, v = entry_at(lsn)
            ps.put(rk(k), lsn, v)
        ps.advance(lsn)
        acked.append(int(ps.flush()))  # returned: durable from here on
        if r % 2 == 1:
            ffs.phase = "compact"
            ps.compact()
        if r % 3 == 2:
            ffs.phase = "image"
            ps.create_image_layers(threshold=0)
        if r % 4 == 3:
            ffs.phase = "gc"
            ps.set_retention_lsn(lsn - 400)


def run_until_cut(d: Path, ffs: FaultFS) -> list[int]:
    """The workload on `ffs` until its power cut (or the end); returns the durable
    LSNs flush acknowledged."""
    acked: list[int] = []
    d.mkdir(parents=True, exist_ok=True)
    ffs.track(d)
    with durable.using(ffs):
        ffs.phase = "open"
        try:
            ps = PageStore.open(d, append_redo, CFG, background=False)
        except PowerCut:
            return acked
        try:
            workload(ps, ffs, acked)
        except PowerCut:
            pass
        finally:
            ps.close()
    pygc.collect()  # no file object of the dead run may write after the restore
    ffs.restore()
    return acked


def check_recovered(d: Path, acked: list[int], history: History, rnd: random.Random) -> None:
    """Raises AssertionError / CorruptionError if the store did not come back whole."""
    with PageStore.open(d, append_redo, CFG, background=False) as ps:
        durable_lsn, retention = int(ps.durable_lsn), int(ps.retention_lsn)
        assert durable_lsn >= (acked[-1] if acked else 0), "a completed flush was lost"
        assert leftovers(d) == []
        rep = verify_store(d)
        assert rep.ok, rep.errors
        if durable_lsn:
            m = history.at(durable_lsn)
            for lsn in sorted({retention, durable_lsn, *(rnd.randint(retention, durable_lsn)
                                                         for _ in range(4))}):
                for k in range(KEYS):
                    assert ps.get_page(rk(k), lsn) == m.get(rk(k), lsn), (k, lsn)
                assert list(ps.scan(KeyRange.everything(), lsn)) == m.scan(lsn)


def sweep(root: Path, points: list[int], skip_fsync: Callable[[Path], bool] = lambda p: False
          ) -> tuple[dict[str, int], list[str]]:
    """Cut at each of `points`; returns cuts per phase and the failures found."""
    history = History()
    phases: dict[str, int] = {}
    failures: list[str] = []
    for n in points:
        ffs = FaultFS(cut_at=n, skip_fsync=skip_fsync)
        d = root / f"cut{n}"
        acked = run_until_cut(d, ffs)
        phase = ffs.cut_phase or "none"
        phases[phase] = phases.get(phase, 0) + 1
        try:
            check_recovered(d, acked, history, random.Random(n))
        except (AssertionError, StrataError) as e:
            failures.append(f"cut at operation {n} ({phase}): {type(e).__name__}: {e}")
    return phases, failures


def total_operations(root: Path) -> int:
    ffs = FaultFS()
    run_until_cut(root / "full", ffs)
    assert {p for _, _, p in ffs.log} >= {"flush", "compact", "image", "gc"}
    return ffs.ops


def test_power_cut_at_sampled_points_of_flush_compaction_images_gc_recovers(
        tmp_path: Path) -> None:
    total = total_operations(tmp_path)
    points = sorted(set(range(0, total, max(1, total // 60))) | {total - 1})
    phases, failures = sweep(tmp_path, points)
    assert not failures, "\n".join(failures[:5])
    assert {"flush", "compact", "image", "gc"} <= set(phases), phases


@pytest.mark.slow
def test_power_cut_at_every_operation_recovers(tmp_path: Path) -> None:
    total = total_operations(tmp_path)
    _, failures = sweep(tmp_path, list(range(total)))
    assert not failures, "\n".join(failures[:5])


@pytest.mark.parametrize("missing", ["MANIFEST.tmp", "layer file"])
def test_a_removed_fsync_is_caught(tmp_path: Path, missing: str) -> None:
    """One fsync removed through the hook: some cut point then loses committed data
    or leaves a manifest naming a file without its bytes, and the check sees it."""
    def skip(p: Path) -> bool:
        return p.name == "MANIFEST.tmp" if missing == "MANIFEST.tmp" \
            else p.name.startswith("layer-")

    total = total_operations(tmp_path)
    points = sorted(set(range(0, total, max(1, total // 60))) | {total - 1})
    _, failures = sweep(tmp_path, points, skip)
    assert failures, f"no cut point noticed the missing fsync of the {missing}"
