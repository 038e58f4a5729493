"""Sans-IO WAL reader: contiguous WAL bytes in, complete raw records out.

What it is: the framing half of PostgreSQL's xlogreader.c (PG 18:
XLogDecodeNextRecord, XLogReaderValidatePageHeader, ValidXLogRecordHeader,
ValidXLogRecord, XLogFindNextRecord). It strips 8 KB page headers (short and
long), reassembles records that span pages and segments, checks the CRC-32C
and the ``xl_prev`` chain, follows XLOG_SWITCH to the next segment, drops a
record cut by a crash (XLP_FIRST_IS_OVERWRITE_CONTRECORD) and detects the end
of valid WAL exactly where PostgreSQL's recovery would stop.

Fed by: any byte source that can hand over WAL contiguous from `start_lsn`
(segment files: `wal.segments`; the replication stream: `wal.receiver`).
Feeds: `wal.decoder` (`RawRecord.raw` -> `DecodedRecord`), or, a batch at a
time, `wal.batch` (`read_batch` -> `RecordBatch`: framed and decoded into
columns).
Owns: the reading position (`next_lsn`, `prev_lsn`) and the buffered bytes.

End of WAL is not an error of the reader's caller: `read_record` raises
`EndOfWal(lsn, reason)` (lsn = where the next record would have started) and
keeps raising it. Reasons use PostgreSQL's wording so they can be compared
with its log.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from google_crc32c import extend as _crc_extend
from google_crc32c import value as _crc_value

from strata.errors import EndOfWal, WalDecodeError
from strata.lsn import Lsn
from strata.pg.constants import XLOG_BLCKSZ
from strata.pg.rmgrids import RM_XLOG_ID
from strata.pg.structs import U32
from strata.wal.batch import BatchBuilder, RecordBatch, compiled_frame

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
XLOG_PAGE_MAGIC = 0xD118  # PostgreSQL 18 (master uses 0xD120: a different format)

XLP_FIRST_IS_CONTRECORD = 0x0001
XLP_LONG_HEADER = 0x0002
XLP_BKP_REMOVABLE = 0x0004
XLP_FIRST_IS_OVERWRITE_CONTRECORD = 0x0008
XLP_ALL_FLAGS = 0x000F

SIZE_OF_SHORT_PHD = 24  # MAXALIGN(20)
SIZE_OF_LONG_PHD = 40  # MAXALIGN(36)
SIZE_OF_XLOG_RECORD = 24

XLOG_SWITCH = 0x40
RM_MAX_BUILTIN_ID = 21
RM_MIN_CUSTOM_ID = 128
XLOG_RECORD_MAX_SIZE = 1020 * 1024 * 1024  # XLogRecordMaxSize

# XLogPageHeaderData: magic u16, info u16, tli u32, pageaddr u64, rem_len u32
_PAGE_HDR = struct.Struct("<HHIQI")
# XLogLongPageHeaderData tail: sysid u64, seg_size u32, xlog_blcksz u32
_LONG_TAIL = struct.Struct("<QII")
# XLogRecord: tot_len u32, xid u32, prev u64, info u8, rmid u8, pad 2, crc u32
_REC_HDR = struct.Struct("<IIQBB2xI")
_rec_hdr_unpack_from = _REC_HDR.unpack_from

_COMPACT_AT = 4 * 1024 * 1024
_int_new = int.__new__  # Lsn without re-validation: values come from 64-bit arithmetic  # drop consumed buffer bytes past this much


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One complete WAL record with page headers removed.

    `lsn` is its start (ReadRecPtr). `end_lsn` is PostgreSQL's EndRecPtr: the
    start of the next record, i.e. the end of this record's last byte rounded
    up to MAXALIGN (8), and for XLOG_SWITCH the start of the next segment. That
    is the value XLogInsert returns and redo stamps on pages (see the note in
    the test tests/wal/test_against_pg.py that checks it against page LSNs).
    """

    lsn: Lsn
    end_lsn: Lsn
    raw: bytes


@dataclass(frozen=True, slots=True)
class PageHeader:
    """A validated WAL page header."""

    pageaddr: int
    info: int
    tli: int
    rem_len: int
    size: int  # 24 (short) or 40 (long)
    sysid: int | None = None
    seg_size: int | None = None


def _align8(x: int) -> int:
    return (x + 7) & ~7


