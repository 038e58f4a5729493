"""Sans-IO record decoder: raw record bytes -> `DecodedRecord`.

What it is: PostgreSQL 18's DecodeXLogRecord (xlogreader.c) in Python. It
splits a complete record (as `wal.reader` returns it: header included, page
headers removed) into the XLogRecord header, the block references 0..32 (fork,
flags, relation locator with SAME_REL, block number, full-page image header,
registered data), the replication origin, the top-level xid and the main
data, with every consistency check PostgreSQL makes.

Fed by: `wal.reader.RawRecord` (or stored raw records). Feeds: everything
downstream (ingest, redo, `strata waldump`) through `wal.record`.
Owns: nothing but the parsing; images stay as stored (see `wal.image` to
restore the page).

Raises: WalDecodeError naming the LSN when the record is malformed. The
reader has already checked the CRC, so such a record is corrupt at the source
(or we have a bug): unlike framing problems it is not a quiet end of WAL.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from typing import Any

from strata.errors import WalDecodeError
from strata.lsn import Lsn
from strata.pg.constants import BLCKSZ
from strata.pg.structs import U16, U32
from strata.wal.record import (
    BKPBLOCK_FORK_MASK,
    BKPBLOCK_HAS_DATA,
    BKPBLOCK_HAS_IMAGE,
    BKPBLOCK_SAME_REL,
    BKPIMAGE_COMPRESSED,
    BKPIMAGE_HAS_HOLE,
    SIZE_OF_XLOG_RECORD,
    XLR_BLOCK_ID_DATA_LONG,
    XLR_BLOCK_ID_DATA_SHORT,
    XLR_BLOCK_ID_ORIGIN,
    XLR_BLOCK_ID_TOPLEVEL_XID,
    XLR_MAX_BLOCK_ID,
    BlockImage,
    BlockRef,
    DecodedRecord,
    RelFileLocator,
)

_REC_HDR = struct.Struct("<IIQBB2xI")
_BLK_HDR = struct.Struct("<BH")  # fork_flags u8, data_length u16 (after the id byte)
_IMG_HDR = struct.Struct("<HHB")  # length, hole_offset, bimg_info
_RLOC = struct.Struct("<III")

_rec_hdr_unpack_from = _REC_HDR.unpack_from
_blk_hdr_unpack_from = _BLK_HDR.unpack_from
_img_hdr_unpack_from = _IMG_HDR.unpack_from
_u16_unpack_from = U16.unpack_from
_u32_unpack_from = U32.unpack_from
_rloc_unpack_from = _RLOC.unpack_from


def _fast_constructor(cls: type) -> Callable[..., Any]:
    """A positional constructor for a frozen, slotted dataclass that stores the
    fields through the slot descriptors.

    Why: a frozen dataclass's generated __init__ goes through
    ``object.__setattr__`` per field, which made object construction the
    largest single cost of decoding (about half of it). The objects built here
    are indistinguishable from ones built by __init__ (same class, same slots,
    still frozen). Only valid for classes without __post_init__ or defaults
    that need computing, which is asserted.
    """
    if not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} cannot use a fast constructor")
    names = [f.name for f in dataclasses.fields(cls)]
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    body = [f"def make({', '.join(names)}):", "    o = _new(_cls)"]
    for i, n in enumerate(names):
        env[f"_s{i}"] = getattr(cls, n).__set__
        body.append(f"    _s{i}(o, {n})")
    body.append("    return o")
    exec("\n".join(body), env)  # source built from the dataclass field names only
    return env["make"]  # type: ignore[no-any-return]


_new_decoded = _fast_constructor(DecodedRecord)
_new_block = _fast_constructor(BlockRef)
_new_image = _fast_constructor(BlockImage)
_int_new = int.__new__
# Relation locators repeat endlessly: share one object per relation.
_RLOC_CACHE: dict[tuple[int, int, int], RelFileLocator] = {}
_RLOC_CACHE_MAX = 65536


def _lsn(v: int) -> Lsn:
    """An Lsn without re-validating a value that came from a u64 field."""
    return v if v.__class__ is Lsn else _int_new(Lsn, v)  # type: ignore[return-value]


def _fmt(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


class _Short(Exception):
    """Internal: a header field ran past the record (shortdata_err)."""


def _check_image(lsn: int, bimg_len: int, hole_offset: int, hole_len: int, has_hole: int,
                 compressed: int) -> None:
    """DecodeXLogRecord's image-header checks, in PostgreSQL's order."""
    if has_hole:
        if hole_offset == 0 or hole_len == 0 or bimg_len == BLCKSZ:
            raise WalDecodeError(
                f"BKPIMAGE_HAS_HOLE set, but hole offset {hole_offset} length "
                f"{hole_len} block image length {bimg_len} at {_fmt(lsn)}")
    elif hole_offset != 0 or hole_len != 0:
        raise WalDecodeError(
            f"BKPIMAGE_HAS_HOLE not set, but hole offset {hole_offset} length "
            f"{hole_len} at {_fmt(lsn)}")
    if compressed and bimg_len == BLCKSZ:
        raise WalDecodeError(
            f"BKPIMAGE_COMPRESSED set, but block image length {bimg_len} at {_fmt(lsn)}")
    if not has_hole and not compressed and bimg_len != BLCKSZ:
        raise WalDecodeError(
            "neither BKPIMAGE_HAS_HOLE nor BKPIMAGE_COMPRESSED set, but block "
            f"image length is {bimg_len} at {_fmt(lsn)}")


# One block reference header, as pass 1 leaves it:
# (block_id, fork_flags, data_len, rloc, blkno, bimg_len, hole_offset, bimg_info, hole_len)
BlockHeader = tuple[int, int, int, RelFileLocator, int, int, int, int, int]


def decode_headers(raw: bytes, lsn: int
                   ) -> tuple[list[BlockHeader], int, int | None, int | None, int]:
    """Pass 1 of DecodeXLogRecord: the record's headers, with every check.

    Requires: `raw` is the whole record (len(raw) == xl_tot_len), CRC checked.
    Returns: (block headers in order, main data length, origin, top-level xid,
    offset of the first payload byte). Payloads follow in header order: each
    block's image, then its data; the main data last.
    Raises: WalDecodeError("... at X/Y") for any inconsistency.
    """
    n = len(raw)
    if n < SIZE_OF_XLOG_RECORD:
        raise WalDecodeError(f"record with invalid length at {_fmt(lsn)}")
    tot_len = _u32_unpack_from(raw, 0)[0]
    if tot_len != n:
        raise WalDecodeError(
            f"record length {tot_len} does not match the {n} bytes given at {_fmt(lsn)}")
    # PostgreSQL tracks `remaining` (bytes not yet consumed); here that is always
    # n - pos, and a header field running past the record shows up as
    # IndexError/struct.error (its shortdata_err). `datatotal` sums the payload
    # bytes the headers announce; headers and payloads must meet.
    pos = SIZE_OF_XLOG_RECORD
    datatotal = 0
    main_len = 0
    origin: int | None = None
    toplevel_xid: int | None = None
    max_block_id = -1
    rloc: RelFileLocator | None = None
    pending: list[BlockHeader] = []
    try:
        while n - pos > datatotal:
            block_id = raw[pos]
            if block_id == XLR_BLOCK_ID_DATA_SHORT:
                main_len = raw[pos + 1]
                pos += 2
                datatotal += main_len
                break  # by convention the main data fragment is always last
            if block_id <= XLR_MAX_BLOCK_ID:
                if block_id <= max_block_id:
                    raise WalDecodeError(f"out-of-order block_id {block_id} at {_fmt(lsn)}")
                max_block_id = block_id
                fork_flags, data_len = _blk_hdr_unpack_from(raw, pos + 1)
                pos += 4
                if fork_flags & BKPBLOCK_HAS_DATA:
                    if data_len == 0:
                        raise WalDecodeError(
                            f"BKPBLOCK_HAS_DATA set, but no data included at {_fmt(lsn)}")
                elif data_len != 0:
                    raise WalDecodeError(
                        f"BKPBLOCK_HAS_DATA not set, but data length is {data_len} "
                        f"at {_fmt(lsn)}")
                datatotal += data_len
                if fork_flags & BKPBLOCK_HAS_IMAGE:
                    bimg_len, hole_offset, bimg_info = _img_hdr_unpack_from(raw, pos)
                    pos += 5
                    compressed = bimg_info & BKPIMAGE_COMPRESSED
                    has_hole = bimg_info & BKPIMAGE_HAS_HOLE
                    if compressed:
                        if has_hole:
                            hole_len = _u16_unpack_from(raw, pos)[0]
                            pos += 2
                        else:
                            hole_len = 0
                    else:
                        hole_len = BLCKSZ - bimg_len
                    datatotal += bimg_len
                    _check_image(lsn, bimg_len, hole_offset, hole_len, has_hole, compressed)
                else:
                    bimg_len = hole_offset = bimg_info = hole_len = 0
                if not fork_flags & BKPBLOCK_SAME_REL:
                    key = _rloc_unpack_from(raw, pos)
                    pos += 12
                    rloc = _RLOC_CACHE.get(key)
                    if rloc is None:
                        if len(_RLOC_CACHE) >= _RLOC_CACHE_MAX:
                            _RLOC_CACHE.clear()
                        rloc = _RLOC_CACHE[key] = RelFileLocator(*key)
                elif rloc is None:
                    raise WalDecodeError(
                        f"BKPBLOCK_SAME_REL set but no previous rel at {_fmt(lsn)}")
                blkno = _u32_unpack_from(raw, pos)[0]
                pos += 4
                pending.append((block_id, fork_flags, data_len, rloc, blkno,
                                bimg_len, hole_offset, bimg_info, hole_len))
            elif block_id == XLR_BLOCK_ID_DATA_LONG:
                main_len = _u32_unpack_from(raw, pos + 1)[0]
                pos += 5
                datatotal += main_len
                break
            elif block_id == XLR_BLOCK_ID_ORIGIN:
                origin = _u16_unpack_from(raw, pos + 1)[0]
                pos += 3
            elif block_id == XLR_BLOCK_ID_TOPLEVEL_XID:
                toplevel_xid = _u32_unpack_from(raw, pos + 1)[0]
                pos += 5
            else:
                raise WalDecodeError(f"invalid block_id {block_id} at {_fmt(lsn)}")
        if pos > n or n - pos != datatotal:
            raise _Short
    except (_Short, IndexError, struct.error):
        raise WalDecodeError(f"record with invalid length at {_fmt(lsn)}") from None
    return pending, main_len, origin, toplevel_xid, pos


def decode_record(raw: bytes, lsn: Lsn | int, end_lsn: Lsn | int) -> DecodedRecord:
    """Decode one complete record.

    Requires: `raw` is the whole record (len(raw) == xl_tot_len), CRC checked.
    Returns: the DecodedRecord; block images are kept as stored.
    Raises: WalDecodeError("... at X/Y") for any inconsistency.
    """
    pending, main_len, origin, toplevel_xid, pos = decode_headers(raw, lsn)
    tot_len, xid, prev, info, rmid, crc = _rec_hdr_unpack_from(raw, 0)
    # Pass 2: the payloads, in header order: each block's image, then its data;
    # the main data last.
    blocks: list[BlockRef] = []
    for (block_id, fork_flags, data_len, brloc, blkno,
         bimg_len, hole_offset, bimg_info, hole_len) in pending:
        image: BlockImage | None = None
        if fork_flags & BKPBLOCK_HAS_IMAGE:
            image = _new_image(raw[pos:pos + bimg_len], bimg_info, hole_offset, hole_len)
            pos += bimg_len
        if data_len:
            data = raw[pos:pos + data_len]
            pos += data_len
        else:
            data = b""
        blocks.append(_new_block(block_id, brloc, fork_flags & BKPBLOCK_FORK_MASK, blkno,
                                 fork_flags, image, data))
    main_data = raw[pos:pos + main_len] if main_len else b""
    # field order of DecodedRecord: lsn, end_lsn, xl_tot_len, xl_xid, xl_prev, xl_info,
    # xl_rmid, xl_crc, blocks, main_data, origin, toplevel_xid, raw
    return _new_decoded(  # type: ignore[no-any-return]
        _lsn(lsn), _lsn(end_lsn), tot_len, xid, _int_new(Lsn, prev), info, rmid, crc,
        tuple(blocks), main_data, origin, toplevel_xid, raw)


def trimmed_for_block(raw: bytes, block_id: int, drop_data_of: int | None = None) -> bytes:
    """Record `raw` as ingest stores it for its block reference `block_id`
    (keyspace/FORMAT.md, "REL_BLOCK record deltas"): every other block
    reference's full-page image removed (its image header and bytes, and
    BKPBLOCK_HAS_IMAGE), and, when `drop_data_of` names a block reference, that
    block's registered data (its bytes, BKPBLOCK_HAS_DATA, data_length 0);
    xl_tot_len lowered to match. Everything else stays (xl_crc is the original
    record's: it no longer covers these bytes). `raw` itself when nothing is
    removed. `ingest.batched._record_pieces` is the vector form.

    Requires: `raw` decodes (`decode_headers`)."""
    n = len(raw)
    pos = SIZE_OF_XLOG_RECORD
    datatotal = 0
    # per block to edit: header offset, image header length (0: image kept), data
    # kept?, where its payload starts after the headers, image and data lengths
    edits: list[tuple[int, int, bool, int, int, int]] = []
    while n - pos > datatotal:
        bid = raw[pos]
        if bid > XLR_MAX_BLOCK_ID:
            if bid in (XLR_BLOCK_ID_DATA_SHORT, XLR_BLOCK_ID_DATA_LONG):
                pos += 2 if bid == XLR_BLOCK_ID_DATA_SHORT else 5
                break
            pos += 3 if bid == XLR_BLOCK_ID_ORIGIN else 5  # origin, top-level xid
            continue
        fork_flags, data_len = _blk_hdr_unpack_from(raw, pos + 1)
        img_len = hdr = 0
        if fork_flags & BKPBLOCK_HAS_IMAGE:
            img_len, _, bimg_info = _img_hdr_unpack_from(raw, pos + 4)
            hdr = 7 if bimg_info & BKPIMAGE_COMPRESSED and bimg_info & BKPIMAGE_HAS_HOLE else 5
        cut_image = hdr if bid != block_id else 0
        drop = bid == drop_data_of and data_len > 0
        if cut_image or drop:
            edits.append((pos, cut_image, not drop, datatotal, img_len, data_len))
        datatotal += img_len + data_len
        pos += 4 + hdr + (0 if fork_flags & BKPBLOCK_SAME_REL else 12) + 4
    if not edits:
        return raw
    out = bytearray()
    cur = 0
    for at, cut_image, keep_data, _, _, data_len in edits:  # headers, in order
        flags = raw[at + 1] & ~((BKPBLOCK_HAS_IMAGE if cut_image else 0)
                                | (0 if keep_data else BKPBLOCK_HAS_DATA))
        out += raw[cur:at + 1]
        out += _BLK_HDR.pack(flags, data_len if keep_data else 0)
        cur = at + 4 + cut_image
    for _, cut_image, keep_data, payload, img_len, data_len in edits:  # payloads
        start = pos + payload + (0 if cut_image else img_len)
        end = pos + payload + img_len + (0 if keep_data else data_len)
        out += raw[cur:start]
        cur = end
    out += raw[cur:]
    out[0:4] = U32.pack(len(out))
    return bytes(out)
