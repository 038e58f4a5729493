"""How long `strata up` takes to exit on SIGTERM at a random moment of a bulk write
(issue 10: "exits within 2 s of SIGTERM at any moment, including mid-compaction").

    python bench/bench_stop.py [--trials 8] [--rows 1000000] [--max-delay 8] [--seed N]

One home, the embedded primary (as a user runs it). Per trial: `strata up`
starts (the first trial also makes the primary and imports it), a bulk
``UPDATE`` of ``--rows`` rows runs on the primary, and after a random delay in
[0, --max-delay] s (ingest, flushes, compaction and image creation are then in
flight, more of them the later the signal) `strata up` gets SIGTERM. Measured
from the signal: until the `strata up` process has exited, and until no process
of the home is left (services, lazy file systems, historical servers and the
embedded primary, which a stop also stops). Printed as a Markdown
table, with the load average. Whether anything was lost is the tests' job
(tests/e2e/test_supervision.py); here each next start must come up and ingest on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from strata.home import HomeLayout
from strata.home.files import load_daemon_state, load_proxy_state


def processes_of(home: Path) -> list[int]:
    """Processes whose command line mentions the home (services, file systems,
    PostgreSQL servers whose data directory is inside it)."""
    out = []
    needle = str(home).encode()
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if needle in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                pass
    return out


class Up:
    def __init__(self, home: Path, log: Path) -> None:
        self.home = home
        self._log = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "strata.cli.main", "up", "--home", str(home), "--port", "0",
             "--flush-interval", "2"], stdout=self._log, stderr=subprocess.STDOUT)
        layout = HomeLayout(home)
        deadline = time.monotonic() + 900
        while load_proxy_state(layout.proxy_file) is None or \
                (state := load_daemon_state(layout.daemon_file)) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"strata up did not start; see {log}")
            time.sleep(0.05)
        self.conninfo = state.primary_dsn + (f" passfile={state.passfile}"
                                             if state.passfile else "")

    def close(self) -> None:
        self._log.close()


def bulk(conninfo: str, rows: int, errors: list[BaseException]) -> None:
    try:
        with psycopg.connect(conninfo, autocommit=True) as c:
            c.execute("UPDATE bench_stop SET v = v + 1")
    except psycopg.Error as e:  # the stop ends the primary under the statement
        errors.append(e)


def trial(home: Path, log: Path, rows: int, delay: float) -> dict[str, float | str]:
    up = Up(home, log)
    try:
        with psycopg.connect(up.conninfo, autocommit=True) as c:
            c.execute("CREATE TABLE IF NOT EXISTS bench_stop (id int PRIMARY KEY, v int, "
                      "pad text)")
            if c.execute("SELECT count(*) FROM bench_stop").fetchone() == (0,):
                c.execute(f"INSERT INTO bench_stop SELECT g, 0, repeat('x', 60) "
                          f"FROM generate_series(1, {rows}) g")
        errors: list[BaseException] = []
        writer = threading.Thread(target=bulk, args=(up.conninfo, rows, errors), daemon=True)
        writer.start()
        time.sleep(delay)
        t0 = time.monotonic()
        up.proc.send_signal(signal.SIGTERM)
        rc = up.proc.wait(120)
        t_exit = time.monotonic() - t0
        while processes_of(home) and time.monotonic() - t0 < 120:
            time.sleep(0.01)
        t_all = time.monotonic() - t0
        writer.join(60)
        return {"delay": delay, "exit_s": t_exit, "all_gone_s": t_all, "rc": str(rc),
                "left": str(len(processes_of(home)))}
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait(10)
        up.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--max-delay", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    root = Path(os.environ.get("STRATA_TEST_ROOT", "/tmp/strata-tests"))
    root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bench-stop-", dir=root))
    base.chmod(0o755)
    home, log = base / "home", base / "up.log"
    rows = []
    try:
        for i in range(a.trials):
            delay = rnd.uniform(0, a.max_delay)
            r = trial(home, log, a.rows, delay)
            rows.append(r)
            print(f"  trial {i + 1}: SIGTERM {delay:.1f} s into the UPDATE: strata up exited "
                  f"in {r['exit_s']:.2f} s, everything in {r['all_gone_s']:.2f} s",
                  file=sys.stderr)
        print(f"`strata up` (embedded primary), SIGTERM at a random moment of an UPDATE of "
              f"{a.rows} rows, {a.trials} trials, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.2f}\n")
        print("| trial | signal after s | strata up exited s "
              "| every process of the home gone s | exit code | left |")
        print("|---|---|---|---|---|---|")
        for i, r in enumerate(rows, 1):
            print(f"| {i} | {r['delay']:.1f} | {r['exit_s']:.2f} "
                  f"| {r['all_gone_s']:.2f} | {r['rc']} | {r['left']} |")
        ex = [float(r["exit_s"]) for r in rows]
        al = [float(r["all_gone_s"]) for r in rows]
        print(f"\nexit: median {statistics.median(ex):.2f} s, max {max(ex):.2f} s; "
              f"everything gone: median {statistics.median(al):.2f} s, max {max(al):.2f} s")
    finally:
        for pid in processes_of(home):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
