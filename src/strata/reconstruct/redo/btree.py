"""Btree (RM_BTREE_ID = 11) redo and mask: PostgreSQL 18's nbtxlog.c, per block.

What it is: `btree_redo_block(record, block, page)` applies one btree WAL
record to one of its block references, editing `page` in place, with the
semantics of btree_redo in src/backend/access/nbtree/nbtxlog.c (REL_18);
`btree_mask(page)` is nbtxlog.c's btree_mask (what wal_consistency_checking
ignores). Every redo routine of nbtxlog.c changes each page from that page's
own previous state plus the record alone, so per-block redo is exact.

Fed by: the redo dispatcher (`strata.reconstruct.redo.redo_block`), which has
already handled apply-images, BLK_DONE (page LSN at or past the record) and
WILL_INIT (an all-zero page), and which stamps pd_lsn afterwards.
Feeds: GetPage@LSN and the wal_consistency_checking oracle.
Owns: nothing persistent. Registers itself for RM_BTREE_ID at import, and its
mask with the mask registry.

Block ids per record type (nbtxlog.h):

=====================  ==============================================================
INSERT_LEAF/POST       0 leaf (insert; POST: posting-list split first)
INSERT_UPPER/META      0 internal page (insert), 1 child (clear INCOMPLETE_SPLIT),
                       2 metapage (META only; rebuilt from xl_btree_metadata)
SPLIT_L/SPLIT_R        0 original/left page (rebuilt in item order), 1 new right page
                       (from the logged tuples), 2 right sibling (btpo_prev),
                       3 child (clear INCOMPLETE_SPLIT, internal splits only)
DEDUP                  0 leaf (deduplicated by the logged intervals)
DELETE / VACUUM        0 leaf (posting-list updates, then multi-delete)
MARK_PAGE_HALFDEAD     0 leaf (re-created half-dead), 1 parent (downlink removal)
UNLINK_PAGE(_META)     0 target (re-created deleted), 1 left sibling, 2 right sibling,
                       3 leaf (re-created half-dead), 4 metapage (META only)
NEWROOT                0 root (re-created), 1 left child (clear INCOMPLETE_SPLIT),
                       2 metapage
REUSE_PAGE             none (recovery conflict only)
META_CLEANUP           0 metapage
=====================  ==============================================================
"""

from __future__ import annotations

from collections.abc import Callable

from strata.errors import RedoError
from strata.reconstruct import mask as bufmask
from strata.reconstruct.redo import (
    RM_BTREE_ID,
    block_error,
    index_tuples,
    page_ops,
    register,
    run_handler,
)
from strata.reconstruct.redo import btree_page as bp
from strata.reconstruct.redo.page_ops import maxalign
from strata.wal.record import BlockRef, DecodedRecord
from strata.wal.rmgr import btree as x

_INFO_MASK = 0xF0


def _fail(record: DecodedRecord, block: BlockRef, what: str) -> RedoError:
    return block_error("Btree", x.btree_identify, record, block, what)


def _add(record: DecodedRecord, block: BlockRef, page: bytearray,
         item: bytes | bytearray | memoryview, offnum: int, what: str) -> None:
    if page_ops.page_add_item(page, item, offnum) != offnum:
        raise _fail(record, block, f"failed to add {what} at offset {offnum}")


def _restore_page(record: DecodedRecord, block: BlockRef, page: bytearray, data: bytes) -> None:
    """_bt_restore_page: re-add tuples logged as pd_upper..pd_special (highest
    item number first), so that they land in the same physical order."""
    items: list[tuple[int, int]] = []
    pos = 0
    while pos < len(data):
        if pos + bp.SIZE_OF_INDEX_TUPLE_DATA > len(data):
            raise _fail(record, block, "truncated tuple in logged page contents")
        size = maxalign(bp.itup_size(data, pos))
        if size == 0:
            raise _fail(record, block, "zero-length tuple in logged page contents")
        items.append((pos, size))
        pos += size
    view = memoryview(data)
    n = len(items)
    for i in range(n - 1, -1, -1):
        start, size = items[i]
        _add(record, block, page, view[start:start + size], n - i, "restored tuple")


