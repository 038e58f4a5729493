"""`runtime.procfs`: a process's liveness and CPU time from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from strata.runtime import procfs

pytestmark = pytest.mark.unit


def test_cpu_seconds_counts_the_cpu_a_process_uses() -> None:
    before = procfs.cpu_seconds(os.getpid())
    t = time.process_time()
    while time.process_time() - t < 0.2:  # burn 0.2 s of this process's CPU
        pass
    after = procfs.cpu_seconds(os.getpid())
    assert before is not None and after is not None and after - before >= 0.15


def test_a_zombie_is_not_alive_and_a_reaped_process_has_no_cpu_time() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        assert not procfs.process_alive(p.pid)
        assert procfs.cpu_seconds(p.pid) is not None  # its entry is still there
        p.wait(30)
        assert procfs.cpu_seconds(p.pid) is None
    finally:
        p.kill()
        p.wait()
