"""Deterministic replay: the CPU of flush, compaction and image creation on the same
WAL, and the bytes they write, comparable to the byte between two versions of the code.

Usage: python bench/bench_replay.py --wal-cache DIR [--step 256] [--scan] [--scan-steps]
           [--json OUT]

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
any image; its CPU seconds and a SHA-256 of the pages read. The pages go into one
reused buffer (from the thirty-first session on: before, each call allocated and
zeroed 32 MiB, which was up to a third of the time measured).

`--scan-steps`: what the image policy costs reads. At every step from the end of
the first phase on, after compaction and before image creation (so at a point as
far from the last images as that step gets), a cold scan of the biggest relation
there, the same way; one JSON line a step (scan CPU, pages' SHA-256, image CPU and
layers made), their sum in the summary.

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


Relation = tuple[int, int, int, int, int]  # spc, db, rel, fork, pages
SCAN_PAGES = 4096  # pages a scan_pages call rebuilds


def biggest_relation(ps: Any, lsn: int) -> Relation:
    """The relation fork with the most pages at `lsn`, and that number."""
    pages: collections.Counter[tuple[int, int, int, int]] = collections.Counter()
    every = KeyRange(Key.rel_block(0, 0, 0, 0, 0),
                     Key.rel_block(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 255, 0xFFFFFFFF))
    for k in ps.keys(every, lsn):
        if k.kind == KeyKind.REL_BLOCK:
            pages[(k.spc, k.db, k.rel, k.fork)] += 1
    (spc, db, rel, fork), n = pages.most_common(1)[0]
    return spc, db, rel, fork, n


def scan_relation(ps: Any, r: Relation, lsn: int, buf: bytearray) -> tuple[float, str]:
    """A cold scan (`PageStore.scan_pages`, the cache cleared) of every page of `r` at
    `lsn`, into `buf` (SCAN_PAGES pages, reused: no allocation is timed): its CPU
    seconds and a SHA-256 of the pages read."""
    spc, db, rel, fork, n = r
    h = hashlib.sha256()
    ps.clear_cache()
    c0 = cpu()
    for b0 in range(0, n, SCAN_PAGES):
        m = min(SCAN_PAGES, n - b0)
        h.update(ps.scan_pages(Key.rel_block(spc, db, rel, fork, b0), m, lsn, PAGE,
                               memoryview(buf)[:m * PAGE]))
    return cpu() - c0, h.hexdigest()[:16]


def replay(cache: Path, step: int, meta: dict[str, Any], scan_steps: bool = False
           ) -> dict[str, Any]:
    """The replay; with `scan_steps`, at every step from the end of the first phase on,
    after compaction and before image creation (a point as old as the images get), a
    cold scan of the biggest relation there (found once, at the first such step)."""
    work = scratch()
    try:
        ps, tm, pipe = open_offline(cache, work, maintenance=True, background=False)
        try:
            end = int(Lsn.parse(meta["phases"][-1]["end"]))
            first = int(Lsn.parse(meta["phases"][0]["end"]))
            pos = start = int(pipe.processed)
            t = {"feed": 0.0, "compact": 0.0, "images": 0.0}
            steps: list[dict[str, Any]] = []
            rel: Relation | None = None
            buf = bytearray(SCAN_PAGES * PAGE) if scan_steps else bytearray()
            while pos < end:
                pos = min(end, pos + step)
                c0 = cpu()
                feed_to(pipe, Lsn(pos))
                ps.flush()
                c1 = cpu()
                ps.compact(force=False)
                c2 = cpu()
                at = int(pipe.processed)
                row: dict[str, Any] = {"lsn": str(Lsn(at))}
                if scan_steps and at >= first:
                    rel = rel or biggest_relation(ps, at)
                    row["scan_cpu_s"], row["pages_sha256"] = scan_relation(ps, rel, at, buf)
                    row["scan_cpu_s"] = round(row["scan_cpu_s"], 2)
                c3 = cpu()
                made = ps.create_image_layers()
                c4 = cpu()
                t["feed"] += c1 - c0
                t["compact"] += c2 - c1
                t["images"] += c4 - c3
                if scan_steps:
                    row |= {"images_cpu_s": round(c4 - c3, 2), "images_made": len(made)}
                    steps.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            ps.close()
            tm.close()
        digest, sizes = layers_digest(work / "layers")
        out = {"wal_mb": round((end - start) / 1e6, 1),
               "cpu_s": {k: round(v, 2) for k, v in t.items()},
               "delta_mb": round(sizes["delta"] / 1e6, 1),
               "image_mb": round(sizes["image"] / 1e6, 1), "layers_sha256": digest}
        if scan_steps:
            out |= {"relation": list(rel) if rel else None,
                    "scan_cpu_s": round(sum(r.get("scan_cpu_s", 0.0) for r in steps), 2),
                    "steps": steps}
        return out
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
            rel = biggest_relation(ps, lsn)
            spent, sha = scan_relation(ps, rel, lsn, bytearray(SCAN_PAGES * PAGE))
        finally:
            ps.close()
            tm.close()
        return {"relation": list(rel[:4]), "pages": rel[4], "at": str(Lsn(lsn)),
                "cpu_s": round(spent, 2), "pages_sha256": sha}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wal-cache", type=Path, required=True,
                    help="a bench_ingest.py --offline WAL cache (phases.json, base, wal)")
    ap.add_argument("--step", type=int, default=256, help="MiB of WAL between maintenance")
    ap.add_argument("--scan", action="store_true",
                    help="also scan the biggest relation at the end of the first phase")
    ap.add_argument("--scan-steps", action="store_true",
                    help="scan the biggest relation cold at every step after the first "
                         "phase, before that step's images (what a policy costs reads)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    meta_file = args.wal_cache / "phases.json"
    if not meta_file.exists():
        print(f"{meta_file} is missing: record the cache with bench_ingest.py --offline "
              "--wal-cache first", file=sys.stderr)
        return 2
    meta = json.loads(meta_file.read_text())
    res: dict[str, Any] = {"load_start": os.getloadavg(),
                           "replay": replay(args.wal_cache, args.step << 20, meta, args.scan_steps)}
    print(json.dumps({k: v for k, v in res["replay"].items() if k != "steps"}), flush=True)
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