def _clear_incomplete_split(page: bytearray) -> None:
    bp.set_flags(page, bp.get_flags(page) & ~bp.BTP_INCOMPLETE_SPLIT)


def _restore_meta(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    md = x.XlBtreeMetadata.parse(block.data)
    if block.blkno != bp.BTREE_METAPAGE:
        raise _fail(record, block, "metapage data for a block that is not block 0")
    bp.write_metapage(page, version=md.version, root=md.root, level=md.level,
                      fastroot=md.fastroot, fastlevel=md.fastlevel,
                      last_cleanup_num_delpages=md.last_cleanup_num_delpages,
                      allequalimage=md.allequalimage)


def _halfdead_leaf(record: DecodedRecord, block: BlockRef, page: bytearray, left: int,
                   right: int, topparent: int) -> None:
    bp.bt_pageinit(page)
    bp.set_opaque(page, left, right, 0, bp.BTP_HALF_DEAD | bp.BTP_LEAF, 0)
    _add(record, block, page, bp.truncated_hikey(topparent), bp.P_HIKEY, "dummy high key")


# -- INSERT_* -------------------------------------------------------------------

def _redo_insert(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    info = record.info
    if block.block_id == 0:
        xlrec = x.XlBtreeInsert.parse(record.main_data)
        data = block.data
        if info != x.XLOG_BTREE_INSERT_POST:
            _add(record, block, page, data, xlrec.offnum, "new item")
            return
        # Posting list split: repeat _bt_swap_posting against the existing
        # posting list, then insert the *final* new item (not orignewitem).
        if len(data) < 2:
            raise _fail(record, block, "INSERT_POST without a posting offset")
        postingoff = int.from_bytes(data[0:2], "little")
        newitem = bytearray(data[2:])
        opos = xlrec.offnum - 1
        start, end = page_ops.item_slice(page, opos)
        oposting = bytes(page[start:end])
        nposting = bp.bt_swap_posting(newitem, oposting, postingoff)
        n = maxalign(bp.itup_size(nposting))
        page[start:start + n] = nposting[:n]
        _add(record, block, page, newitem, xlrec.offnum, "posting split new item")
    elif block.block_id == 1 and info in (x.XLOG_BTREE_INSERT_UPPER, x.XLOG_BTREE_INSERT_META):
        _clear_incomplete_split(page)
    elif block.block_id == 2 and info == x.XLOG_BTREE_INSERT_META:
        _restore_meta(record, block, page)
    else:
        raise _fail(record, block, "unexpected block reference")


# -- SPLIT_L / SPLIT_R ------------------------------------------------------------

def _redo_split(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = x.XlBtreeSplit.parse(record.main_data)
    newitemonleft = record.info == x.XLOG_BTREE_SPLIT_L
    isleaf = xlrec.level == 0
    b0, b1, b2 = record.block(0), record.block(1), record.block(2)
    if b0 is None or b1 is None:
        raise _fail(record, block, "split record without blocks 0 and 1")
    origpagenumber, rightpagenumber = b0.blkno, b1.blkno
    spagenumber = b2.blkno if b2 is not None else bp.P_NONE

    if block.block_id == 1:
        # right (new) sibling, from scratch
        bp.bt_pageinit(page)
        bp.set_opaque(page, origpagenumber, spagenumber, xlrec.level,
                      bp.BTP_LEAF if isleaf else 0, 0)
        _restore_page(record, block, page, block.data)
    elif block.block_id == 0:
        _split_left(record, block, page, xlrec, newitemonleft, isleaf, rightpagenumber)
    elif block.block_id == 2:
        bp.set_prev(page, rightpagenumber)
    elif block.block_id == 3 and not isleaf:
        _clear_incomplete_split(page)
    else:
        raise _fail(record, block, "unexpected block reference")


def _split_left(record: DecodedRecord, block: BlockRef, origpage: bytearray,
                xlrec: x.XlBtreeSplit, newitemonleft: bool, isleaf: bool,
                rightpagenumber: int) -> None:
    data = block.data
    pos = 0
    newitem: bytes | bytearray = b""
    newitemsz = 0
    nposting: bytes | bytearray = b""
    replacepostingoff = 0
    if newitemonleft or xlrec.postingoff != 0:
        newitemsz = maxalign(bp.itup_size(data, 0))
        newitem = data[0:newitemsz]
        pos += newitemsz
        if xlrec.postingoff != 0:
            replacepostingoff = xlrec.newitemoff - 1
            newitem = bytearray(newitem)
            nposting = bp.bt_swap_posting(newitem, page_ops.get_item(origpage, replacepostingoff),
                                          xlrec.postingoff)
    left_hikeysz = maxalign(bp.itup_size(data, pos))
    left_hikey = data[pos:pos + left_hikeysz]
    if pos + left_hikeysz != len(data):
        raise _fail(record, block, f"{len(data) - pos - left_hikeysz} bytes left after high key")

    leftpage = page_ops.page_get_temp_page_copy_special(origpage)
    leftoff = bp.P_HIKEY
    _add(record, block, leftpage, left_hikey, leftoff, "high key to left page")
    leftoff += 1
    off = bp.first_data_key(origpage)
    while off < xlrec.firstrightoff:
        if off == replacepostingoff:
            n = maxalign(bp.itup_size(nposting))
            _add(record, block, leftpage, nposting[:n], leftoff, "new posting list to left page")
            leftoff += 1
            off += 1
            continue
        if newitemonleft and off == xlrec.newitemoff:
            _add(record, block, leftpage, newitem[:newitemsz], leftoff, "new item to left page")
            leftoff += 1
        _add(record, block, leftpage, page_ops.get_item(origpage, off), leftoff,
             "old item to left page")
        leftoff += 1
        off += 1
    if newitemonleft and off == xlrec.newitemoff:
        _add(record, block, leftpage, newitem[:newitemsz], leftoff, "new item to left page")
    origpage[:] = leftpage
    bp.set_flags(origpage, bp.BTP_INCOMPLETE_SPLIT | (bp.BTP_LEAF if isleaf else 0))
    bp.set_next(origpage, rightpagenumber)
    bp.set_cycleid(origpage, 0)


# -- DEDUP ------------------------------------------------------------------------

class _DedupState:
    """BTDedupStateData, the parts redo uses."""

    __slots__ = ("base", "baseoff", "basetupsize", "htids", "nintervals", "nitems")

    def __init__(self) -> None:
        self.base: bytes = b""
        self.baseoff = 0
        self.basetupsize = 0
        self.htids: list[bytes] = []
        self.nitems = 0
        self.nintervals = 0

    def start_pending(self, base: bytes, baseoff: int) -> None:
        if bp.is_posting(base):
            self.htids = bp.posting_tids(base)
            self.basetupsize = bp.posting_offset(base)
        else:
            self.htids = [base[0:6]]
            self.basetupsize = bp.itup_size(base)
        self.nitems = 1
        self.base = base
        self.baseoff = baseoff

    def save_htid(self, itup: bytes) -> bool:
        tids = bp.heap_tids(itup)
        # redo uses BTMaxItemSize, more than the primary's limit
        if maxalign(self.basetupsize + 6 * (len(self.htids) + len(tids))) > bp.BT_MAX_ITEM_SIZE:
            return False
        self.nitems += 1
        self.htids.extend(tids)
        return True

    def finish_pending(self, newpage: bytearray) -> bool:
        """Add the pending tuple to newpage; False if PageAddItem failed."""
        tupoff = page_ops.page_get_max_offset(newpage) + 1
        if self.nitems == 1:
            tup: bytes | bytearray = self.base[:bp.itup_size(self.base)]
        else:
            tup = bp.bt_form_posting(self.base, self.htids)
            self.nintervals += 1
        ok = page_ops.page_add_item(newpage, tup, tupoff) == tupoff
        self.htids = []
        self.nitems = 0
        return ok


def _redo_dedup(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if block.block_id != 0:
        raise _fail(record, block, "unexpected block reference")
    xlrec = x.XlBtreeDedup.parse(record.main_data)
    intervals = x.parse_dedup_intervals(block.data, xlrec.nintervals)
    minoff = bp.first_data_key(page)
    maxoff = page_ops.page_get_max_offset(page)
    newpage = page_ops.page_get_temp_page_copy_special(page)
    if not bp.is_rightmost(page):
        _add(record, block, newpage, page_ops.get_item(page, bp.P_HIKEY), bp.P_HIKEY, "high key")
    state = _DedupState()
    for offnum in range(minoff, maxoff + 1):
        itup = page_ops.get_item(page, offnum)
        if offnum == minoff:
            state.start_pending(itup, offnum)
        elif (state.nintervals < xlrec.nintervals
              and state.baseoff == intervals[state.nintervals].baseoff
              and state.nitems < intervals[state.nintervals].nitems):
            if not state.save_htid(itup):
                raise _fail(record, block, "deduplication failed to add heap tid")
        else:
            if not state.finish_pending(newpage):
                raise _fail(record, block, "deduplication failed to add tuple")
            state.start_pending(itup, offnum)
    if maxoff >= minoff and not state.finish_pending(newpage):
        raise _fail(record, block, "deduplication failed to add tuple")
    if state.nintervals != xlrec.nintervals:
        raise _fail(record, block,
                    f"deduplication formed {state.nintervals} of {xlrec.nintervals} intervals")
    flags = bp.get_flags(newpage)
    if flags & bp.BTP_HAS_GARBAGE:
        bp.set_flags(newpage, flags & ~bp.BTP_HAS_GARBAGE)
    page[:] = newpage


# -- DELETE / VACUUM ------------------------------------------------------------

def _redo_delvacuum(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if block.block_id != 0:
        raise _fail(record, block, "unexpected block reference")
    isvacuum = record.info == x.XLOG_BTREE_VACUUM
    xlrec: x.XlBtreeVacuum | x.XlBtreeDelete
    xlrec = (x.XlBtreeVacuum.parse(record.main_data) if isvacuum
             else x.XlBtreeDelete.parse(record.main_data))
    payload = x.parse_delvacuum_payload(block.data, xlrec.ndeleted, xlrec.nupdated)
    for off, upd in zip(payload.updated_offsets, payload.updates, strict=True):
        newtup = bp.bt_update_posting(page_ops.get_item(page, off), upd.deletetids)
        n = maxalign(bp.itup_size(newtup))
        if not index_tuples.page_index_tuple_overwrite(page, off, newtup[:n]):
            raise _fail(record, block, f"failed to update partially dead item {off}")
    if payload.deleted:
        index_tuples.page_index_multi_delete(page, payload.deleted)
    flags = bp.get_flags(page) & ~bp.BTP_HAS_GARBAGE
    bp.set_flags(page, flags)
    if isvacuum:
        bp.set_cycleid(page, 0)  # DELETE keeps the vacuum cycle ID


# -- page deletion ---------------------------------------------------------------

def _redo_mark_halfdead(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = x.XlBtreeMarkPageHalfdead.parse(record.main_data)
    if block.block_id == 1:
        # parent: the downlink at poffset takes over its right neighbour's child
        poffset = xlrec.poffset
        nextoffset = poffset + 1
        rightsib = bp.tid_block(page_ops.get_item(page, nextoffset))
        start, _end = page_ops.item_slice(page, poffset)
        bp.set_tid_block(page, rightsib, start)
        index_tuples.page_index_tuple_delete(page, nextoffset)
    elif block.block_id == 0:
        _halfdead_leaf(record, block, page, xlrec.leftblk, xlrec.rightblk, xlrec.topparent)
    else:
        raise _fail(record, block, "unexpected block reference")


def _redo_unlink(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = x.XlBtreeUnlinkPage.parse(record.main_data)
    bid = block.block_id
    if bid == 1:
        bp.set_next(page, xlrec.rightsib)
    elif bid == 0:
        bp.bt_pageinit(page)
        bp.set_opaque(page, xlrec.leftsib, xlrec.rightsib, xlrec.level, 0, 0)
        bp.bt_page_set_deleted(page, xlrec.safexid)
        if xlrec.level == 0:
            bp.set_flags(page, bp.get_flags(page) | bp.BTP_LEAF)
    elif bid == 2:
        bp.set_prev(page, xlrec.leftsib)
    elif bid == 3:
        if xlrec.level == 0:
            raise _fail(record, block, "leaf block reference for a leaf target")
        _halfdead_leaf(record, block, page, xlrec.leafleftsib, xlrec.leafrightsib,
                       xlrec.leaftopparent)
    elif bid == 4 and record.info == x.XLOG_BTREE_UNLINK_PAGE_META:
        _restore_meta(record, block, page)
    else:
        raise _fail(record, block, "unexpected block reference")


# -- NEWROOT, META_CLEANUP, REUSE_PAGE -------------------------------------------

def _redo_newroot(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = x.XlBtreeNewroot.parse(record.main_data)
    if block.block_id == 0:
        bp.bt_pageinit(page)
        flags = bp.BTP_ROOT | (bp.BTP_LEAF if xlrec.level == 0 else 0)
        bp.set_opaque(page, bp.P_NONE, bp.P_NONE, xlrec.level, flags, 0)
        if xlrec.level > 0:
            _restore_page(record, block, page, block.data)
    elif block.block_id == 1 and xlrec.level > 0:
        _clear_incomplete_split(page)
    elif block.block_id == 2:
        _restore_meta(record, block, page)
    else:
        raise _fail(record, block, "unexpected block reference")


def _redo_meta_cleanup(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if block.block_id != 0:
        raise _fail(record, block, "unexpected block reference")
    _restore_meta(record, block, page)


def _redo_reuse_page(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    # REUSE_PAGE registers no block: it only resolves hot-standby conflicts.
    raise _fail(record, block, "REUSE_PAGE has no block to redo")


_HANDLERS: dict[int, Callable[[DecodedRecord, BlockRef, bytearray], None]] = {
    x.XLOG_BTREE_INSERT_LEAF: _redo_insert,
    x.XLOG_BTREE_INSERT_UPPER: _redo_insert,
    x.XLOG_BTREE_INSERT_META: _redo_insert,
    x.XLOG_BTREE_INSERT_POST: _redo_insert,
    x.XLOG_BTREE_SPLIT_L: _redo_split,
    x.XLOG_BTREE_SPLIT_R: _redo_split,
    x.XLOG_BTREE_DEDUP: _redo_dedup,
    x.XLOG_BTREE_DELETE: _redo_delvacuum,
    x.XLOG_BTREE_VACUUM: _redo_delvacuum,
    x.XLOG_BTREE_MARK_PAGE_HALFDEAD: _redo_mark_halfdead,
    x.XLOG_BTREE_UNLINK_PAGE: _redo_unlink,
    x.XLOG_BTREE_UNLINK_PAGE_META: _redo_unlink,
    x.XLOG_BTREE_NEWROOT: _redo_newroot,
    x.XLOG_BTREE_REUSE_PAGE: _redo_reuse_page,
    x.XLOG_BTREE_META_CLEANUP: _redo_meta_cleanup,
}

BTREE_RECORD_TYPES: frozenset[int] = frozenset(_HANDLERS)


def btree_redo_block(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    """Apply btree `record` to `block`'s page, in place (nbtxlog.c semantics).

    Requires: `page` is the block's state before the record (all zeros for a
    WILL_INIT block); the caller stamps pd_lsn afterwards.
    Raises: UnsupportedRecordError for an unknown record type; RedoError when
    the page cannot take the change (PostgreSQL would PANIC) or the record has
    no such block.
    """
    run_handler(_HANDLERS, record.info & _INFO_MASK, record, block, page, _fail)


# -- mask -----------------------------------------------------------------------

def btree_mask(page: bytearray, blkno: int = 0) -> None:
    """btree_mask (nbtxlog.c), in place: what wal_consistency_checking ignores.

    LSN and checksum, header hint bits, unused space, line-pointer flags of
    leaf pages (LP_DEAD is set without WAL), BTP_HAS_GARBAGE and BTP_SPLIT_END
    (unlogged hints) and the vacuum cycle ID.
    """
    bufmask.mask_page_lsn_and_checksum(page)
    bufmask.mask_page_hint_bits(page)
    bufmask.mask_unused_space(page)
    flags = bp.get_flags(page)
    if flags & bp.BTP_LEAF:
        bufmask.mask_lp_flags(page)
    bp.set_flags(page, flags & ~(bp.BTP_HAS_GARBAGE | bp.BTP_SPLIT_END))
    bp.set_cycleid(page, 0)


register(RM_BTREE_ID, btree_redo_block)
bufmask.register(RM_BTREE_ID, btree_mask)
