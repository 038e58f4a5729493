"""Crafted WAL for reader unit tests: records laid out on pages like PostgreSQL does.

`WalBuilder` writes records (with correct CRC-32C and prev-links unless told
otherwise) into 8 KB pages with short/long headers, XLP_FIRST_IS_CONTRECORD
and xlp_rem_len on continuation pages, MAXALIGN padding, and XLOG_SWITCH
padding to the segment end. The layout rules are the ones checked against
real WAL by tests/wal/test_against_pg.py, so crafted bytes exercise exactly
the corner cases (header split across pages, multi-page records, overwritten
contrecords) that a short real workload may not produce on demand.
"""

from __future__ import annotations

import struct

from google_crc32c import extend, value

BLCKSZ = 8192
MAGIC = 0xD118
SYSID = 7_000_000_000_000_000_001

_REC = struct.Struct("<IIQBB2xI")
_PHD = struct.Struct("<HHIQI4x")
_LONG_TAIL = struct.Struct("<QII")


def record_bytes(rmid: int, info: int, body: bytes, *, xid: int = 0, prev: int = 0) -> bytes:
    """A complete record: 24-byte header (CRC filled in) + `body` (block headers,
    main-data header, payloads)."""
    tot = 24 + len(body)
    head = _REC.pack(tot, xid, prev, info, rmid, 0)
    crc = extend(value(body), head[:20])
    return _REC.pack(tot, xid, prev, info, rmid, crc) + body


def main_data_body(data: bytes) -> bytes:
    """The body of a record with only main data (DATA_SHORT or DATA_LONG)."""
    if len(data) < 256:
        return bytes([255, len(data)]) + data
    return bytes([254]) + struct.pack("<I", len(data)) + data


class WalBuilder:
    """Lay records out on WAL pages from `start` (a segment start)."""

    def __init__(self, start: int = 0x1000000, segment_size: int = 1024 * 1024,
                 tli: int = 1, sysid: int = SYSID) -> None:
        assert start % segment_size == 0
        self.start = start
        self.segment_size = segment_size
        self.tli = tli
        self.sysid = sysid
        self.buf = bytearray()
        self.pos = start  # next free byte (LSN)
        self.prev = 0
        self.lsns: list[int] = []
        self.ends: list[int] = []
        self.page_flags: dict[int, int] = {}  # extra xlp_info bits per page address

    def _page_header(self, page: int, rem_len: int) -> bytes:
        info = self.page_flags.get(page, 0)
        if rem_len:
            info |= 0x0001
        if page % self.segment_size == 0:
            info |= 0x0002
            return (_PHD.pack(MAGIC, info, self.tli, page, rem_len)
                    + _LONG_TAIL.pack(self.sysid, self.segment_size, BLCKSZ))
        return _PHD.pack(MAGIC, info, self.tli, page, rem_len)

    def _put(self, data: bytes) -> None:
        off = self.pos - self.start
        if len(self.buf) < off:
            self.buf += bytes(off - len(self.buf))
        self.buf[off:off + len(data)] = data
        self.pos += len(data)

    def _ensure_page_header(self, rem_len: int) -> None:
        if self.pos % BLCKSZ == 0:
            self._put(self._page_header(self.pos, rem_len))

    def add(self, rec: bytes, *, fix_prev: bool = True, is_switch: bool = False) -> int:
        """Append a record; returns its LSN. With `fix_prev` the prev-link and CRC
        are rewritten to chain to the previous record."""
        if fix_prev:
            _tot, xid, _prev, info, rmid, _crc = _REC.unpack_from(rec)
            rec = record_bytes(rmid, info, rec[24:], xid=xid, prev=self.prev)
        self.pos = (self.pos + 7) & ~7
        self._ensure_page_header(0)
        lsn = self.pos
        data = memoryview(rec)
        while data:
            self._ensure_page_header(len(data) if self.pos != lsn else 0)
            room = BLCKSZ - self.pos % BLCKSZ
            piece = data[:room]
            self._put(bytes(piece))
            data = data[room:]
        self.prev = lsn
        end = (self.pos + 7) & ~7
        if is_switch:
            seg = self.segment_size
            end = ((end + seg - 1) // seg) * seg
            self._put(bytes(end - self.pos))
        self.lsns.append(lsn)
        self.ends.append(end)
        return lsn

    def add_main(self, data: bytes, *, rmid: int = 21, info: int = 0, xid: int = 0) -> int:
        return self.add(record_bytes(rmid, info, main_data_body(data), xid=xid))

    def pad_to(self, lsn: int) -> None:
        """Leave the rest up to `lsn` as zeros (page headers included where due)."""
        while self.pos < lsn:
            self._ensure_page_header(0)
            room = min(BLCKSZ - self.pos % BLCKSZ, lsn - self.pos)
            self._put(bytes(room))

    def finish_page(self) -> bytes:
        """The bytes from `start`, zero-filled to the end of the current page."""
        end = -(-self.pos // BLCKSZ) * BLCKSZ
        out = bytes(self.buf) + bytes(end - self.start - len(self.buf))
        return out


def block_header(block_id: int, fork_flags: int, data_len: int, *,
                 image: tuple[int, int, int, int | None] | None = None,
                 rloc: tuple[int, int, int] | None = (1663, 5, 16384), blkno: int = 0) -> bytes:
    """One block reference header. `image` = (bimg_len, hole_offset, bimg_info,
    hole_length or None); `rloc` None means SAME_REL (the caller sets the flag)."""
    out = struct.pack("<BBH", block_id, fork_flags, data_len)
    if image is not None:
        bimg_len, hole_offset, bimg_info, hole_length = image
        out += struct.pack("<HHB", bimg_len, hole_offset, bimg_info)
        if hole_length is not None:
            out += struct.pack("<H", hole_length)
    if rloc is not None:
        out += struct.pack("<III", *rloc)
    return out + struct.pack("<I", blkno)
