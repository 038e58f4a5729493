"""Heap (rmgr 10) redo, per block, following heapam_xlog.c of PostgreSQL 18.

What it is: INSERT (+INIT_PAGE), DELETE, UPDATE, HOT_UPDATE (prefix/suffix
from the old tuple), LOCK, INPLACE, CONFIRM applied to one block's page, and
the visibility-map block references that 18.6 heap records carry. Also the
tuple-header and VM helpers that heap2 redo shares. Fed by the dispatcher
(`strata.reconstruct.redo`); registers itself for RM_HEAP_ID.

Heap TRUNCATE (logical decoding only) has no block references; asking to
redo a block of it is an error raised by the dispatcher.

Per-block split of UPDATE: when the old tuple is on another page, block 1
(HEAP_UPDATE_BLKREF_HEAP_OLD) gets the old-tuple changes and block 0 the new
tuple; when both are on one page, block 0 gets both, old first, as
heap_xlog_update does. VM blocks (fork 2) clear, for every heap block of the
record whose *_ALL_VISIBLE_CLEARED / ALL_FROZEN_CLEARED flag is set and
whose bits live on that VM page, the bits PostgreSQL clears (clearing is
idempotent, so the 18.6 VM_NEW/VM_OLD sharing rules need no special case).
WAL of older 18.x minors has no VM block reference: ingest stores a tombstone
for the VM page such a record changes (`wal.rmgr.visibility.implicit_clears`),
so that page reads as zeros from there on (nothing known all-visible).

UPDATE / HOT_UPDATE run compiled (`_pagec.heap_update`) when the extension is
built: the hot pages of a TPC-B history are rebuilt from thousands of them
(flush-time chain cuts, lazy reads). `_update_python` is the reference; the
compiled one leaves every page it doubts to it, so errors are raised here.
"""

from __future__ import annotations

import struct

from strata.errors import RedoError
from strata.pg.structs import U16, U32
from strata.pg.transam import xid_precedes
from strata.reconstruct.redo import (
    RM_HEAP_ID,
    VISIBILITYMAP_FORKNUM,
    page_ops,
    register,
    unsupported,
)
from strata.wal.record import BlockRef, DecodedRecord
from strata.wal.rmgr import heap as h
from strata.wal.rmgr.visibility import (  # noqa: F401  (re-exported for heap2 redo, the checker)
    HEAPBLOCKS_PER_PAGE,
    VISIBILITYMAP_ALL_FROZEN,
    VISIBILITYMAP_ALL_VISIBLE,
    VISIBILITYMAP_VALID_BITS,
    VM_CONTENTS,
    visibility_clears,
    vm_location,
)

# HeapTupleHeaderData field offsets
T_XMIN = 0
T_XMAX = 4
T_CID = 8  # t_field3: t_cid or t_xvac
T_CTID = 12
T_INFOMASK2 = 18
T_INFOMASK = 20
T_HOFF = 22
SIZEOF_HEAP_TUPLE_HEADER = 23

HEAP_XMAX_KEYSHR_LOCK = 0x0010
HEAP_COMBOCID = 0x0020
HEAP_XMAX_EXCL_LOCK = 0x0040
HEAP_XMAX_LOCK_ONLY = 0x0080
HEAP_XMAX_SHR_LOCK = HEAP_XMAX_EXCL_LOCK | HEAP_XMAX_KEYSHR_LOCK
HEAP_LOCK_MASK = HEAP_XMAX_SHR_LOCK | HEAP_XMAX_EXCL_LOCK | HEAP_XMAX_KEYSHR_LOCK
HEAP_XMIN_COMMITTED = 0x0100
HEAP_XMIN_INVALID = 0x0200
HEAP_XMIN_FROZEN = HEAP_XMIN_COMMITTED | HEAP_XMIN_INVALID
HEAP_XMAX_COMMITTED = 0x0400
HEAP_XMAX_INVALID = 0x0800
HEAP_XMAX_IS_MULTI = 0x1000
HEAP_MOVED_OFF = 0x4000
HEAP_MOVED_IN = 0x8000
HEAP_MOVED = HEAP_MOVED_OFF | HEAP_MOVED_IN
HEAP_XACT_MASK = 0xFFF0
HEAP_XMAX_BITS = (HEAP_XMAX_COMMITTED | HEAP_XMAX_INVALID | HEAP_XMAX_IS_MULTI
                  | HEAP_LOCK_MASK | HEAP_XMAX_LOCK_ONLY)
