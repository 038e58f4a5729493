"""WAL segment files in a directory (a pg_wal copy or an archive) as a record source.

What it is: file naming (``TTTTTTTTXXXXXXXXYYYYYYYY``: timeline, then the
segment number split into "log" and "seg" parts), the segment size read from
a segment's long page header, and the convenience API the rest of pgStrata
calls: `iter_records` / `iter_raw_records` over ``[start, end)`` and
`find_first_record`.

Fed by: files on disk (read-only; segments the server is still writing are
fine: their unwritten tail ends the WAL cleanly). Feeds: ingest, tests,
`strata waldump --path`. Owns: nothing; it drives a `WalReader`.

`WalDirectory` is the one reader of a segment directory (which file holds a
segment: timelines, ``.partial`` files); `SegmentWalSource` (records) and
`wal.source.FileSource` (raw bytes) are built on it.

Timelines: `SegmentWalSource` uses, for each segment number, the file with the
highest timeline not below the current one; the reader refuses timelines that
go backwards (as PostgreSQL does). It consults no timeline-history file
(`FileSource` does, when given a timeline).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from strata.errors import EndOfWal, WalSourceError
from strata.lsn import Lsn
from strata.pg.constants import XLOG_BLCKSZ
from strata.pg.xlogfile import parse_segment_file_name, segment_file_name
from strata.wal.decoder import decode_record
from strata.wal.reader import (
    SIZE_OF_LONG_PHD,
    XLOG_PAGE_MAGIC,
    XLP_LONG_HEADER,
    RawRecord,
    WalReader,
    parse_page_header,
)
from strata.wal.record import DecodedRecord
from strata.wal.replication_messages import parse_timeline_history

_READ_CHUNK = 1024 * 1024


def segment_start_lsn(segno: int, segment_size: int) -> Lsn:
    return Lsn(segno * segment_size)


def read_segment_size(path: Path) -> int:
    """The segment size recorded in the long page header of a segment file.

    Raises: WalSourceError when the file is not a WAL segment.
    """
    with open(path, "rb") as f:
        head = f.read(SIZE_OF_LONG_PHD)
    if len(head) < SIZE_OF_LONG_PHD:
        raise WalSourceError(f"{path}: too short for a WAL segment header")
    hdr = parse_page_header(head)
    magic = int.from_bytes(head[:2], "little")
    if magic != XLOG_PAGE_MAGIC or not hdr.info & XLP_LONG_HEADER or hdr.seg_size is None:
        raise WalSourceError(
            f"{path}: not a PostgreSQL 18 WAL segment (magic {magic:04X}, info {hdr.info:04X})")
    size = hdr.seg_size
    if size < 1024 * 1024 or size > 1024 ** 3 or size & (size - 1):
        raise WalSourceError(f"{path}: invalid WAL segment size {size} in its page header")
    return size


class WalDirectory:
    """The WAL segment files of one directory: the one place that finds which file
    holds a segment (names, timelines, ``.partial`` files).

    Which file holds segment `segno` (`segment_for`): with a timeline history
    (`history_begins`), the newest timeline of that history that had begun before
    the segment's end (as PostgreSQL's XLogFileReadAnyTLI chooses); otherwise the
    file with the highest timeline not below `min_tli`. A complete file wins over
    a ``.partial`` one (pg_receivewal's open segment) of the same name.

    The segment size is the one given, else read from the first segment file's
    long page header once there is one (`segment_size` is None until then).
    """

    def __init__(self, path: str | os.PathLike[str], segment_size: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise WalSourceError(f"WAL directory {self.path} does not exist")
        self._segment_size = segment_size
        self.files: dict[int, dict[int, Path]] = {}  # segno -> {tli: file}
        self.rescan()

    @classmethod
    def open(cls, path: Path | str, segment_size: int | None = None) -> WalDirectory:
        """Scan `path`. Raises: WalSourceError if there is no segment at all."""
        d = cls(path, segment_size)
        if not d.files:
            raise WalSourceError(f"no WAL segment files in {d.path}")
        return d

    @property
    def segment_size(self) -> int | None:
        return self._segment_size

    def rescan(self) -> None:
        """Re-read the directory listing (new segments appear while a server runs)."""
        names = sorted(n for n in os.listdir(self.path)
                       if parse_segment_file_name(n, 1 << 24) is not None)
        if self._segment_size is None:
            for n in names:
                if (self.path / n).is_file():
                    self._segment_size = read_segment_size(self.path / n)
                    break
            else:
                return
        files: dict[int, dict[int, Path]] = {}
        for name in names:
            parsed = parse_segment_file_name(name, self._segment_size)
            if parsed is None or not (self.path / name).is_file():
                continue
            tli, segno = parsed
            slot = files.setdefault(segno, {})
            if tli in slot and name.endswith(".partial"):
                continue
            slot[tli] = self.path / name
        self.files = files

    def history_begins(self, timeline: int) -> dict[int, Lsn]:
        """Timeline -> its first byte along the history of `timeline`, from its
        ``<tli>.history`` file here (just `timeline` from 0 when there is none)."""
        path = self.path / f"{timeline:08X}.history"
        begins: dict[int, Lsn] = {}
        prev = Lsn(0)
        if path.exists():
            for entry in parse_timeline_history(path.read_text()):
                begins[entry.tli] = prev
                prev = entry.switchpoint
        begins[timeline] = prev
        return begins

    def segment_for(self, segno: int, min_tli: int = 0,
                    history: dict[int, Lsn] | None = None) -> tuple[int, Path] | None:
        """(timeline, file) holding `segno` (see the class docstring), or None."""
        slot = self.files.get(segno)
        if not slot:
            return None
        if history:
            assert self._segment_size is not None
            seg_end = (segno + 1) * self._segment_size
            for tli in sorted(history, reverse=True):
                if history[tli] < seg_end and tli in slot:
                    return tli, slot[tli]
            return None
        tlis = [t for t in slot if t >= min_tli]
        if not tlis:
            return None
        tli = max(tlis)
        return tli, slot[tli]

    def start_lsn(self) -> Lsn:
        """The LSN of the oldest segment present. Requires: a segment is present."""
        assert self._segment_size is not None
        return segment_start_lsn(min(self.files), self._segment_size)


class SegmentWalSource:
    """Raw records from a directory of segment files, from `start` on.

    After iteration, `end_of_wal` says where and why valid WAL ended (None when
    iteration stopped at `end`). A missing next segment is also a clean end.
    """

    def __init__(self, wal_dir: Path | str | WalDirectory, start: Lsn | int | None = None, *,
                 end: Lsn | int | None = None, segment_size: int | None = None) -> None:
        self.dir = (wal_dir if isinstance(wal_dir, WalDirectory)
                    else WalDirectory.open(wal_dir, segment_size))
        self.start = Lsn(start) if start is not None else self.dir.start_lsn()
        self.end = Lsn(end) if end is not None else None
        self.end_of_wal: EndOfWal | None = None
        self.reader: WalReader | None = None

    def __iter__(self) -> Iterator[RawRecord]:
        seg_size = self.dir.segment_size
        assert seg_size is not None  # WalDirectory.open found a segment
        start = int(self.start)
        page_start = start - start % XLOG_BLCKSZ
        reader = WalReader(page_start, seg_size)
        self.reader = reader
        segno = page_start // seg_size
        offset = page_start % seg_size
        tli = 0
        end = self.end
        while True:
            found = self.dir.segment_for(segno, tli)
            if found is None:
                self.dir.rescan()
                found = self.dir.segment_for(segno, tli)
            if found is None:
                self.end_of_wal = EndOfWal(
                    reader.next_lsn,
                    f"WAL segment {segment_file_name(max(tli, 1), segno, seg_size)} "
                    f"not found in {self.dir.path}")
                return
            tli, path = found
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    while True:
                        chunk = f.read(_READ_CHUNK)
                        if len(chunk) % XLOG_BLCKSZ:
                            # A file cut inside a page: like PostgreSQL, read whole
                            # pages only (a short page read is an error there).
                            chunk = chunk[:len(chunk) - len(chunk) % XLOG_BLCKSZ]
                        if not chunk:
                            break
                        reader.feed(chunk)
                        read = reader.read_record
                        while (rec := read()) is not None:
                            if end is not None and rec.lsn >= end:
                                return
                            if rec.lsn >= start:
                                yield rec
                        if reader.want_lsn() > reader.buffered_end:
                            break  # XLOG_SWITCH: the rest of this segment is unused
            except EndOfWal as e:
                self.end_of_wal = e
                return
            except OSError as e:
                raise WalSourceError(f"could not read WAL segment {path}: {e}") from e
            seg_end = (segno + 1) * seg_size
            if reader.want_lsn() >= seg_end:
                reader.skip_to_want()
            if reader.buffered_end < seg_end:
                # A short (truncated) segment: nothing after it can be contiguous.
                self.end_of_wal = EndOfWal(
                    reader.next_lsn, f"WAL segment {path.name} is truncated at offset "
                    f"{reader.buffered_end - segno * seg_size}")
                return
            segno += 1
            offset = 0


def iter_raw_records(wal_dir: Path | str, start: Lsn | int | None = None,
                     end: Lsn | int | None = None) -> Iterator[RawRecord]:
    """Raw records whose start LSN is in ``[start, end)``; stops cleanly at the
    end of valid WAL. `start` may be any LSN (a record start, a page or segment
    start); records starting before it are skipped."""
    yield from SegmentWalSource(wal_dir, start, end=end)


def iter_records(wal_dir: Path | str, start: Lsn | int | None = None,
                 end: Lsn | int | None = None) -> Iterator[DecodedRecord]:
    """Decoded records whose start LSN is in ``[start, end)`` (see iter_raw_records).

    Raises: WalDecodeError for a CRC-valid record that cannot be decoded.
    """
    for rec in SegmentWalSource(wal_dir, start, end=end):
        yield decode_record(rec.raw, rec.lsn, rec.end_lsn)


def find_first_record(wal_dir: Path | str, lsn: Lsn | int) -> Lsn | None:
    """The start of the first valid record at or after `lsn` (None if none)."""
    for rec in SegmentWalSource(wal_dir, lsn):
        return rec.lsn
    return None
