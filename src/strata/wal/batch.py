"""Record batches: many framed and decoded WAL records as columns.

What it is: `RecordBatch`, the unit the batched ingest path works on, and
`BatchBuilder`, the pure-Python way to fill one from complete records (the
reference: the compiled reader in `wal._walbatch` fills the very same bytes,
and tests/wal/test_batch.py holds the two to it). No object per record or per
block reference is built: a record is a row of `recs`, a block reference a row
of `blks`, and every byte a record carries lives once in `buf`.

Fed by: `WalReader.read_batch` (framing, CRC) which adds records here.
Feeds: `ingest.walingest.WalIngest.ingest_batch` (block references and record
bytes, no objects) and anything that wants a `DecodedRecord` back
(`record(i)`, e.g. the records ingest interprets one by one).
Owns: the layouts below (in memory only; never written to disk).

Layout (`REC_DTYPE` / `BLK_DTYPE` are C structs, align=True, mirrored by
``struct rec`` / ``struct blk`` in _walbatch.c; padding is zero):

- `buf`: per record, in order: its start LSN (u64 LE), its end LSN (u64 LE),
  then the whole record as written (XLogRecord header included, page headers
  removed). So ``buf[off - 16:off + tot_len]`` is the record's REL_BLOCK
  delta value as versions 1-3 stored it (version 4 keeps less of the header:
  keyspace `encode_delta`; a heap UPDATE's old page less of the record:
  `encode_record_delta`).
- `recs[i]`: lsn, end_lsn, off (of the record in buf), main_off, tot_len, xid,
  main_len, toplevel_xid, blk_first (its first row in blks), origin, info,
  rmid, nblocks, flags (FLAG_ORIGIN, FLAG_TOPLEVEL_XID: which optional field is
  set). Offsets and lengths of absent parts are 0.
- `blks[j]`: img_off, data_off (in buf), spc, db, rel, blkno, rec (row in recs),
  img_len (stored image bytes), hole_offset, hole_length, data_len, block_id,
  fork, fork_flags, bimg_info — what `decode_headers` finds, in header order.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

import google_crc32c
import numpy as np

from strata.lsn import Lsn
from strata.wal.decoder import decode_headers, decode_record
from strata.wal.record import BKPBLOCK_FORK_MASK, BKPBLOCK_HAS_IMAGE, DecodedRecord

REC_DTYPE = np.dtype([
    ("lsn", "<i8"), ("end_lsn", "<i8"), ("off", "<i8"), ("main_off", "<i8"),
    ("tot_len", "<u4"), ("xid", "<u4"), ("main_len", "<u4"), ("toplevel_xid", "<u4"),
    ("blk_first", "<i4"), ("origin", "<u2"), ("info", "u1"), ("rmid", "u1"),
    ("nblocks", "u1"), ("flags", "u1"),
], align=True)
BLK_DTYPE = np.dtype([
    ("img_off", "<i8"), ("data_off", "<i8"),
    ("spc", "<u4"), ("db", "<u4"), ("rel", "<u4"), ("blkno", "<u4"), ("rec", "<i4"),
    ("img_len", "<u2"), ("hole_offset", "<u2"), ("hole_length", "<u2"), ("data_len", "<u2"),
    ("block_id", "u1"), ("fork", "u1"), ("fork_flags", "u1"), ("bimg_info", "u1"),
], align=True)
FLAG_ORIGIN = 0x01
FLAG_TOPLEVEL_XID = 0x02
LSN_HEADER = struct.Struct("<QQ")  # start and end LSN in front of each record in buf
_MAX_BLOCKS = 33  # block references one record can have (ids 0..XLR_MAX_BLOCK_ID)
# statuses of _walbatch.frame (mirrors _walbatch.c)
_ST_STOP, _ST_FULL_RECS, _ST_FULL_BLKS, _ST_FULL_OUT = 0, 1, 2, 3

log = logging.getLogger(__name__)
_rec_hdr_unpack_from = struct.Struct("<IIQBB").unpack_from
_int_new = int.__new__


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Records ``recs`` (in WAL order) with their block references ``blks``."""

    buf: bytes
    recs: np.ndarray  # REC_DTYPE
    blks: np.ndarray  # BLK_DTYPE

    def __len__(self) -> int:
        return len(self.recs)

    @property
    def first_lsn(self) -> Lsn:
        return Lsn(int(self.recs["lsn"][0]))

    @property
    def last_lsn(self) -> Lsn:
        """Start of the last record."""
        return Lsn(int(self.recs["lsn"][-1]))

    @property
    def end_lsn(self) -> Lsn:
        """End of the last record."""
        return Lsn(int(self.recs["end_lsn"][-1]))

    def raw(self, i: int) -> bytes:
        """Record `i` as written."""
        r = self.recs[i]
        off = int(r["off"])
        return self.buf[off:off + int(r["tot_len"])]

    def record(self, i: int) -> DecodedRecord:
        """Record `i` decoded (objects built: for the records that need them)."""
        r = self.recs[i]
        return decode_record(self.raw(i), _int_new(Lsn, int(r["lsn"])),
                             _int_new(Lsn, int(r["end_lsn"])))