HEAP_KEYS_UPDATED = 0x2000
HEAP_HOT_UPDATED = 0x4000
HEAP_ONLY_TUPLE = 0x8000

FIRST_COMMAND_ID = 0
INVALID_TRANSACTION_ID = 0
FROZEN_TRANSACTION_ID = 2
SPEC_TOKEN_OFFSET_NUMBER = 0xFFFE
MOVED_PARTITIONS_OFFSET_NUMBER = 0xFFFD
MOVED_PARTITIONS_BLOCK_NUMBER = 0xFFFFFFFF

assert page_ops.maxalign(page_ops.SIZE_OF_PAGE_HEADER) == VM_CONTENTS

_CTID = struct.Struct("<HHH")

# -- tuple header helpers ---------------------------------------------------------


def get_u16(page: bytearray, pos: int) -> int:
    return U16.unpack_from(page, pos)[0]  # type: ignore[no-any-return]


def set_u16(page: bytearray, pos: int, v: int) -> None:
    U16.pack_into(page, pos, v & 0xFFFF)


def get_u32(page: bytearray, pos: int) -> int:
    return U32.unpack_from(page, pos)[0]  # type: ignore[no-any-return]


def set_u32(page: bytearray, pos: int, v: int) -> None:
    U32.pack_into(page, pos, v & 0xFFFFFFFF)


def set_ctid(buf: bytearray, tup: int, blkno: int, offnum: int) -> None:
    """ItemPointerSet(&htup->t_ctid, blkno, offnum)."""
    _CTID.pack_into(buf, tup + T_CTID, (blkno >> 16) & 0xFFFF, blkno & 0xFFFF, offnum)


def normal_tuple(page: bytearray, offnum: int, record: DecodedRecord) -> int:
    """Start of the tuple at `offnum`, which must be LP_NORMAL ("invalid lp")."""
    if page_ops.page_get_max_offset(page) < offnum:
        raise RedoError(f"invalid lp {offnum} at {record.lsn}: page has "
                        f"{page_ops.page_get_max_offset(page)} items")
    off, flags, _ln = page_ops.item_id(page, offnum)
    if flags != page_ops.LP_NORMAL:
        raise RedoError(f"invalid lp {offnum} at {record.lsn}: flags {flags}")
    return off


def fix_infomask_from_infobits(page: bytearray, tup: int, infobits: int) -> None:
    im = get_u16(page, tup + T_INFOMASK)
    im2 = get_u16(page, tup + T_INFOMASK2)
    im &= ~(HEAP_XMAX_IS_MULTI | HEAP_XMAX_LOCK_ONLY | HEAP_XMAX_KEYSHR_LOCK | HEAP_XMAX_EXCL_LOCK)
    im2 &= ~HEAP_KEYS_UPDATED
    if infobits & h.XLHL_XMAX_IS_MULTI:
        im |= HEAP_XMAX_IS_MULTI
    if infobits & h.XLHL_XMAX_LOCK_ONLY:
        im |= HEAP_XMAX_LOCK_ONLY
    if infobits & h.XLHL_XMAX_EXCL_LOCK:
        im |= HEAP_XMAX_EXCL_LOCK
    if infobits & h.XLHL_XMAX_KEYSHR_LOCK:
        im |= HEAP_XMAX_KEYSHR_LOCK
    if infobits & h.XLHL_KEYS_UPDATED:
        im2 |= HEAP_KEYS_UPDATED
    set_u16(page, tup + T_INFOMASK, im)
    set_u16(page, tup + T_INFOMASK2, im2)


def clear_xmax_bits(page: bytearray, tup: int) -> None:
    """t_infomask &= ~(HEAP_XMAX_BITS | HEAP_MOVED); t_infomask2 &= ~HEAP_KEYS_UPDATED."""
    set_u16(page, tup + T_INFOMASK, get_u16(page, tup + T_INFOMASK) & ~(HEAP_XMAX_BITS | HEAP_MOVED))
    set_u16(page, tup + T_INFOMASK2, get_u16(page, tup + T_INFOMASK2) & ~HEAP_KEYS_UPDATED)


def set_cmax_plain(page: bytearray, tup: int) -> None:
    """HeapTupleHeaderSetCmax(htup, FirstCommandId, false)."""
    set_u32(page, tup + T_CID, FIRST_COMMAND_ID)
    set_u16(page, tup + T_INFOMASK, get_u16(page, tup + T_INFOMASK) & ~HEAP_COMBOCID)


