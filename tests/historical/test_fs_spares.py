"""`FsSpares`: a spare taken is replaced later, not while the server on it starts
nor while its point's first reads run; a closed pool starts no more processes."""

from __future__ import annotations

import math
import os
import signal
import threading
from typing import Any

import pytest

from strata.historical import lazy

pytestmark = pytest.mark.unit


class FakeProc:
    def __init__(self) -> None:
        self.pid = -1
        self.stdin = self.stdout = None
        self.done = False

    def poll(self) -> int | None:
        return 0 if self.done else None

    def wait(self, timeout: float | None = None) -> int:
        self.done = True
        return 0


def _spawned(monkeypatch: pytest.MonkeyPatch) -> tuple[list[FakeProc], threading.Event]:
    made: list[FakeProc] = []
    event = threading.Event()

    def spawn(owner: Any = None, store_dir: Any = None) -> FakeProc:
        made.append(FakeProc())
        event.set()
        return made[-1]

    monkeypatch.setattr(lazy, "spawn_fs", spawn)
    monkeypatch.setattr(lazy.procfs, "cpu_seconds", lambda pid: 0.0)  # a quiet file system
    return made, event


class SimSpares(lazy.FsSpares):
    """`FsSpares` on a simulated clock: a pause moves the clock on at once, so the
    replacement's waits take no wall time and the moment it starts is exact."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.clock = 0.0
        super().__init__(*args, **kwargs)

    def _now(self) -> float:
        return self.clock

    def _pause(self, seconds: float) -> bool:
        self.clock += seconds
        return self._closing.is_set()


def _replaced_at(monkeypatch: pytest.MonkeyPatch, quiet_at: float, gone_at: float = math.inf,
                 **kw: float) -> float:
    """The simulated moment a taken spare's replacement starts, when the taken file
    system uses a whole core until `quiet_at` and nothing after, and exits at
    `gone_at`."""
    made, event = _spawned(monkeypatch)
    spares: SimSpares | None = None

    def cpu(pid: int) -> float | None:
        assert spares is not None
        return None if spares.clock >= gone_at else min(spares.clock, quiet_at)

    monkeypatch.setattr(lazy.procfs, "cpu_seconds", cpu)
    spares = SimSpares(1, **kw)
    try:
        event.clear()
        spares.take()
        assert event.wait(10) and len(made) == 2
        return spares.clock
    finally:
        spares.close()


def test_the_replacement_waits_until_the_taken_point_is_quiet(
        monkeypatch: pytest.MonkeyPatch) -> None:
    at = _replaced_at(monkeypatch, quiet_at=5.0, replenish_after=2.0, max_wait=20.0)
    assert 5.0 < at <= 5.0 + 2 * lazy.REPLENISH_CHECK  # not at 2 s, while its reads go on


def test_a_point_quiet_at_once_is_replaced_after_the_first_delay(
        monkeypatch: pytest.MonkeyPatch) -> None:
    at = _replaced_at(monkeypatch, quiet_at=0.5, replenish_after=2.0, max_wait=20.0)
    assert at == pytest.approx(2.0 + lazy.REPLENISH_CHECK)  # what a point seconds ago sees


def test_a_point_busy_past_the_longest_wait_is_replaced_anyway(
        monkeypatch: pytest.MonkeyPatch) -> None:
    at = _replaced_at(monkeypatch, quiet_at=math.inf, replenish_after=2.0, max_wait=6.0)
    assert at == pytest.approx(6.0)


def test_a_taken_file_system_that_exits_is_replaced_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    at = _replaced_at(monkeypatch, quiet_at=math.inf, gone_at=3.0, replenish_after=2.0,
                      max_wait=20.0)
    assert at == pytest.approx(3.0)


def test_a_taken_spare_is_replaced_after_a_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    made, event = _spawned(monkeypatch)
    spares = lazy.FsSpares(1, replenish_after=0.05)
    try:
        assert len(made) == 1
        event.clear()
        got = spares.take()
        assert got is made[0] and len(made) == 1  # no new process while it starts
        assert event.wait(10) and len(made) == 2  # then its replacement
        assert spares.take() is made[1]
    finally:
        spares.close()


def test_take_with_no_spare_left_starts_one_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    made, _ = _spawned(monkeypatch)
    spares = lazy.FsSpares(1, replenish_after=60)
    try:
        first, second = spares.take(), spares.take()
        assert (first, second) == (made[0], made[1])
    finally:
        spares.close()


def test_close_cancels_the_replacement(monkeypatch: pytest.MonkeyPatch) -> None:
    made, _ = _spawned(monkeypatch)
    spares = lazy.FsSpares(1, replenish_after=60)
    spares.take()
    timer = spares._replacer
    assert timer is not None and timer.is_alive()
    spares.close()
    timer.join(10)  # cancelled: it ends without running
    assert not timer.is_alive() and spares._replacer is None
    spares._replenish()  # a timer that fired anyway, racing the close
    assert len(made) == 1


def test_cleanup_kills_spares_a_killed_proxy_left_even_stopped(tmp_path: Any) -> None:
    """A spare of a proxy service the daemon had to kill never sees its stdin close
    when it is busy or stopped (CI 2026-12-05: SIGSTOPped spares outlived strata):
    `cleanup_instances` (run at start and after such a kill) ends them; a spare of
    another instances root is left alone."""
    from strata.historical.modes import cleanup_instances
    from strata.runtime.procfs import process_alive

    root, other = tmp_path / "instances", tmp_path / "other"
    root.mkdir()
    other.mkdir()
    mine, theirs = lazy.spawn_fs(owner=root), lazy.spawn_fs(owner=other)
    try:
        os.kill(mine.pid, signal.SIGSTOP)
        cleanup_instances(root)
        assert mine.wait(10) == -signal.SIGKILL
        assert process_alive(theirs.pid)
    finally:
        for p in (mine, theirs):
            p.kill()
            p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()
