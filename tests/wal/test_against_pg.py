"""The reader and decoder against the bundled pg_waldump, on real PostgreSQL 18 WAL.

Oracle: ``pg_waldump -b`` over the same directory and start LSN. We compare
fields (record LSNs, rmgr and type names, rec/tot lengths, xids, prev-links,
block references with fork, block, FPW marks and hole), where valid WAL ends
and why, and the ``--stats`` tables byte for byte.
"""

from __future__ import annotations

import re
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.cli.waldump import WalStats, format_record
from strata.lsn import Lsn
from strata.pg.constants import XLOG_BLCKSZ
from strata.wal.decoder import decode_record
from strata.wal.image import restore_page
from strata.wal.record import DecodedRecord
from strata.wal.segments import SegmentWalSource, find_first_record, iter_records
from tests.wal.conftest import WalRun
from tests.wal.oracle import (
    OracleRecord,
    ours_as_oracle,
    parse_detailed,
    pg_waldump_path,
    run_pg_waldump,
)

pytestmark = pytest.mark.pg

_ERR_RE = re.compile(r"error in WAL record at ([0-9A-F]+/[0-9A-F]+): (.*)$", re.M)
_BLKREF_RE = re.compile(r", blkref #\d+: rel \d+/\d+/\d+(?: fork \w+)? blk \d+"
                        r"(?: FPW(?: for WAL verification)?)?")


def _ours(wal: Path, start: Lsn) -> tuple[list[DecodedRecord], SegmentWalSource]:
    src = SegmentWalSource(wal, start)
    return [decode_record(r.raw, r.lsn, r.end_lsn) for r in src], src


def assert_same_as_pg_waldump(wal: Path, start: Lsn, *, min_records: int) -> list[DecodedRecord]:
    cp = run_pg_waldump(wal, start, None, "-b")
    theirs = parse_detailed(cp.stdout)
    ours, src = _ours(wal, start)
    mine = [ours_as_oracle(r) for r in ours]
    assert len(theirs) >= min_records
    for i, (a, b) in enumerate(zip(mine, theirs, strict=False)):
        assert a == b, f"record #{i} differs:\n ours   {a}\n theirs {b}"
    assert len(mine) == len(theirs)
    # Both stop at the same place for the same reason.
    m = _ERR_RE.search(cp.stderr)
    assert m is not None, cp.stderr
    assert Lsn.parse(m.group(1)) == ours[-1].lsn
    assert src.end_of_wal is not None
    assert src.end_of_wal.reason == m.group(2)
    assert src.end_of_wal.lsn == ours[-1].end_lsn
    return ours


def assert_same_stats(wal: Path, start: Lsn, ours: list[DecodedRecord]) -> None:
    for kind in ("record", "rmgr"):
        cp = run_pg_waldump(wal, start, None, f"--stats={kind}")
        stats = WalStats()
        for r in ours:
            stats.add(r)
        assert stats.render(per_record=kind == "record") == cp.stdout


def assert_same_text_lines(wal: Path, start: Lsn, ours: list[DecodedRecord]) -> None:
    cp = run_pg_waldump(wal, start)
    lines = [ln for ln in cp.stdout.splitlines() if ln.startswith("rmgr: ")]
    assert len(lines) == len(ours)
    for line, rec in zip(lines, ours, strict=True):
        mine = format_record(rec)
        head = mine.split(", blkref #")[0]
        assert line.startswith(head), f"\n ours   {mine}\n theirs {line}"
        assert mine == head + "".join(_BLKREF_RE.findall(line)), f"\n ours {mine}\n pg {line}"


