"""Proxy overhead: pgbench through the strata proxy versus directly, same run, same primary.

Usage: python bench/bench_proxy.py [--seconds 10] [--clients 1,4,8] [--threads 2]
       [--scale 10] [--workloads select-only,tpcb-like] [--modes simple]
       [--rounds 3] [--loop auto|uvloop|asyncio] [--profile out.prof]

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

Goals (DESIGN.md, issue 10): select-only >= 0.80 and tpcb-like >= 0.90 of
direct TPS.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

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


def measure(cluster: Cluster, proxy: ProxyThread, workload: str, mode: str, clients: int,
            a: argparse.Namespace) -> Row:
    run = ["-b", workload, "-c", str(clients), "-j", str(min(a.threads, clients)),
           "-T", str(a.seconds), "-M", mode]
    d_tps, d_lat, p_tps, p_lat, p_cpu, p_user = [], [], [], [], [], []
    for _ in range(a.rounds):
        dt, dl = tps_and_latency(pgbench(cluster.port, run))
        before = resource.getrusage(resource.RUSAGE_SELF)
        pt, pl = tps_and_latency(pgbench(proxy.port, run))
        after = resource.getrusage(resource.RUSAGE_SELF)
        # this process only waits on pgbench: its CPU time is the proxy's
        user = after.ru_utime - before.ru_utime
        cpu = user + (after.ru_stime - before.ru_stime)
        d_tps.append(dt)
        d_lat.append(dl)
        p_tps.append(pt)
        p_lat.append(pl)
        p_cpu.append(cpu * 1e6 / (pt * a.seconds))
        p_user.append(user / cpu if cpu else 0.0)
        print(f"  {workload} {mode} -c {clients}: direct {dt:.0f} tps, proxy {pt:.0f} tps",
              file=sys.stderr)
    med = statistics.median
    return Row(workload, mode, clients, med(d_tps), med(p_tps), med(d_lat), med(p_lat),
               med(p_cpu), med(p_user))


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
    a = ap.parse_args()

    root = Path(os.environ.get("STRATA_TEST_ROOT", "/tmp/strata-tests"))
    root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bench-proxy-", dir=root))
    base.chmod(0o755)
    cluster = Cluster(datadir=base / "data")
    prof = cProfile.Profile() if a.profile else None
    rows: list[Row] = []
    try:
        cluster.initdb(settings={"shared_buffers": "256MB", "max_connections": 200})
        cluster.start()
        pgbench(cluster.port, ["-i", "-q", "-s", str(a.scale)])
        config = ProxyConfig("127.0.0.1", cluster.port, event_loop=a.loop)
        with ProxyThread(config, NoHistory()) as proxy:
            assert proxy.loop is not None
            if prof is not None:
                proxy.loop.call_soon_threadsafe(prof.enable)
            for workload in a.workloads.split(","):
                for mode in a.modes.split(","):
                    for clients in (int(c) for c in a.clients.split(",")):
                        rows.append(measure(cluster, proxy, workload, mode, clients, a))
            if prof is not None:
                proxy.loop.call_soon_threadsafe(prof.disable)
        loop = type(proxy.loop).__module__.split(".")[0]
        print(f"pgbench -b <workload> -M <mode> -c <clients> -j <=min({a.threads}, clients) "
              f"-T {a.seconds} (scale {a.scale}), {os.cpu_count()} CPUs, proxy event loop "
              f"{loop}, median of {a.rounds} alternating rounds\n")
        print("| workload | mode | clients | direct tps | proxy tps | proxy/direct "
              "| direct latency ms | proxy latency ms | proxy CPU us/txn | of which user |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r.workload} | {r.mode} | {r.clients} | {r.direct_tps:.0f} "
                  f"| {r.proxy_tps:.0f} | {r.proxy_tps / r.direct_tps:.2f} | {r.direct_ms:.3f} "
                  f"| {r.proxy_ms:.3f} | {r.cpu_us:.0f} | {r.user_share:.0%} |")
        if prof is not None:
            prof.dump_stats(str(a.profile))
            print(f"\nprofile of the proxy thread written to {a.profile}")
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
