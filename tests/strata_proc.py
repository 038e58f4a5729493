"""`strata up` as a user runs it: a subprocess on a scratch home, for tests.

What it is: `StrataUp`, which starts ``python -m strata.cli.main up`` with the
given options, collects its stdout in a thread, and answers what tests need:
the proxy DSN it prints, the ingest position it publishes in
``<home>/status.json``, and a clean SIGTERM stop. `processes_under` lists
every process whose command line names a directory (a leftover postgres
under the home is a bug).
Fed by: the tests that start it. Feeds: them. Owns: the subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from strata.lsn import Lsn
from strata.services.control import ControlClient, ControlError


class StrataUp:
    """A running ``strata up`` (stdout lines kept in `lines`)."""

    def __init__(self, home: Path, *args: str, progress_interval: float = 0.5) -> None:
        if "--port" not in args:
            args = (*args, "--port", "0")  # the proxy on any free port
        mode = os.environ.get("STRATA_TEST_HISTORICAL")  # CI runs e2e in both modes
        if mode and "--historical" not in args:
            args = (*args, "--historical", mode)
        self.home = home
        self.lines: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "strata.cli.main", "up", "--home", str(home),
             "--progress-interval", str(progress_interval), "--status-interval", "1", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._err: list[str] = []
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()
        # stderr is drained too: a full pipe would block the daemon's logging
        self._te = threading.Thread(target=self._pump_err, daemon=True)
        self._te.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line.rstrip("\n"))

    def _drain(self) -> None:
        while not self._q.empty():
            self.lines.append(self._q.get())

    def stderr_text(self) -> str:
        return "\n".join(self._err)

    def output(self) -> str:
        self._drain()
        return ("stdout:\n" + "\n".join(self.lines[-40:]) + "\nstderr:\n"
                + "\n".join(self._err[-40:]))

    def wait_for(self, pattern: str, timeout: float = 120, nth: int = 1) -> re.Match[str]:
        """The `nth` stdout line matching `pattern` (already seen or to come)."""
        rx = re.compile(pattern)
        for line in self.lines:
            if (m := rx.search(line)) is not None:
                nth -= 1
                if nth == 0:
                    return m
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self._q.empty():
                    break
                continue
            self.lines.append(line)
            if (m := rx.search(line)) is not None:
                nth -= 1
                if nth == 0:
                    return m
        raise AssertionError(f"strata up printed no line matching {pattern!r} "
                             f"(exit code {self.proc.poll()}).\n{self.output()}")

    def proxy_dsn(self, timeout: float = 180) -> str:
        return self.wait_for(r"time travel proxy: (.*)$", timeout).group(1).strip()

    def primary_dsn(self, timeout: float = 120) -> str:
        """The embedded primary's conninfo, as `strata up` announces it."""
        return self.wait_for(r"PostgreSQL 18 primary: (.*)$", timeout).group(1)

    def status(self) -> dict[str, object] | None:
        try:
            d: dict[str, object] = json.loads((self.home / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return d

    def ingested(self) -> Lsn | None:
        """The ingest service's position, asked over its control socket (None while
        it does not answer)."""
        try:
            st = ControlClient(self.home / "run" / "ingest.sock").request("status", timeout=5)
        except ControlError:
            return None
        return Lsn.parse(st["ingested_lsn"])

    def wait_ingested(self, lsn: Lsn, timeout: float = 120) -> Lsn:
        """Wait until ingest is at or past `lsn`; returns that position."""
        deadline = time.monotonic() + timeout
        seen: Lsn | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"strata up exited ({self.proc.returncode}) while "
                                     f"waiting for ingest of {lsn}.\n{self.output()}")
            seen = self.ingested()
            if seen is not None and seen >= lsn:
                return seen
            time.sleep(0.05)
        raise AssertionError(f"strata did not ingest up to {lsn} within {timeout:.0f} s "
                             f"(ingest at {seen}).\n{self.output()}")

    def terminate(self, timeout: float = 90, sig: int = signal.SIGTERM) -> int:
        """Send `sig` (SIGTERM; SIGINT is Ctrl-C), wait for the exit; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._t.join(5)
        self._te.join(5)
        self._drain()
        return rc

    def crash(self) -> None:
        """kill -9 of strata itself: the supervisor and every service process at
        once (the primary, a server of its own, keeps running)."""
        pids = [int(line.split(":")[0]) for line in processes_under(self.home)
                if "strata.services." in line or "strata.cli.main" in line]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def processes_under(path: Path) -> list[str]:
    """'pid: command line' of every process whose command line mentions `path`."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd:
            found.append(f"{d.name}: {cmd.strip()}")
    return found


def reap_under(path: Path) -> list[str]:
    """A test's last resort: unmount every lazy file system under `path` and SIGKILL
    every process whose command line still mentions it (a failed crash test leaves
    the FS processes of its historical servers: by design they outlive a kill -9 of
    strata, and the next `strata up` is what cleans them). Returns what was killed."""
    from strata.historical.lazy import cleanup_mounts

    with contextlib.suppress(OSError):
        cleanup_mounts(path)
    left = [p for p in processes_under(path) if int(p.split(":", 1)[0]) != os.getpid()]
    for p in left:
        with contextlib.suppress(OSError):
            os.kill(int(p.split(":", 1)[0]), signal.SIGKILL)
    return left


def flush_lsn(conn: psycopg.Connection[Any]) -> Lsn:
    """The primary's WAL flush position (everything written so far)."""
    row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
    assert row is not None
    return Lsn.parse(row[0])
