"""Proxy overhead: pgbench through the strata proxy versus directly, same run, same primary.

Usage: python bench/bench_proxy.py [--seconds 10] [--clients 1,4,8] [--threads 2]
       [--scale 10] [--workloads select-only,tpcb-like] [--modes simple]
       [--rounds 3] [--loop auto|uvloop|asyncio] [--profile out.prof]
       [--strata [--busy]] [--socat] [--tcp]

Starts a scratch PostgreSQL 18 cluster, initialises pgbench at the given
scale, then for each built-in workload (``select-only`` is ``pgbench -S``,
``tpcb-like`` is TPC-B), query mode and client count runs pgbench directly
and through the proxy (a `ProxyThread` in this process, with a history
provider that refuses time travel: only relaying is measured), alternating
direct and proxied runs for `--rounds` rounds (the machine is shared:
alternation spreads the noise over both), and prints a Markdown table of
medians with the ratio proxy/direct. The proxy's CPU time is this process's
CPU time during the proxied runs (the main thread only waits), per
transaction. `--loop` picks the proxy's event loop (auto: uvloop when
installed). With --profile the proxy's event-loop thread runs under cProfile
(Python callbacks only: uvloop's own work is C).

With ``--strata`` the proxy is the real one: ``strata up --source`` attached
to the same primary (ingest, maintenance and proxy services in their own
processes), and the proxy's CPU is its service process's. ``--busy`` (implies
``--strata``) runs a bulk ``UPDATE`` of ``--bulk-rows`` rows on a separate
table right before every run, direct and proxied alike, so both run while
strata ingests the backlog and compacts it; the CPU strata's processes used
during each run is reported beside it.

``--socat`` adds a third run per round through ``socat`` (a C relay, a process
per connection: what any user-space relay costs on this machine's kernel, the
ceiling of a proxy that must see the bytes).

Clients always reach the primary, the proxy and socat over loopback TCP; the
proxy and socat reach the primary over its unix socket, as `strata up` does for
its embedded primary (``--strata`` attaches with a socket DSN), or with ``--tcp``
over loopback TCP too.

Goals (DESIGN.md, issue 10): select-only >= 0.80 and tpcb-like >= 0.90 of
direct TPS, idle and busy.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench_ingest import proc_cpu, strata_processes
from strata.errors import LsnOutOfRangeError
from strata.lsn import Lsn
from strata.proxy.history import Progress, ResolvedPoint
from strata.proxy.server import ProxyConfig, ProxyThread
from strata.runtime.cluster import Cluster
from strata.runtime.pgbin import find_pg_binaries


class NoHistory:
    """A provider for relaying-only benchmarks."""

    def resolve_time(self, when: datetime, *, literal: str, timezone: str, wait: float,
                     progress: Progress | None = None) -> ResolvedPoint:
        raise LsnOutOfRangeError("no history in this benchmark")

    def resolve_lsn(self, lsn: Lsn, *, wait: float,
                    progress: Progress | None = None) -> ResolvedPoint:
        raise LsnOutOfRangeError("no history in this benchmark")

    def server_for(self, point: ResolvedPoint, dbname: str) -> tuple[str, int]:
        raise LsnOutOfRangeError("no history in this benchmark")

    def may_time_travel(self, user: str) -> bool:
        return False

    def commit_of_xid(self, xid: int) -> ResolvedPoint | None:
        return None


def pgbench(port: int, args: list[str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    cp = subprocess.run([str(find_pg_binaries().path("pgbench")), "-h", "127.0.0.1", "-p",
                         str(port), "-U", "postgres", *args, "postgres"],
                        capture_output=True, text=True, env=env, check=True)
    return cp.stdout


def tps_and_latency(out: str) -> tuple[float, float]:
    tps = re.search(r"tps = ([\d.]+)", out)
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    if tps is None or lat is None:
        raise RuntimeError(f"cannot read pgbench output:\n{out}")
    return float(tps.group(1)), float(lat.group(1))


@dataclass
class Row:
    workload: str
    mode: str
    clients: int
    direct_tps: float
    proxy_tps: float
    direct_ms: float
    proxy_ms: float
    cpu_us: float  # proxy CPU per proxied transaction
    user_share: float
    busy_cpu: tuple[float, float] = (0.0, 0.0)  # strata CPU-s during (direct, proxied) runs
    socat_tps: float = 0.0  # through socat (a C relay), when measured


class StrataUp:
    """`strata up --source` on the benchmark's primary: the proxy under test is its
    proxy service, in its own process."""

    def __init__(self, base: Path, cluster: Cluster, *, socket: bool = False) -> None:
        self.base = base
        self.home = base / "home"
        self._err = (base / "strata.err").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "strata.cli.main", "up", "--home", str(self.home),
             "--port", "0", "--source", cluster.dsn(socket=socket)],
            stdout=subprocess.DEVNULL, stderr=self._err)
        from strata.home import HomeLayout
        from strata.home.files import load_proxy_state

        deadline = time.monotonic() + 900
        while (state := load_proxy_state(HomeLayout(self.home).proxy_file)) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("strata up did not start its proxy:\n"
                                   + (base / "strata.err").read_text()[-3000:])
            time.sleep(0.1)
        self.port, self.proxy_pid = state.port, state.pid

    def cpu(self) -> float:
        """CPU seconds used so far by strata's processes (not PostgreSQL's)."""
        return sum(info[1] for p in strata_processes(self.proc.pid)
                   if (info := proc_cpu(p)) is not None)

    def proxy_cpu(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the proxy service process."""
        fields = Path(f"/proc/{self.proxy_pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._err.close()


def self_cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of this process (the in-process proxy's)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def measure(cluster: Cluster, proxy_port: int, workload: str, mode: str, clients: int,
            a: argparse.Namespace, proxy_cpu: Callable[[], tuple[float, float]],
            before_run: Callable[[], None], strata_cpu: Callable[[], float],
            socat_port: int | None = None) -> Row:
    run = ["-b", workload, "-c", str(clients), "-j", str(min(a.threads, clients)),
           "-T", str(a.seconds), "-M", mode]
    d_tps, d_lat, p_tps, p_lat, p_cpu, p_user, d_busy, p_busy = [], [], [], [], [], [], [], []
    s_tps: list[float] = []
    for _ in range(a.rounds):
        before_run()
        s0 = strata_cpu()
        dt, dl = tps_and_latency(pgbench(cluster.port, run))
        d_busy.append(strata_cpu() - s0)
        before_run()
        s0 = strata_cpu()
        before = proxy_cpu()
        pt, pl = tps_and_latency(pgbench(proxy_port, run))
        after = proxy_cpu()
        p_busy.append(strata_cpu() - s0)
        user = after[0] - before[0]
        cpu = user + (after[1] - before[1])
        d_tps.append(dt)
        d_lat.append(dl)
        p_tps.append(pt)
        p_lat.append(pl)
        p_cpu.append(cpu * 1e6 / (pt * a.seconds))
        p_user.append(user / cpu if cpu else 0.0)
        if socat_port is not None:
            before_run()
            s_tps.append(tps_and_latency(pgbench(socat_port, run))[0])
        print(f"  {workload} {mode} -c {clients}: direct {dt:.0f} tps, proxy {pt:.0f} tps"
              + (f", socat {s_tps[-1]:.0f} tps" if s_tps else ""), file=sys.stderr)
    med = statistics.median
    return Row(workload, mode, clients, med(d_tps), med(p_tps), med(d_lat), med(p_lat),
               med(p_cpu), med(p_user), (med(d_busy), med(p_busy)),
               med(s_tps) if s_tps else 0.0)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_socat(server_port: int, socket_dir: Path | None = None
                ) -> tuple[subprocess.Popen[bytes], int]:
    """socat relaying 127.0.0.1:<new port> to the server (over TCP, or its unix socket
    in `socket_dir`), once it listens."""
    import socket

    port = free_port()
    server = (f"TCP:127.0.0.1:{server_port},nodelay" if socket_dir is None
              else f"UNIX-CONNECT:{socket_dir}/.s.PGSQL.{server_port}")
    proc = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,nodelay",
                             server])
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.01)
    proc.kill()
    raise RuntimeError("socat did not listen")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--workloads", default="select-only,tpcb-like")
    ap.add_argument("--modes", default="simple")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loop", default="auto", choices=("auto", "uvloop", "asyncio"))
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--strata", action="store_true", help="the proxy of a real `strata up`")
    ap.add_argument("--busy", action="store_true",
                    help="a bulk UPDATE before every run (strata ingests and compacts meanwhile)")
    ap.add_argument("--bulk-rows", type=int, default=300_000)
    ap.add_argument("--socat", action="store_true", help="also relay through socat (C) per round")
    ap.add_argument("--tcp", action="store_true",
                    help="the proxy (and socat) reach the primary over loopback TCP, not its unix "
                         "socket (what `strata up` does for its embedded primary)")
    a = ap.parse_args()
    a.strata = a.strata or a.busy

    root = Path(os.environ.get("STRATA_TEST_ROOT", "/tmp/strata-tests"))
    root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bench-proxy-", dir=root))
    base.chmod(0o755)
    cluster = Cluster(datadir=base / "data")
    prof = cProfile.Profile() if a.profile and not a.strata else None
    rows: list[Row] = []
    strata: StrataUp | None = None
    socat: subprocess.Popen[bytes] | None = None
    try:
        cluster.initdb(settings={"shared_buffers": "256MB", "max_connections": 200,
                                 "max_wal_size": "4GB"})
        cluster.start()
        pgbench(cluster.port, ["-i", "-q", "-s", str(a.scale)])

        def bulk() -> None:
            cluster.sql("UPDATE bench_bulk SET v = v + 1")

        before_run: Callable[[], None] = lambda: None  # noqa: E731
        if a.busy:
            cluster.sql("CREATE TABLE bench_bulk (id int PRIMARY KEY, v int, pad text)")
            cluster.sql(f"INSERT INTO bench_bulk SELECT g, 0, repeat('x', 60) "
                        f"FROM generate_series(1, {a.bulk_rows}) g")
            before_run = bulk
        socat_port = None
        if a.socat:
            socat, socat_port = start_socat(cluster.port, None if a.tcp else cluster.socket_dir)
        if a.strata:
            strata = StrataUp(base, cluster, socket=not a.tcp)
            loop = "strata up's proxy service"
            for workload in a.workloads.split(","):
                for mode in a.modes.split(","):
                    for clients in (int(c) for c in a.clients.split(",")):
                        rows.append(measure(cluster, strata.port, workload, mode, clients, a,
                                            strata.proxy_cpu, before_run, strata.cpu,
                                            socat_port))
        else:
            host = "127.0.0.1" if a.tcp else str(cluster.socket_dir)
            config = ProxyConfig(host, cluster.port, event_loop=a.loop)
            with ProxyThread(config, NoHistory()) as proxy:
                assert proxy.loop is not None
                if prof is not None:
                    proxy.loop.call_soon_threadsafe(prof.enable)
                for workload in a.workloads.split(","):
                    for mode in a.modes.split(","):
                        for clients in (int(c) for c in a.clients.split(",")):
                            rows.append(measure(cluster, proxy.port, workload, mode, clients,
                                                a, self_cpu, before_run, lambda: 0.0,
                                                socat_port))
                if prof is not None:
                    proxy.loop.call_soon_threadsafe(prof.disable)
            loop = type(proxy.loop).__module__.split(".")[0]
        busy = f", a bulk UPDATE of {a.bulk_rows} rows before every run" if a.busy else ""
        print(f"pgbench -b <workload> -M <mode> -c <clients> -j <=min({a.threads}, clients) "
              f"-T {a.seconds} (scale {a.scale}), {os.cpu_count()} CPUs, proxy: {loop}{busy}, "
              f"median of {a.rounds} alternating rounds, load average "
              f"{os.getloadavg()[0]:.2f}\n")
        print("| workload | mode | clients | direct tps | proxy tps | proxy/direct "
              "| direct latency ms | proxy latency ms | proxy CPU us/txn | of which user "
              "| strata CPU-s direct / proxied | socat/direct |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r.workload} | {r.mode} | {r.clients} | {r.direct_tps:.0f} "
                  f"| {r.proxy_tps:.0f} | {r.proxy_tps / r.direct_tps:.2f} | {r.direct_ms:.3f} "
                  f"| {r.proxy_ms:.3f} | {r.cpu_us:.0f} | {r.user_share:.0%} "
                  f"| {r.busy_cpu[0]:.1f} / {r.busy_cpu[1]:.1f} "
                  f"| {r.socat_tps / r.direct_tps:.2f} |")
        if prof is not None:
            prof.dump_stats(str(a.profile))
            print(f"\nprofile of the proxy thread written to {a.profile}")
    finally:
        if strata is not None:
            strata.close()
        if socat is not None:
            socat.terminate()
            socat.wait(10)
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
