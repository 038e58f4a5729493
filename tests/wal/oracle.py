"""Run the bundled pg_waldump and parse its output into comparable fields.

The oracle for tests/wal: `pg_waldump -b` (detailed block references, one per
line) gives per record: rmgr name, rec/tot lengths, xid, lsn, prev, type name
and per block: id, rel, fork, blk, and for images FPW / FPW for WAL
verification, hole offset/length and compression method. We compare fields,
never free desc text.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from strata.lsn import Lsn
from strata.runtime.pgbin import find_pg_binaries
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import record_type_name, rmgr_name

_REC_RE = re.compile(
    r"^rmgr: (\S+)\s+len \(rec/tot\):\s+(\d+)/\s*(\d+), tx:\s+(\d+), lsn: ([0-9A-F]+/[0-9A-F]+), "
    r"prev ([0-9A-F]+/[0-9A-F]+), desc: (UNKNOWN \([0-9a-f]+\)|\S+) ?(.*)$")
_BLK_RE = re.compile(
    r"^\tblkref #(\d+): rel (\d+)/(\d+)/(\d+) fork (\w+) blk (\d+)"
    r"(?: \((FPW(?: for WAL verification)?)\); hole: offset: (\d+), length: (\d+)"
    r"(?:, compression saved: (\d+), method: (\w+))?)?$")

FORK_NAMES = ("main", "fsm", "vm", "init")


@dataclass(frozen=True)
class OracleBlock:
    block_id: int
    rel: tuple[int, int, int]
    fork: str
    blk: int
    fpw: str | None  # "FPW", "FPW for WAL verification" or None
    hole_offset: int | None
    hole_length: int | None
    method: str | None


@dataclass(frozen=True)
class OracleRecord:
    rmgr: str
    rec_len: int
    tot_len: int
    xid: int
    lsn: Lsn
    prev: Lsn
    type: str
    blocks: tuple[OracleBlock, ...]


def pg_waldump_path() -> Path:
    return find_pg_binaries().path("pg_waldump")


def run_pg_waldump(wal_dir: Path, start: Lsn, end: Lsn | None = None,
                   *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [str(pg_waldump_path()), "-p", str(wal_dir), "-s", str(start)]
    if end is not None:
        argv += ["-e", str(end)]
    argv += list(extra)
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def parse_detailed(text: str) -> list[OracleRecord]:
    """Parse `pg_waldump -b` output."""
    out: list[OracleRecord] = []
    cur: dict[str, object] | None = None
    blocks: list[OracleBlock] = []

    def flush() -> None:
        if cur is not None:
            out.append(OracleRecord(blocks=tuple(blocks), **cur))  # type: ignore[arg-type]

    for line in text.splitlines():
        m = _REC_RE.match(line)
        if m:
            flush()
            blocks = []
            cur = dict(rmgr=m.group(1), rec_len=int(m.group(2)), tot_len=int(m.group(3)),
                       xid=int(m.group(4)), lsn=Lsn.parse(m.group(5)),
                       prev=Lsn.parse(m.group(6)), type=m.group(7))
            continue
        b = _BLK_RE.match(line)
        if b:
            blocks.append(OracleBlock(
                int(b.group(1)), (int(b.group(2)), int(b.group(3)), int(b.group(4))),
                b.group(5), int(b.group(6)), b.group(7),
                int(b.group(8)) if b.group(8) is not None else None,
                int(b.group(9)) if b.group(9) is not None else None,
                b.group(11)))
            continue
        if line.strip() == "" or cur is None:
            continue
        # desc text may continue on further lines (e.g. commit records with many
        # invalidations); it carries no fields we compare.
    flush()
    return out


def ours_as_oracle(rec: DecodedRecord) -> OracleRecord:
    """Our decoded record in the oracle's shape."""
    blocks = []
    for b in rec.blocks:
        img = b.image
        method = None
        if img is not None and img.compressed:
            method = ("pglz" if img.bimg_info & 0x04 else "lz4" if img.bimg_info & 0x08
                      else "zstd")
        blocks.append(OracleBlock(
            b.block_id, (b.rlocator.spc, b.rlocator.db, b.rlocator.rel), FORK_NAMES[b.fork],
            b.blkno,
            None if img is None else ("FPW" if img.apply else "FPW for WAL verification"),
            None if img is None else img.hole_offset,
            None if img is None else img.hole_length, method))
    return OracleRecord(
        rmgr=rmgr_name(rec.xl_rmid), rec_len=rec.xl_tot_len - rec.fpi_len,
        tot_len=rec.xl_tot_len, xid=rec.xl_xid, lsn=rec.lsn, prev=rec.xl_prev,
        type=record_type_name(rec.xl_rmid, rec.xl_info), blocks=tuple(blocks))
