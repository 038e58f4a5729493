"""Truncation/corruption matrix on real WAL (1 MB segments) copied to scratch.

For each damage the reader must stop where PostgreSQL's reader stops, naming
the record that failed (pg_waldump over the same damaged copy is the oracle),
and a record written across a segment boundary, plus XLOG_SWITCH, must read
back intact.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from strata.lsn import Lsn
from strata.pg.constants import XLOG_BLCKSZ
from strata.wal.decoder import decode_record
from strata.wal.reader import RawRecord
from strata.wal.segments import SegmentWalSource, segment_file_name
from tests.wal.conftest import MESSAGE, BoundaryRun
from tests.wal.oracle import ours_as_oracle, parse_detailed, run_pg_waldump

pytestmark = pytest.mark.pg

_ERR_RE = re.compile(r"error in WAL record at ([0-9A-F]+/[0-9A-F]+): (.*)$", re.M)


def _copy(run: BoundaryRun, dest: Path) -> Path:
    wal = dest / "wal"
    wal.mkdir()
    first = run.start // run.segment_size
    for p in run.wal_dir.iterdir():
        if len(p.name) == 24 and int(p.name[8:16], 16) * 4096 + int(p.name[16:], 16) >= first:
            shutil.copy(p, wal / p.name)
    return wal


def _records(wal: Path, start: Lsn) -> tuple[list[RawRecord], SegmentWalSource]:
    src = SegmentWalSource(wal, start)
    return list(src), src


def _file_and_offset(run: BoundaryRun, wal: Path, lsn: int) -> tuple[Path, int]:
    seg = run.segment_size
    return wal / segment_file_name(1, lsn // seg, seg), lsn % seg


def _assert_stops_like_pg(wal: Path, start: Lsn) -> tuple[list[RawRecord], SegmentWalSource,
                                                               str]:
    recs, src = _records(wal, start)
    cp = run_pg_waldump(wal, start, None, "-b")
    theirs = parse_detailed(cp.stdout)
    assert [ours_as_oracle(decode_record(r.raw, r.lsn, r.end_lsn)) for r in recs] == theirs
    assert src.end_of_wal is not None
    return recs, src, cp.stderr


@pytest.fixture
def clean(boundary_wal: BoundaryRun) -> list[RawRecord]:
    return list(SegmentWalSource(boundary_wal.wal_dir, boundary_wal.start))


def test_record_across_a_segment_boundary_reads_back_intact(
        boundary_wal: BoundaryRun, clean: list[RawRecord]) -> None:
    seg = boundary_wal.segment_size
    msg = next(r for r in clean if r.lsn == boundary_wal.message_lsn)
    assert msg.lsn // seg != (msg.end_lsn - 1) // seg  # it really crosses
    rec = decode_record(msg.raw, msg.lsn, msg.end_lsn)
    assert rec.xl_rmid == 21 and rec.main_data.endswith(MESSAGE)
    assert b"cross\0" in rec.main_data


def test_xlog_switch_continues_at_the_next_segment(
        boundary_wal: BoundaryRun, clean: list[RawRecord]) -> None:
    seg = boundary_wal.segment_size
    i = next(i for i, r in enumerate(clean) if r.raw[17] == 0 and r.raw[16] & 0xF0 == 0x40)
    sw, nxt = clean[i], clean[i + 1]
    assert sw.end_lsn % seg == 0 and sw.end_lsn > sw.lsn
    assert nxt.lsn == sw.end_lsn + 40  # right after the next segment's long header
    assert boundary_wal.switch_end <= sw.end_lsn
    assert int.from_bytes(nxt.raw[8:16], "little") == sw.lsn  # prev-link spans the gap


def test_flipped_byte_in_a_record_ends_wal_at_that_record(
        boundary_wal: BoundaryRun, clean: list[RawRecord], scratch_dir: Path) -> None:
    wal = _copy(boundary_wal, scratch_dir)
    victim = next(r for r in clean[len(clean) // 2:]
                  if r.lsn // XLOG_BLCKSZ == (r.lsn + len(r.raw)) // XLOG_BLCKSZ
                  and len(r.raw) > 40)
    path, off = _file_and_offset(boundary_wal, wal, victim.lsn + 30)
    data = bytearray(path.read_bytes())
    data[off] ^= 0x40
    path.write_bytes(bytes(data))
    recs, src, stderr = _assert_stops_like_pg(wal, boundary_wal.start)
    assert recs[-1].end_lsn == victim.lsn
    assert src.end_of_wal is not None and src.end_of_wal.lsn == victim.lsn
    assert src.end_of_wal.reason == (
        f"incorrect resource manager data checksum in record at {victim.lsn}")
    m = _ERR_RE.search(stderr)
    assert m is not None and m.group(2) == src.end_of_wal.reason


def test_torn_page_ends_wal_at_the_first_damaged_record(
        boundary_wal: BoundaryRun, clean: list[RawRecord], scratch_dir: Path) -> None:
    wal = _copy(boundary_wal, scratch_dir)
    mid = clean[len(clean) // 2].lsn
    page = mid - mid % XLOG_BLCKSZ
    path, off = _file_and_offset(boundary_wal, wal, page)
    data = bytearray(path.read_bytes())
    data[off + 4096:off + 8192] = bytes(4096)
    path.write_bytes(bytes(data))
    recs, src, stderr = _assert_stops_like_pg(wal, boundary_wal.start)
    torn = page + 4096
    assert all(r.end_lsn <= torn for r in recs)
    first_bad = next(r for r in clean if r.end_lsn > torn)
    assert src.end_of_wal is not None and src.end_of_wal.lsn == first_bad.lsn
    m = _ERR_RE.search(stderr)
    assert m is not None and m.group(2) == src.end_of_wal.reason


def test_truncated_segment_ends_wal_cleanly(
        boundary_wal: BoundaryRun, clean: list[RawRecord], scratch_dir: Path) -> None:
    wal = _copy(boundary_wal, scratch_dir)
    cut = clean[len(clean) // 2].lsn + 100
    path, off = _file_and_offset(boundary_wal, wal, cut)
    with open(path, "r+b") as f:
        f.truncate(off)
    recs, src = _records(wal, boundary_wal.start)
    theirs = parse_detailed(run_pg_waldump(wal, boundary_wal.start, None, "-b").stdout)
    assert [ours_as_oracle(decode_record(r.raw, r.lsn, r.end_lsn)) for r in recs] == theirs
    # like PostgreSQL, only whole pages of a cut file are read
    assert recs == [r for r in clean if r.end_lsn <= cut - cut % XLOG_BLCKSZ]
    assert src.end_of_wal is not None and "truncated" in src.end_of_wal.reason
    assert src.end_of_wal.lsn == recs[-1].end_lsn


def test_missing_segment_ends_wal_cleanly(
        boundary_wal: BoundaryRun, clean: list[RawRecord], scratch_dir: Path) -> None:
    wal = _copy(boundary_wal, scratch_dir)
    seg = boundary_wal.segment_size
    missing = boundary_wal.message_lsn // seg + 1  # the segment the message runs into
    (wal / segment_file_name(1, missing, seg)).unlink()
    recs, src = _records(wal, boundary_wal.start)
    assert recs == [r for r in clean if r.end_lsn <= missing * seg]
    assert recs[-1].lsn < boundary_wal.message_lsn
    assert src.end_of_wal is not None and "not found" in src.end_of_wal.reason
    assert src.end_of_wal.lsn == boundary_wal.message_lsn


def test_damaged_continuation_page_header_ends_wal_at_the_spanning_record(
        boundary_wal: BoundaryRun, clean: list[RawRecord], scratch_dir: Path) -> None:
    wal = _copy(boundary_wal, scratch_dir)
    msg = next(r for r in clean if r.lsn == boundary_wal.message_lsn)
    page = (msg.lsn // XLOG_BLCKSZ + 2) * XLOG_BLCKSZ  # a page in the middle of it
    path, off = _file_and_offset(boundary_wal, wal, page)
    data = bytearray(path.read_bytes())
    data[off:off + 2] = b"\x00\x00"
    path.write_bytes(bytes(data))
    recs, src, stderr = _assert_stops_like_pg(wal, boundary_wal.start)
    assert recs[-1].end_lsn == msg.lsn
    assert src.end_of_wal is not None and src.end_of_wal.lsn == msg.lsn
    assert src.end_of_wal.reason.startswith("invalid magic number 0000")
    assert "invalid magic number 0000" in stderr