def _fmt(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_page_header(buf: bytes | bytearray | memoryview, off: int = 0) -> PageHeader:
    """Parse (not validate) the page header at `off`; `buf` must hold it."""
    _magic, info, tli, pageaddr, rem_len = _PAGE_HDR.unpack_from(buf, off)
    if info & XLP_LONG_HEADER:
        sysid, seg_size, _blcksz = _LONG_TAIL.unpack_from(buf, off + 24)
        return PageHeader(pageaddr, info, tli, rem_len, SIZE_OF_LONG_PHD, sysid, seg_size)
    return PageHeader(pageaddr, info, tli, rem_len, SIZE_OF_SHORT_PHD)


class WalReader:
    """Reassemble and verify WAL records from bytes fed in order.

    Requires: the first byte fed is the WAL byte at `start_lsn`; `start_lsn` is
    a segment start, a page start, or the start of a record. At a page start,
    a continuation of an earlier record is skipped (as XLogFindNextRecord does).
    Records are returned in order; their `xl_prev` must chain, except the first
    one read after a random start, which only has to point backwards.

    Usage: ``reader.feed(chunk)`` whenever bytes arrive, then call
    `read_record` until it returns None (needs more bytes). At end of valid
    WAL it raises `EndOfWal`, and does so again on every later call.
    """

    def __init__(self, start_lsn: Lsn | int, segment_size: int = DEFAULT_SEGMENT_SIZE, *,
                 system_identifier: int | None = None,
                 prev_lsn: Lsn | int | None = None) -> None:
        if segment_size < XLOG_BLCKSZ or segment_size & (segment_size - 1):
            raise ValueError(f"invalid WAL segment size {segment_size}")
        start = int(start_lsn)
        if start % 8:
            raise ValueError(f"start LSN {_fmt(start)} is not 8-byte aligned")
        self.segment_size = segment_size
        self.system_identifier = system_identifier
        self.timeline: int | None = None  # TLI of the latest page header seen
        self._buf = bytearray()
        self._base = start  # LSN of self._buf[0]
        self._next = start  # where the next record (or page header) begins
        self._prev: int | None = int(prev_lsn) if prev_lsn is not None else None
        # Only a page start can begin with a continuation we must skip.
        self._skip_cont = start % XLOG_BLCKSZ == 0
        self._latest_page = -1  # last validated page address
        self._latest_page_hsize = SIZE_OF_SHORT_PHD
        self._latest_page_info = 0
        self._latest_page_rem = 0
        self._end: EndOfWal | None = None
        # LSN of a record dropped because the next page said it was overwritten.
        self.overwritten_lsn: Lsn | None = None
        self._deferred: EndOfWal | WalDecodeError | None = None  # raised by the next read_batch

    # -- public state ---------------------------------------------------------
    @property
    def next_lsn(self) -> Lsn:
        """Where the next record (or the page header in front of it) starts."""
        return Lsn(self._next)

    @property
    def prev_lsn(self) -> Lsn | None:
        """Start of the last record returned (None before the first)."""
        return Lsn(self._prev) if self._prev is not None else None

    @property
    def buffered_end(self) -> Lsn:
        """The LSN just past the last byte fed."""
        return Lsn(self._base + len(self._buf))

    @property
    def end_of_wal(self) -> EndOfWal | None:
        return self._end

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append WAL bytes contiguous with what was fed before."""
        self._buf += data

    def want_lsn(self) -> Lsn:
        """The LSN of the next byte the reader needs. Normally `buffered_end`; after
        an XLOG_SWITCH it can lie beyond it (the rest of the segment is unused), and
        a source may then seek there and call `skip_to_want` instead of feeding the
        unused bytes."""
        return Lsn(max(self._base + len(self._buf), self._next))

    def skip_to_want(self) -> None:
        """Forget buffered bytes and expect the next feed to start at `want_lsn`."""
        want = self.want_lsn()
        if want > self._base + len(self._buf):
            self._buf.clear()
            self._base = want

    def __iter__(self) -> Iterator[RawRecord]:
        """Records available from the bytes fed so far (stops when more are needed;
        raises EndOfWal at the end of valid WAL)."""
        while True:
            rec = self.read_record()
            if rec is None:
                return
            yield rec

    def records(self) -> Iterator[RawRecord]:
        """Like iterating, but ends quietly at end of valid WAL (see `end_of_wal`)."""
        try:
            yield from self
        except EndOfWal:
            return

    def read_batch(self, max_records: int = 16384) -> RecordBatch | None:
        """Every complete record buffered (at most `max_records`), framed and
        decoded into one `RecordBatch`; None when no complete record is buffered.

        The compiled reader (`wal._walbatch`, when built) takes every record it
        can; the few it leaves (segment starts, XLOG_SWITCH, anything invalid)
        go through `read_record` and the pure-Python decoder. Same records, same
        bytes either way.
        Raises: EndOfWal or WalDecodeError as `read_record` / `decode_record` do,
        but only once the records before the failure have been returned (the
        next call raises).
        """
        if self._deferred is not None:
            err, self._deferred = self._deferred, None
            raise err
        avail = max(0, self._base + len(self._buf) - self._next)
        n = min(max_records, avail // 48 + 16)
        builder = BatchBuilder(n, avail + 16 * n + 4096)
        frame = compiled_frame()
        try:
            while len(builder) < max_records:
                if frame is not None and self._prev is not None and not self._skip_cont \
                        and self.timeline is not None and self._end is None:
                    start = self._next
                    self._next, self._prev = builder.frame(
                        frame, self._buf, self._base, self._next, self._prev,
                        self.segment_size, self.timeline, max_records)
                    if self._next != start and self._next - self._base >= _COMPACT_AT:
                        self._compact()
                    if len(builder) >= max_records:
                        break
                rec = self.read_record()
                if rec is None:
                    break
                builder.add(rec.raw, rec.lsn, rec.end_lsn)
        except (EndOfWal, WalDecodeError) as e:
            if not len(builder):
                raise
            self._deferred = e
        return builder.build() if len(builder) else None

    # -- internals ------------------------------------------------------------
    def _stop(self, lsn: int, reason: str) -> EndOfWal:
        self._end = EndOfWal(lsn, reason)
        return self._end

    def _page(self, page: int, rec_lsn: int) -> tuple[int, int, int] | None:
        """Validate the header of the page at `page`: (size, info, rem_len).

        None when its bytes have not been fed yet. Raises EndOfWal (naming
        `rec_lsn`, the record being read) when PostgreSQL would reject it.
        """
        if page == self._latest_page:
            return self._latest_page_hsize, self._latest_page_info, self._latest_page_rem
        buf = self._buf
        i = page - self._base
        if i < 0:
            raise AssertionError("page header before the buffered bytes")
        seg_start = page % self.segment_size == 0
        need = SIZE_OF_LONG_PHD if seg_start else SIZE_OF_SHORT_PHD
        if len(buf) - i < need:
            return None
        magic, info, tli, pageaddr, rem_len = _PAGE_HDR.unpack_from(buf, i)
        segno = page // self.segment_size
        offset = page % self.segment_size
        where = f"in WAL segment {segno:X}, LSN {_fmt(page)}, offset {offset}"
        if magic != XLOG_PAGE_MAGIC:
            raise self._stop(rec_lsn, f"invalid magic number {magic:04X} {where}")
        if info & ~XLP_ALL_FLAGS:
            raise self._stop(rec_lsn, f"invalid info bits {info:04X} {where}")
        if info & XLP_LONG_HEADER:
            sysid, seg_size, blcksz = _LONG_TAIL.unpack_from(buf, i + 24)
            if self.system_identifier is not None and sysid != self.system_identifier:
                raise self._stop(rec_lsn, (
                    f"WAL file is from different database system: WAL file database system "
                    f"identifier is {sysid}, pg_control database system identifier is "
                    f"{self.system_identifier}"))
            if seg_size != self.segment_size:
                raise self._stop(rec_lsn, "WAL file is from different database system: "
                                 "incorrect segment size in page header")
            if blcksz != XLOG_BLCKSZ:
                raise self._stop(rec_lsn, "WAL file is from different database system: "
                                 "incorrect XLOG_BLCKSZ in page header")
            if self.system_identifier is None:
                self.system_identifier = sysid
            hsize = SIZE_OF_LONG_PHD
        elif seg_start:
            # The first page of a segment must carry the long header.
            raise self._stop(rec_lsn, f"invalid info bits {info:04X} {where}")
        else:
            hsize = SIZE_OF_SHORT_PHD
        if pageaddr != page:
            raise self._stop(rec_lsn, f"unexpected pageaddr {_fmt(pageaddr)} {where}")
        if page > self._latest_page and self.timeline is not None and tli < self.timeline:
            raise self._stop(rec_lsn, (
                f"out-of-sequence timeline ID {tli} (after {self.timeline}) {where}"))
        self.timeline = tli
        self._latest_page = page
        self._latest_page_hsize = hsize
        self._latest_page_info = info
        self._latest_page_rem = rem_len
        return hsize, info, rem_len

    def _compact(self) -> None:
        # Keep the page holding the next record so its header could be re-read.
        keep_from = max(self._base, self._next - self._next % XLOG_BLCKSZ)
        # After XLOG_SWITCH the next record may lie past the bytes fed so far.
        keep_from = min(keep_from, self._base + len(self._buf))
        drop = keep_from - self._base
        if drop >= _COMPACT_AT:
            del self._buf[:drop]  # O(1) amortised at the front of a bytearray
            self._base = keep_from

    def _skip_continuation(self, page: int, hsize: int, rem_len: int) -> int | None:
        """Skip the tail of a record that began before our start (may cover
        several pages). Returns the aligned LSN after it, or None for more bytes."""
        pos = page
        remaining = rem_len
        while True:
            room = XLOG_BLCKSZ - hsize
            if remaining <= room:
                return _align8(pos + hsize + remaining)
            remaining -= room
            pos += XLOG_BLCKSZ
            hdr = self._page(pos, pos)
            if hdr is None:
                return None
            hsize, info, rem = hdr
            if not info & XLP_FIRST_IS_CONTRECORD or rem != remaining:
                # The record we skip is itself cut; start over at this page.
                return pos

    def read_record(self) -> RawRecord | None:
        """The next record, or None if more bytes must be fed first.

        Raises: EndOfWal at the end of valid WAL (bad page header, zero or
        short length, invalid rmgr, broken prev-link, missing continuation,
        CRC mismatch), naming the LSN where the failed record starts.
        """
        if self._end is not None:
            raise self._end
        buf = self._buf
        # Fast path (most records): the whole record lies on the current page
        # after the first record of the page, its prev-link chains, no switch.
        lsn = self._next
        off = lsn & (XLOG_BLCKSZ - 1)
        if off and self._prev is not None:
            i = lsn - self._base
            room = XLOG_BLCKSZ - off
            if room >= SIZE_OF_XLOG_RECORD and len(buf) - i >= SIZE_OF_XLOG_RECORD:
                tot_len, _xid, prev, info, rmid, stored = _rec_hdr_unpack_from(buf, i)
                if (SIZE_OF_XLOG_RECORD <= tot_len <= room and len(buf) - i >= tot_len
                        and prev == self._prev and (rmid <= RM_MAX_BUILTIN_ID or
                                                    rmid >= RM_MIN_CUSTOM_ID)
                        and not (rmid == RM_XLOG_ID and info & 0xF0 == XLOG_SWITCH)):
                    raw = bytes(buf[i:i + tot_len])
                    if _crc_extend(_crc_value(raw[SIZE_OF_XLOG_RECORD:]), raw[:20]) == stored:
                        end = (lsn + tot_len + 7) & ~7
                        self._prev = lsn
                        self._next = end
                        if end - self._base >= _COMPACT_AT:
                            self._compact()
                        return RawRecord(_int_new(Lsn, lsn), _int_new(Lsn, end), raw)
            # anything unusual (or a CRC failure, to report it) takes the full path
        while True:
            lsn = self._next
            off = lsn % XLOG_BLCKSZ
            if off == 0:
                hdr = self._page(lsn, lsn)
                if hdr is None:
                    return None
                hsize, info, rem = hdr
                if info & XLP_FIRST_IS_CONTRECORD:
                    if not self._skip_cont:
                        raise self._stop(lsn, f"contrecord is requested by {_fmt(lsn)}")
                    nxt = self._skip_continuation(lsn, hsize, rem)
                    if nxt is None:
                        return None
                    self._next = nxt
                    self._skip_cont = False
                    continue
                self._skip_cont = False
                lsn += hsize
                off = hsize
            self._skip_cont = False
            base = self._base
            i = lsn - base
            room = XLOG_BLCKSZ - off
            have = len(buf) - i
            if have < 4:
                return None
            tot_len = U32.unpack_from(buf, i)[0]
            if room >= SIZE_OF_XLOG_RECORD:
                if have < SIZE_OF_XLOG_RECORD:
                    return None
                self._check_header(lsn, bytes(buf[i:i + SIZE_OF_XLOG_RECORD]))
                header_checked = True
            else:
                if tot_len < SIZE_OF_XLOG_RECORD:
                    raise self._stop(lsn, (f"invalid record length at {_fmt(lsn)}: expected "
                                           f"at least {SIZE_OF_XLOG_RECORD}, got {tot_len}"))
                header_checked = False
            if tot_len <= room:
                if have < tot_len:
                    return None
                raw = bytes(buf[i:i + tot_len])
                last = lsn + tot_len
            else:
                # Walk the continuation pages, validating each header, and note
                # where the pieces are; copy only once the whole record is here
                # (so a huge record fed in small chunks is not re-copied each time).
                spans = [(i, room)]
                got = room
                page = lsn + room  # next page start
                restart = False
                while got < tot_len:
                    hdr = self._page(page, lsn)
                    if hdr is None:
                        return None
                    hsize, info, rem = hdr
                    if info & XLP_FIRST_IS_OVERWRITE_CONTRECORD:
                        # The record was cut by a crash and overwritten: drop it and
                        # read on from this page, keeping the prev-link of the last
                        # complete record (the overwrite record points to it).
                        self.overwritten_lsn = Lsn(lsn)
                        self._next = page
                        restart = True
                        break
                    if not info & XLP_FIRST_IS_CONTRECORD:
                        raise self._stop(lsn, f"there is no contrecord flag at {_fmt(page)}")
                    if rem == 0 or rem != tot_len - got:
                        raise self._stop(lsn, (f"invalid contrecord length {rem} (expected "
                                               f"{tot_len - got}) at {_fmt(page)}"))
                    take = min(tot_len - got, XLOG_BLCKSZ - hsize)
                    j = page + hsize - base
                    if len(buf) - j < take:
                        return None
                    spans.append((j, take))
                    got += take
                    last = page + hsize + take
                    if not header_checked and got >= SIZE_OF_XLOG_RECORD:
                        head = b"".join(bytes(buf[a:a + n]) for a, n in spans)
                        self._check_header(lsn, head[:SIZE_OF_XLOG_RECORD])
                        header_checked = True
                    page += XLOG_BLCKSZ
                if restart:
                    continue
                raw = b"".join([bytes(buf[a:a + n]) for a, n in spans])
            # CRC-32C over the payload, then over the header up to xl_crc.
            crc = _crc_extend(_crc_value(raw[SIZE_OF_XLOG_RECORD:]), raw[:20])
            stored = U32.unpack_from(raw, 20)[0]
            if crc != stored:
                raise self._stop(lsn, (f"incorrect resource manager data checksum in record "
                                       f"at {_fmt(lsn)}"))
            end = _align8(last)
            if raw[17] == RM_XLOG_ID and raw[16] & 0xF0 == XLOG_SWITCH:
                # The rest of the segment is unused: pretend the record fills it.
                seg = self.segment_size
                end = ((end + seg - 1) // seg) * seg
            self._prev = lsn
            self._next = end
            if end - self._base >= _COMPACT_AT:
                self._compact()
            return RawRecord(_int_new(Lsn, lsn), _int_new(Lsn, end), raw)

    def _check_header(self, lsn: int, hdr: bytes) -> None:
        """ValidXLogRecordHeader."""
        tot_len, _xid, prev, _info, rmid, _crc = _REC_HDR.unpack(hdr)
        if tot_len < SIZE_OF_XLOG_RECORD:
            raise self._stop(lsn, (f"invalid record length at {_fmt(lsn)}: expected at least "
                                   f"{SIZE_OF_XLOG_RECORD}, got {tot_len}"))
        if tot_len > XLOG_RECORD_MAX_SIZE:
            raise self._stop(lsn, f"record length {tot_len} at {_fmt(lsn)} too long")
        if not (rmid <= RM_MAX_BUILTIN_ID or rmid >= RM_MIN_CUSTOM_ID):
            raise self._stop(lsn, f"invalid resource manager ID {rmid} at {_fmt(lsn)}")
        if self._prev is None:
            # Random access: the prev-link can only be checked to point backwards.
            if prev >= lsn:
                raise self._stop(lsn, (f"record with incorrect prev-link {_fmt(prev)} at "
                                       f"{_fmt(lsn)}"))
        elif prev != self._prev:
            raise self._stop(lsn, f"record with incorrect prev-link {_fmt(prev)} at {_fmt(lsn)}")
