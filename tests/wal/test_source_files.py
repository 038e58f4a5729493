"""Unit tests of `FileSource` on synthetic segment files (no server)."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pytest

from strata.errors import WalSourceError
from strata.lsn import Lsn
from strata.pg.xlogfile import parse_segment_file_name, segment_file_name
from strata.wal.receiver import StreamSource
from strata.wal.segments import WalDirectory, read_segment_size
from strata.wal.source import FileSource, WalChunk, WalSource

SEG = 1 << 20  # 1 MB segments (initdb --wal-segsize=1)


def _segment(tli: int, segno: int, fill: int) -> bytes:
    """A fake segment: a valid PG 18 long page header, then a fill byte."""
    head = struct.pack("<HHIQI4xQII", 0xD118, 0x0002, tli, segno * SEG, 0, 42, SEG, 8192)
    return head + bytes([fill]) * (SEG - len(head))


def _write(d: Path, tli: int, segno: int, fill: int) -> bytes:
    data = _segment(tli, segno, fill)
    (d / segment_file_name(tli, segno, SEG)).write_bytes(data)
    return data


def test_segment_names_follow_xlogfilename() -> None:
    assert segment_file_name(1, 1, 16 << 20) == "000000010000000000000001"
    assert segment_file_name(2, 0x100, 16 << 20) == "000000020000000100000000"
    assert parse_segment_file_name("000000020000000100000000", 16 << 20) == (2, 0x100)
    assert parse_segment_file_name("00000001000000000000001", 16 << 20) is None


def test_segment_size_comes_from_the_long_header(tmp_path: Path) -> None:
    _write(tmp_path, 1, 3, 0)
    assert read_segment_size(tmp_path / segment_file_name(1, 3, SEG)) == SEG
    bad = tmp_path / "000000010000000000000009"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(WalSourceError, match="not a PostgreSQL 18 WAL segment"):
        read_segment_size(bad)


def test_file_source_is_contiguous_from_a_mid_segment_start(tmp_path: Path) -> None:
    s3, s4 = _write(tmp_path, 1, 3, 3), _write(tmp_path, 1, 4, 4)
    start = Lsn(3 * SEG + 8192 + 40)
    src = FileSource(tmp_path, start, chunk_size=300_000)
    assert isinstance(src, WalSource)
    chunks = list(src.stream())
    pos = start
    for c in chunks:
        assert c.start == pos
        pos = c.end
    assert b"".join(c.data for c in chunks) == (s3 + s4)[8192 + 40:]
    assert src.finished and src.received_lsn == Lsn(5 * SEG)


def test_file_source_stops_at_a_missing_segment(tmp_path: Path) -> None:
    _write(tmp_path, 1, 3, 3)
    _write(tmp_path, 1, 5, 5)  # 4 is missing: 5 is not contiguous
    chunks = list(FileSource(tmp_path, 3 * SEG).stream())
    assert chunks[-1].end == Lsn(4 * SEG)


def test_file_source_follows_the_timeline_history(tmp_path: Path) -> None:
    # timeline 2 forked from 1 inside segment 4: segment 3 from TLI 1, 4 and 5 from TLI 2.
    _write(tmp_path, 1, 3, 0x13)
    _write(tmp_path, 1, 4, 0x14)
    _write(tmp_path, 2, 4, 0x24)
    _write(tmp_path, 2, 5, 0x25)
    _write(tmp_path, 3, 5, 0x35)  # a timeline not in 2's history: never chosen
    (tmp_path / "00000002.history").write_text(f"1\t0/{4 * SEG + 4096:X}\tfork\n")
    data = b"".join(c.data for c in FileSource(tmp_path, 3 * SEG, timeline=2).stream())
    assert [data[i * SEG + 100] for i in range(3)] == [0x13, 0x24, 0x25]
    # Without a timeline the newest file of each segment number wins.
    data = b"".join(c.data for c in FileSource(tmp_path, 3 * SEG).stream())
    assert [data[i * SEG + 100] for i in range(3)] == [0x13, 0x24, 0x35]


def test_a_complete_segment_wins_over_its_partial_one_and_a_partial_alone_is_read(
        tmp_path: Path) -> None:
    """One reader of segment directories (WalDirectory) for both sources."""
    _write(tmp_path, 1, 3, 0x13)
    (tmp_path / (segment_file_name(1, 3, SEG) + ".partial")).write_bytes(_segment(1, 3, 0xEE))
    (tmp_path / (segment_file_name(1, 4, SEG) + ".partial")).write_bytes(_segment(1, 4, 0x14))
    d = WalDirectory.open(tmp_path)
    assert d.segment_for(3) == (1, tmp_path / segment_file_name(1, 3, SEG))
    assert d.segment_for(4) == (1, tmp_path / (segment_file_name(1, 4, SEG) + ".partial"))
    data = b"".join(c.data for c in FileSource(tmp_path, 3 * SEG).stream())
    assert [data[i * SEG + 100] for i in range(2)] == [0x13, 0x14]


def test_follow_mode_picks_up_a_new_segment_and_stops_on_request(tmp_path: Path) -> None:
    _write(tmp_path, 1, 3, 3)
    src = FileSource(tmp_path, 3 * SEG, follow=True)
    got: list[WalChunk] = []

    def consume() -> None:
        for c in src.stream():
            got.append(c)

    t = threading.Thread(target=consume)
    t.start()
    def wait_for(size: int) -> None:
        deadline = time.monotonic() + 30
        while sum(len(c.data) for c in got) < size:
            assert time.monotonic() < deadline, f"follow mode stopped before {size} bytes"
            time.sleep(0.01)

    try:
        wait_for(SEG)  # the one segment there, and it waits for the next
        _write(tmp_path, 1, 4, 4)
        wait_for(2 * SEG)
        assert sum(len(c.data) for c in got) == 2 * SEG
    finally:
        src.stop()
        t.join(5)
    assert not t.is_alive()
    assert src.finished


def test_missing_directory_is_a_wal_source_error(tmp_path: Path) -> None:
    with pytest.raises(WalSourceError, match="does not exist"):
        FileSource(tmp_path / "nope", 0)


def test_stream_source_satisfies_the_protocol() -> None:
    src = StreamSource.connect("host=127.0.0.1 port=1", "strata", 0x1000)
    try:
        assert isinstance(src, WalSource)
        assert src.start_lsn == src.received_lsn == Lsn(0x1000)
    finally:
        src.close()
