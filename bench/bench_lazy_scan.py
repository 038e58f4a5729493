"""A cold full scan in the past through a lazy server: readahead helpers on and off.

Usage: python bench/bench_lazy_scan.py [--scale 10] [--history 60] [--settle 0]
       [--rounds 2] [--helpers 0 1] [--keep DIR] [--json out.json] [--bulk]
       [--lookups N | --range N]

Builds (or, with --keep DIR holding one, reuses) a store: a primary at pgbench
scale `--scale`, `strata up --source` attached, `pgbench -c4 -j2 -T history`,
strata stopped after it caught up (with `--settle S`, also after its maintenance
went idle, at most S seconds later: a long history leaves a backlog of
compaction and images behind it); the target is the primary's WAL position at
the end of the history. With `--bulk`, strata is attached before `pgbench -i`,
so the load itself reaches the store as WAL (COPY's MULTI_INSERT records: every
page of pgbench_accounts a chain to replay until an image covers it) and, with
`--history 0`, the target is the end of the load. Then, for each round and each helper count in turn
(`STRATA_LAZY_HELPERS`, alternated so the machine's noise spreads over all):
a lazy server at the target from the stopped store (a spare file system that
opened the store, as in a running daemon), and the time from asking for it to
the first row of `SELECT count(*) FROM pgbench_accounts` (a cold full scan:
every page rebuilt on first read), then the same scan twice more (warm: the
kernel's page cache). The live scan is on the primary itself before it stops.
Each run also prints the CPU seconds spent from the request to the first row by
the point's file system, its helpers, the spare started meanwhile, and the rest
of the machine's busy time (the server, the kernel, this script: `cpu_split`).

`--lookups N`: instead of the full scan, N accounts by primary key (`aid IN
(...)`, N aids drawn with a fixed seed): an index scan whose every row is a few
random page reads of a lazy file system (most of them one page each); its
baseline is the same query on the same server warm. `--range N`: N accounts by
an index range scan from the middle of the table (`aid BETWEEN`): index and heap
pages in order, with the gaps of rows the history moved; the same baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_ingest import all_processes
from bench_primary_tps import settle
from bench_proxy import StrataUp, pgbench
from bench_timetravel import COUNT_SQL, SCAN_SQL, scan_seconds, timed_first_row
from strata.historical.modes import make_factory
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.reconstruct.reconstruct import reconstruct_value
from strata.runtime.cluster import Cluster

ROOT = Path("/tmp/strata-bench")


def build(keep: Path, scale: int, history: int, settle_s: float = 0.0,
          bulk: bool = False) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="lazyscan-", dir=ROOT))
    base.chmod(0o755)
    c = Cluster(datadir=base / "data")
    c.initdb(settings={"shared_buffers": "256MB", "max_connections": 200})
    c.start()
    try:
        s = StrataUp(base, c) if bulk else None
        pgbench(c.port, ["-i", "-q", "-s", str(scale)])
        s = s or StrataUp(base, c)
        if history:
            pgbench(c.port, ["-c", "4", "-j", "2", "-T", str(history)])
        lsn = c.sql("SELECT pg_current_wal_lsn()")[0][0]
        live = scan_seconds(c.dsn())
        _wait_durable(base / "home", Lsn.parse(lsn))
        settled = settle(s, settle_s) if settle_s else 0.0
        if settle_s:
            print(f"maintenance idle {settled:.0f} s after the history", flush=True)
        s.close()
    finally:
        c.stop("immediate")
    keep.mkdir(parents=True, exist_ok=True)
    shutil.move(str(base / "home"), str(keep / "home"))
    info = {"lsn": str(lsn), "scale": scale, "history_s": history, "live_scan_s": live,
            "settle_s": settled, "bulk": bulk}
    (keep / "info.json").write_text(json.dumps(info))
    shutil.rmtree(base, ignore_errors=True)
    return info


def _wait_durable(home: Path, lsn: Lsn, timeout: float = 1800) -> None:
    """Until strata's status.json says `lsn` is durable (ingested and flushed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = json.loads((home / "status.json").read_text())
            if Lsn.parse(st["durable_lsn"]) >= lsn:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"strata did not make {lsn} durable in {timeout} s")


def _fs_pids(work: Path) -> list[int]:
    """The lazy file-system processes (spares included) started under `work`."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "lazyfs" in cmd and str(work) in cmd:
                out.append(int(p.name))
    return out


_TCK = os.sysconf("SC_CLK_TCK")


def _system_cpu() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def cpu_split(before: dict[int, tuple[str, int, float]], after: dict[int, tuple[str, int, float]],
              sys_before: list[int], sys_after: list[int], fs_pid: int | None) -> dict[str, float]:
    """CPU seconds spent between the two snapshots, by kind: the point's file system
    (`fs`), its readahead helpers (children of it), other lazy file systems (the
    spare started meanwhile), the rest of the machine's busy time (`rest`: the
    server, whose backend and parallel workers are gone by the end, the kernel,
    this script), and the machine's iowait (FUSE waits count as iowait)."""
    out = {"fs": 0.0, "helpers": 0.0, "spare": 0.0}
    for pid, (name, ppid, cpu) in after.items():
        if name == "lazyfs":
            kind = "fs" if pid == fs_pid else "helpers" if ppid == fs_pid else "spare"
            out[kind] += cpu - (before[pid][2] if pid in before else 0.0)
    dd = [y - x for x, y in zip(sys_before, sys_after, strict=True)]
    out["rest"] = (sum(dd) - dd[3] - dd[4]) / _TCK - sum(out.values())
    out["iowait"] = dd[4] / _TCK
    return {k: round(v, 2) for k, v in out.items()}


