"""Proxy overhead: `pgbench -S` through the strata proxy versus directly, same run.

Usage: python bench/bench_proxy.py [--seconds 10] [--clients 4] [--threads 2]
       [--scale 1] [--modes simple,prepared] [--rounds 3] [--profile out.prof]

Starts a scratch PostgreSQL 18 cluster, initialises pgbench at the given
scale, then for each query mode runs pgbench directly and through the proxy
(a `ProxyThread` in this process, with a history provider that refuses time
travel: only relaying is measured), alternating direct and proxied runs for
`--rounds` rounds (the machine is shared: alternation spreads the noise over
both), and prints a Markdown table of medians. The proxy's CPU time is this
process's CPU time during the proxied runs (the main thread only waits).
With --profile the proxy's event-loop thread runs under cProfile.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--modes", default="simple,prepared")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", type=Path)
    a = ap.parse_args()

    root = Path(os.environ.get("STRATA_TEST_ROOT", "/tmp/strata-tests"))
    root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="bench-proxy-", dir=root))
    base.chmod(0o755)
    cluster = Cluster(datadir=base / "data")
    prof = cProfile.Profile() if a.profile else None
    try:
        cluster.initdb(settings={"shared_buffers": "128MB"})
        cluster.start()
        pgbench(cluster.port, ["-i", "-q", "-s", str(a.scale)])
        proxy = ProxyThread(ProxyConfig("127.0.0.1", cluster.port), NoHistory())
        with proxy:
            if prof is not None:
                proxy.loop.call_soon_threadsafe(prof.enable)
            run = ["-S", "-c", str(a.clients), "-j", str(a.threads), "-T", str(a.seconds)]
            rows = []
            for mode in a.modes.split(","):
                d_tps, d_lat, p_tps, p_lat, p_cpu, p_user = [], [], [], [], [], []
                for _ in range(a.rounds):
                    dt, dl = tps_and_latency(pgbench(cluster.port, [*run, "-M", mode]))
                    before = resource.getrusage(resource.RUSAGE_SELF)
                    pt, pl = tps_and_latency(pgbench(proxy.port, [*run, "-M", mode]))
                    after = resource.getrusage(resource.RUSAGE_SELF)
                    # this process only waits on pgbench: its CPU time is the proxy's
                    user = after.ru_utime - before.ru_utime
                    cpu = user + (after.ru_stime - before.ru_stime)
                    d_tps.append(dt)
                    d_lat.append(dl)
                    p_tps.append(pt)
                    p_lat.append(pl)
                    p_cpu.append(cpu / a.seconds)
                    p_user.append(user / cpu if cpu else 0.0)
                    print(f"  {mode}: direct {dt:.0f} tps, proxy {pt:.0f} tps", file=sys.stderr)
                med = statistics.median
                rows.append((mode, (med(d_tps), med(d_lat)), (med(p_tps), med(p_lat)),
                             med(p_cpu), med(p_user)))
            if prof is not None:
                proxy.loop.call_soon_threadsafe(prof.disable)
        cmd = (f"pgbench -S -c {a.clients} -j {a.threads} -T {a.seconds} -M <mode> "
               f"(scale {a.scale}), {os.cpu_count()} CPUs, median of {a.rounds} alternating rounds")
        print(f"{cmd}\n")
        print("| mode | direct tps | proxy tps | proxy/direct | direct latency ms "
              "| proxy latency ms | proxy CPU (cores) | proxy CPU us/txn | of which user |")
        print("|---|---|---|---|---|---|---|---|---|")
        for mode, (dt, dl), (pt, pl), cores, user_share in rows:
            print(f"| {mode} | {dt:.0f} | {pt:.0f} | {pt / dt:.2f} | {dl:.3f} | {pl:.3f} "
                  f"| {cores:.2f} | {cores * 1e6 / pt:.0f} | {user_share:.0%} |")
        if prof is not None:
            prof.dump_stats(str(a.profile))
            print(f"\nprofile of the proxy thread written to {a.profile}")
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