def set_hot_updated(page: bytearray, tup: int, on: bool) -> None:
    im2 = get_u16(page, tup + T_INFOMASK2)
    set_u16(page, tup + T_INFOMASK2, (im2 | HEAP_HOT_UPDATED) if on else (im2 & ~HEAP_HOT_UPDATED))


def page_set_prunable(page: bytearray, xid: int) -> None:
    """PageSetPrunable: keep the oldest prunable xid."""
    cur = page_ops.get_prune_xid(page)
    if cur == INVALID_TRANSACTION_ID or xid_precedes(xid, cur):
        page_ops.set_prune_xid(page, xid)


_TUPLE_HEADER = struct.Struct("<IIIHHHHHB")  # xmin xmax cid ctid(hi lo pos) im2 im hoff


def build_new_tuple(record_xid: int, hdr: h.XlHeapHeader, body: bytes,
                    blkno: int, offnum: int, xmax: int = 0) -> bytes:
    """A HeapTupleHeader as redo builds it: zeroed header, xmin = record xid,
    cmin = FirstCommandId, ctid = (blkno, offnum), masks and hoff from WAL
    (HeapTupleHeaderSetCmin clears HEAP_COMBOCID)."""
    return _TUPLE_HEADER.pack(
        record_xid, xmax, FIRST_COMMAND_ID, (blkno >> 16) & 0xFFFF, blkno & 0xFFFF, offnum,
        hdr.t_infomask2, hdr.t_infomask & ~HEAP_COMBOCID & 0xFFFF, hdr.t_hoff) + body


def add_tuple(page: bytearray, tup: bytes | bytearray, offnum: int, record: DecodedRecord) -> None:
    """PageAddItem(page, tup, offnum, overwrite=true, is_heap=true) or PANIC."""
    if page_ops.page_add_item(page, tup, offnum, overwrite=True, is_heap=True) == 0:
        raise RedoError(f"failed to add tuple at offset {offnum} at {record.lsn} (page has "
                        f"{page_ops.page_get_max_offset(page)} items, "
                        f"{page_ops.page_get_exact_free_space(page)} bytes free)")


# -- visibility map ---------------------------------------------------------------

def vm_clear(vmpage: bytearray, vm_blkno: int, heap_blk: int, flags: int) -> None:
    """visibilitymap_clear for `heap_blk` if its bits live on this VM page."""
    mapblock, mapbyte, mapoff = vm_location(heap_blk)
    if mapblock != vm_blkno:
        return
    if page_ops.page_is_new(vmpage):
        page_ops.page_init(vmpage, 0)
    vmpage[VM_CONTENTS + mapbyte] &= ~(flags << mapoff) & 0xFF


def vm_set(vmpage: bytearray, vm_blkno: int, heap_blk: int, flags: int) -> bool:
    """visibilitymap_set; True if the bits changed (PostgreSQL stamps the LSN only then)."""
    mapblock, mapbyte, mapoff = vm_location(heap_blk)
    if mapblock != vm_blkno:
        raise RedoError(f"VM block {vm_blkno} does not cover heap block {heap_blk}")
    status = (vmpage[VM_CONTENTS + mapbyte] >> mapoff) & VISIBILITYMAP_VALID_BITS
    if flags != status:
        vmpage[VM_CONTENTS + mapbyte] |= (flags << mapoff) & 0xFF
        return True
    return False


def heap_block(record: DecodedRecord, block_id: int) -> BlockRef:
    b = record.block(block_id)
    if b is None:
        raise RedoError(f"record at {record.lsn} lacks heap block reference {block_id}")
    return b


