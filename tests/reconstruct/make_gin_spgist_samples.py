"""Regenerate tests/data/wal/gin_spgist_records.json (see tests/data/README.md).

Run as root from the project root:
    python -m tests.reconstruct.make_gin_spgist_samples

It starts a throw-away PostgreSQL 18 cluster, runs the GIN and SP-GiST oracle
workloads (test_gin_oracle.py, test_spgist_oracle.py) without
wal_consistency_checking (so pg_waldump describes the block data, not an
image), and keeps, for every distinct shape of pg_waldump description (record
type plus its text with the numbers left out), the smallest record: its
xl_info, main data, block data and pg_waldump's description.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from strata.wal.rmgr import gin, spgist
from strata.wal.segments import iter_records
from tests.conftest import _scratch, make_cluster
from tests.reconstruct.test_gin_oracle import GIN_WORKLOAD
from tests.reconstruct.test_spgist_oracle import SPGIST_WORKLOAD

OUT = Path(__file__).resolve().parents[1] / "data" / "wal" / "gin_spgist_records.json"
RMGRS = (("Gin", gin.RM_GIN_ID, gin.gin_identify), ("SPGist", spgist.RM_SPGIST_ID,
                                                      spgist.spg_identify))


def _descs(c: Cluster, rmgr: str, start: Lsn, end: Lsn) -> dict[Lsn, str]:
    out = subprocess.run(
        [str(c.bins.path("pg_waldump")), "-p", str(c.wal_dir()), "-s", str(start), "-e",
         str(end), "-r", rmgr], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"pg_waldump failed: {out.stderr}")
    descs: dict[Lsn, str] = {}
    for line in out.stdout.splitlines():
        m = re.search(r"lsn: (\S+), prev \S+, desc: \S+ ?(.*)$", line)
        if m:
            descs[Lsn.parse(m.group(1))] = m.group(2).split(", blkref #")[0].rstrip()
    return descs


def main() -> None:
    root = _scratch("samples-")
    c = make_cluster(root / "primary", autovacuum="off")
    try:
        c.sql("CREATE DATABASE samples")
        start = Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()")[0][0])
        c.psql("-q", dbname="samples", input=GIN_WORKLOAD + SPGIST_WORKLOAD % {"rows": 3000})
        c.sql("SELECT pg_logical_emit_message(false, 'samples', 'end')")
        end = Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()")[0][0])
        c.stop()  # pg_waldump sizes segments from any file: none may be half-created
        out: dict[str, list[dict[str, Any]]] = {}
        for rmgr, rmid, identify in RMGRS:
            descs = _descs(c, rmgr, start, end)
            best: dict[tuple[int, str], tuple[int, dict[str, Any]]] = {}
            for r in iter_records(c.wal_dir(), start, end):
                if r.xl_rmid != rmid:
                    continue
                desc = descs[r.lsn]
                shape = (r.info, re.sub(r"\d+", "#", desc))
                size = len(r.main_data) + sum(len(b.data) for b in r.blocks)
                if shape not in best or size < best[shape][0]:
                    best[shape] = (size, {
                        "type": identify(r.xl_info), "xl_info": r.xl_info,
                        "main": r.main_data.hex(),
                        "blocks": {str(b.block_id): b.data.hex() for b in r.blocks if b.data},
                        "desc": desc})
            out[rmgr] = [s for _k, (_n, s) in sorted(best.items())]
        OUT.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {OUT}: " + ", ".join(f"{k} {len(v)}" for k, v in out.items()))
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