def test_pgbench_records_match_pg_waldump(pgbench_wal: WalRun) -> None:
    ours = assert_same_as_pg_waldump(pgbench_wal.wal_dir, pgbench_wal.start, min_records=5000)
    types = {(r.xl_rmid, r.info) for r in ours}
    assert (10, 0x00) in types or (10, 0x80) in types  # Heap INSERT
    assert any(len({(r.lsn // (16 << 20)), ((r.end_lsn - 1) // (16 << 20))}) == 2 for r in ours), \
        "expected at least one record crossing a segment boundary"
    assert_same_stats(pgbench_wal.wal_dir, pgbench_wal.start, ours)
    assert_same_text_lines(pgbench_wal.wal_dir, pgbench_wal.start, ours)


def test_history_workload_records_match_pg_waldump(history_wal: WalRun) -> None:
    ours = assert_same_as_pg_waldump(history_wal.wal_dir, history_wal.start, min_records=1000)
    rmgrs = {r.xl_rmid for r in ours}
    # GiST and SP-GiST builds log whole pages (XLOG/FPI), so no rmgr 14/16 records
    assert {0, 1, 2, 9, 10, 11, 12, 13, 15, 17} <= rmgrs
    assert_same_stats(history_wal.wal_dir, history_wal.start, ours)
    assert_same_text_lines(history_wal.wal_dir, history_wal.start, ours)


def test_pglz_compressed_images_match_pg_waldump_and_its_saved_pages(
        pglz_wal: WalRun, tmp_path: Path) -> None:
    ours = assert_same_as_pg_waldump(pglz_wal.wal_dir, pglz_wal.start, min_records=1000)
    assert_same_stats(pglz_wal.wal_dir, pglz_wal.start, ours)
    subprocess.run([str(pg_waldump_path()), "-p", str(pglz_wal.wal_dir), "-s",
                    str(pglz_wal.start), f"--save-fullpage={tmp_path}"],
                   capture_output=True, check=False)
    compressed = total = 0
    for r in ours:
        for b in r.blocks:
            if b.image is None:
                continue
            fork = ("main", "fsm", "vm", "init")[b.fork]
            name = (f"00000001-{r.lsn >> 32:08X}-{r.lsn & 0xFFFFFFFF:08X}.{b.rlocator.spc}."
                    f"{b.rlocator.db}.{b.rlocator.rel}.{b.blkno}_{fork}")
            assert restore_page(b.image, lsn=r.lsn) == (tmp_path / name).read_bytes(), name
            total += 1
            compressed += b.image.compressed
    assert compressed >= 50, (compressed, total)


def test_end_lsn_is_the_page_lsn_redo_stamps(pgbench_wal: WalRun) -> None:
    """Every page's pd_lsn after a clean shutdown equals the end_lsn of the last
    record that touched it: our end_lsn is PostgreSQL's EndRecPtr."""
    last: dict[tuple[int, int], int] = {}
    rels = {int(p.name): name for name, p in pgbench_wal.relfiles.items()}
    for r in iter_records(pgbench_wal.wal_dir, pgbench_wal.start):
        for b in r.blocks:
            if b.fork == 0 and b.rlocator.rel in rels:
                last[(b.rlocator.rel, b.blkno)] = r.end_lsn
    checked = 0
    for path in pgbench_wal.relfiles.values():
        data = path.read_bytes()
        for blk in range(len(data) // 8192):
            hi, lo = struct.unpack_from("<II", data, blk * 8192)
            want = last.get((int(path.name), blk))
            if want is not None:
                assert (hi << 32 | lo) == want, (path.name, blk)
                checked += 1
    assert checked >= 1600  # pgbench_accounts alone has ~1640 pages at scale 1


def _first_n(it: Iterator[OracleRecord], n: int) -> list[OracleRecord]:
    out = []
    for x in it:
        out.append(x)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("where", ["record", "page_with_continuation", "mid_record", "segment"])
def test_any_start_position_finds_the_same_first_records_as_pg_waldump(
        pgbench_wal: WalRun, where: str) -> None:
    wal = pgbench_wal.wal_dir
    records = list(SegmentWalSource(wal, pgbench_wal.start))
    if where == "record":
        start = records[len(records) // 2].lsn
    elif where == "page_with_continuation":
        spanning = next(r for r in records[100:]
                        if r.end_lsn // XLOG_BLCKSZ - r.lsn // XLOG_BLCKSZ >= 2)
        start = Lsn((spanning.lsn // XLOG_BLCKSZ + 1) * XLOG_BLCKSZ)
    elif where == "mid_record":
        start = records[len(records) // 3].lsn + 8
    else:
        seg = 16 << 20
        start = Lsn((records[-1].lsn // seg) * seg)
    cp = run_pg_waldump(wal, start, None, "-b")
    theirs = parse_detailed(cp.stdout)[:300]
    ours = _first_n((ours_as_oracle(decode_record(r.raw, r.lsn, r.end_lsn))
                     for r in SegmentWalSource(wal, start)), 300)
    assert ours == theirs
    assert ours[0].lsn >= start
    assert find_first_record(wal, start) == theirs[0].lsn


def test_lsn_range_is_half_open(pgbench_wal: WalRun) -> None:
    wal = pgbench_wal.wal_dir
    recs = [r.lsn for r in SegmentWalSource(wal, pgbench_wal.start)]
    a, b = recs[100], recs[400]
    got = [r.lsn for r in iter_records(wal, a, b)]
    assert got == recs[100:400]


def test_verification_only_images_match_pg_waldump(scratch_dir: Path) -> None:
    """wal_consistency_checking adds images without BKPIMAGE_APPLY ("FPW for WAL
    verification"): they must be decoded, marked and restorable all the same."""
    from tests.conftest import make_cluster

    c = make_cluster(scratch_dir / "wcc", wal_consistency_checking="heap,btree")
    try:
        start = Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])
        c.sql("CREATE TABLE v (a int PRIMARY KEY, b text)")
        c.sql("INSERT INTO v SELECT g, 'x' FROM generate_series(1, 200) g")
        c.sql("UPDATE v SET b = 'y' WHERE a % 5 = 0")
    finally:
        c.stop()
    ours = assert_same_as_pg_waldump(c.wal_dir(), start, min_records=200)
    verify = [b for r in ours for b in r.blocks if b.image is not None and not b.image.apply]
    assert len(verify) >= 200
    assert all(len(restore_page(b.image)) == 8192 for b in verify if b.image is not None)
    assert_same_text_lines(c.wal_dir(), start, ours)
