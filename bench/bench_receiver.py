"""Benchmark the WAL sources: streaming throughput, file throughput, live lag.

    python bench/bench_receiver.py [--scale 5] [--seconds 15]

Builds a primary, creates a physical slot, runs ``pgbench -i -s SCALE`` and then
measures over the same WAL range [slot start, flush LSN):
  * stream only: `WalReceiver` chunks, nothing else (MB/s);
  * stream + frame + decode: what `strata up` does per chunk (MB/s, records/s);
  * files only: `FileSource` over pg_wal (MB/s);
then, while ``pgbench -c 4 -j 2 -T SECONDS`` runs, streams + decodes live and
samples the lag (server flush LSN - processed LSN) every 0.25 s.
Results go to stdout as markdown (bench/results/receiver.md keeps them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from strata.lsn import Lsn
from strata.runtime.cluster import SUPERUSER, Cluster
from strata.wal.decoder import decode_record
from strata.wal.reader import WalReader
from strata.wal.receiver import WalReceiver
from strata.wal.replication import ensure_physical_slot
from strata.wal.source import FileSource, WalSource


def _pgbench(c: Cluster, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    subprocess.run([str(c.bins.path("pgbench")), "-h", "127.0.0.1", "-p", str(c.port),
                    "-U", SUPERUSER, *args, "postgres"], check=True, env=env,
                   capture_output=True)


def _flush(c: Cluster) -> Lsn:
    return Lsn.parse(c.sql("SELECT pg_current_wal_flush_lsn()::text")[0][0])


def _drain(src: WalSource, end: Lsn, decode: bool) -> tuple[float, int]:
    t0 = time.perf_counter()
    reader = WalReader(src.start_lsn) if decode else None
    pos, records, nbytes = src.start_lsn, 0, 0
    while pos < end:
        ch = src.poll(1.0)
        if ch is None:
            if src.finished:
                break
            continue
        assert ch.start == pos
        pos = ch.end
        nbytes += len(ch.data)
        if reader is not None:
            reader.feed(ch.data)
            for raw in reader:
                decode_record(raw.raw, raw.lsn, raw.end_lsn)
                records += 1
                if raw.end_lsn >= end:
                    break
    elapsed = time.perf_counter() - t0
    assert nbytes >= end - src.start_lsn, f"only {nbytes} bytes read"
    return elapsed, records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=15)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-rx-", dir="/tmp"))
    os.chmod(base, 0o755)
    c = Cluster(datadir=base / "primary" / "data")
    c.initdb(settings={"max_wal_size": "2GB", "wal_keep_size": "0"})
    c.start()
    try:
        info, _ = ensure_physical_slot(c.dsn(), "bench")
        assert info.restart_lsn is not None
        start = info.restart_lsn
        _pgbench(c, "-i", "-q", "-s", str(args.scale))
        end = _flush(c)
        mb = (end - start) / 1e6
        rows = []
        for name, decode, make in (
            ("stream only", False, lambda: WalReceiver(c.dsn(), "bench", start)),
            ("stream + frame + decode", True, lambda: WalReceiver(c.dsn(), "bench", start)),
            ("files only (FileSource)", False, lambda: FileSource(c.wal_dir(), start)),
            ("files + frame + decode", True, lambda: FileSource(c.wal_dir(), start)),
        ):
            src = make()
            try:
                secs, recs = _drain(src, end, decode)
            finally:
                src.close()
            rows.append((name, secs, recs))
        print(f"WAL range {start}..{end}: {mb:.1f} MB (pgbench -i -s {args.scale})\n")
        print("| source | seconds | MB/s | records/s |")
        print("|---|---|---|---|")
        for name, secs, recs in rows:
            rps = f"{recs / secs:,.0f}" if recs else "-"
            print(f"| {name} | {secs:.2f} | {mb / secs:.1f} | {rps} |")

        # -- live: lag while pgbench runs -------------------------------------------------
        live_start = _flush(c)
        rx = WalReceiver(c.dsn(), "bench", live_start, status_interval=1)
        reader = WalReader(live_start)
        processed = [live_start]
        stop = threading.Event()

        def consume() -> None:
            while not stop.is_set():
                ch = rx.poll(0.2)
                if ch is None:
                    continue
                reader.feed(ch.data)
                for raw in reader:
                    decode_record(raw.raw, raw.lsn, raw.end_lsn)
                    processed[0] = raw.end_lsn
                rx.report(processed[0], processed[0])

        t = threading.Thread(target=consume)
        t.start()
        lags: list[int] = []
        bench = threading.Thread(target=_pgbench, args=(c, "-c", "4", "-j", "2", "-T",
                                                         str(args.seconds)))
        t0 = time.perf_counter()
        bench.start()
        while bench.is_alive():
            lags.append(max(0, _flush(c) - processed[0]))
            time.sleep(0.25)
        wal_mb = (_flush(c) - live_start) / 1e6
        elapsed = time.perf_counter() - t0
        catch_up_t0 = time.perf_counter()
        target = _flush(c)
        while processed[0] < target:
            time.sleep(0.05)
        catch_up = time.perf_counter() - catch_up_t0
        stop.set()
        t.join()
        rx.close()
        lags.sort()
        print(f"\nLive, pgbench -c 4 -j 2 -T {args.seconds}: primary wrote {wal_mb:.1f} MB "
              f"({wal_mb / elapsed:.1f} MB/s); lag sampled every 0.25 s: median "
              f"{lags[len(lags) // 2] / 1e3:.0f} kB, p95 {lags[int(len(lags) * .95)] / 1e3:.0f} kB, "
              f"max {lags[-1] / 1e3:.0f} kB; caught up {catch_up:.2f} s after pgbench ended.")
    finally:
        c.stop("immediate")
        subprocess.run(["rm", "-rf", str(base)], check=False)


if __name__ == "__main__":
    main()
