"""Cold point reads (GetPage@LSN) in process, on kept stores, alternated.

Usage: python bench/bench_getpage.py STORE [STORE ...] [--rounds 2] [--pages 3000]
           [--catalog 1000] [--json OUT]
       python bench/bench_getpage.py --rewrite SRC DST

A STORE is a directory `bench_lazy_scan.py --keep` made (`home/layers` and
`info.json`, whose `lsn` is the point read). For each round and each store in
turn: the store opened read-only, `--pages` relation pages drawn at random (a
fixed seed: the same keys on every store with the same entries) and `--catalog`
pages of system catalogs (relfilenode < 16384: what a new server reads first),
each read once with the store's page cache cleared before each set (the layer
files stay open, as in a lazy file system that has served a while; the OS page
cache is warm). Prints p50 / p90 / mean microseconds a read, then, in a pass
not timed, the block heads and whole blocks a read decompresses on average and
the layers whose key filter ruled the key out (v7).

`--rewrite SRC DST`: a copy of the kept store SRC with every layer rewritten by
this code's writer (same entries, same names and block size; the manifest's
sizes updated): the same history in the current layer format, to compare a
format change on identical entries.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from strata.key import Key, KeyKind, KeyRange
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.reconstruct.reconstruct import reconstruct_value
from strata.storage.config import StorageConfig
from strata.storage.layerfile import LayerFile
from strata.storage.layerwriter import LayerWriter
from strata.storage.manifest import commit_manifest, load_manifest

EVERY = KeyRange(Key.rel_block(0, 0, 0, 0, 0),
                 Key.rel_block(0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 255, 0xFFFFFFFF))


def rewrite(src: Path, dst: Path) -> dict[str, float]:
    """`dst`: `src` with every layer rewritten by this code (see the docstring)."""
    sl, dl = src / "home" / "layers", dst / "home" / "layers"
    shutil.copytree(src, dst, ignore=lambda d, names: names if Path(d) == sl else [])
    for p in sl.iterdir():
        if p.suffix not in (".delta", ".image"):
            shutil.copy2(p, dl / p.name)
    m = load_manifest(sl)
    assert m is not None, f"no store in {sl}"
    out = []
    block = StorageConfig().block_bytes
    for le in m.layers:
        f = LayerFile(sl / le.name.filename())
        try:
            b = f.batch_range(b"", b"\xff" * 19)
            w = LayerWriter(dl, block_bytes=block, zstd_level=StorageConfig().zstd_level)
            if len(b):
                w.add_batch(b)
            out.append(dataclasses.replace(le, size=w.finish(le.name).size))
        finally:
            f.close()
    commit_manifest(dl, dataclasses.replace(m, layers=tuple(out)))
    return {"layers": len(out), "mb_before": sum(le.size for le in m.layers) / 1e6,
            "mb_after": sum(le.size for le in out) / 1e6}


def sample(store: Path, n_pages: int, n_catalog: int) -> dict[str, list[Key]]:
    info = json.loads((store / "info.json").read_text())
    at = int(Lsn.parse(info["lsn"]))
    ps = PageStore.open(store / "home" / "layers", reconstruct_value, background=False)
    try:
        keys = [k for k in ps.keys(EVERY, at) if k.kind == KeyKind.REL_BLOCK]
    finally:
        ps.close()
    rnd = random.Random(7)
    catalog = [k for k in keys if k.rel < 16384]
    return {"all": rnd.sample(keys, min(n_pages, len(keys))),
            "catalog": rnd.sample(catalog, min(n_catalog, len(catalog)))}


class _Counts:
    """Block heads and whole blocks decompressed, layers a filter ruled out."""

    def __init__(self) -> None:
        self.heads = self.blocks = self.ruled_out = 0
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> _Counts:
        lf = LayerFile
        self._saved = {n: getattr(lf, n) for n in ("_head", "_block_frames", "may_hold")}
        head, frames, may = (self._saved[n] for n in ("_head", "_block_frames", "may_hold"))

        def _head(f: LayerFile, *a: Any, **k: Any) -> Any:
            self.heads += 1
            return head(f, *a, **k)

        def _frames(f: LayerFile, *a: Any, **k: Any) -> Any:
            self.blocks += 1
            return frames(f, *a, **k)

        def _may(f: LayerFile, key: bytes) -> bool:
            ok = bool(may(f, key))
            self.ruled_out += not ok
            return ok

        lf._head, lf._block_frames, lf.may_hold = _head, _frames, _may  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for n, v in self._saved.items():
            setattr(LayerFile, n, v)


def measure(store: Path, keys: dict[str, list[Key]]) -> dict[str, Any]:
    info = json.loads((store / "info.json").read_text())
    at = int(Lsn.parse(info["lsn"]))
    ps = PageStore.open(store / "home" / "layers", reconstruct_value, background=False)
    out: dict[str, Any] = {"store": str(store), "load": os.getloadavg()[0]}
    try:
        for name, ks in keys.items():
            ps.clear_cache()
            ts = []
            for k in ks:
                t = time.perf_counter()
                ps.get_page(k, at)
                ts.append(time.perf_counter() - t)
            ts.sort()
            out[name] = {"p50_us": round(ts[len(ts) // 2] * 1e6),
                         "p90_us": round(ts[int(len(ts) * 0.9)] * 1e6),
                         "mean_us": round(statistics.fmean(ts) * 1e6)}
            ps.clear_cache()
            with _Counts() as c:
                for k in ks:
                    ps.get_page(k, at)
            out[name].update(heads=round(c.heads / len(ks), 2),
                             blocks=round(c.blocks / len(ks), 2),
                             ruled_out=round(c.ruled_out / len(ks), 2))
    finally:
        ps.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stores", type=Path, nargs="*")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pages", type=int, default=3000)
    ap.add_argument("--catalog", type=int, default=1000)
    ap.add_argument("--rewrite", type=Path, nargs=2, metavar=("SRC", "DST"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.rewrite:
        t = time.perf_counter()
        r = rewrite(*args.rewrite)
        print(json.dumps({**r, "seconds": round(time.perf_counter() - t, 1)}))
        return 0
    if not args.stores:
        ap.error("name at least one STORE (or --rewrite SRC DST)")
    keys = sample(args.stores[0], args.pages, args.catalog)
    res: dict[str, Any] = {"load_start": os.getloadavg(), "runs": []}
    for r in range(args.rounds):
        for s in args.stores:
            m = measure(s, keys)
            m["round"] = r
            res["runs"].append(m)
            print(json.dumps(m), flush=True)
    res["load_end"] = os.getloadavg()
    print(f"load average start {res['load_start'][0]:.2f}, end {res['load_end'][0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
