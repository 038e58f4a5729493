"""REL_BLOCK, REL_SIZE and DB_DIR values: relation pages, fork lengths and
database directories.

REL_BLOCK deltas come in two forms (keyspace/FORMAT.md, version 6): a WAL
record (`encode_record_delta`: as written but for the record header's xl_prev
and xl_crc, which redo never reads and which cost a quarter of a delta layer's
bytes, the other block references' full-page images, which no redo of this
block reads, and, for a heap UPDATE's old page, the new tuple), or one block's
full-page image exactly as WAL
stores it (`encode_image_delta`: maybe compressed, without its hole), which
reconstruct restores when the page is read; the u32 at offset 16 tells them
apart (a record's ``xl_tot_len`` is never 0). An applied image is stored as
an image delta unless redo changes the page after restoring it
(`image_needs_record`): then the record is stored, and redo restores and
finishes the page.

What it is: the codecs of the values ingest stores under these key kinds
(keyspace/FORMAT.md has the byte tables). Fed by: ingest (which builds them
from WAL records and imports). Feeds: reconstruct (decodes REL_BLOCK deltas
back into WAL records), historical (fork lengths, database directories),
ingest on restart. Owns: these encodings. Pure.
"""

from __future__ import annotations

import struct

from strata.errors import WalDecodeError
from strata.lsn import Lsn
from strata.pg.constants import ForkNumber
from strata.wal.decoder import trimmed_for_block
from strata.wal.record import XLR_RMGR_INFO_MASK, BlockImage, BlockRef, DecodedRecord
from strata.wal.rmgr import (
    RM_GIST_ID,
    RM_HEAP_ID,
    XLOG_GIST_PAGE_SPLIT,
    XLOG_GIST_PAGE_UPDATE,
    XLOG_HEAP_OPMASK,
    XLOG_HEAP_UPDATE,
)

# REL_BLOCK record delta: start LSN, end LSN, then the record. Version 5 writes
# start LSN 0 (no record starts there), end LSN 0 (the entry's LSN is the record's
# end: reads hand it to redo, `WalRecord.lsn`) and, in the XLogRecord header,
# end - start where xl_prev was and 0 for the padding and xl_crc
# (`COMPACT_RECORD_HEADER`); version 4 wrote the end LSN; versions 1-3 wrote both
# LSNs and the header as written.
_DELTA_HEADER = struct.Struct("<QQ")
DELTA_HEADER_SIZE = _DELTA_HEADER.size
_SPAN = struct.Struct("<Q")  # at 24: where a version 4 delta keeps end - start
_TOT_XID = struct.Struct("<II")  # xl_tot_len, xl_xid
# the 40 bytes a record delta of version 4 or 5 begins with: 0, end_lsn (version 5:
# 0), xl_tot_len, xl_xid, end - start (in xl_prev's place), xl_info, xl_rmid,
# padding 0, xl_crc 0
COMPACT_RECORD_HEADER = struct.Struct("<QQIIQBBHI")
# REL_BLOCK image delta (version 2): start LSN, end LSN, marker 0 (u32: where a
# record delta has xl_tot_len >= 24), bimg_info u8, reserved u8, hole_offset
# u16, hole_length u16, then the image bytes as stored in WAL.
_IMAGE_HEADER = struct.Struct("<QQIBxHH")
IMAGE_DELTA_HEADER_SIZE = _IMAGE_HEADER.size  # 26
_IMAGE_TAIL = struct.Struct("<IBxHH")  # the part after the two LSNs
IMAGE_DELTA_MARKER = b"\0\0\0\0"
# REL_SIZE value: number of blocks.
_REL_SIZE = struct.Struct("<I")
# DB_DIR value: format byte (1) then PG_VERSION contents.
DB_DIR_PRESENT = b"\x0118\n"

# Forks whose pages are stored. The visibility map is (a historical server
# without it answers an index-only scan by fetching every heap tuple); the free
# space map is not (only inserts read it, wal-census 5.2).
STORED_FORKS = (ForkNumber.MAIN, ForkNumber.VM, ForkNumber.INIT)


# (rmid, rmgr info, block id) of the block references whose redo changes a page it
# restored from an image, where the image cannot already hold the change:
# gistRedoClearFollowRight sets the left child's NSN to the record's own LSN (not
# known when the image was taken) and clears F_FOLLOW_RIGHT, which the primary
# clears only after the record is written (gistplacetopage). Hash's after-image
# steps (SPLIT_ALLOCATE_PAGE, SPLIT_COMPLETE) set flags the primary set before
# taking the image, so its images are stored as images.
AFTER_IMAGE_BLOCKS = frozenset({
    (RM_GIST_ID, XLOG_GIST_PAGE_UPDATE, 1),
    (RM_GIST_ID, XLOG_GIST_PAGE_SPLIT, 0),
})


def image_needs_record(rmid: int, xl_info: int, block_id: int) -> bool:
    """Is an applied image of block reference `block_id` of a record (`rmid`,
    `xl_info`) stored as the record delta (redo restores and then changes the
    page) rather than as an image delta?"""
    return (rmid, xl_info & XLR_RMGR_INFO_MASK, block_id) in AFTER_IMAGE_BLOCKS


