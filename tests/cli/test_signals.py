"""`strata up 2>&1 | tee up.log`, then Ctrl-C: tee dies with strata, so strata's
stdout and stderr become a closed pipe while it shuts down. Every stop signal
(SIGINT, SIGTERM, SIGHUP) must still stop the embedded primary and every
process strata started, and leave nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from strata.runtime.cluster import Cluster
from tests.strata_proc import processes_under


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=lambda s: signal.Signals(s).name)
def test_stop_signal_with_a_closed_output_pipe_stops_everything(scratch_dir: Path,
                                                                 sig: int) -> None:
    home = scratch_dir / f"home-{signal.Signals(sig).name}"
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "strata.cli.main", "up", "--home", str(home), "--port", "0",
         "--progress-interval", "0.5"],
        stdout=write_fd, stderr=write_fd, stdin=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        seen = b""
        with os.fdopen(read_fd, "rb", buffering=0) as out:
            while b"streaming WAL from slot" not in seen:
                chunk = out.read(4096)
                assert chunk, f"strata up ended before it was ready:\n{seen.decode()}"
                seen += chunk
            # the reader (tee) goes away: stdout and stderr are now a broken pipe
        assert Cluster(datadir=home / "primary" / "data").is_running()
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 0
        # checked before any cleanup of ours: strata itself stopped them
        assert not Cluster(datadir=home / "primary" / "data").is_running()
        assert processes_under(home) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        Cluster(datadir=home / "primary" / "data").stop("immediate")
