"""GIN (RM_GIN_ID = 13) redo and mask: PostgreSQL 18's ginxlog.c, per block.

What it is: `gin_redo_block(record, block, page)` applies one GIN WAL record to
one of its block references, editing `page` in place, with the semantics of
gin_redo in src/backend/access/gin/ginxlog.c (REL_18); `gin_mask(page)` is
ginxlog.c's gin_mask. Every redo routine of ginxlog.c changes each page from
that page's own previous state plus the record alone, so per-block redo is
exact.

Fed by: the redo dispatcher (`strata.reconstruct.redo.redo_block`), which has
already handled apply-images, BLK_DONE and WILL_INIT, and stamps pd_lsn after.
Feeds: GetPage@LSN and the wal_consistency_checking oracle. Owns nothing
persistent; registers itself for RM_GIN_ID at import, and its mask.

Block ids per record type (ginxlog.h):

=====================  ==============================================================
CREATE_PTREE           0 new posting-tree root leaf (re-created from the posting list)
INSERT                 0 target page (entry tuple / recompressed leaf / posting item),
                       1 child whose split this finishes (clear GIN_INCOMPLETE_SPLIT)
SPLIT                  0 left, 1 right, 2 root: forced full-page images (an apply-image
                       never reaches this module; anything else is an error);
                       3 child (clear GIN_INCOMPLETE_SPLIT)
VACUUM_PAGE            0 forced full-page image (as SPLIT)
VACUUM_DATA_LEAF_PAGE  0 posting-tree leaf (segment actions)
DELETE_PAGE            0 deleted page, 1 parent (posting item removed), 2 left sibling
UPDATE_META_PAGE       0 metapage (re-created), 1 pending-list tail (tuples appended, or
                       its rightlink set when a sublist was linked in)
INSERT_LISTPAGE        0 pending-list page (re-created with its tuples)
DELETE_LISTPAGE        0 metapage (re-created), 1.. deleted list pages (re-created empty)
=====================  ==============================================================
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from strata.errors import RedoError
from strata.pg.structs import U16
from strata.reconstruct import mask as bufmask
from strata.reconstruct.redo import (
    RM_GIN_ID,
    block_error,
    index_tuples,
    page_ops,
    register,
    run_handler,
)
from strata.reconstruct.redo import gin_page as gp
from strata.wal.record import BlockRef, DecodedRecord
from strata.wal.rmgr import gin as x

_INFO_MASK = 0xF0


def _fail(record: DecodedRecord, block: BlockRef, what: str) -> RedoError:
    return block_error("Gin", x.gin_identify, record, block, what)


def _add_tuples(record: DecodedRecord, block: BlockRef, page: bytearray,
                tuples: tuple[bytes, ...], first: int) -> None:
    off = first
    for tup in tuples:
        if page_ops.page_add_item(page, tup, off) != off:
            raise _fail(record, block, f"failed to add item to index page at offset {off}")
        off += 1


def _clear_incomplete_split(page: bytearray) -> None:
    gp.set_flags(page, gp.get_flags(page) & ~gp.GIN_INCOMPLETE_SPLIT)


def _need_image(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    raise _fail(record, block, "record did not contain a full-page image of this page")


# -- CREATE_PTREE ----------------------------------------------------------------

def _redo_create_ptree(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if block.block_id != 0:
        raise _fail(record, block, "unexpected block reference")
    rec = x.XlGinCreatePostingTree.parse(record.main_data)
    gp.gin_init_page(page, gp.GIN_DATA | gp.GIN_LEAF | gp.GIN_COMPRESSED)
    page[gp.DATA_OFFSET:gp.DATA_OFFSET + rec.size] = rec.posting_list
    gp.set_data_size(page, rec.size)


# -- INSERT -------------------------------------------------------------------------

def _insert_entry(record: DecodedRecord, block: BlockRef, page: bytearray,
                  right_child: int | None) -> None:
    """ginRedoInsertEntry."""
    data = x.GinInsertEntry.parse(block.data)
    offset = data.offset
    if right_child is not None:
        # update the downlink of the split child's tuple to its right half
        if not 1 <= offset <= page_ops.page_get_max_offset(page):
            raise _fail(record, block, f"downlink offset {offset} out of range")
        lp_off = page_ops.item_offset(page, offset)
        struct.pack_into("<HHH", page, lp_off, right_child >> 16, right_child & 0xFFFF, 0)
    if data.is_delete:
        index_tuples.page_index_tuple_delete(page, offset)
    if page_ops.page_add_item(page, data.tuple, offset) == 0:
        raise _fail(record, block, f"failed to add item to index page at offset {offset}")


def _insert_data(record: DecodedRecord, block: BlockRef, page: bytearray, is_leaf: bool,
                 right_child: int | None) -> None:
    """ginRedoInsertData."""
    if is_leaf:
        recompress(record, block, page, x.GinRecompressDataLeaf.parse(block.data))
        return
    item = x.GinInsertDataInternal.parse(block.data)
    if right_child is None:
        raise _fail(record, block, "internal insert without a right child")
    gp.posting_item_set_block(page, item.offset, right_child)
    gp.add_posting_item(page, item.newitem, item.offset)


def _redo_insert(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    rec = x.XlGinInsert.parse(record.main_data)
    if block.block_id == 1 and not rec.is_leaf:
        _clear_incomplete_split(page)
        return
    if block.block_id != 0:
        raise _fail(record, block, "unexpected block reference")
    flags = gp.get_flags(page)
    if rec.is_data:
        if not flags & gp.GIN_DATA:
            raise _fail(record, block, "data insert into a page that is not a data page")
        _insert_data(record, block, page, rec.is_leaf, rec.right_child)
    else:
        if flags & gp.GIN_DATA:
            raise _fail(record, block, "entry insert into a data page")
        _insert_entry(record, block, page, rec.right_child)


# -- recompression of posting-tree leaves (INSERT, VACUUM_DATA_LEAF_PAGE) --------------

def _convert_uncompressed(page: bytearray) -> None:
    """A pre-9.4 (uncompressed) leaf becomes one compressed segment."""
    n = gp.get_maxoff(page)
    if n > 0:
        items = [gp.itemptr_to_int((hi << 16) | lo, off) for hi, lo, off in
                 struct.iter_unpack("<HHH", page[gp.DATA_OFFSET:gp.DATA_OFFSET + 6 * n])]
        seg, npacked = gp.encode_segment(items)
        if npacked != n:
            raise RedoError(f"uncompressed GIN leaf of {n} items does not fit one segment")
        page[gp.DATA_OFFSET:gp.DATA_OFFSET + len(seg)] = seg
        total = len(seg)
    else:
        total = 0
    gp.set_data_size(page, total)
    gp.set_flags(page, gp.get_flags(page) | gp.GIN_COMPRESSED)
    gp.set_maxoff(page, 0)


def recompress(record: DecodedRecord, block: BlockRef, page: bytearray,
               leaf: x.GinRecompressDataLeaf) -> None:
    """ginRedoRecompress: apply segment actions to a leaf's posting lists.

    The new segment sequence is built aside and written from the start of the
    posting data; bytes past the new end keep their old contents, as in
    PostgreSQL (that space lies between pd_lower and pd_upper).
    """
    if not gp.get_flags(page) & gp.GIN_LEAF:
        raise _fail(record, block, "recompression of a page that is not a leaf")
    if not gp.get_flags(page) & gp.GIN_COMPRESSED:
        _convert_uncompressed(page)
    if len(leaf.actions) != leaf.nactions:
        bad = leaf.actions[-1].action if leaf.actions else -1
        raise _fail(record, block, f"unexpected GIN leaf action: {bad}")
    old = bytes(page[gp.DATA_OFFSET:gp.DATA_OFFSET + gp.data_size(page)])
    end = len(old)
    out = bytearray()
    pos = 0
    segno = 0
    for a in leaf.actions:
        while segno < a.segno:
            if pos >= end:
                raise _fail(record, block, f"segment {a.segno} beyond the page's {segno}")
            size = gp.segment_size(old, pos)
            out += old[pos:pos + size]
            pos += size
            segno += 1
        action, newseg = a.action, a.segment
        if action == x.GIN_SEGMENT_ADDITEMS:
            if pos >= end:
                raise _fail(record, block, f"ADDITEMS to missing segment {a.segno}")
            olditems = gp.decode_segments(old[pos:pos + gp.segment_size(old, pos)])
            newitems = gp.merge_items([gp.itemptr_to_int(b, o) for b, o in a.items], olditems)
            newseg, npacked = gp.encode_segment(newitems)
            if npacked != len(newitems):
                raise _fail(record, block, "merged segment does not fit a page")
            action = x.GIN_SEGMENT_REPLACE
        if pos != end:
            segsize = gp.segment_size(old, pos)
        elif action == x.GIN_SEGMENT_INSERT:
            segsize = 0
        else:
            raise _fail(record, block, f"action {action} past the last segment")
        if action == x.GIN_SEGMENT_DELETE:
            pos += segsize
            segno += 1
        elif action == x.GIN_SEGMENT_INSERT:
            out += newseg
        elif action == x.GIN_SEGMENT_REPLACE:
            out += newseg
            pos += segsize
            segno += 1
        else:
            raise _fail(record, block, f"unexpected GIN leaf action: {action}")
    out += old[pos:]
    if gp.DATA_OFFSET + len(out) > page_ops.get_special(page):
        raise _fail(record, block, f"recompressed posting data of {len(out)} bytes overflows")
    page[gp.DATA_OFFSET:gp.DATA_OFFSET + len(out)] = out
    gp.set_data_size(page, len(out))


def _redo_vacuum_data_leaf(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if block.block_id != 0:
        raise _fail(record, block, "unexpected block reference")
    if gp.get_flags(page) & (gp.GIN_DATA | gp.GIN_LEAF) != gp.GIN_DATA | gp.GIN_LEAF:
        raise _fail(record, block, "not a posting-tree leaf")
    recompress(record, block, page, x.GinRecompressDataLeaf.parse(block.data))


# -- SPLIT / VACUUM_PAGE -------------------------------------------------------------

def _redo_split(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    rec = x.XlGinSplit.parse(record.main_data)
    if block.block_id == 3 and not rec.flags & x.GIN_INSERT_ISLEAF:
        _clear_incomplete_split(page)
        return
    _need_image(record, block, page)


# -- DELETE_PAGE ----------------------------------------------------------------------

def _redo_delete_page(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    rec = x.XlGinDeletePage.parse(record.main_data)
    flags = gp.get_flags(page)
    if not flags & gp.GIN_DATA:
        raise _fail(record, block, "not a posting-tree page")
    if block.block_id == 2:  # left sibling
        gp.set_rightlink(page, rec.right_link)
    elif block.block_id == 0:  # the deleted page
        gp.set_flags(page, flags | gp.GIN_DELETED)
        page_ops.set_prune_xid(page, rec.delete_xid)  # GinPageSetDeleteXid
    elif block.block_id == 1:  # parent
        if flags & gp.GIN_LEAF:
            raise _fail(record, block, "parent is a leaf")
        gp.delete_posting_item(page, rec.parent_offset)
    else:
        raise _fail(record, block, "unexpected block reference")


# -- fast-update pending list -------------------------------------------------------------

def _restore_meta(record: DecodedRecord, block: BlockRef, page: bytearray,
                  meta: x.GinMetaPageData) -> None:
    if block.blkno != gp.GIN_METAPAGE_BLKNO:
        raise _fail(record, block, "metapage data for a block that is not block 0")
    gp.gin_init_metabuffer(page)
    page[gp.META_OFFSET:gp.META_OFFSET + len(meta.raw)] = meta.raw


def _redo_update_meta(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    rec = x.XlGinUpdateMeta.parse(record.main_data)
    if block.block_id == 0:
        _restore_meta(record, block, page, rec.metadata)
    elif block.block_id == 1 and rec.ntuples > 0:
        # insert into the tail page
        tuples = x.split_index_tuples(block.data, rec.ntuples, "UPDATE_META_PAGE tuples")
        first = 1 if page_ops.page_is_empty(page) else page_ops.page_get_max_offset(page) + 1
        _add_tuples(record, block, page, tuples, first)
        gp.set_maxoff(page, gp.get_maxoff(page) + 1)  # heap tuples on the page
    elif block.block_id == 1 and rec.prev_tail != gp.INVALID_BLOCK_NUMBER:
        gp.set_rightlink(page, rec.new_rightlink)  # a new sublist follows the old tail
    else:
        raise _fail(record, block, "unexpected block reference")


def _redo_insert_listpage(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if block.block_id != 0:
        raise _fail(record, block, "unexpected block reference")
    rec = x.XlGinInsertListPage.parse(record.main_data)
    gp.gin_init_page(page, gp.GIN_LIST)
    gp.set_rightlink(page, rec.rightlink)
    if rec.rightlink == gp.INVALID_BLOCK_NUMBER:  # tail of a sublist
        gp.set_flags(page, gp.get_flags(page) | gp.GIN_LIST_FULLROW)
        gp.set_maxoff(page, 1)
    else:
        gp.set_maxoff(page, 0)
    tuples = x.split_index_tuples(block.data, rec.ntuples, "INSERT_LISTPAGE tuples")
    _add_tuples(record, block, page, tuples, 1)


def _redo_delete_listpages(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    rec = x.XlGinDeleteListPages.parse(record.main_data)
    if block.block_id == 0:
        _restore_meta(record, block, page, rec.metadata)
    elif 1 <= block.block_id <= rec.ndeleted:
        gp.gin_init_page(page, gp.GIN_DELETED)
    else:
        raise _fail(record, block, "unexpected block reference")


_HANDLERS: dict[int, Callable[[DecodedRecord, BlockRef, bytearray], None]] = {
    x.XLOG_GIN_CREATE_PTREE: _redo_create_ptree,
    x.XLOG_GIN_INSERT: _redo_insert,
    x.XLOG_GIN_SPLIT: _redo_split,
    x.XLOG_GIN_VACUUM_PAGE: _need_image,
    x.XLOG_GIN_VACUUM_DATA_LEAF_PAGE: _redo_vacuum_data_leaf,
    x.XLOG_GIN_DELETE_PAGE: _redo_delete_page,
    x.XLOG_GIN_UPDATE_META_PAGE: _redo_update_meta,
    x.XLOG_GIN_INSERT_LISTPAGE: _redo_insert_listpage,
    x.XLOG_GIN_DELETE_LISTPAGE: _redo_delete_listpages,
}

GIN_RECORD_TYPES: frozenset[int] = frozenset(_HANDLERS)


def gin_redo_block(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    """Apply GIN `record` to `block`'s page, in place (ginxlog.c semantics).

    Requires: `page` is the block's state before the record (all zeros for a
    WILL_INIT block); the caller stamps pd_lsn afterwards.
    Raises: UnsupportedRecordError for an unknown record type; RedoError when
    the page cannot take the change (PostgreSQL would ERROR/PANIC) or the
    record has no such block.
    """
    run_handler(_HANDLERS, record.info & _INFO_MASK, record, block, page, _fail)


# -- mask -------------------------------------------------------------------------

def gin_mask(page: bytearray, blkno: int = 0) -> None:
    """gin_mask (ginxlog.c), in place: LSN, checksum and header hint bits; a
    deleted page's whole content; otherwise the unused space when pd_lower
    looks set (posting-tree pages keep their data below pd_lower)."""
    bufmask.mask_page_lsn_and_checksum(page)
    bufmask.mask_page_hint_bits(page)
    special = page_ops.get_special(page)
    flags = int(U16.unpack_from(page, special + 6)[0]) if special + 8 <= len(page) else 0
    if flags & gp.GIN_DELETED:
        bufmask.mask_page_content(page)
    elif page_ops.get_lower(page) > page_ops.SIZE_OF_PAGE_HEADER:
        bufmask.mask_unused_space(page)


register(RM_GIN_ID, gin_redo_block)
bufmask.register(RM_GIN_ID, gin_mask)
