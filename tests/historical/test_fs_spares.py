"""`FsSpares`: a spare taken is replaced later, not while the server on it starts
nor while its point's first reads run; a closed pool starts no more processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
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
    monkeypatch.setattr(lazy, "cpu_seconds", lambda pid: 0.0)  # a quiet file system
    return made, event


class BusyFs:
    """The taken file system's CPU clock: busy (a core's worth) until `quiet()`."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.quiet_at: float | None = None

    def __call__(self, pid: int) -> float:
        now = time.monotonic()
        return (now if self.quiet_at is None else self.quiet_at) - self.t0

    def quiet(self) -> None:
        self.quiet_at = time.monotonic()


def test_the_replacement_waits_until_the_taken_point_is_quiet(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made, event = _spawned(monkeypatch)
    busy = BusyFs()
    monkeypatch.setattr(lazy, "cpu_seconds", busy)
    spares = lazy.FsSpares(1, replenish_after=0.05, max_wait=60)
    try:
        event.clear()
        spares.take()
        assert not event.wait(1.0) and len(made) == 1  # its reads go on: no spare yet
        busy.quiet()
        assert event.wait(10) and len(made) == 2
    finally:
        spares.close()


def test_a_point_busy_past_the_longest_wait_is_replaced_anyway(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made, event = _spawned(monkeypatch)
    monkeypatch.setattr(lazy, "cpu_seconds", BusyFs())
    spares = lazy.FsSpares(1, replenish_after=0.05, max_wait=0.6)
    try:
        event.clear()
        t = time.monotonic()
        spares.take()
        assert event.wait(10) and len(made) == 2
        assert time.monotonic() - t >= 0.5
    finally:
        spares.close()


def test_cpu_seconds_counts_a_process_while_it_runs_and_none_once_gone() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        p.wait(30)
        assert lazy.cpu_seconds(p.pid) is None  # reaped: gone
        me = lazy.cpu_seconds(os.getpid())
        t = time.process_time()
        while time.process_time() - t < 0.2:
            pass
        after = lazy.cpu_seconds(os.getpid())
        assert me is not None and after is not None and after - me >= 0.15
    finally:
        p.kill()
        p.wait()


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
    from strata.historical.instance import process_alive
    from strata.historical.modes import cleanup_instances

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
