"""What DDL decoding costs ingest: the catalog path (`CatalogTracker`) per
catalog record and per DDL transaction, and the pre-filter every other
record pays.

Usage (as root, from the project root):

    python bench/bench_ddl_ingest.py                     # 2000 temp tables, 20000 pgbench txns
    python bench/bench_ddl_ingest.py --churn 500 --transactions 5000

What it does: starts a throw-away PostgreSQL 18 cluster, imports it into a
scratch strata home at a shutdown checkpoint (as ``strata up`` does), runs
(1) ``pgbench -i -s 1`` and ``pgbench -c 4 -j 2 -t N/4`` (no DDL) and (2)
--churn sessions-worth of ``CREATE TEMP TABLE ...; DROP TABLE ...`` plus a
few ordinary DDL statements, stops it, decodes the WAL into memory (not
timed), then ingests it through `WalIngest` into the store (timed, CPU),
with `CatalogTracker.observe` / `transaction_end` timed separately. Also
times the pre-filter expression alone over every record (a loop with it
minus the same loop without).

Prints: records, catalog records observed, DDL log entries, total ingest
CPU per record, catalog path CPU (total, per observed record, per DDL
transaction) and its share of ingest, the pre-filter's ns per record.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from strata.bootstrap import import_history
from strata.historical.source import DataDirSource
from strata.home import HomeLayout
from strata.ingest.transam import TransamIngest
from strata.ingest.walingest import WalIngest
from strata.key import Key
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.reconstruct.reconstruct import reconstruct_value
from strata.runtime.cluster import Cluster
from strata.runtime.osuser import make_private_dir, run_as_server
from strata.timemap.timemap import TimeMap
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import RM_HEAP2_ID, RM_HEAP_ID
from strata.wal.segments import iter_records


def make_history(base: Path, churn: int, transactions: int) -> tuple[Cluster, Lsn]:
    c = Cluster(datadir=base / "data")
    c.initdb(settings={"wal_keep_size": "2GB", "max_wal_size": "2GB", "autovacuum": "off"})
    c.start()
    c.sql("CHECKPOINT")
    c.stop()
    info = import_history(HomeLayout(base / "home"), DataDirSource(c.datadir), mode="embedded")
    c.start()
    pgbench = [str(c.bins.path("pgbench")), "-h", "127.0.0.1", "-p", str(c.port), "-U", "postgres"]
    run_as_server([*pgbench, "-i", "-s", "1", "-q", "postgres"], timeout=600)
    run_as_server([*pgbench, "-c", "4", "-j", "2", "-t", str(max(1, transactions // 4)), "-n",
                   "postgres"], timeout=1800)
    script = "".join("CREATE TEMP TABLE t (a int PRIMARY KEY, b text); DROP TABLE t;\n"
                     for _ in range(churn))
    script += ("CREATE TABLE demo (id serial PRIMARY KEY, name text);\n"
               "ALTER TABLE demo ADD COLUMN email text;\n"
               "ALTER TABLE demo RENAME TO demo2;\n"
               "CREATE INDEX ON demo2 (name);\n"
               "DROP TABLE demo2;\n")
    c.psql("-q", input=script)
    c.stop()
    return c, info.start_lsn


def _prefilter(records: list[DecodedRecord], rels: set[int]) -> tuple[int, float]:
    """(records passing, seconds of CPU per record): WalIngest's rmid dispatch
    with the pre-filter, minus the same dispatch without it (best of 5)."""
    def without() -> int:
        n = 0
        for r in records:
            rmid = r.xl_rmid
            if rmid == 2 or rmid == 4 or rmid == 1:
                n -= 1
        return n

    def with_it() -> int:
        n = 0
        for r in records:
            rmid = r.xl_rmid
            if rmid == 2 or rmid == 4 or rmid == 1:
                n -= 1
            elif rmid in (RM_HEAP_ID, RM_HEAP2_ID) and r.blocks and \
                    r.blocks[0].rlocator.rel in rels:
                n += 1
        return n

    costs, hits = [], 0
    for _ in range(5):
        c0 = time.process_time()
        base = without()
        c1 = time.process_time()
        hits = with_it() - base
        costs.append((time.process_time() - c1) - (c1 - c0))
    return hits, max(0.0, min(costs)) / len(records)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--churn", type=int, default=2000, help="temp tables created and dropped")
    ap.add_argument("--transactions", type=int, default=20000, help="pgbench transactions")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-ddl-", dir="/tmp"))
    make_private_dir(base)
    base.chmod(0o755)
    try:
        c, start = make_history(base, args.churn, args.transactions)
        records: list[DecodedRecord] = list(iter_records(c.wal_dir(), start))
        store = PageStore.open(base / "home" / "layers", reconstruct_value)
        tm = TimeMap.open(base / "home" / "timemap", durable_lsn=store.durable_lsn)
        state = store.get_page(Key.cluster(0), start)
        assert state is not None
        ingest = WalIngest(store, tm, TransamIngest(ClusterState.from_bytes(state)),
                           start_lsn=start)
        tracker = ingest.catalog
        spent = {"observe": 0.0, "end": 0.0, "observed": 0}
        observe, end = tracker.observe, tracker.transaction_end

        def timed_observe(record: DecodedRecord) -> None:
            c0 = time.process_time()
            observe(record)
            spent["observe"] += time.process_time() - c0
            spent["observed"] += 1

        def timed_end(record, rec) -> None:  # type: ignore[no-untyped-def]
            c0 = time.process_time()
            end(record, rec)
            spent["end"] += time.process_time() - c0

        tracker.observe = timed_observe  # type: ignore[method-assign]
        tracker.transaction_end = timed_end  # type: ignore[method-assign]
        c0 = time.process_time()
        for r in records:
            ingest.ingest(r)
        ingest.advance()
        total = time.process_time() - c0
        entries = len(tm.ddl)
        store.close()
        tm.close()

        hits, prefilter = _prefilter(records, tracker.relfilenumbers)
        cat = spent["observe"] + spent["end"]
        n = len(records)
        print(f"{n} records, {spent['observed']} catalog records observed ({hits} pass the "
              f"pre-filter), {entries} DDL log entries")
        print(f"ingest total        {total:8.2f} s CPU  {total / n * 1e6:8.1f} µs/record")
        print(f"catalog path        {cat:8.2f} s CPU  ({cat / total:5.1%} of ingest): observe "
              f"{spent['observe']:.2f} s, transaction_end {spent['end']:.2f} s")
        if spent["observed"]:
            print(f"  per catalog record {spent['observe'] / spent['observed'] * 1e6:8.1f} µs")
        if entries:
            print(f"  per DDL entry      {cat / entries * 1e3:8.2f} ms")
        print(f"pre-filter          {prefilter * 1e9:8.1f} ns/record (all records)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
