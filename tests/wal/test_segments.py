"""Segment files in a directory: naming, segment size, timelines, iteration."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import WalSourceError
from strata.lsn import Lsn
from strata.wal.segments import (
    SegmentWalSource,
    WalDirectory,
    find_first_record,
    iter_records,
    parse_segment_file_name,
    read_segment_size,
    segment_file_name,
)
from tests.wal.craft import WalBuilder

SEG = 1024 * 1024


def test_segment_file_names_round_trip_for_16mb_and_1mb_segments() -> None:
    assert segment_file_name(1, 1, 16 * SEG) == "000000010000000000000001"
    assert segment_file_name(3, 0x1FF, 16 * SEG) == "0000000300000001000000FF"
    assert parse_segment_file_name("0000000300000001000000FF", 16 * SEG) == (3, 0x1FF)
    assert segment_file_name(1, 4097, SEG) == "000000010000000100000001"
    assert parse_segment_file_name("000000010000000100000001.partial", SEG) == (1, 4097)
    assert parse_segment_file_name("00000001.history", SEG) is None


def _write_segments(d: Path, tli: int = 1, nseg: int = 2) -> WalBuilder:
    b = WalBuilder(SEG * 5, SEG, tli=tli)
    i = 0
    while b.pos < SEG * (5 + nseg) - 3000:
        b.add_main(bytes([i % 256]) * (100 + i % 900))
        i += 1
    data = b.finish_page()
    data += bytes(SEG * nseg - len(data))
    for k in range(nseg):
        (d / segment_file_name(tli, 5 + k, SEG)).write_bytes(data[k * SEG:(k + 1) * SEG])
    return b


def test_records_come_from_consecutive_segment_files(tmp_path: Path) -> None:
    b = _write_segments(tmp_path)
    assert read_segment_size(tmp_path / segment_file_name(1, 5, SEG)) == SEG
    src = SegmentWalSource(tmp_path)
    got = [r.lsn for r in src]
    assert got == b.lsns
    assert src.end_of_wal is not None and "invalid record length" in src.end_of_wal.reason
    # a range in the middle, across the segment boundary
    a, z = b.lsns[10], b.lsns[-10]
    assert [r.lsn for r in iter_records(tmp_path, a, z)] == b.lsns[10:-10]
    assert find_first_record(tmp_path, Lsn(b.lsns[10] + 1)) == b.lsns[11]


def test_a_missing_next_segment_is_a_clean_end(tmp_path: Path) -> None:
    b = _write_segments(tmp_path)
    (tmp_path / segment_file_name(1, 6, SEG)).unlink()
    src = SegmentWalSource(tmp_path)
    got = [r.lsn for r in src]
    assert got == [lsn for lsn, end in zip(b.lsns, b.ends, strict=True) if end <= 6 * SEG]
    assert src.end_of_wal is not None and "not found" in src.end_of_wal.reason


def test_higher_timeline_file_wins_for_a_segment(tmp_path: Path) -> None:
    _write_segments(tmp_path, tli=1)
    b2 = _write_segments(tmp_path, tli=2)
    d = WalDirectory.open(tmp_path)
    assert d.segment_for(5) == (2, tmp_path / segment_file_name(2, 5, SEG))
    assert [r.lsn for r in SegmentWalSource(d)] == b2.lsns


def test_directory_errors_are_wal_source_errors(tmp_path: Path) -> None:
    with pytest.raises(WalSourceError, match="does not exist"):
        WalDirectory.open(tmp_path / "nope")
    with pytest.raises(WalSourceError, match="no WAL segment files"):
        WalDirectory.open(tmp_path)
    (tmp_path / "000000010000000000000001").write_bytes(b"not wal" * 10)
    with pytest.raises(WalSourceError, match="not a PostgreSQL 18 WAL segment"):
        WalDirectory.open(tmp_path)
