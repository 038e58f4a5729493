"""Benchmark historical compute: materialisation pages/s and time to the first answered query.

    python bench/bench_historical.py [--scale 10] [--runs 3] [--pitr-seconds 30]

Builds a pgbench cluster (scale N) once, stops it cleanly, then per run:
  * materialize it from a DataDirSource with checksums computed, and with
    checksums disabled (pages/s; source files warm in the page cache);
  * from "files ready": pg_resetwal, the normal start/stop, the standby start,
    and the first answered query, each timed.
With --pitr-seconds N: before the clean stop, a base backup, N seconds of
pgbench (2 clients) and native PITR to the end of that run, timed from "start
copying the backup" to the first answer (the number to beat).
Results go to stdout as a markdown table (bench/results/historical.md keeps them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from strata.historical.instance import launch, normal_cycle, reset_wal
from strata.historical.materialize import MaterializedDir, materialize
from strata.historical.pitr import (
    RecoveryTarget,
    archive_now,
    archive_settings,
    base_backup,
    recover_to,
)
from strata.historical.source import DataDirSource
from strata.lsn import Lsn
from strata.pg.checksum import checksum_pages
from strata.runtime.cluster import SUPERUSER, Cluster


def _pgbench(c: Cluster, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    subprocess.run([str(c.bins.path("pgbench")), *args, "-h", "127.0.0.1", "-p", str(c.port),
                    "-U", SUPERUSER, "postgres"], check=True, env=env, capture_output=True)


def build_primary(base: Path, scale: int, pitr_seconds: int) -> tuple[Cluster, dict[str, float]]:
    """pgbench -i; with pitr_seconds, also a base backup, a pgbench run of that many
    seconds, and native PITR to its end (timed), before the clean stop."""
    archive = base / "archive"
    c = Cluster(datadir=base / "primary" / "data")
    c.initdb(settings={"autovacuum": "off", "max_wal_size": "1GB",
                       **(archive_settings(archive) if pitr_seconds else {})})
    c.start()
    _pgbench(c, "-i", "-q", "-s", str(scale))
    native: dict[str, float] = {}
    if pitr_seconds:
        backup = base_backup(c, base / "backup")
        _pgbench(c, "-c", "2", "-j", "2", "-T", str(pitr_seconds))
        target = Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()")[0][0])
        wal = target - Lsn.parse("0/0")
        archive_now(c)
        t0 = time.perf_counter()
        r = recover_to(backup, archive, base / "pitr", RecoveryTarget(lsn=target))
        r.sql("SELECT count(*) FROM pgbench_branches")
        native["native PITR: restore + replay to the end + first answer"] = (
            time.perf_counter() - t0)
        native["(WAL position of the target, MiB)"] = wal / 2**20
        r.stop("immediate")
        shutil.rmtree(base / "pitr", ignore_errors=True)
        shutil.rmtree(backup, ignore_errors=True)
    c.stop()
    return c, native


def time_start(mat: MaterializedDir) -> dict[str, float]:
    t = {}
    t0 = time.perf_counter()
    reset_wal(mat.datadir, mat)
    t["pg_resetwal"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    normal_cycle(mat.datadir, am_names=("hash",))
    t["normal start+stop (+mark hash invalid)"] = time.perf_counter() - t1
    (mat.datadir / "standby.signal").write_text("")
    os.chmod(mat.datadir / "standby.signal", 0o600)
    from strata.runtime.osuser import give_to_server_user

    give_to_server_user(mat.datadir / "standby.signal", recursive=False, mode=0o600)
    t2 = time.perf_counter()
    c = launch(mat.datadir)
    t["standby start"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    n = c.sql("SELECT count(*) FROM pgbench_branches")[0][0]
    t["first query (connect + count)"] = time.perf_counter() - t3
    assert n > 0
    t["files ready -> first answer"] = time.perf_counter() - t0
    c.stop()
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pitr-seconds", type=int, default=0,
                    help="also time native PITR after a pgbench run of this many seconds")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-hist-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        primary, native = build_primary(root, args.scale, args.pitr_seconds)
        src = DataDirSource(primary.datadir)
        npages = sum(r.nblocks for r in src.relations() if r.fork in (0, 3))
        print(f"pgbench scale {args.scale}: {npages:,} main/init pages "
              f"({npages * 8192 / 2**20:,.0f} MiB)\n")

        pages = np.frombuffer(os.urandom(8192 * 4096), dtype=np.uint8).reshape(4096, 8192)
        for b in (128, 4096):
            t0 = time.perf_counter()
            for i in range(0, 4096, b):
                checksum_pages(pages[i:i + b], np.arange(i, i + b, dtype=np.uint32))
            dt = time.perf_counter() - t0
            print(f"checksum only, batch {b}: {4096 / dt:,.0f} pages/s ({dt / 4096 * 1e6:.1f} µs/page)")

        rows: dict[str, list[float]] = {}
        for run in range(args.runs):
            for policy in ("compute", "disable"):
                d = root / f"m-{run}-{policy}" / "data"
                os.makedirs(d.parent, mode=0o755)
                os.chmod(d.parent, 0o755)
                mat = materialize(src, d, checksums=policy)
                rows.setdefault(f"materialize pages/s, checksums {policy}", []).append(
                    mat.pages_per_second)
                rows.setdefault(f"materialize seconds, checksums {policy}", []).append(mat.seconds)
                if policy == "compute":
                    for k, v in time_start(mat).items():
                        rows.setdefault(k, []).append(v)
                    rows.setdefault("materialize + start + first answer", []).append(
                        mat.seconds + rows["files ready -> first answer"][-1])
                shutil.rmtree(d.parent)
        print(f"\n| measure (scale {args.scale}, {args.runs} runs) | median | min | max |")
        print("|---|---|---|---|")
        for k, v in native.items():
            rows[k] = [v]
        for k, vals in rows.items():
            fmt = "{:,.0f}" if "pages/s" in k or "MiB" in k else "{:.3f} s"
            print(f"| {k} | {fmt.format(statistics.median(vals))} | {fmt.format(min(vals))} | "
                  f"{fmt.format(max(vals))} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