class BatchBuilder:
    """Fills the columns of one `RecordBatch`, record by record (`add`: the
    pure-Python decoder, the reference) or many at a time (`frame`: the compiled
    reader, when built). Both write the same bytes."""

    __slots__ = ("blks", "nblk", "nrec", "opos", "out", "recs")

    def __init__(self, records: int = 256, buffer: int = 1 << 16) -> None:
        self.recs = np.zeros(max(records, 1), dtype=REC_DTYPE)
        self.blks = np.zeros(max(3 * records, _MAX_BLOCKS), dtype=BLK_DTYPE)
        self.out = np.empty(max(buffer, 1 << 12), dtype=np.uint8)  # written before it is read
        self.nrec = self.nblk = self.opos = 0

    def __len__(self) -> int:
        return self.nrec

    def _grow(self, recs: int = 0, blks: int = 0, out: int = 0) -> None:
        """Room for `recs` more records, `blks` more block rows, `out` more bytes."""
        if self.nrec + recs > len(self.recs):
            self.recs = _grown(self.recs, self.nrec + recs)
        if self.nblk + blks > len(self.blks):
            self.blks = _grown(self.blks, self.nblk + blks)
        if self.opos + out > len(self.out):
            self.out = _grown(self.out, self.opos + out)

    def add(self, raw: bytes, lsn: int, end_lsn: int) -> None:
        """Decode `raw` (a whole record, CRC checked) and append it.

        Raises: WalDecodeError as `decode_record` does (nothing is appended)."""
        pending, main_len, origin, toplevel_xid, pos = decode_headers(raw, lsn)
        tot_len, xid, _prev, info, rmid = _rec_hdr_unpack_from(raw, 0)
        self._grow(1, len(pending), LSN_HEADER.size + tot_len)
        off = self.opos + LSN_HEADER.size
        blk_first = self.nblk
        blks = self.blks
        for (block_id, fork_flags, data_len, rloc, blkno,
             bimg_len, hole_offset, bimg_info, hole_len) in pending:
            img_off = 0
            if fork_flags & BKPBLOCK_HAS_IMAGE:
                img_off = off + pos
                pos += bimg_len
            data_off = 0
            if data_len:
                data_off = off + pos
                pos += data_len
            blks[self.nblk] = (img_off, data_off, rloc.spc, rloc.db, rloc.rel, blkno, self.nrec,
                               bimg_len, hole_offset, hole_len, data_len, block_id,
                               fork_flags & BKPBLOCK_FORK_MASK, fork_flags, bimg_info)
            self.nblk += 1
        flags = (FLAG_ORIGIN if origin is not None else 0) | \
            (FLAG_TOPLEVEL_XID if toplevel_xid is not None else 0)
        self.recs[self.nrec] = (lsn, end_lsn, off, off + pos if main_len else 0, tot_len, xid,
                                main_len, toplevel_xid or 0, blk_first, origin or 0, info, rmid,
                                len(pending), flags)
        self.nrec += 1
        self.out[self.opos:off] = np.frombuffer(LSN_HEADER.pack(lsn, end_lsn), dtype=np.uint8)
        self.out[off:off + tot_len] = np.frombuffer(raw, dtype=np.uint8)
        self.opos = off + tot_len

    def frame(self, frame_fn: Callable[..., tuple[int, ...]], buf: bytearray, base: int,
              next_lsn: int, prev_lsn: int, segment_size: int, timeline: int,
              max_records: int) -> tuple[int, int]:
        """Run the compiled reader (`_walbatch.frame`) from `next_lsn` on, growing
        the columns as it asks, until it stops at a record Python must read or at
        `max_records`. Returns (next LSN, prev LSN) after the last record it took."""
        while True:
            room = max_records - self.nrec
            if room <= 0:
                return next_lsn, prev_lsn
            recs = self.recs[:min(len(self.recs), self.nrec + room)]
            nrec, nblk, opos, next_lsn, prev_lsn, status, need = frame_fn(
                buf, base, next_lsn, prev_lsn, segment_size, timeline, recs, self.nrec,
                self.blks, self.nblk, self.out, self.opos)
            self.nrec, self.nblk, self.opos = nrec, nblk, opos
            if status == _ST_STOP:
                return next_lsn, prev_lsn
            if status == _ST_FULL_RECS and len(recs) < len(self.recs):
                return next_lsn, prev_lsn  # max_records reached
            self._grow(recs=len(self.recs) if status == _ST_FULL_RECS else 0,
                       blks=len(self.blks) if status == _ST_FULL_BLKS else 0,
                       out=max(need - self.opos, len(self.out)) if status == _ST_FULL_OUT else 0)

    def build(self) -> RecordBatch:
        return RecordBatch(self.out[:self.opos].tobytes(), self.recs[:self.nrec],
                           self.blks[:self.nblk])


