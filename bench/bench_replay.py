"""Deterministic replay: the CPU of flush, compaction and image creation on the same
WAL, and the bytes they write, comparable to the byte between two versions of the code.

Usage: python bench/bench_replay.py --wal-cache DIR [--step 256] [--scan] [--json OUT]

DIR is a WAL cache that `bench_ingest.py --offline --wal-cache DIR` recorded (and
records, with its own options, when DIR holds none: e.g. `--only
pgbench_init,tpcb,tpcb_steady --pgbench-scale 100 --tpcb-tx 20000`). The WAL is
fed through the ingest pipeline into a fresh store imported from the cache's base,
with no background work; every `--step` MiB of WAL: a flush, then compaction and
image creation by the store's own rules (`PageStore.compact(force=False)`,
`create_image_layers()`), each timed apart in CPU seconds of this process. Same
input, same decisions: unlike a live run, which images get made does not depend
on timing. At the end it prints a SHA-256 over every layer file's name and bytes:
two codes that write the same store print the same digest.

`--scan`: a second pass with no compaction or images at all, fed to the end of the
cache's first phase (e.g. `pgbench -i`), then a cold in-process scan
(`PageStore.scan_pages`) of the relation fork with the most pages at that LSN: every
page rebuilt from its deltas, as a read of a point right after a bulk load before
any image; its CPU seconds and a SHA-256 of the pages read.

To compare two codes, run the same command with `PYTHONPATH=<other tree>/src`
(its extensions built: `python setup.py build_ext --inplace` there).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench_ingest import open_offline, scratch
from strata.key import Key, KeyKind, KeyRange
from strata.lsn import Lsn

PAGE = 8192


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def feed_to(pipe: Any, lsn: Lsn) -> None:
    """Feed the cached WAL up to `lsn` (or the last record end before it), advancing
    every 8 MiB as the ingest service does."""
    pipe.stream.limit = lsn
    pending = 0
    while chunks := pipe.take(0):
        pipe.feed(*chunks)
        pending += sum(len(c.data) for c in chunks)
        if pending >= 8 << 20:
            pipe.advance(time.monotonic())
            pending = 0
    pipe.advance(time.monotonic())


def layers_digest(layers: Path) -> tuple[str, dict[str, int]]:
    h = hashlib.sha256()
    sizes = {"delta": 0, "image": 0}
    for p in sorted(layers.iterdir()):
        kind = p.suffix.lstrip(".")
        if kind in sizes:
            h.update(p.name.encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
            sizes[kind] += p.stat().st_size
    return h.hexdigest()[:16], sizes


def replay(cache: Path, step: int, meta: dict[str, Any]) -> dict[str, Any]:
    work = scratch()
    try:
        ps, tm, pipe = open_offline(cache, work, maintenance=True, background=False)
        try:
            end = int(Lsn.parse(meta["phases"][-1]["end"]))
            pos = start = int(pipe.processed)
            t = {"feed": 0.0, "compact": 0.0, "images": 0.0}
            while pos < end:
                pos = min(end, pos + step)
                c0 = cpu()
                feed_to(pipe, Lsn(pos))
                ps.flush()
                c1 = cpu()
                ps.compact(force=False)
                c2 = cpu()
                ps.create_image_layers()
                c3 = cpu()
                t["feed"] += c1 - c0
                t["compact"] += c2 - c1
                t["images"] += c3 - c2
        finally:
            ps.close()
            tm.close()
        digest, sizes = layers_digest(work / "layers")
        return {"wal_mb": round((end - start) / 1e6, 1),
                "cpu_s": {k: round(v, 2) for k, v in t.items()},
                "delta_mb": round(sizes["delta"] / 1e6, 1),
                "image_mb": round(sizes["image"] / 1e6, 1), "layers_sha256": digest}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def scan_after_first_phase(cache: Path, meta: dict[str, Any]) -> dict[str, Any]:
    work = scratch()
    try:
        ps, tm, pipe = open_offline(cache, work, maintenance=False, background=False)
        try:
            feed_to(pipe, Lsn.parse(meta["phases"][0]["end"]))
            ps.flush()
            lsn = int(pipe.processed)
            pages: collections.Counter[tuple[int, int, int, int]] = collections.Counter()
            every = KeyRange(Key.rel_block(0, 0, 0, 0, 0),
                             Key.rel_block(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 255, 0xFFFFFFFF))
            for k in ps.keys(every, lsn):
                if k.kind == KeyKind.REL_BLOCK:
                    pages[(k.spc, k.db, k.rel, k.fork)] += 1
            (spc, db, rel, fork), n = pages.most_common(1)[0]
            h = hashlib.sha256()
            ps.clear_cache()
            c0 = cpu()
            for b0 in range(0, n, 4096):
                h.update(ps.scan_pages(Key.rel_block(spc, db, rel, fork, b0),
                                       min(4096, n - b0), lsn, PAGE))
            spent = cpu() - c0
        finally:
            ps.close()
            tm.close()
        return {"relation": [spc, db, rel, fork], "pages": n, "at": str(Lsn(lsn)),
                "cpu_s": round(spent, 2), "pages_sha256": h.hexdigest()[:16]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wal-cache", type=Path, required=True,
                    help="a bench_ingest.py --offline WAL cache (phases.json, base, wal)")
    ap.add_argument("--step", type=int, default=256, help="MiB of WAL between maintenance")
    ap.add_argument("--scan", action="store_true",
                    help="also scan the biggest relation at the end of the first phase")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    meta_file = args.wal_cache / "phases.json"
    if not meta_file.exists():
        print(f"{meta_file} is missing: record the cache with bench_ingest.py --offline "
              "--wal-cache first", file=sys.stderr)
        return 2
    meta = json.loads(meta_file.read_text())
    res: dict[str, Any] = {"load_start": os.getloadavg(),
                           "replay": replay(args.wal_cache, args.step << 20, meta)}
    print(json.dumps(res["replay"]), flush=True)
    if args.scan:
        res["scan"] = scan_after_first_phase(args.wal_cache, meta)
        print(json.dumps(res["scan"]), flush=True)
    res["load_end"] = os.getloadavg()
    print(f"load average start {res['load_start']}, end {res['load_end']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
