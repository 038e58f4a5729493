"""The maintenance process: stop requests abandon the job in progress at its next
checkpoint (nothing committed, no file left), SIGTERM stops the process mid-job,
the CPU budget sleeps off CPU above its share, and a busy machine (this one's
/proc/stat, or a fake) lowers that share unless L0s pile up."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import threading
from pathlib import Path

import pytest

from strata.pagestore import PageStore
from strata.storage import maintenance
from strata.storage.config import StorageConfig
from strata.storage.maintenance import CpuBudget, Maintainer, open_maintainer
from strata.storage.manifest import load_manifest
from strata.storage.tools import verify_store

from .conftest import append_redo
from .test_crash import History
from .test_multiprocess import check_reads, fork, ingest, leftovers

CFG = StorageConfig(memtable_bytes=1500, block_bytes=400, target_file_bytes=2500,
                    l0_compaction_trigger=2, image_delta_threshold=0, cache_pages=0,
                    retention_lsn_distance=6000, maintenance_poll_seconds=0.05)


def store_with_work(d: Path) -> None:
    """L1s and images below a horizon, new L0s above it: compaction, images and gc to do."""
    with PageStore.open(d, append_redo, CFG, background=False, maintenance=False) as ps:
        last = ingest(ps, 0, 8 * 1500)
        m = open_maintainer(d, append_redo, CFG)
        while m.run_once():
            pass
        m.store.close()
        ingest(ps, last, 8 * 3000)


def count_checkpoints(d: Path, copy: Path) -> int:
    shutil.copytree(d, copy)
    m = open_maintainer(copy, append_redo, CFG)
    n = [0]
    m.store.checkpoint_hook = lambda: n.__setitem__(0, n[0] + 1)
    while m.run_once():
        pass
    m.store.close()
    return n[0]


@pytest.mark.parametrize("at", [1, 2, 5, 9, 10])  # tenths of the job's checkpoints
def test_stop_request_abandons_the_job_at_its_next_checkpoint(tmp_path: Path, at: int) -> None:
    d = tmp_path / "layers"
    store_with_work(d)
    total = count_checkpoints(d, tmp_path / "dry")
    stop_at = max(1, total * at // 10)
    m = open_maintainer(d, append_redo, CFG)
    calls = [0]
    committed_before_stop: list[int] = []

    def hook() -> None:
        calls[0] += 1
        if calls[0] == stop_at:
            committed_before_stop.append(load_manifest(d).generation)  # type: ignore[union-attr]
            m.stop()

    m.store.checkpoint_hook = hook
    t = threading.Thread(target=m.run)
    t.start()
    t.join()
    m.store.close()
    # the checkpoint that saw the stop raised at once: no work after it, no commit
    assert calls[0] == stop_at
    assert load_manifest(d).generation == committed_before_stop[0]  # type: ignore[union-attr]
    assert leftovers(d) == []
    rep = verify_store(d)
    assert rep.ok, rep.errors
    with PageStore.open_readonly(d, append_redo, CFG) as r:
        check_reads(r, History(), random.Random(at), n=20)


def test_sigterm_stops_the_maintenance_process_in_the_middle_of_a_job(tmp_path: Path) -> None:
    d = tmp_path / "layers"
    store_with_work(d)
    before = load_manifest(d)
    started_r, started_w = os.pipe()

    def child() -> None:
        real = maintenance.open_maintainer

        def hooked(*args: object, **kw: object) -> Maintainer:
            mt = real(*args, **kw)  # type: ignore[arg-type]

            def hook() -> None:  # the first checkpoint: the job has started
                if mt.store.checkpoint_hook is not None:
                    os.write(started_w, b"x")
                    mt.store.checkpoint_hook = None
                    os.kill(os.getpid(), signal.SIGTERM)
                    mt.store.stop_event.wait()  # the handler's thread sets it
            mt.store.checkpoint_hook = hook
            return mt

        maintenance.open_maintainer = hooked  # type: ignore[assignment]
        maintenance.run_maintenance(d, append_redo, CFG)

    pid = fork(child)
    try:
        assert os.read(started_r, 1) == b"x"
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert load_manifest(d) == before  # the job was abandoned before any commit
    assert leftovers(d) == []


class FakeStop:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return False


def test_cpu_budget_sleeps_off_the_cpu_above_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    now = {"wall": 100.0, "cpu": 5.0}
    monkeypatch.setattr(maintenance.time, "monotonic", lambda: now["wall"])
    monkeypatch.setattr(maintenance.time, "thread_time", lambda: now["cpu"])
    b = CpuBudget(0.25)
    stop = FakeStop()
    now["wall"] += 0.1
    now["cpu"] += 0.1  # 0.1 s of CPU in 0.1 s: owes 0.1 / 0.25 - 0.1 = 0.3 s
    b.pace(stop)  # type: ignore[arg-type]
    assert stop.waits == [pytest.approx(0.3)]
    now["wall"] += 0.3 + 0.2  # slept, then 0.2 s of wall for 0.05 s of CPU: in budget
    now["cpu"] += 0.05
    b.pace(stop)  # type: ignore[arg-type]
    assert len(stop.waits) == 1
    now["wall"] += 5.0  # idle: a fresh window, the past does not count
    now["cpu"] += 0.01
    b.pace(stop)  # type: ignore[arg-type]
    assert len(stop.waits) == 1
    unpaced = CpuBudget(1.0)
    now["cpu"] += 10
    unpaced.pace(stop)  # type: ignore[arg-type]
    assert len(stop.waits) == 1


class FakeLoad:
    def __init__(self, share: float | None) -> None:
        self.share = share

    def others_busy(self) -> float | None:
        return self.share


def test_a_busy_machine_paces_maintenance_to_its_busy_share_unless_urgent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = {"wall": 100.0, "cpu": 5.0}
    monkeypatch.setattr(maintenance.time, "monotonic", lambda: now["wall"])
    monkeypatch.setattr(maintenance.time, "thread_time", lambda: now["cpu"])
    load = FakeLoad(0.9)
    b = CpuBudget(0.5, busy_fraction=0.1, busy_share=0.5, load=load)  # type: ignore[arg-type]
    stop = FakeStop()

    def owed_after(cpu: float) -> float:  # the sleep asked after `cpu` s of CPU at once
        stop.waits.clear()
        now["wall"] += 5.0  # a fresh window
        b.pace(stop)  # type: ignore[arg-type]
        now["cpu"] += cpu
        b.pace(stop)  # type: ignore[arg-type]
        now["wall"] += sum(stop.waits)
        return sum(stop.waits)

    assert owed_after(0.1) == pytest.approx(0.1 / 0.1)  # others use 90 %: a tenth of a core
    b.urgent = True  # a backlog past its bound: the full share
    assert owed_after(0.1) == pytest.approx(0.1 / 0.5)
    b.urgent = False
    load.share = 0.3  # others under the busy share
    assert owed_after(0.1) == pytest.approx(0.1 / 0.5)
    load.share = None  # no /proc/stat: never busy
    assert owed_after(0.1) == pytest.approx(0.1 / 0.5)
    assert CpuBudget(0.5, busy_fraction=0.9).busy_fraction == 0.5  # never above the share


def test_host_load_is_the_others_share_of_every_cpu(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"wall": 10.0, "own": 1.0}
    monkeypatch.setattr(maintenance.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(maintenance.time, "process_time", lambda: clock["own"])
    stat = tmp_path / "stat"
    hz = os.sysconf("SC_CLK_TCK")

    def ticks(user: int, system: int, idle: int, iowait: int, steal: int) -> None:
        stat.write_text(f"cpu  {user} 0 {system} {idle} {iowait} 0 0 {steal} 0 0\n"
                        "cpu0 1 2 3 4 5 6 7 8 9 10\n")

    ticks(1000, 500, 4000, 100, 0)
    h = maintenance.HostLoad(interval=2.0, stat=stat)
    assert h.others_busy() is None  # nothing measured yet
    # 4 s of two CPUs: 8 s of ticks; 3 s busy (steal counts), 1 s of it this process's
    ticks(1000 + 2 * hz, 500 + hz // 2, 4000 + 4 * hz, 100 + hz, hz // 2)
    clock["wall"] += 1.0
    assert h.others_busy() is None  # sampled at most once per interval
    clock["wall"] += 3.0
    clock["own"] += 1.0
    assert h.others_busy() == pytest.approx((3 * hz - hz) / (8 * hz))
    stat.write_text("garbage\n")
    clock["wall"] += 3.0
    assert h.others_busy() == pytest.approx(0.25)  # an unreadable sample keeps the last
    assert maintenance.HostLoad(stat=tmp_path / "missing").others_busy() is None


def test_host_load_reads_this_machines_proc_stat(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real /proc/stat parses: after ticks have passed (this test burns CPU until
    the machine's tick total moves), the share is a number in [0, 1]."""
    clock = {"wall": 0.0}
    monkeypatch.setattr(maintenance.time, "monotonic", lambda: clock["wall"])
    h = maintenance.HostLoad(interval=1.0)
    first = h._sample()
    assert first is not None and first[1] > 0
    while (now := h._sample()) is not None and now[1] == first[1]:
        sum(range(10_000))
    clock["wall"] += 1.0
    share = h.others_busy()
    assert share is not None and 0.0 <= share <= 1.0


def test_a_backlog_of_l0s_makes_maintenance_urgent(tmp_path: Path) -> None:
    d = tmp_path / "layers"
    store_with_work(d)
    for backlog, urgent in ((1, True), (10_000, False)):
        cfg = dataclasses.replace(CFG, l0_backlog=backlog, maintenance_busy_cpu_fraction=0.2)
        m = open_maintainer(d, append_redo, cfg)
        try:
            assert m.budget.busy_fraction == 0.2
            m.store.checkpoint_hook = m.stop  # look, then stop at the first unit of work
            with pytest.raises(maintenance.MaintenanceStopped):
                m.run_once()
            assert m.budget.urgent is urgent
        finally:
            m.store.close()
