"""Layer store benchmark: put throughput with flush on, GetPage@LSN latency for delta
chains of 1/3/10 (cold and warm cache), compaction throughput, write and space
amplification, and a realistic mixed put/flush/compact/image loop.

Run: python bench/bench_storage.py [--pages N] [--out bench/results/storage.md]
     python bench/bench_storage.py --profile [--batched] [--entries N]  (cProfile, mixed loop)
Values are synthetic 8 KB pages (half random, half zero, like a half-full heap page)
and 100-byte deltas; redo is trivial (append), so this measures storage, not redo.
The mixed loop puts 8 KB images and 100-300 byte deltas in a ~1:10 ratio, all on
the caller's thread (flush, compaction, images inline), so cProfile sees every step.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from strata.key import Key, KeyRange
from strata.pagestore import PageStore
from strata.storage.batch import EntryBatch
from strata.storage.config import StorageConfig
from strata.storage.values import Entry, PageImage, WalRecord


def redo(key: Key, base: bytes | None, records: list[WalRecord]) -> bytes:
    return (base or b"") + b"".join(r.data for r in records)


def page(rnd: random.Random) -> bytes:
    return rnd.randbytes(4096) + bytes(4096)


def key(i: int) -> Key:
    return Key.rel_block(1663, 5, 16384 + i // 100_000, 0, i % 100_000)


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file())


def bench_put(root: Path, pages: int, deltas_per_page: int) -> dict[str, float]:
    rnd = random.Random(1)
    cfg = StorageConfig(memtable_bytes=16 << 20, target_file_bytes=32 << 20,
                        l0_compaction_trigger=4, image_delta_threshold=3)
    ps = PageStore.open(root / "put", redo, cfg)
    payloads = [page(rnd) for _ in range(64)]
    deltas = [WalRecord(rnd.randbytes(100)) for _ in range(64)]
    lsn = 0
    t0 = time.perf_counter()
    for i in range(pages):
        lsn += 8200
        ps.put(key(i), lsn, PageImage(payloads[i % 64]))
        ps.advance(lsn)
    for j in range(pages * deltas_per_page):
        lsn += 160
        ps.put(key(rnd.randrange(pages)), lsn, deltas[j % 64])
        ps.advance(lsn)
    ps.flush()
    elapsed = time.perf_counter() - t0
    ps.wait_maintenance()  # compaction / images the worker still owes
    settled = time.perf_counter() - t0
    m = ps.metrics()
    ps.close()
    written = m.bytes_flushed + m.bytes_compacted + m.bytes_imaged
    live = dir_bytes(root / "put")
    return {
        "seconds": elapsed, "settled": settled, "entries": m.entries_put, "bytes_put": m.bytes_put,
        "mb_s": m.bytes_put / elapsed / (1 << 20), "entries_s": m.entries_put / elapsed,
        "flushes": m.flushes, "compactions": m.compactions, "images": m.image_layers_created,
        "write_amp": written / m.bytes_put, "space_amp": live / m.bytes_put,
        "live_bytes": live, "written": written,
    }


def bench_getpage(root: Path, chain: int, keys: int, samples: int,
                  compacted: bool) -> dict[str, float]:
    rnd = random.Random(chain)
    d = root / f"get{chain}-{compacted}"
    cfg = StorageConfig(memtable_bytes=256 << 20, cache_pages=keys * 2,
                        background_maintenance=False)
    ps = PageStore.open(d, redo, cfg, background=False)
    lsn = 8
    for i in range(keys):
        ps.put(key(i), lsn, PageImage(page(rnd)))
    ps.advance(lsn)
    ps.flush()
    ps.create_image_layers(threshold=0)  # base images in an image layer
    for _ in range(chain):  # one flush per delta round: chain spread over `chain` L0s
        lsn += 8
        for i in range(keys):
            ps.put(key(i), lsn, WalRecord(rnd.randbytes(100)))
        ps.advance(lsn)
        ps.flush()
    if compacted:
        ps.compact(force=True)  # ... then merged into L1s, the steady state
    ps.close()
    ps = PageStore.open(d, redo, cfg, background=False)  # files reopened
    order = [rnd.randrange(keys) for _ in range(samples)]
    cold: list[float] = []
    before = ps.metrics()
    for i in order:  # cold: cache cleared before each read
        ps.clear_cache()
        t = time.perf_counter()
        ps.get_page(key(i), lsn)
        cold.append(time.perf_counter() - t)
    after = ps.metrics()
    for i in range(keys):
        ps.get_page(key(i), lsn)
    warm: list[float] = []
    for i in order:
        t = time.perf_counter()
        ps.get_page(key(i), lsn)
        warm.append(time.perf_counter() - t)
    ps.close()

    def pct(xs: list[float], p: float) -> float:
        return statistics.quantiles(xs, n=100)[int(p) - 1] * 1000 if p < 100 else max(xs) * 1000

    return {"cold_p50": pct(cold, 50), "cold_p99": pct(cold, 99), "cold_mean": statistics.mean(cold) * 1000,
            "warm_p50": pct(warm, 50), "warm_p99": pct(warm, 99),
            "layers_per_get": (after.layers_visited - before.layers_visited) / samples,
            "deltas_per_get": (after.deltas_applied - before.deltas_applied) / samples}


def bench_compaction(root: Path, pages: int) -> dict[str, float]:
    rnd = random.Random(9)
    d = root / "compact"
    cfg = StorageConfig(memtable_bytes=8 << 20, target_file_bytes=32 << 20,
                        background_maintenance=False)
    ps = PageStore.open(d, redo, cfg, background=False)
    lsn = 0
    payloads = [page(rnd) for _ in range(64)]
    for i in range(pages):
        lsn += 8200
        ps.put(key(rnd.randrange(pages)), lsn, PageImage(payloads[i % 64]))
        ps.advance(lsn)
    ps.flush()
    l0 = ps.store.view().layer_map.l0()
    in_bytes = sum(la.entry.size for la in l0)
    raw = sum(la.file.entry_count for la in l0)
    t = time.perf_counter()
    ps.compact(force=True)
    el = time.perf_counter() - t
    t = time.perf_counter()
    n = sum(1 for _ in ps.scan(KeyRange.everything(), lsn))
    scan_el = time.perf_counter() - t
    ps.close()
    return {"l0_files": len(l0), "in_mb": in_bytes / (1 << 20), "entries": raw,
            "seconds": el, "mb_s": in_bytes / el / (1 << 20), "entries_s": raw / el,
            "scan_pages_s": n / scan_el}


def mixed_stream(entries: int, keys: int, seed: int = 3) -> list[tuple[Key, int, PageImage | WalRecord]]:
    """WAL-like puts: ~1 in 11 an 8 KB page image, else a 100-300 byte delta (a
    16-byte LSN header, a record-like header, half-random payload), LSNs advancing by
    the record size as WAL positions do."""
    rnd = random.Random(seed)
    pages = [page(rnd) for _ in range(32)]
    out: list[tuple[Key, int, PageImage | WalRecord]] = []
    lsn = 0
    for i in range(entries):
        k = key(rnd.randrange(keys))
        if i % 11 == 0:
            v: PageImage | WalRecord = PageImage(pages[i % 32])
            lsn += 8192 + 50
        else:
            n = rnd.randint(100, 300)
            body = rnd.randbytes(n // 2) + bytes(n - n // 2 - 40)
            v = WalRecord(lsn.to_bytes(8, "little") + (lsn + n).to_bytes(8, "little")
                          + b"\x2a\x00\x00\x00\x0a\x00\x00\x00" + bytes(16) + body)
            lsn += n
        out.append((k, lsn, v))
    return out


def as_batches(stream: list[tuple[Key, int, PageImage | WalRecord]],
               size: int = 256) -> list[EntryBatch]:
    """The stream cut into put_batch batches of `size` entries (what ingest builds)."""
    return [EntryBatch.from_entries(Entry(k.to_bytes(), lsn, v)
                                    for k, lsn, v in stream[i:i + size])
            for i in range(0, len(stream), size)]


def bench_mixed(root: Path, stream: list[tuple[Key, int, PageImage | WalRecord]],
                batches: list[EntryBatch] | None = None) -> dict[str, float]:
    """put + advance per entry (or put_batch + advance per batch), flush every
    memtable, compaction and image creation as the background worker would run
    them, but inline."""
    entries = len(stream)
    d = root / "mixed"
    cfg = StorageConfig(memtable_bytes=8 << 20, target_file_bytes=32 << 20,
                        background_maintenance=False)
    ps = PageStore.open(d, redo, cfg, background=False)

    def maintain() -> None:
        if ps.store.frozen_count():
            ps.flush()
            ps.compact(force=False)
            ps.create_image_layers()

    t0 = time.perf_counter()
    if batches is None:
        for k, lsn, v in stream:
            ps.put(k, lsn, v)
            ps.advance(lsn)
            maintain()
    else:
        for b in batches:
            ps.put_batch(b)
            ps.advance(int(b.lsns[-1]))
            maintain()
    ps.flush()
    ps.compact(force=True)
    ps.create_image_layers()
    elapsed = time.perf_counter() - t0
    m = ps.metrics()
    wal = stream[-1][1]
    ps.close()
    live = dir_bytes(d)
    return {"seconds": elapsed, "entries_s": entries / elapsed, "bytes_put": m.bytes_put,
            "wal_bytes": wal, "layer_per_wal": live / wal,
            "written_per_wal": (m.bytes_flushed + m.bytes_compacted + m.bytes_imaged) / wal}


def profile_mixed(entries: int, batched: bool, top: int = 25) -> None:
    root = Path(tempfile.mkdtemp(prefix="strata-bench-"))
    stream = mixed_stream(entries, 5000)
    batches = as_batches(stream) if batched else None
    try:
        prof = cProfile.Profile(time.process_time)  # CPU time: the machine may be shared
        prof.enable()
        res = bench_mixed(root, stream, batches)
        prof.disable()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print({k: round(v, 3) for k, v in res.items()})
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(order).print_stats(top)
        print(buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=20000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", action="store_true",
                    help="only run the mixed loop under cProfile and print its top entries")
    ap.add_argument("--entries", type=int, default=200_000, help="entries of the mixed loop")
    ap.add_argument("--batched", action="store_true",
                    help="with --profile: put_batch of 256 entries instead of put per entry")
    args = ap.parse_args()
    if args.profile:
        profile_mixed(args.entries, args.batched)
        return
    root = Path(tempfile.mkdtemp(prefix="strata-bench-"))
    try:
        put = bench_put(root, args.pages, 3)
        gets = {(c, comp): bench_getpage(root, c, 2000, 2000, comp)
                for comp in (True, False) for c in (1, 3, 10)}
        comp = bench_compaction(root, args.pages)
        stream = mixed_stream(args.entries, 5000)
        mixed = bench_mixed(root, stream)
        mixed_b = bench_mixed(root / "b", stream, as_batches(stream))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = [
        "# Storage benchmark (bench/bench_storage.py)",
        "",
        f"Command: `python bench/bench_storage.py --pages {args.pages}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"(shared with other workers), Python {platform.python_version()}, zstd level 1.",
        "",
        "## Put (ingest) with background flush + compaction on",
        "",
        f"{args.pages} 8 KB page images then {args.pages * 3} 100-byte deltas, one advance per put.",
        "",
        "| MB/s | entries/s | flushes | compactions | image layers | put+flush s | until compaction settled s |",
        "|------|-----------|---------|-------------|--------------|-------------|----------------------------|",
        f"| {put['mb_s']:.1f} | {put['entries_s']:,.0f} | {put['flushes']:.0f} | "
        f"{put['compactions']:.0f} | {put['images']:.0f} | {put['seconds']:.2f} | {put['settled']:.2f} |",
        "",
        f"Write amplification (flush + compaction + image bytes written / bytes put): "
        f"**{put['write_amp']:.2f}**  ",
        f"Space amplification (live layer bytes / bytes put; < 1 means compression wins): "
        f"**{put['space_amp']:.2f}**",
        "",
        "## GetPage@LSN (image + N deltas, trivial redo; 2000 keys, 2000 reads)",
        "",
        "| chain | layout | cold p50 ms | cold p99 ms | cold mean ms | warm p50 ms | warm p99 ms | layers/get | deltas/get |",
        "|-------|--------|-------------|-------------|--------------|-------------|-------------|------------|------------|",
    ]
    for (c, compacted), g in gets.items():
        layout = "image + 1 L1" if compacted else f"image + {c} L0"
        lines.append(f"| {c} | {layout} | {g['cold_p50']:.3f} | {g['cold_p99']:.3f} | {g['cold_mean']:.3f} | "
                     f"{g['warm_p50']:.4f} | {g['warm_p99']:.4f} | {g['layers_per_get']:.1f} | "
                     f"{g['deltas_per_get']:.1f} |")
    lines += [
        "",
        "Cold = our page cache cleared before each read (the OS page cache stays warm: "
        "this measures decode/decompress/merge, not disk).",
        "",
        "## Compaction (compact_l0)",
        "",
        "| L0 files | input MB | entries | seconds | MB/s | entries/s | full scan pages/s |",
        "|----------|----------|---------|---------|------|-----------|-------------------|",
        f"| {comp['l0_files']:.0f} | {comp['in_mb']:.1f} | {comp['entries']:.0f} | "
        f"{comp['seconds']:.2f} | {comp['mb_s']:.1f} | {comp['entries_s']:,.0f} | "
        f"{comp['scan_pages_s']:,.0f} |",
        "",
        f"## Mixed loop ({args.entries} puts: 8 KB images and 100-300 byte deltas, 1:10)",
        "",
        "| puts | seconds | entries/s | layer bytes per WAL byte | bytes written per WAL byte |",
        "|------|---------|-----------|--------------------------|----------------------------|",
        f"| put per entry | {mixed['seconds']:.2f} | {mixed['entries_s']:,.0f} | "
        f"{mixed['layer_per_wal']:.3f} | {mixed['written_per_wal']:.3f} |",
        f"| put_batch of 256 | {mixed_b['seconds']:.2f} | {mixed_b['entries_s']:,.0f} | "
        f"{mixed_b['layer_per_wal']:.3f} | {mixed_b['written_per_wal']:.3f} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