def lookup_sql(n: int, scale: int) -> str:
    """`n` accounts by primary key, drawn with a fixed seed (`--lookups`)."""
    aids = random.Random(11).sample(range(1, 100_000 * scale + 1), n)
    return f"SELECT sum(abalance) FROM pgbench_accounts WHERE aid IN ({','.join(map(str, aids))})"


def range_sql(n: int, scale: int) -> str:
    """`n` accounts from the middle of the table by an index range scan (`--range`)."""
    first = 100_000 * scale // 2
    return f"SELECT sum(abalance) FROM pgbench_accounts WHERE aid BETWEEN {first} AND {first + n - 1}"


def one(home: Path, lsn: Lsn, helpers: int, profile: Path | None = None,
        sql: str = COUNT_SQL) -> dict[str, Any]:
    os.environ["STRATA_LAZY_HELPERS"] = str(helpers)  # the spare file system inherits it
    store = PageStore.open(home / "layers", reconstruct_value, background=False)
    work = Path(tempfile.mkdtemp(prefix="lazyrun-", dir=ROOT))
    work.chmod(0o755)
    factory = make_factory(store, home / "layers", mode="lazy", instances_root=work / "instances")
    try:
        time.sleep(4)  # the spare has opened the store (lazyfs.PREOPEN_AFTER, then the open)
        spies = []
        if profile is not None:  # py-spy every file-system process and its helpers
            profile.mkdir(parents=True, exist_ok=True)
            spies = [subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--subprocesses", "--rate", "250",
                 "--format", "speedscope", "-o", str(profile / f"lazyfs-h{helpers}-{pid}.json")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in _fs_pids(work)]
            time.sleep(1)
        cpu0, sys0 = all_processes(), _system_cpu()
        inst, t, val, started = timed_first_row(factory, lsn, work / "c", sql)
        cpu = cpu_split(cpu0, all_processes(), sys0, _system_cpu(),
                        inst.mount.pid if inst.mount is not None else None)
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        warm = scan_seconds(inst.dsn(), sql=SCAN_SQL if sql == COUNT_SQL else sql)
        inst.remove()
    finally:
        factory.close()
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    return {"helpers": helpers, "count_first_row_s": t, "start_s": started, "count": val,
            "warm_scan_s": warm, "cpu_s": cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--history", type=int, default=60)
    ap.add_argument("--settle", type=float, default=0.0,
                    help="after the history, wait at most this long for maintenance to be idle")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--helpers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--keep", type=Path, help="reuse / keep the built store here")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--bulk", action="store_true",
                    help="attach strata before pgbench -i: the load reaches the store as WAL")
    ap.add_argument("--profile", type=Path, help="py-spy the file systems into this directory")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--lookups", type=int, default=0,
                       help="time N accounts by primary key instead of count(*)")
    which.add_argument("--range", type=int, default=0,
                       help="time N accounts by an index range scan instead of count(*)")
    args = ap.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    keep = args.keep or Path(tempfile.mkdtemp(prefix="lazyscan-keep-", dir=ROOT))
    res: dict[str, Any] = {"load_start": os.getloadavg(), "runs": []}
    try:
        if (keep / "info.json").exists():
            info = json.loads((keep / "info.json").read_text())
        else:
            info = build(keep, args.scale, args.history, args.settle, args.bulk)
        res["store"] = info
        lsn = Lsn.parse(info["lsn"])
        sql, what = COUNT_SQL, "count(*)"
        if args.lookups:
            sql, what = lookup_sql(args.lookups, info["scale"]), f"{args.lookups} lookups"
        elif args.range:
            sql, what = range_sql(args.range, info["scale"]), f"{args.range} rows by range"
        res["query"] = what
        for _ in range(args.rounds):
            for h in args.helpers:
                r = one(keep / "home", lsn, h, args.profile, sql)
                r["load"] = os.getloadavg()
                res["runs"].append(r)
                print(f"helpers {h}: {what} first row {r['count_first_row_s']:.2f} s "
                      f"(server start {r['start_s']:.2f} s), warm {r['warm_scan_s'][-1]:.2f} s, "
                      f"load {r['load'][0]:.2f}", flush=True)
                print("   CPU-s from the request to the first row: "
                      + ", ".join(f"{k} {v}" for k, v in r["cpu_s"].items()), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(keep, ignore_errors=True)
    res["load_end"] = os.getloadavg()
    live = min(info["live_scan_s"])
    print(f"\nscale {info['scale']}, {info['history_s']} s of pgbench history; live scan "
          f"(warm, primary) {live:.2f} s")
    base = "warm" if args.lookups or args.range else "live scan"
    print(f"| helpers | {what} first row, cold (median) | / {base} | warm |")
    print("|---:|---:|---:|---:|")
    for h in args.helpers:
        rs = [r for r in res["runs"] if r["helpers"] == h]
        cold = statistics.median(r["count_first_row_s"] for r in rs)
        warm = statistics.median(r["warm_scan_s"][-1] for r in rs)
        each = ", ".join(f"{r['count_first_row_s']:.2f}" for r in rs)
        ratio = cold / (warm if args.lookups or args.range else live)
        print(f"| {h} | {cold:.2f} s ({each}) | {ratio:.0f}x | {warm:.2f} s |")
    print(f"\nload average start {res['load_start']}, end {res['load_end']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