def _grown(a: np.ndarray, at_least: int) -> np.ndarray:
    """`a` in a bigger array (zeros after it: the padding of the rows stays 0)."""
    new = np.zeros(max(at_least, 2 * len(a)), dtype=a.dtype)
    new[:len(a)] = a
    return new


_COMPILED: Callable[..., tuple[int, ...]] | bool | None = False  # False: not looked up yet


def compiled_frame() -> Callable[..., tuple[int, ...]] | None:
    """`_walbatch.frame` when the extension is built and matches these layouts
    (and STRATA_PURE_PYTHON is not set), else None. Says which, once."""
    global _COMPILED
    if _COMPILED is False:
        _COMPILED = _load_compiled()
    return _COMPILED  # type: ignore[return-value]


def _load_compiled() -> Callable[..., tuple[int, ...]] | None:
    if os.environ.get("STRATA_PURE_PYTHON"):
        log.info("STRATA_PURE_PYTHON is set: the WAL reader runs in pure Python")
        return None
    try:
        from strata.wal import _walbatch  # type: ignore[attr-defined]
    except ImportError:
        log.warning("the compiled WAL reader (strata.wal._walbatch) is not built: reading "
                    "WAL in pure Python, several times slower (reinstall with a C compiler "
                    "and the Python headers to build it)")
        return None
    if (tuple(_walbatch.REC_LAYOUT) != _layout(REC_DTYPE)
            or tuple(_walbatch.BLK_LAYOUT) != _layout(BLK_DTYPE)):
        log.warning("the compiled WAL reader does not match this version's record "
                    "layout (rebuild it): reading WAL in pure Python")
        return None
    return _walbatch.frame  # type: ignore[no-any-return]


def crc32c_rows(data: bytes, stride: int, length: int) -> np.ndarray:
    """Per row of `stride` bytes of `data` (whole rows only), the CRC-32C of its
    first `length` bytes, as uint32. Compiled when the extension is built; the
    same values either way."""
    if compiled_frame() is not None:
        from strata.wal import _walbatch  # type: ignore[attr-defined]

        return np.frombuffer(_walbatch.crc32c_rows(data, stride, length), dtype="<u4")
    return crc32c_rows_python(data, stride, length)


def crc32c_rows_python(data: bytes, stride: int, length: int) -> np.ndarray:
    """`crc32c_rows` in pure Python (the reference)."""
    return np.array([google_crc32c.value(bytes(data[at:at + length]))
                     for at in range(0, len(data) - stride + 1, stride)], dtype="<u4")


def _layout(dtype: np.dtype) -> tuple[int, ...]:
    """itemsize, then each field's offset (the C module's REC_LAYOUT / BLK_LAYOUT)."""
    assert dtype.names is not None
    return (dtype.itemsize, *(dtype.fields[name][1] for name in dtype.names))  # type: ignore[index]
