"""A point seconds ago while pgbench writes: SET -> first row through the proxy.

Usage: python bench/bench_recent_point.py [--scale 10] [--ago 1 5 30] [--rounds 5]
       [--json OUT]

The user's most common question is about the recent past ("what did this look
like ten seconds ago?"), asked while the database keeps being written. Such a
point lies in what ingest still holds in its memtable, so the SET has the
ingest service flush through it before a server can read it (the proxy reads
durable layers only); bench_timetravel measures quiesced points only.

A primary at pgbench scale `--scale`, `strata up --source` attached, and
`pgbench -c4 -j2` running the whole time. Each round, for each distance d of
`--ago`: a new connection through the proxy, `SET strata.travel_time` to the
wall clock minus d (a point never asked for before: cold) and the first row of
`SELECT sum(bbalance) FROM pgbench_branches`; the SET (resolve the time, flush
through its LSN, the server) and the query are timed apart. Baseline in the
same run, under the same load: the same query through the proxy without travel
(a fresh connection each time) and on the primary directly. Everything started
here is stopped here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench_proxy import StrataUp, pgbench
from strata.runtime.cluster import SUPERUSER, Cluster
from strata.runtime.pgbin import find_pg_binaries

ROOT = Path("/tmp/strata-bench")
SQL = "SELECT sum(bbalance) FROM pgbench_branches"


def first_row(dsn: str, travel: str | None) -> tuple[float, float]:
    """(seconds of the SET, seconds from the SET's end to the first row); a new
    connection each time (its connect is not counted)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.perf_counter()
        if travel is not None:
            conn.execute(f"SET strata.travel_time = '{travel}'")
        t1 = time.perf_counter()
        conn.execute(SQL).fetchone()
        return t1 - t0, time.perf_counter() - t1


def phases_in(log: Path, pattern: str) -> dict[str, list[float]]:
    """Seconds per phase from the log lines `pattern` matches (its last group the
    laps text "durable 0.31s, skeleton 0.05s, ...")."""
    out: dict[str, list[float]] = {}
    for m in re.finditer(pattern, log.read_text(), re.M):
        for part in m.group(m.lastindex or 0).split(", "):
            name, _, sec = part.rpartition(" ")
            out.setdefault(name, []).append(float(sec.rstrip("s")))
    return out


PHASE_LINES = {"SET (proxy)": r"travelled to .*: (.*)$",
               "server start (factory)": r"ready in [0-9.]+s \((.*)\)$",
               "memtable flush (ingest)": r"flushed \d+ entries .* through \S+: (.*)$"}


def measure(c: Cluster, proxy_port: int, agos: list[float], rounds: int) -> dict[str, Any]:
    proxy = f"host=127.0.0.1 port={proxy_port} dbname=postgres user={SUPERUSER}"
    res: dict[str, Any] = {"travel": {str(d): [] for d in agos}, "proxy_live": [],
                           "direct": []}
    for _ in range(rounds):
        for d in agos:
            at = (datetime.now(UTC) - timedelta(seconds=d)).isoformat()
            set_s, query_s = first_row(proxy, at)
            res["travel"][str(d)].append({"set_s": set_s, "query_s": query_s,
                                          "total_s": set_s + query_s})
            print(f"  {d:>5} s ago: SET {set_s:.3f} s, first row {query_s:.3f} s", flush=True)
            time.sleep(1.0)  # the next point is new: the clock moved on
        res["proxy_live"].append(sum(first_row(proxy, None)))
        res["direct"].append(sum(first_row(c.dsn(), None)))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--ago", type=float, nargs="+", default=[1.0, 5.0, 30.0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="recent-", dir=ROOT))
    base.chmod(0o755)
    res: dict[str, Any] = {"load_start": os.getloadavg(), "scale": args.scale}
    c = Cluster(datadir=base / "data")
    c.initdb(settings={"shared_buffers": "256MB", "max_connections": 200})
    c.start()
    load: subprocess.Popen[bytes] | None = None
    strata: StrataUp | None = None
    try:
        pgbench(c.port, ["-i", "-q", "-s", str(args.scale)])
        os.environ["STRATA_LOG_LEVEL"] = "INFO"  # the factory's phase line per server
        strata = StrataUp(base, c)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        load = subprocess.Popen(
            [str(find_pg_binaries().path("pgbench")), "-h", "127.0.0.1", "-p", str(c.port),
             "-U", "postgres", "-c", "4", "-j", "2", "-T", "3600", "postgres"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(max(args.ago) + 5)  # history reaches back far enough
        res.update(measure(c, strata.port, args.ago, args.rounds))
    finally:
        if load is not None:
            load.terminate()
            load.wait(30)
        if strata is not None:
            strata.close()
        c.stop("immediate")
        res["phases"] = {k: phases_in(base / "strata.err", rx) for k, rx in PHASE_LINES.items()}
        shutil.rmtree(base, ignore_errors=True)
    res["load_end"] = os.getloadavg()
    print(f"\nscale {args.scale}, pgbench -c4 -j2 running; median (max) of {args.rounds}")
    print("| point | SET s | SET -> first row s |")
    print("|---|---:|---:|")
    for d, runs in res["travel"].items():
        s = [r["set_s"] for r in runs]
        t = [r["total_s"] for r in runs]
        print(f"| {d} s ago | {statistics.median(s):.3f} ({max(s):.3f}) | "
              f"{statistics.median(t):.3f} ({max(t):.3f}) |")
    for name in ("proxy_live", "direct"):
        v = res[name]
        print(f"| now, {name.replace('_', ' ')} | - | {statistics.median(v):.3f} "
              f"({max(v):.3f}) |")
    for what, phases in res["phases"].items():
        if phases:
            n = len(next(iter(phases.values())))
            print(f"\n{what}, median (max) s of {n}: " + ", ".join(
                f"{k} {statistics.median(v):.2f} ({max(v):.2f})" for k, v in phases.items()))
    print(f"\nload average start {res['load_start']}, end {res['load_end']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
