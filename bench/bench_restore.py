"""Benchmark bringing the past back: restore MB/s, and diff time against table size.

    python bench/bench_restore.py [--restore-mb 100] [--diff-rows 10000,100000,1000000]
                                  [--changed-pages 10]

Runs `strata up` on a scratch home (its proxy on a free port), then:
  * restore: a table of about --restore-mb MB of heap (TOAST-free rows of
    ~200 bytes) is dropped and restored with `strata restore`'s engine;
    reported: heap MB, COPY data MB, seconds, MB/s (data), and the same with
    the historical server already running (the first run pays its start);
  * diff: for each table size, --changed-pages pages get one updated row each
    between two points; `strata diff` of that table is timed twice: cold
    (historical servers at both points start) and warm (they run). Reported:
    rows, heap pages, pages read by the diff, and both times. With a store
    readable from another process the pages read stay at --changed-pages and
    the warm time stays flat as the table grows; a full comparison grows with
    it (the "mode" column says which ran).
Results go to stdout as markdown tables; nothing is recorded here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.strata_proc import StrataUp

from strata.home import HomeLayout
from strata.lsn import Lsn
from strata.restore.changes import open_changes
from strata.restore.diff import diff
from strata.restore.endpoint import Endpoint
from strata.restore.plan import Kind, Request
from strata.restore.restore import restore
from strata.runtime.cluster import Cluster


def _point(up: StrataUp, conn: Any) -> str:
    lsn = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
    up.wait_ingested(Lsn.parse(lsn), timeout=1800)
    return str(lsn)


def bench_restore(up: StrataUp, ep: Endpoint, conn: Any, mb: int) -> None:
    rows = mb * 1024 * 1024 // 230
    conn.execute("CREATE TABLE bench_restore (id int PRIMARY KEY, a int, b text)")
    conn.execute("INSERT INTO bench_restore SELECT i, i %% 1000, repeat(md5(i::text), 5) "
                 "FROM generate_series(1, %s) i", (rows,))
    heap = conn.execute("SELECT pg_table_size('bench_restore')").fetchone()[0]
    at = _point(up, conn)
    print("| run | heap MB | data MB | seconds | MB/s (data) |")
    print("|---|---|---|---|---|")
    for run in ("cold", "warm"):
        conn.execute("DROP TABLE IF EXISTS bench_restore")
        _point(up, conn)
        res = restore(Request(Kind.TABLE, "public.bench_restore", at), ep)
        data = res.outcome.data_bytes / 2**20
        print(f"| {run} | {heap / 2**20:.1f} | {data:.1f} | {res.seconds:.2f} | "
              f"{data / res.seconds:.1f} |")


def bench_diff(up: StrataUp, ep: Endpoint, conn: Any, sizes: list[int], pages: int) -> None:
    print("\n| rows | heap pages | mode | pages read | cold s | warm s |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        name = f"bench_diff_{n}"
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int, pad text)")
        conn.execute(f"INSERT INTO {name} SELECT i, 0, repeat('x', 100) "
                     "FROM generate_series(1, %s) i", (n,))
        relpages = conn.execute(f"SELECT pg_relation_size('{name}') / 8192").fetchone()[0]
        t1 = _point(up, conn)
        step = max(1, relpages // pages)
        for blk in range(0, step * pages, step):
            conn.execute(f"UPDATE {name} SET v = v + 1 WHERE ctid = '({blk},1)'::tid")
        t2 = _point(up, conn)
        times = []
        for _ in ("cold", "warm"):
            changes = open_changes(HomeLayout(ep.home).layers)
            t0 = time.perf_counter()
            res = diff(ep, t1, t2, "postgres", name, changes)
            times.append(time.perf_counter() - t0)
            if changes is not None:
                changes.close()
        td = res.tables[0]
        read = relpages if td.pages is None else td.pages
        print(f"| {n} | {relpages} | {td.mode} | {read} | {times[0]:.2f} | {times[1]:.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--restore-mb", type=int, default=100)
    ap.add_argument("--diff-rows", default="10000,100000,1000000")
    ap.add_argument("--changed-pages", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-restore-", dir="/tmp") as tmp:
        home = Path(tmp) / "home"
        Path(tmp).chmod(0o755)
        up = StrataUp(home, "--flush-interval", "1", "--progress-interval", "5")
        try:
            dsn = up.wait_for(r"PostgreSQL 18 primary: (.*)$").group(1)
            up.proxy_dsn()
            ep = Endpoint.of_home(home)
            with psycopg.connect(dsn, autocommit=True) as conn:
                bench_restore(up, ep, conn, args.restore_mb)
                bench_diff(up, ep, conn, [int(x) for x in args.diff_rows.split(",")],
                           args.changed_pages)
            up.terminate(timeout=300)
        finally:
            up.kill()
            Cluster(datadir=home / "primary" / "data").stop("immediate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