def delta_form(record: DecodedRecord, blk: BlockRef) -> tuple[bool, bool]:
    """How ingest stores block reference `blk` of `record`: (as an image delta, not
    the record; the delta starts a chain). An applied image is stored as an image
    delta unless `image_needs_record`; a record delta starts a chain when its
    block is initialized or restored from an image (the vectorized form of this
    rule is `ingest.batched.block_entries`)."""
    if blk.apply_image and not image_needs_record(record.xl_rmid, record.xl_info,
                                                  blk.block_id):
        return True, True
    return False, blk.will_init or blk.apply_image


def encode_delta(lsn: int, end_lsn: int, raw: bytes) -> bytes:
    """A REL_BLOCK record delta (version 5) of the WAL record `raw` that starts at
    `lsn` and ends at `end_lsn`, to be stored at `end_lsn` (the LSN `decode_delta`
    needs back): its header keeps xl_tot_len, xl_xid, xl_info and xl_rmid; xl_prev's
    place holds ``end_lsn - lsn``; both LSN fields, the padding and xl_crc are 0
    (`ingest.batched._record_pieces` is the vector form).

    Requires: `raw` holds at least an XLogRecord header (24 bytes)."""
    tot_len, xid = _TOT_XID.unpack_from(raw, 0)
    return COMPACT_RECORD_HEADER.pack(0, 0, tot_len, xid, end_lsn - lsn, raw[16],
                                      raw[17], 0, 0) + raw[24:]


def stores_without_new_page_data(rmid: int, xl_info: int, block_id: int) -> bool:
    """Is block reference `block_id` of a record (`rmid`, `xl_info`) the old page
    of a heap UPDATE on two pages, whose record delta leaves out block 0's data
    (the new tuple: heap_xlog_update reads it only for the new page; the old page
    takes the main data and block 0's block number)?"""
    return (rmid == RM_HEAP_ID and xl_info & XLOG_HEAP_OPMASK == XLOG_HEAP_UPDATE
            and block_id == 1)


def encode_record_delta(record: DecodedRecord, blk: BlockRef) -> bytes:
    """The REL_BLOCK record delta of block reference `blk` of `record`: the record
    as written, without the full-page images of its other block references (redo
    of a block reads only that block's image), and for the old page of a heap
    UPDATE without the new page's data (`stores_without_new_page_data`;
    keyspace/FORMAT.md, "REL_BLOCK record deltas"). The vectorized form is
    `ingest.batched.block_entries`."""
    raw = record.raw
    drop = 0 if stores_without_new_page_data(record.xl_rmid, record.xl_info,
                                             blk.block_id) else None
    if drop is not None or any(b.image is not None and b.block_id != blk.block_id
                               for b in record.blocks):
        raw = trimmed_for_block(raw, blk.block_id, drop)
    return encode_delta(record.lsn, record.end_lsn, raw)


def decode_delta(data: bytes, lsn: int) -> tuple[Lsn, Lsn, bytes]:
    """(start LSN, end LSN, record bytes) of a REL_BLOCK record delta of any
    version, stored at `lsn` (a version 5 delta's end LSN); a delta of version 4
    or 5 gives its record with xl_prev and xl_crc 0 (not kept).

    Requires: not an image delta (`is_image_delta`).
    Raises: WalDecodeError for a delta of version 4 or 5 too short to hold its
    header (a shorter record of any version raises it when decoded), and for a
    version 5 delta given no LSN (0)."""
    start, end = _DELTA_HEADER.unpack_from(data, 0)
    if start:  # versions 1-3: the header as written
        return Lsn(start), Lsn(end), data[_DELTA_HEADER.size:]
    if not end:  # version 5: stored at its end
        if not lsn:
            raise WalDecodeError("a stored record delta read without its entry's LSN")
        end = lsn
    if len(data) < COMPACT_RECORD_HEADER.size:
        raise WalDecodeError(f"stored record ending at {Lsn(end)}: {len(data)} bytes, "
                             f"shorter than its {COMPACT_RECORD_HEADER.size}-byte header")
    (span,) = _SPAN.unpack_from(data, 24)
    return Lsn(end - span), Lsn(end), data[16:24] + bytes(8) + data[32:]


def encode_image_delta(lsn: int, end_lsn: int, image: BlockImage) -> bytes:
    """A REL_BLOCK image delta: `image` (a full-page image of the record that
    starts at `lsn`) as WAL stores it; the page it restores to is stamped
    with `end_lsn` (as redo stamps a restored image)."""
    return _IMAGE_HEADER.pack(lsn, end_lsn, 0, image.bimg_info, image.hole_offset,
                              image.hole_length) + image.data


def is_image_delta(data: bytes) -> bool:
    return data[16:20] == IMAGE_DELTA_MARKER


def decode_image_delta(data: bytes) -> tuple[Lsn, Lsn, BlockImage]:
    """(start LSN, end LSN, the image as stored) of a REL_BLOCK image delta.

    Raises: ValueError when `data` is not one."""
    if len(data) < IMAGE_DELTA_HEADER_SIZE or not is_image_delta(data):
        raise ValueError(f"not a REL_BLOCK image delta ({len(data)} bytes)")
    lsn, end, _, info, hole_offset, hole_length = _IMAGE_HEADER.unpack_from(data, 0)
    return (Lsn(lsn), Lsn(end),
            BlockImage(data[IMAGE_DELTA_HEADER_SIZE:], info, hole_offset, hole_length))


def encode_rel_size(nblocks: int) -> bytes:
    return _REL_SIZE.pack(nblocks)


def decode_rel_size(data: bytes) -> int:
    return int(_REL_SIZE.unpack_from(data, 0)[0])
