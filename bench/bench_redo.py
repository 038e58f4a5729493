"""Redo throughput over pgbench WAL, and the cost of rebuilding one page.

What it measures:

1. Throughput: records/s and MB/s of WAL for our redo (`redo_blocks`) per
   record type, over the WAL of `pgbench -i` + a pgbench run started right
   after a CHECKPOINT (so every block's first reference carries an
   apply-image and every later reference has a base). Decode time (raw
   bytes -> DecodedRecord) is measured separately from redo time.
2. Reconstruction: for a hot heap page, the cost of restoring its image and
   applying the next N = 1, 3, 10, 50 records that touch it (decoded
   records, and raw bytes decoded on the way: what GetPage@LSN pays).

Times are CPU time of this process (time.process_time), so that other
load on a shared machine does not count; wall time is at least this.

Starts its own PostgreSQL 18 (checksums on, wal_consistency_checking off)
in a scratch directory and stops it at the end.

    python bench/bench_redo.py [--scale 1] [--transactions 2000] [--clients 2]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from strata.lsn import Lsn
from strata.reconstruct.redo import record_type_name, redo_blocks, rmgr_name
from strata.runtime.cluster import Cluster
from strata.runtime.osuser import give_to_server_user, run_as_server
from strata.wal.decoder import decode_record
from strata.wal.record import DecodedRecord, RelFileLocator
from strata.wal.segments import iter_raw_records

BlockKey = tuple[RelFileLocator, int, int]


def _lsn(c: Cluster) -> Lsn:
    return Lsn.parse(str(c.sql("SELECT pg_current_wal_insert_lsn()")[0][0]))


def make_wal(base: Path, scale: int, transactions: int,
             clients: int, backup: Path | None = None) -> tuple[Cluster, Lsn, Lsn, Lsn]:
    c = Cluster(datadir=base / "data")
    c.initdb(settings={"wal_keep_size": "2GB", "max_wal_size": "2GB", "checkpoint_timeout": "1h",
                       "autovacuum": "off"})
    c.start()
    pgbench = str(c.bins.path("pgbench"))
    conn = ["-h", "127.0.0.1", "-p", str(c.port), "-U", "postgres"]
    if backup is not None:  # a base backup to replay the same WAL with PostgreSQL itself
        run_as_server([c.bins.path("pg_basebackup"), "-D", backup, *conn, "-X", "fetch",
                       "-c", "fast"])
    c.sql("CHECKPOINT")
    start = _lsn(c)
    subprocess.run([pgbench, *conn, "-i", "-s", str(scale), "-q", "postgres"], check=True,
                   capture_output=True)
    c.sql("CHECKPOINT")
    mid = _lsn(c)
    subprocess.run([pgbench, *conn, "-n", "-c", str(clients), "-t",
                    str(transactions // clients), "postgres"], check=True, capture_output=True)
    c.sql("SELECT pg_logical_emit_message(false, 'bench', 'end')")
    end = _lsn(c)
    c.sql("CHECKPOINT")
    return c, start, mid, end


_TS = r"(\d\d):(\d\d):(\d\d\.\d+) \w+ \[\d+\] LOG:  "
_REDO_START = re.compile(_TS + r"redo starts at ([0-9A-F]+/[0-9A-F]+)")
_REDO_STOP = re.compile(_TS + r"recovery stopping after WAL location")


def _secs(m: re.Match[str]) -> float:
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def pg_replay(c: Cluster, backup: Path, end: Lsn) -> tuple[Lsn, float]:
    """Replay the primary's WAL from `backup` up to `end` with PostgreSQL's own
    startup process; returns (redo start LSN, seconds from "redo starts" to
    "recovery stopping" in the server log, millisecond timestamps)."""
    with (backup / "postgresql.auto.conf").open("a") as f:
        f.write(f"restore_command = 'cp {c.wal_dir()}/%f %p'\n"
                f"recovery_target_lsn = '{end}'\nrecovery_target_action = 'shutdown'\n"
                "log_min_messages = log\nlogging_collector = off\nlisten_addresses = ''\n"
                "max_wal_size = '2GB'\n")
    (backup / "recovery.signal").touch()
    give_to_server_user(backup, recursive=True)
    sock = backup.parent / "replay-sock"
    sock.mkdir(exist_ok=True)
    give_to_server_user(sock, recursive=False, mode=0o755)
    cp = run_as_server([c.bins.path("postgres"), "-D", backup, "-k", sock, "-p", "1"],
                       check=False, timeout=600)
    log = cp.stderr + cp.stdout
    start, stop = _REDO_START.search(log), _REDO_STOP.search(log)
    if start is None or stop is None:
        raise RuntimeError(f"no redo timing in the replay log:\n{log[-3000:]}")
    return Lsn.parse(start.group(4)), _secs(stop) - _secs(start)


def throughput(wal_dir: Path, start: Lsn, end: Lsn) -> tuple[list[DecodedRecord], dict[str, list[float]], float, float, int]:
    raws = list(iter_raw_records(wal_dir, start, end))
    t0 = time.process_time()
    records = [decode_record(r.raw, r.lsn, r.end_lsn) for r in raws]
    decode_s = time.process_time() - t0
    state: dict[BlockKey, bytes] = {}
    per_type: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0, 0])  # n, secs, bytes, blocks
    errors = 0
    t_all = time.process_time()
    for rec in records:
        name = f"{rmgr_name(rec.xl_rmid)}/{record_type_name(rec)}"
        pages = {b.block_id: state.get((b.rlocator, b.fork, b.blkno)) for b in rec.blocks}
        t = time.process_time()
        try:
            out = redo_blocks(rec, pages) if rec.blocks else {}
        except Exception:  # no base for a block touched before the range: not timed work
            errors += 1
            out = {}
        dt = time.process_time() - t
        for b in rec.blocks:
            if b.block_id in out:
                state[(b.rlocator, b.fork, b.blkno)] = out[b.block_id]
        st = per_type[name]
        st[0] += 1
        st[1] += dt
        st[2] += rec.xl_tot_len
        st[3] += len(rec.blocks)
    redo_s = time.process_time() - t_all
    return records, per_type, decode_s, redo_s, errors


def chain_cost(records: list[DecodedRecord], raw_by_lsn: Mapping[int, bytes]) -> list[tuple[int, float, float]]:
    """(N, ms redo-only, ms decode+redo) to rebuild a hot heap page from its image + N records."""
    # the heap block referenced most often after an apply-image
    chains: dict[BlockKey, list[DecodedRecord]] = defaultdict(list)
    for rec in records:
        for b in rec.blocks:
            key = (b.rlocator, b.fork, b.blkno)
            if b.apply_image:
                chains[key] = [rec]
            elif key in chains and rec.xl_rmid in (9, 10):
                chains[key].append(rec)
    key, chain = max(chains.items(), key=lambda kv: len(kv[1]))
    out = []
    for n in (1, 3, 10, 50):
        if len(chain) < n + 1:
            break
        sub = chain[:n + 1]

        def ids(rec: DecodedRecord) -> int:
            for b in rec.blocks:
                if (b.rlocator, b.fork, b.blkno) == key:
                    return b.block_id
            raise AssertionError

        from strata.reconstruct.redo import redo_block_inplace

        # in place: what GetPage@LSN does with a chain (no copy per record)
        def rebuild(sub: list[DecodedRecord] = sub) -> bytearray:
            page: bytearray | None = None
            for rec in sub:
                page = redo_block_inplace(rec, ids(rec), page)
            assert page is not None
            return page

        def rebuild_raw(sub: list[DecodedRecord] = sub) -> bytearray:
            page: bytearray | None = None
            for rec in sub:
                d = decode_record(raw_by_lsn[rec.lsn], rec.lsn, rec.end_lsn)
                page = redo_block_inplace(d, ids(d), page)
            assert page is not None
            return page

        reps = 50
        times, times_raw = [], []
        for _ in range(reps):
            t = time.process_time()
            rebuild()
            times.append(time.process_time() - t)
            t = time.process_time()
            rebuild_raw()
            times_raw.append(time.process_time() - t)
        out.append((n, statistics.median(times) * 1e3, statistics.median(times_raw) * 1e3))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--transactions", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--pg-replay", action="store_true",
                    help="also replay the same WAL with PostgreSQL (base backup + recovery)")
    args = ap.parse_args()
    root = Path(os.environ.get("STRATA_TEST_ROOT", "/tmp/strata-tests"))
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    base = Path(tempfile.mkdtemp(prefix="bench-redo-", dir=root))
    os.chmod(base, 0o755)
    backup = base / "backup" if args.pg_replay else None
    c, start, mid, end = make_wal(base, args.scale, args.transactions, args.clients, backup)
    pg: tuple[Lsn, float] | None = None
    try:
        # each phase from a fresh state: both begin right after a CHECKPOINT
        phases = [("pgbench -i", *throughput(c.wal_dir(), start, mid)),
                  ("pgbench run", *throughput(c.wal_dir(), mid, end))]
        raw_by_lsn = {int(r.lsn): r.raw for r in iter_raw_records(c.wal_dir(), mid, end)}
        chains = chain_cost(phases[1][1], raw_by_lsn)
        if backup is not None:
            c.stop()
            pg = pg_replay(c, backup, end)
    finally:
        c.stop()
    per_type: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0, 0])
    print("| phase | records | WAL MB | decode rec/s | decode MB/s | redo rec/s | redo MB/s "
          "| decode+redo rec/s | decode+redo MB/s | records without base |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, records, ptypes, decode_s, redo_s, errors in phases:
        mb = sum(r.xl_tot_len for r in records) / 1e6
        n = len(records)
        both = decode_s + redo_s
        print(f"| {name} | {n:,} | {mb:.1f} | {n / decode_s:,.0f} | {mb / decode_s:.1f} | "
              f"{n / redo_s:,.0f} | {mb / redo_s:.1f} | {n / both:,.0f} | {mb / both:.1f} | "
              f"{errors} |")
        for k, v in ptypes.items():
            acc = per_type[k]
            for i in range(4):
                acc[i] += v[i]
    if pg is not None:
        pg_start, elapsed = pg
        sizes = [len(r.raw) for r in iter_raw_records(c.wal_dir(), pg_start, end)]
        recs, mb = len(sizes), sum(sizes) / 1e6
        print(f"| PostgreSQL 18.6 replay of {pg_start}..{end} (wall {elapsed:.3f} s, "
              f"log timestamps) | {recs:,} | {mb:.1f} | | | "
              f"{recs / elapsed:,.0f} | {mb / elapsed:.1f} | | | |")
    print()
    print("| rmgr/type | records | block refs | WAL MB | redo s | records/s | MB/s | µs/record |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, vals in sorted(per_type.items(), key=lambda kv: -kv[1][1]):
        nrec, secs, nbytes, nblocks = vals
        rps = nrec / secs if secs else float("inf")
        mbs = nbytes / 1e6 / secs if secs else float("inf")
        print(f"| {name} | {int(nrec):,} | {int(nblocks):,} | {nbytes / 1e6:.2f} | {secs:.3f} | "
              f"{rps:,.0f} | {mbs:.1f} | {secs / nrec * 1e6:.1f} |")
    print()
    print("| deltas on top of the image | redo only (ms, median) | decode + redo (ms, median) |")
    print("|---:|---:|---:|")
    for ndeltas, ms, ms_raw in chains:
        print(f"| {ndeltas} | {ms:.3f} | {ms_raw:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
