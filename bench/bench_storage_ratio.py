"""Layer bytes per WAL byte on real WAL, and what the layers hold.

A primary runs three phases: `pgbench -i -s SCALE` (bulk load), `pgbench -c2
-t TX` (TPC-B), one bulk `UPDATE pgbench_accounts SET abalance = abalance + 1`,
and the same UPDATE again right after a CHECKPOINT (full-page images);
its WAL is then ingested phase by phase into a store (import at a clean stop,
WalIngest, flush, compaction and images as the in-process worker makes them).
Per phase it reports WAL bytes, layer bytes added (live files after the phase
minus before) and their ratio. Then, over the final store, what is stored:
bytes per value kind and key kind, record values stored more than once (a WAL
record with several block references is stored once per block), and the size
the same blocks would take at other zstd levels and block sizes.

The WAL is ingested `--flush-mb` MB at a time, each followed by a flush and the
maintenance it triggers (compaction, image layers), as a running `strata up`
flushes every so often; so image layers are made as the policy makes them live,
and the table splits each phase's bytes into delta and image layers.

Run: python bench/bench_storage_ratio.py [--scale 5] [--tx 20000] [--flush-mb 8]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import zstandard

from strata.bootstrap import import_datadir
from strata.errors import WalDecodeError
from strata.historical.source import DataDirSource
from strata.ingest.transam import TransamIngest
from strata.ingest.walingest import WalIngest
from strata.key import KeyKind
from strata.keyspace.relation import decode_delta
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.reconstruct.reconstruct import reconstruct_value
from strata.runtime.cluster import SUPERUSER, Cluster
from strata.storage.blocks import encode_columns
from strata.storage.config import StorageConfig
from strata.storage.layerfile import LayerFile
from strata.storage.manifest import Level, load_manifest
from strata.storage.values import ENTRY_HEADER
from strata.timemap.timemap import TimeMap
from strata.wal.decoder import decode_record
from strata.wal.segments import iter_records

SCRATCH = Path(os.environ.get("STRATA_TEST_ROOT", "/tmp/strata-tests")) / "bench"


def pgbench(c: Cluster, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    subprocess.run([str(c.bins.path("pgbench")), *args, "-h", "127.0.0.1", "-p", str(c.port),
                    "-U", SUPERUSER, "postgres"], check=True, env=env, capture_output=True)


def live_bytes(d: Path) -> tuple[int, int]:
    """Bytes of the live delta layers and of the live image layers."""
    m = load_manifest(d)
    if m is None:
        return 0, 0
    images = sum(le.size for le in m.layers if le.level == Level.IMAGE)
    return sum(le.size for le in m.layers) - images, images


def run_workload(c: Cluster, scale: int, tx: int) -> list[tuple[str, Lsn]]:
    """Phases and the WAL position at each one's end."""
    ends = []
    with c.connect() as conn:
        conn.autocommit = True

        def lsn() -> Lsn:
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
            assert row is not None
            return Lsn.parse(row[0])

        pgbench(c, "-i", "-s", str(scale), "-q")
        ends.append(("pgbench -i", lsn()))
        pgbench(c, "-c", "2", "-j", "2", "-t", str(tx // 2))
        ends.append(("pgbench TPC-B", lsn()))
        conn.execute("UPDATE pgbench_accounts SET abalance = abalance + 1")
        ends.append(("bulk UPDATE", lsn()))
        # as on a live server, where a checkpoint comes every few minutes: the
        # first change of each page after it carries the page's full image
        conn.execute("CHECKPOINT")
        conn.execute("UPDATE pgbench_accounts SET abalance = abalance + 1")
        ends.append(("bulk UPDATE after a checkpoint", lsn()))
    return ends


def what_is_stored(d: Path) -> None:
    m = load_manifest(d)
    assert m is not None
    by_kind: Counter[str] = Counter()
    by_key: Counter[str] = Counter()
    record_copies: Counter[bytes] = Counter()
    record_bytes: dict[bytes, int] = {}
    levels = {1: 0, 3: 0, 9: 0, 19: 0}
    big: dict[int, int] = {64 << 10: 0, 256 << 10: 0, 1 << 20: 0}
    pending: dict[int, list[bytes]] = {k: [] for k in big}
    total_comp = 0
    fpi_in_records = 0  # full-page images of other blocks inside stored records
    trimmed = 0  # record values not stored as whole WAL records
    as_rows = 0  # the same blocks in the v2 row layout
    for le in m.layers:
        f = LayerFile(d / le.name.filename())
        try:
            for i, blk in enumerate(f.blocks):
                b = f.block_batch(i)
                raw = encode_columns(b)
                total_comp += blk.comp_len
                rows = b"".join(ENTRY_HEADER.pack(e.key, e.lsn, k, len(v)) + v for e, k, v in (
                    (e, int(b.kinds[j]), b.value_at(j)) for j, e in enumerate(b.entries())))
                as_rows += len(zstandard.ZstdCompressor(level=1).compress(rows))
                for lvl in levels:
                    levels[lvl] += len(zstandard.ZstdCompressor(level=lvl).compress(raw))
                for size, parts in pending.items():
                    parts.append(raw)
                    if sum(map(len, parts)) >= size:
                        big[size] += len(zstandard.ZstdCompressor(level=1).compress(b"".join(parts)))
                        parts.clear()
                for e in b.entries():
                    kind = type(e.value).__name__
                    n = len(getattr(e.value, "data", b""))
                    by_kind[f"{le.level.name} {kind}"] += n + 31
                    by_key[KeyKind(e.key[0]).name] += n + 31
                    if kind == "WalRecord":
                        data = e.value.data  # type: ignore[union-attr]
                        h = hashlib.blake2b(data, digest_size=16).digest()
                        record_copies[h] += 1
                        record_bytes[h] = n
                        if e.key[0] == KeyKind.REL_BLOCK:
                            lsn, end, raw = decode_delta(data, e.lsn)
                            try:
                                fpi_in_records += decode_record(raw, lsn, end).fpi_len
                            except WalDecodeError:  # stored without what redo never reads
                                trimmed += 1
        finally:
            f.close()
    for size, parts in pending.items():
        if parts:
            big[size] += len(zstandard.ZstdCompressor(level=1).compress(b"".join(parts)))
    raw_total = sum(by_kind.values())
    print(f"\nfinal store: {len(m.layers)} layers, {sum(live_bytes(d)) / 1e6:.1f} MB in files, "
          f"{raw_total / 1e6:.1f} MB of entries uncompressed")
    print("bytes by level and value kind (uncompressed, 31 B header each):")
    for k, v in by_kind.most_common():
        print(f"  {k:<24} {v / 1e6:8.1f} MB  {100 * v / raw_total:5.1f} %")
    print("bytes by key kind:")
    for k, v in by_key.most_common():
        print(f"  {k:<24} {v / 1e6:8.1f} MB")
    dup = sum(record_bytes[h] * (c - 1) for h, c in record_copies.items() if c > 1)
    recs = sum(record_bytes[h] * c for h, c in record_copies.items())
    print(f"record values stored more than once: {dup / 1e6:.1f} MB of {recs / 1e6:.1f} MB "
          f"of record bytes ({100 * dup / max(recs, 1):.0f} %)")
    print(f"full-page images inside stored record values (of the record's blocks, each "
          f"also stored as a PageImage where it applies): {fpi_in_records / 1e6:.1f} MB; "
          f"record values stored trimmed (not a whole WAL record): {trimmed}")
    print(f"blocks as written (v3 columns, level 1, 64 KiB): {total_comp / 1e6:.1f} MB; "
          f"the same blocks as v2 rows: {as_rows / 1e6:.1f} MB")
    for lvl, n in levels.items():
        print(f"  same blocks at zstd level {lvl:<2}: {n / 1e6:.1f} MB")
    for size, n in big.items():
        print(f"  level 1, blocks of {size >> 10} KiB: {n / 1e6:.1f} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=5)
    ap.add_argument("--tx", type=int, default=20000)
    ap.add_argument("--flush-mb", type=float, default=8.0,
                    help="WAL MB ingested between flushes (each followed by maintenance)")
    args = ap.parse_args()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    os.chmod(SCRATCH, 0o755)
    root = Path(tempfile.mkdtemp(prefix="ratio-", dir=SCRATCH))
    os.chmod(root, 0o755)
    c = Cluster(datadir=root / "data")
    try:
        c.initdb(settings={"wal_keep_size": "4GB", "max_wal_size": "4GB",
                           "autovacuum": "off"})
        c.start()
        c.stop()
        source = DataDirSource(c.datadir)
        cfg = StorageConfig(retention_lsn_distance=None, maintenance_cpu_fraction=1.0)
        store = PageStore.open(root / "layers", reconstruct_value, cfg)
        timemap = TimeMap.open(root / "timemap")
        ingest = WalIngest(store, timemap, TransamIngest(source.control()),
                           start_lsn=source.lsn)
        start = import_datadir(source, ingest)
        store.flush()
        c.start()
        phases = run_workload(c, args.scale, args.tx)
        c.stop()
        print("| phase | WAL MB | layer MB added (deltas + images) | layer bytes per WAL byte |")
        print("|-------|--------|----------------------------------|--------------------------|")
        records = iter_records(c.wal_dir(), start)
        prev_lsn, prev = start, live_bytes(root / "layers")
        rec = next(records, None)
        every = int(args.flush_mb * 1e6)
        for name, end in phases:
            mark = prev_lsn + every
            while rec is not None and rec.end_lsn <= end:
                ingest.ingest(rec)
                if rec.end_lsn >= mark:
                    ingest.advance()
                    store.flush()
                    store.wait_maintenance()
                    mark = rec.end_lsn + every
                rec = next(records, None)
            ingest.advance()
            store.flush()
            store.wait_maintenance()
            now = live_bytes(root / "layers")
            wal = end - prev_lsn
            d, i = now[0] - prev[0], now[1] - prev[1]
            print(f"| {name} | {wal / 1e6:.1f} | {(d + i) / 1e6:.1f} ({d / 1e6:.1f} + "
                  f"{i / 1e6:.1f}) | {(d + i) / wal:.3f} |")
            prev_lsn, prev = end, now
        store.close()
        timemap.close()
        what_is_stored(root / "layers")
    finally:
        c.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