def redo_vm_clear(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    clears = visibility_clears(record)
    if not clears:
        raise RedoError(f"VM block reference {block.block_id} at {record.lsn} but no "
                        "visibility bits cleared by the record")
    for heap_blk, flags in clears:
        vm_clear(page, block.blkno, heap_blk, flags)


# -- the records ----------------------------------------------------------------

def _insert(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = h.XlHeapInsert.parse(record.main_data)
    if record.info & h.XLOG_HEAP_INIT_PAGE:
        page_ops.page_init(page, 0)
    data = block.data
    if len(data) <= h.SIZE_OF_HEAP_HEADER:
        raise RedoError(f"heap insert at {record.lsn}: block data too short")
    hdr = h.XlHeapHeader.parse(data)
    tup = build_new_tuple(record.xl_xid, hdr, data[h.SIZE_OF_HEAP_HEADER:], block.blkno,
                          xlrec.offnum)
    add_tuple(page, tup, xlrec.offnum, record)
    if xlrec.flags & h.XLH_INSERT_ALL_VISIBLE_CLEARED:
        page_ops.page_clear_all_visible(page)


def _delete(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = h.XlHeapDelete.parse(record.main_data)
    tup = normal_tuple(page, xlrec.offnum, record)
    clear_xmax_bits(page, tup)
    set_hot_updated(page, tup, False)
    fix_infomask_from_infobits(page, tup, xlrec.infobits_set)
    if not xlrec.flags & h.XLH_DELETE_IS_SUPER:
        set_u32(page, tup + T_XMAX, xlrec.xmax)
    else:
        set_u32(page, tup + T_XMIN, INVALID_TRANSACTION_ID)
    set_cmax_plain(page, tup)
    page_set_prunable(page, record.xl_xid)
    if xlrec.flags & h.XLH_DELETE_ALL_VISIBLE_CLEARED:
        page_ops.page_clear_all_visible(page)
    if xlrec.flags & h.XLH_DELETE_IS_PARTITION_MOVE:
        set_ctid(page, tup, MOVED_PARTITIONS_BLOCK_NUMBER, MOVED_PARTITIONS_OFFSET_NUMBER)
    else:
        set_ctid(page, tup, block.blkno, xlrec.offnum)


def _update_old(record: DecodedRecord, page: bytearray, xlrec: h.XlHeapUpdate, hot: bool,
                newblk: int) -> int:
    """Old-tuple half of heap_xlog_update; returns the old tuple's position."""
    tup = normal_tuple(page, xlrec.old_offnum, record)
    clear_xmax_bits(page, tup)
    set_hot_updated(page, tup, hot)
    fix_infomask_from_infobits(page, tup, xlrec.old_infobits_set)
    set_u32(page, tup + T_XMAX, xlrec.old_xmax)
    set_cmax_plain(page, tup)
    set_ctid(page, tup, newblk, xlrec.new_offnum)
    page_set_prunable(page, record.xl_xid)
    if xlrec.flags & h.XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED:
        page_ops.page_clear_all_visible(page)
    return tup


_compiled_update = None if page_ops.pagec is None else page_ops.pagec.heap_update


def _update(record: DecodedRecord, block: BlockRef, page: bytearray, hot: bool) -> None:
    """One block of heap_xlog_update: compiled (`_pagec.heap_update`) when built
    and the page is one it can take, else `_update_python`, its reference (which
    also raises every error, with the record's LSN)."""
    if _compiled_update is not None and len(page) == page_ops.BLCKSZ:
        new = record.block(h.HEAP_UPDATE_BLKREF_HEAP_NEW)
        if new is not None and block.block_id in (h.HEAP_UPDATE_BLKREF_HEAP_NEW,
                                                  h.HEAP_UPDATE_BLKREF_HEAP_OLD):
            same = record.block(h.HEAP_UPDATE_BLKREF_HEAP_OLD) is None
            init = bool(record.info & h.XLOG_HEAP_INIT_PAGE) and not same
            data = block.data if block.block_id == h.HEAP_UPDATE_BLKREF_HEAP_NEW else b""
            if _compiled_update(page, record.main_data, data or b"", block.block_id, same,
                                init, record.xl_xid, new.blkno, hot):
                return
    _update_python(record, block, page, hot)


def _update_python(record: DecodedRecord, block: BlockRef, page: bytearray, hot: bool) -> None:
    """One block of heap_xlog_update in Python: the reference."""
    xlrec = h.XlHeapUpdate.parse(record.main_data)
    old_ref = record.block(h.HEAP_UPDATE_BLKREF_HEAP_OLD)
    newblk = heap_block(record, h.HEAP_UPDATE_BLKREF_HEAP_NEW).blkno
    if block.block_id == h.HEAP_UPDATE_BLKREF_HEAP_OLD:
        _update_old(record, page, xlrec, hot, newblk)
        return
    if block.block_id != h.HEAP_UPDATE_BLKREF_HEAP_NEW:
        raise RedoError(f"heap update at {record.lsn}: unexpected block {block.block_id}")
    old_tup: bytes = b""
    if old_ref is None:  # same page: the old tuple is modified here first
        pos = _update_old(record, page, xlrec, hot, newblk)
        old_tup = bytes(page[pos:pos + page_ops.item_len(page, xlrec.old_offnum)])
    elif record.info & h.XLOG_HEAP_INIT_PAGE:
        page_ops.page_init(page, 0)
    bd = h.HeapUpdateBlockData.parse(block.data, xlrec.flags)
    if (bd.prefixlen or bd.suffixlen) and old_ref is not None:
        raise RedoError(f"heap update at {record.lsn}: prefix/suffix across pages")
    rec = bd.tuple_data
    if bd.prefixlen > 0:
        # bitmap/padding from WAL, then the prefix from the old tuple's data, then the rest
        nb = bd.header.t_hoff - SIZEOF_HEAP_TUPLE_HEADER
        old_hoff = old_tup[T_HOFF]
        body = rec[:nb] + old_tup[old_hoff:old_hoff + bd.prefixlen] + rec[nb:]
    else:
        body = rec
    if bd.suffixlen > 0:
        body = body + old_tup[len(old_tup) - bd.suffixlen:]
    tup = build_new_tuple(record.xl_xid, bd.header, body, newblk, xlrec.new_offnum,
                          xmax=xlrec.new_xmax)
    add_tuple(page, tup, xlrec.new_offnum, record)
    if xlrec.flags & h.XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED:
        page_ops.page_clear_all_visible(page)


def _confirm(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = h.XlHeapConfirm.parse(record.main_data)
    tup = normal_tuple(page, xlrec.offnum, record)
    set_ctid(page, tup, block.blkno, xlrec.offnum)


def is_locked_only(infomask: int) -> bool:
    """HEAP_XMAX_IS_LOCKED_ONLY."""
    return bool(infomask & HEAP_XMAX_LOCK_ONLY) or (
        (infomask & (HEAP_XMAX_IS_MULTI | HEAP_LOCK_MASK)) == HEAP_XMAX_EXCL_LOCK)


def _lock(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = h.XlHeapLock.parse(record.main_data)
    tup = normal_tuple(page, xlrec.offnum, record)
    clear_xmax_bits(page, tup)
    fix_infomask_from_infobits(page, tup, xlrec.infobits_set)
    if is_locked_only(get_u16(page, tup + T_INFOMASK)):
        set_hot_updated(page, tup, False)
        set_ctid(page, tup, block.blkno, xlrec.offnum)
    set_u32(page, tup + T_XMAX, xlrec.xmax)
    set_cmax_plain(page, tup)


def _inplace(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = h.XlHeapInplace.parse(record.main_data)
    tup = normal_tuple(page, xlrec.offnum, record)
    hoff = page[tup + T_HOFF]
    oldlen = page_ops.item_len(page, xlrec.offnum) - hoff
    newtup = block.data
    if oldlen != len(newtup):
        raise RedoError(f"wrong tuple length in heap inplace at {record.lsn}: "
                        f"{oldlen} != {len(newtup)}")
    page[tup + hoff:tup + hoff + oldlen] = newtup


def heap_redo(record: DecodedRecord, block: BlockRef, page: bytearray) -> bool | None:
    op = record.info & h.XLOG_HEAP_OPMASK
    if block.fork == VISIBILITYMAP_FORKNUM:
        if op in (h.XLOG_HEAP_INSERT, h.XLOG_HEAP_DELETE, h.XLOG_HEAP_UPDATE,
                  h.XLOG_HEAP_HOT_UPDATE, h.XLOG_HEAP_LOCK):
            redo_vm_clear(record, block, page)
            return None
        raise unsupported(record)
    if op == h.XLOG_HEAP_INSERT:
        _insert(record, block, page)
    elif op == h.XLOG_HEAP_DELETE:
        _delete(record, block, page)
    elif op == h.XLOG_HEAP_UPDATE:
        _update(record, block, page, hot=False)
    elif op == h.XLOG_HEAP_HOT_UPDATE:
        _update(record, block, page, hot=True)
    elif op == h.XLOG_HEAP_CONFIRM:
        _confirm(record, block, page)
    elif op == h.XLOG_HEAP_LOCK:
        _lock(record, block, page)
    elif op == h.XLOG_HEAP_INPLACE:
        _inplace(record, block, page)
    else:  # TRUNCATE has no blocks; anything else is unknown
        raise unsupported(record)
    return None


register(RM_HEAP_ID, heap_redo)
