"""Transam ingest throughput: pg_xact / pg_multixact / relmap / control-value
puts per WAL record, and the cost of rebuilding an SLRU page from its deltas.

Usage (as root, from the project root):

    python bench/bench_transam.py                       # make pgbench WAL, then measure
    python bench/bench_transam.py --transactions 20000 --repeat 3
    python bench/bench_transam.py --path DIR --start X/Y   # existing WAL

What it does: starts a throw-away PostgreSQL 18 cluster, runs
``pgbench -i -s 1`` then ``pgbench -c 4 -j 2 -t N/4``, stops it, decodes the
WAL once into memory (not timed), then times (best of --repeat, wall and CPU):

1. `TransamIngest.puts` over every record (what the ingest pipeline calls per
   record: SLRU deltas for commits/aborts, cluster-state values when the next
   XID moves, nothing for heap/btree records);
2. `ClusterStateTracker.apply` alone;
3. rebuilding one pg_xact page from an image plus 1, 10, 100 and 1,000 commit
   deltas with `reconstruct`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from strata.ingest.cluster_state import ClusterStateTracker, cluster_state_from_pg_controldata
from strata.ingest.transam import TransamIngest
from strata.keyspace.cluster import ClusterState
from strata.keyspace.slru import delta_value, image_value, xid_status_op
from strata.lsn import Lsn
from strata.pg.slru import ZERO_PAGE
from strata.reconstruct.slru import reconstruct
from strata.runtime.cluster import Cluster
from strata.runtime.osuser import make_private_dir, run_as_server
from strata.wal.record import DecodedRecord
from strata.wal.segments import iter_records

MB = 1024 * 1024


def best(fn: Callable[[], None], repeat: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeat):
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def make_wal(base: Path, transactions: int) -> tuple[Path, Lsn, str]:
    c = Cluster(datadir=base / "data")
    c.initdb(settings={"wal_keep_size": "2GB", "max_wal_size": "2GB"})
    c.start()
    bench = [str(c.bins.path("pgbench")), "-h", "127.0.0.1", "-p", str(c.port), "-U", "postgres"]
    try:
        run_as_server([*bench, "-i", "-s", "1", "-q", "postgres"], timeout=600)
        c.sql("CHECKPOINT")
        start = Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])
        controldata = "\n".join(f"{k}: {v}" for k, v in _fake_controldata(c).items())
        run_as_server([*bench, "-c", "4", "-j", "2", "-t", str(max(1, transactions // 4)), "-n",
                       "postgres"], timeout=1800)
    finally:
        c.stop()
    return c.wal_dir(), start, controldata


def _fake_controldata(c: Cluster) -> dict[str, str]:
    """Enough of pg_controldata for a starting ClusterState (values from SQL)."""
    row = c.sql("SELECT next_xid::text, next_oid::text, next_multixact_id::text, "
                "oldest_xid::text, oldest_xid_dbid::text, oldest_multi_xid::text, "
                "oldest_multi_dbid::text, timeline_id::text, redo_lsn::text, checkpoint_lsn::text "
                "FROM pg_control_checkpoint()")[0]
    return {
        "Latest checkpoint location": row[9], "Latest checkpoint's REDO location": row[8],
        "Latest checkpoint's NextXID": row[0], "Latest checkpoint's NextOID": row[1],
        "Latest checkpoint's NextMultiXactId": row[2], "Latest checkpoint's NextMultiOffset": "0",
        "Latest checkpoint's oldestXID": row[3], "Latest checkpoint's oldestXID's DB": row[4],
        "Latest checkpoint's oldestMultiXid": row[5], "Latest checkpoint's oldestMulti's DB": row[6],
        "Latest checkpoint's oldestCommitTsXid": "0", "Latest checkpoint's newestCommitTsXid": "0",
        "Latest checkpoint's TimeLineID": row[7], "Latest checkpoint's PrevTimeLineID": row[7],
        "Bytes per WAL segment": str(16 * MB), "wal_level setting": "replica",
        "Latest checkpoint's full_page_writes": "on", "wal_log_hints setting": "off",
        "track_commit_timestamp setting": "off", "max_connections setting": "100",
        "max_worker_processes setting": "8", "max_wal_senders setting": "10",
        "max_prepared_xacts setting": "10", "max_locks_per_xact setting": "64",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--path", help="existing WAL directory (skip making WAL)")
    ap.add_argument("--start", help="start LSN with --path")
    ap.add_argument("--transactions", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    base = None
    if args.path:
        wal = Path(args.path)
        start = Lsn.parse(args.start) if args.start else None
        initial = ClusterState(Lsn(0), 3, 16384, 1, 0, 3, 1, 1, 1)
    else:
        base = Path(tempfile.mkdtemp(prefix="bench-transam-", dir="/tmp"))
        make_private_dir(base)
        base.chmod(0o755)
        wal, start, controldata = make_wal(base, args.transactions)
        initial = cluster_state_from_pg_controldata(controldata)
    try:
        records: list[DecodedRecord] = list(iter_records(wal, start))
        nbytes = records[-1].end_lsn - records[0].lsn
        ncommit = sum(1 for r in records if r.xl_rmid == 1)
        print(f"{len(records)} records ({ncommit} Transaction), {nbytes / MB:.1f} MB of WAL")

        counts = {"puts": 0}

        def ingest() -> None:
            ing = TransamIngest(initial)
            n = 0
            for r in records:
                n += len(ing.puts(r))
            counts["puts"] = n

        def track() -> None:
            t = ClusterStateTracker(initial)
            for r in records:
                t.apply(r)

        for name, fn in (("TransamIngest.puts", ingest), ("ClusterStateTracker.apply", track)):
            wall, cpu = best(fn, args.repeat)
            print(f"{name:28s} {len(records) / cpu:12,.0f} records/s CPU  "
                  f"{nbytes / MB / cpu:8.1f} MB/s of WAL CPU  (wall {wall:.2f} s, CPU {cpu:.2f} s)")
        print(f"puts per run: {counts['puts']}")

        image = image_value(ZERO_PAGE)
        for n in (1, 10, 100, 1000):
            deltas = [delta_value([xid_status_op(1, [i % 32768])]) for i in range(n)]
            reps = max(1, 2000 // n)

            def rebuild(deltas: list[bytes] = deltas, reps: int = reps) -> None:
                for _ in range(reps):
                    reconstruct([image, *deltas])

            wall, cpu = best(rebuild, args.repeat)
            print(f"rebuild pg_xact page from image + {n:5d} deltas: {cpu / reps * 1e6:10.1f} µs CPU")
    finally:
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
