"""BRIN (RM_BRIN_ID = 17) redo and mask: PostgreSQL 18's brin_xlog.c, per block.

What it is: `brin_redo_block(record, block, page)` applies one BRIN WAL record
to one of its block references, editing `page` in place, with the semantics
of brin_redo in src/backend/access/brin/brin_xlog.c (REL_18); `brin_mask(page)`
is its brin_mask. Each routine changes a page from its own previous state
plus the record (the revmap entry of an insert takes the regular page's
block number from the record's block 0), so per-block redo is exact.

Fed by: the redo dispatcher (`strata.reconstruct.redo`), which handles
apply-images, BLK_DONE and WILL_INIT (CREATE_INDEX, +INIT inserts/updates,
REVMAP_EXTEND's new page) and stamps pd_lsn afterwards. Feeds: GetPage@LSN
and the wal_consistency_checking oracle. Registers its redo and mask.

Page layout (brin_page.h): a BrinSpecialSpace of MAXALIGN(1) = 8 bytes at
pd_special whose last u16 is the page type (0xF091 meta, 0xF092 revmap,
0xF093 regular) and the one before it the flags (BRIN_EVACUATE_PAGE).
The metapage holds BrinMetaPageData (magic 0xA8109CFA, version,
pagesPerRange, lastRevmapPage) at PageGetContents; a revmap page holds
REVMAP_PAGE_MAXITEMS = 1360 ItemPointerData (6 bytes) there, one per range.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from strata.errors import RedoError
from strata.pg.constants import BLCKSZ
from strata.pg.structs import U16, U32
from strata.reconstruct import mask as bufmask
from strata.reconstruct.redo import (
    RM_BRIN_ID,
    block_error,
    index_tuples,
    page_ops,
    register,
    run_handler,
    unsupported,
)
from strata.reconstruct.redo.page_ops import maxalign
from strata.wal.record import BlockRef, DecodedRecord
from strata.wal.rmgr import brin as x

SIZE_OF_BRIN_SPECIAL = maxalign(1)
BRIN_PAGETYPE_META = 0xF091
BRIN_PAGETYPE_REVMAP = 0xF092
BRIN_PAGETYPE_REGULAR = 0xF093
BRIN_EVACUATE_PAGE = 1 << 0
BRIN_META_MAGIC = 0xA8109CFA
_CONTENTS = maxalign(page_ops.SIZE_OF_PAGE_HEADER)
_META = struct.Struct("<IIII")
_META_LAST_REVMAP_PAGE = _CONTENTS + 12
REVMAP_CONTENT_SIZE = BLCKSZ - _CONTENTS - SIZE_OF_BRIN_SPECIAL
REVMAP_PAGE_MAXITEMS = REVMAP_CONTENT_SIZE // 6
_ITEM_POINTER = struct.Struct("<HHH")  # bi_hi, bi_lo, ip_posid
INVALID_BLOCK_NUMBER = 0xFFFFFFFF


# -- page layout ------------------------------------------------------------------

def page_type(page: bytes | bytearray) -> int:
    return int(U16.unpack_from(page, page_ops.get_special(page) + SIZE_OF_BRIN_SPECIAL - 2)[0])


def page_flags(page: bytes | bytearray) -> int:
    return int(U16.unpack_from(page, page_ops.get_special(page) + SIZE_OF_BRIN_SPECIAL - 4)[0])


def set_page_flags(page: bytearray, flags: int) -> None:
    U16.pack_into(page, page_ops.get_special(page) + SIZE_OF_BRIN_SPECIAL - 4, flags)


def brin_page_init(page: bytearray, pagetype: int) -> None:
    """brin_page_init: PageInit with the special space, then the page type."""
    page_ops.page_init(page, SIZE_OF_BRIN_SPECIAL)
    U16.pack_into(page, page_ops.get_special(page) + SIZE_OF_BRIN_SPECIAL - 2, pagetype)


def brin_metapage_init(page: bytearray, pages_per_range: int, version: int) -> None:
    """brin_metapage_init: lastRevmapPage 0, pd_lower just past the metadata."""
    brin_page_init(page, BRIN_PAGETYPE_META)
    _META.pack_into(page, _CONTENTS, BRIN_META_MAGIC, version, pages_per_range, 0)
    page_ops.set_lower(page, _CONTENTS + _META.size)


def set_heap_block_itemptr(page: bytearray, pages_per_range: int, heap_blk: int,
                           blkno: int, offnum: int) -> None:
    """brinSetHeapBlockItemptr: the revmap entry of the range holding heap_blk
    (an invalid TID is InvalidBlockNumber / InvalidOffsetNumber)."""
    if pages_per_range <= 0:
        raise RedoError(f"BRIN revmap update with pagesPerRange {pages_per_range}")
    index = (heap_blk // pages_per_range) % REVMAP_PAGE_MAXITEMS
    _ITEM_POINTER.pack_into(page, _CONTENTS + 6 * index, blkno >> 16, blkno & 0xFFFF, offnum)


def _fail(record: DecodedRecord, block: BlockRef, what: str) -> RedoError:
    return block_error("BRIN", x.brin_identify, record, block, what)


# -- per record type ----------------------------------------------------------------

def _create_index(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if block.block_id != 0:
        raise _fail(record, block, "unexpected block reference")
    xlrec = x.XlBrinCreateIdx.parse(record.main_data)
    brin_metapage_init(page, xlrec.pages_per_range, xlrec.version)


def _insert_update(record: DecodedRecord, block: BlockRef, page: bytearray,
                   xlrec: x.XlBrinInsert) -> None:
    """brin_xlog_insert_update: block 0 takes the tuple, block 1 (revmap) points at it."""
    if block.block_id == 0:
        if record.xl_info & x.XLOG_BRIN_INIT_PAGE:
            brin_page_init(page, BRIN_PAGETYPE_REGULAR)
        if page_ops.page_get_max_offset(page) + 1 < xlrec.offnum:
            raise _fail(record, block, "invalid max offset number")
        if page_ops.page_add_item(page, block.data, xlrec.offnum, overwrite=True) == 0:
            raise _fail(record, block, "failed to add tuple")
    elif block.block_id == 1:
        regular = record.block(0)
        if regular is None:
            raise _fail(record, block, "no block 0 (the regular page)")
        set_heap_block_itemptr(page, xlrec.pages_per_range, xlrec.heap_blk, regular.blkno,
                               xlrec.offnum)
    else:
        raise _fail(record, block, "unexpected block reference")


def _insert(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    _insert_update(record, block, page, x.XlBrinInsert.parse(record.main_data))


def _update(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = x.XlBrinUpdate.parse(record.main_data)
    if block.block_id == 2:
        index_tuples.page_index_tuple_delete_no_compact(page, xlrec.old_offnum)
    else:
        _insert_update(record, block, page, xlrec.insert)


def _samepage_update(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if block.block_id != 0:
        raise _fail(record, block, "unexpected block reference")
    xlrec = x.XlBrinSamepageUpdate.parse(record.main_data)
    if not index_tuples.page_index_tuple_overwrite(page, xlrec.offnum, block.data):
        raise _fail(record, block, "failed to replace tuple")


def _revmap_extend(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = x.XlBrinRevmapExtend.parse(record.main_data)
    if block.block_id == 0:
        U32.pack_into(page, _META_LAST_REVMAP_PAGE, xlrec.target_blk)
        page_ops.set_lower(page, _CONTENTS + _META.size)
    elif block.block_id == 1:
        if block.blkno != xlrec.target_blk:
            raise _fail(record, block, f"targetBlk {xlrec.target_blk} is not block {block.blkno}")
        brin_page_init(page, BRIN_PAGETYPE_REVMAP)
    else:
        raise _fail(record, block, "unexpected block reference")


def _desummarize(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = x.XlBrinDesummarize.parse(record.main_data)
    if block.block_id == 0:
        set_heap_block_itemptr(page, xlrec.pages_per_range, xlrec.heap_blk,
                               INVALID_BLOCK_NUMBER, 0)
    elif block.block_id == 1:
        index_tuples.page_index_tuple_delete_no_compact(page, xlrec.reg_offset)
    else:
        raise _fail(record, block, "unexpected block reference")


_HANDLERS: dict[int, Callable[[DecodedRecord, BlockRef, bytearray], None]] = {
    x.XLOG_BRIN_CREATE_INDEX: _create_index,
    x.XLOG_BRIN_INSERT: _insert,
    x.XLOG_BRIN_UPDATE: _update,
    x.XLOG_BRIN_SAMEPAGE_UPDATE: _samepage_update,
    x.XLOG_BRIN_REVMAP_EXTEND: _revmap_extend,
    x.XLOG_BRIN_DESUMMARIZE: _desummarize,
}

BRIN_RECORD_TYPES: frozenset[int] = frozenset(_HANDLERS)


def brin_redo_block(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    """Apply BRIN `record` to `block`'s page, in place (brin_xlog.c semantics).

    Requires: `page` is the block's state before the record (all zeros for a
    WILL_INIT block). Raises: UnsupportedRecordError for an unknown record
    type (the INIT_PAGE bit is a flag of INSERT/UPDATE only); RedoError when
    the page cannot take the change or the record has no such block.
    """
    op = record.info & x.XLOG_BRIN_OPMASK
    if record.info & x.XLOG_BRIN_INIT_PAGE and op not in (x.XLOG_BRIN_INSERT, x.XLOG_BRIN_UPDATE):
        raise unsupported(record)
    run_handler(_HANDLERS, op, record, block, page, _fail)


# -- mask -----------------------------------------------------------------------

def brin_mask(page: bytearray, blkno: int = 0) -> None:
    """brin_mask (brin_xlog.c), in place: LSN and checksum, header hint bits,
    the unused space of regular pages (and of metapages whose pd_lower is
    set), and BRIN_EVACUATE_PAGE (not WAL-logged)."""
    bufmask.mask_page_lsn_and_checksum(page)
    bufmask.mask_page_hint_bits(page)
    ptype = page_type(page)
    if ptype == BRIN_PAGETYPE_REGULAR or (
            ptype == BRIN_PAGETYPE_META
            and page_ops.get_lower(page) > page_ops.SIZE_OF_PAGE_HEADER):
        bufmask.mask_unused_space(page)
    set_page_flags(page, page_flags(page) & ~BRIN_EVACUATE_PAGE)


register(RM_BRIN_ID, brin_redo_block)
bufmask.register(RM_BRIN_ID, brin_mask)
