"""Regenerate the real-WAL samples under tests/data/wal/ (see tests/data/README.md).

Run as root from the project root:  python -m tests.wal.make_samples

It starts a throw-away PostgreSQL 18 cluster with ``wal_compression = pglz``,
runs a small workload, stops it, and keeps:

- ``first_pages.bin``: the first 3 WAL pages (24 KB) of the first segment
  (long header, records spanning pages) and ``first_pages.json``: pg_waldump's
  view (parsed ``-b`` output) of every record that lies entirely inside them.
- ``<name>.bin``: single raw records (XLogRecord header included, page headers
  removed) of interesting kinds, and ``records.json``: for each, its LSN, end
  LSN and pg_waldump's fields; for image records the page pg_waldump restores
  (``--save-fullpage``) as ``<name>.page<block_id>``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from strata.lsn import Lsn
from strata.wal.decoder import decode_record
from strata.wal.segments import SegmentWalSource
from tests.conftest import _scratch, make_cluster
from tests.wal.oracle import parse_detailed, pg_waldump_path, run_pg_waldump

OUT = Path(__file__).resolve().parents[1] / "data" / "wal"

WORKLOAD = [
    "CREATE TABLE t (a int PRIMARY KEY, b text)",
    "INSERT INTO t SELECT g, repeat('x', g % 50) FROM generate_series(1, 3000) g",
    "CHECKPOINT",
    "UPDATE t SET b = 'hot' WHERE a % 50 = 1",
    "UPDATE t SET a = a + 100000 WHERE a % 500 = 3",
    "SELECT pg_replication_origin_create('sample_origin')",
    "SELECT pg_replication_origin_session_setup('sample_origin')",
    "INSERT INTO t VALUES (-5, 'with origin')",
    "SELECT pg_replication_origin_session_reset()",
    "DELETE FROM t WHERE a % 97 = 0",
    "VACUUM t",
]


def _wanted(rec: object, seen: dict[str, int]) -> str | None:
    """Pick a sample name for interesting records (first of each kind)."""
    from strata.wal.rmgr import record_type_name, rmgr_name

    r = rec  # DecodedRecord
    name = f"{rmgr_name(r.xl_rmid)}_{record_type_name(r.xl_rmid, r.xl_info)}"  # type: ignore[attr-defined]
    blocks = r.blocks  # type: ignore[attr-defined]
    if any(b.image is not None and b.image.compressed for b in blocks):
        name += "_pglz"
    elif any(b.image is not None and b.image.hole_length for b in blocks):
        name += "_hole"
    if len(blocks) > 2:
        name += "_manyblk"
    elif len(blocks) == 2:
        name += "_2blk"
    if r.origin is not None:  # type: ignore[attr-defined]
        name += "_origin"
    name = name.replace("+", "_").lower()
    if name in seen:
        return None
    seen[name] = 1
    return name


def main() -> int:
    base = _scratch("samples-")
    try:
        c = make_cluster(base, wal_compression="pglz")
        try:
            with c.connect() as conn:
                for stmt in WORKLOAD:
                    conn.execute(stmt)
        finally:
            c.stop()
        wal = c.wal_dir()
        first_seg = sorted(p for p in wal.iterdir() if p.name.startswith("0000"))[0]
        OUT.mkdir(parents=True, exist_ok=True)
        seg_start = Lsn(int(first_seg.name[8:16], 16) << 32 | int(first_seg.name[16:], 16)
                        * 16 * 1024 * 1024)
        pages = first_seg.read_bytes()[: 3 * 8192]
        (OUT / "first_pages.bin").write_bytes(pages)
        theirs = parse_detailed(run_pg_waldump(wal, seg_start, None, "-b").stdout)
        inside = []
        src = SegmentWalSource(wal, seg_start)
        for raw in src:
            if raw.end_lsn > seg_start + len(pages):
                break
            inside.append(raw.lsn)
        expected = [dataclasses.asdict(t) for t in theirs if t.lsn in set(inside)]
        (OUT / "first_pages.json").write_text(json.dumps(
            {"start": str(seg_start), "records": expected}, indent=1, default=str) + "\n")

        fpw_dir = Path(tempfile.mkdtemp())
        subprocess.run([str(pg_waldump_path()), "-p", str(wal), "-s", str(seg_start),
                        f"--save-fullpage={fpw_dir}"], capture_output=True, check=False)
        by_lsn = {t.lsn: t for t in theirs}
        seen: dict[str, int] = {}
        meta = {}
        for raw in SegmentWalSource(wal, seg_start):
            rec = decode_record(raw.raw, raw.lsn, raw.end_lsn)
            name = _wanted(rec, seen)
            if name is None:
                continue
            (OUT / f"{name}.bin").write_bytes(raw.raw)
            for b in rec.blocks:
                if b.image is None or b.block_id > 1:
                    continue  # keep the sample small: pages of blocks 0 and 1 only
                fork = ("main", "fsm", "vm", "init")[b.fork]
                fn = (f"00000001-{raw.lsn >> 32:08X}-{raw.lsn & 0xFFFFFFFF:08X}."
                      f"{b.rlocator.spc}.{b.rlocator.db}.{b.rlocator.rel}.{b.blkno}_{fork}")
                shutil.copy(fpw_dir / fn, OUT / f"{name}.page{b.block_id}")
            meta[name] = {"lsn": str(raw.lsn), "end_lsn": str(raw.end_lsn),
                          "pg_waldump": dataclasses.asdict(by_lsn[raw.lsn])}
        (OUT / "records.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
        shutil.rmtree(fpw_dir, ignore_errors=True)
        print(f"wrote {len(meta)} records to {OUT}")
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
