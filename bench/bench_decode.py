"""Decode throughput of the WAL reader + decoder, next to pg_waldump --stats.

Usage (as root, from the project root):

    python bench/bench_decode.py                 # make pgbench WAL, then measure
    python bench/bench_decode.py --scale 6 --seconds 20 --repeat 3
    python bench/bench_decode.py --path DIR --start X/Y   # existing WAL
    python bench/bench_decode.py --profile       # also print a cProfile top list

What it does: starts a throw-away PostgreSQL 18 cluster, runs
``pgbench -i -s SCALE`` and then ``pgbench -c 4 -j 2 -T SECONDS`` while
measuring the WAL rate the primary produces (bytes between
pg_current_wal_insert_lsn() before and after / wall time), stops the server,
and over the same WAL range times: (1) reader only (framing + CRC),
(2) reader + decoder (`iter_records`), (3) reader + decoder + restoring every
full-page image, (4) ``pg_waldump --stats`` on the same files. Throughput is
WAL bytes of the range / elapsed time (best of --repeat runs).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from strata.runtime.osuser import make_private_dir, run_as_server
from strata.runtime.pgbin import find_pg_binaries
from strata.wal.image import restore_page
from strata.wal.segments import SegmentWalSource, iter_records

MB = 1024 * 1024


def _lsn(c: Cluster) -> Lsn:
    return Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])


def make_wal(base: Path, scale: int, seconds: int) -> tuple[Path, Lsn, Lsn, float, Cluster]:
    c = Cluster(datadir=base / "data")
    c.initdb(settings={"wal_keep_size": "4GB", "max_wal_size": "4GB",
                       "shared_buffers": "128MB"})
    c.start()
    bench = [str(c.bins.path("pgbench")), "-h", "127.0.0.1", "-p", str(c.port), "-U", "postgres"]
    try:
        start = _lsn(c)
        run_as_server([*bench, "-i", "-s", str(scale), "-q", "postgres"], timeout=900)
        a = _lsn(c)
        t0 = time.perf_counter()
        run_as_server([*bench, "-c", "4", "-j", "2", "-T", str(seconds), "-n", "postgres"],
                      timeout=seconds + 300)
        dt = time.perf_counter() - t0
        b = _lsn(c)
        rate = (b - a) / dt / MB
        end = b
    finally:
        c.stop()
    return c.wal_dir(), start, end, rate, c


def best(fn: Callable[[], None], repeat: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds) over `repeat` runs. CPU time counts
    this process and its children (pg_waldump), so it stays meaningful on a
    shared, overloaded machine where wall time mostly measures the neighbours."""
    walls, cpus = [], []
    for _ in range(repeat):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(time.process_time() - c0 + (r1.ru_utime - r0.ru_utime)
                    + (r1.ru_stime - r0.ru_stime))
    return min(walls), min(cpus)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", help="existing WAL directory (skip making WAL)")
    ap.add_argument("--start", help="start LSN with --path (default: oldest segment)")
    ap.add_argument("--scale", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the generated cluster")
    args = ap.parse_args()

    base = None
    rate = None
    if args.path:
        wal = Path(args.path)
        start = Lsn.parse(args.start) if args.start else None
    else:
        base = Path(tempfile.mkdtemp(prefix="bench-decode-", dir="/tmp"))
        make_private_dir(base)
        base.chmod(0o755)
        wal, start, _end, rate, _c = make_wal(base, args.scale, args.seconds)
    try:
        first = last = None
        n = 0
        for r in SegmentWalSource(wal, start):
            if first is None:
                first = r.lsn
            last = r.end_lsn
            n += 1
        assert first is not None and last is not None
        nbytes = last - first
        print(f"WAL range {first} .. {last}: {nbytes / MB:.1f} MB, {n} records")
        if rate is not None:
            print(f"primary WAL rate under pgbench -c 4 -j 2 -T {args.seconds}: {rate:.1f} MB/s")

        def read_only() -> None:
            for _ in SegmentWalSource(wal, first):
                pass

        def decode() -> None:
            for _ in iter_records(wal, first):
                pass

        def decode_images() -> None:
            for rec in iter_records(wal, first):
                for b in rec.blocks:
                    if b.image is not None:
                        restore_page(b.image)

        pgw = find_pg_binaries().path("pg_waldump")

        def waldump() -> None:
            subprocess.run([str(pgw), "-p", str(wal), "-s", str(first), "--stats"],
                           capture_output=True, check=False)

        results = {}
        for name, fn in (("reader only (framing + CRC)", read_only),
                         ("reader + decoder", decode),
                         ("reader + decoder + restore all FPIs", decode_images),
                         ("pg_waldump --stats", waldump)):
            wall, cpu = best(fn, args.repeat)
            results[name] = cpu
            print(f"{name:<38} wall {wall:6.2f} s {nbytes / MB / wall:7.1f} MB/s | "
                  f"cpu {cpu:6.2f} s {nbytes / MB / cpu:7.1f} MB/s "
                  f"{n / cpu / 1000:7.1f} k rec/s")
        print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        dec = nbytes / MB / results["reader + decoder"]
        rates: list[tuple[str, float | None]] = [("measured here", rate),
                                                 ("research note, pgbench -c4 -j2", 19.0)]
        for label, wal_rate in rates:
            if wal_rate:
                print(f"decode (cpu) / primary WAL rate {label} ({wal_rate:.1f} MB/s): "
                      f"{dec / wal_rate:.1f}x")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            decode()
            prof.disable()
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    finally:
        if base is not None and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
