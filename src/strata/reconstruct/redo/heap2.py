"""Heap2 (rmgr 9) redo, per block, following heapam_xlog.c of PostgreSQL 18.

What it is: PRUNE_ON_ACCESS / PRUNE_VACUUM_SCAN / PRUNE_VACUUM_CLEANUP
(heap_page_prune_execute + freeze plans), VISIBLE (PD_ALL_VISIBLE on the
heap block, VM bits on the VM block), MULTI_INSERT (+INIT_PAGE),
LOCK_UPDATED, and the VM block references of 18.6. NEW_CID and REWRITE
carry no block references (the dispatcher rejects a block id for them).
Fed by the dispatcher; registers itself for RM_HEAP2_ID.

VISIBLE's heap page: PostgreSQL stamps its LSN only when XLogHintBitIsNeeded
(data checksums or wal_log_hints). `HINT_BITS_LOGGED` says which we assume;
PostgreSQL 18's initdb enables checksums by default.
"""

from __future__ import annotations

import struct

from strata.errors import RedoError
from strata.reconstruct.redo import (
    RM_HEAP2_ID,
    VISIBILITYMAP_FORKNUM,
    page_ops,
    register,
    unsupported,
)
from strata.reconstruct.redo.heap import (
    FROZEN_TRANSACTION_ID,
    INVALID_TRANSACTION_ID,
    T_CID,
    T_INFOMASK,
    T_INFOMASK2,
    T_XMAX,
    add_tuple,
    build_new_tuple,
    clear_xmax_bits,
    fix_infomask_from_infobits,
    normal_tuple,
    redo_vm_clear,
    set_u16,
    set_u32,
    vm_set,
)
from strata.wal.record import BlockRef, DecodedRecord
from strata.wal.rmgr import heap as h
from strata.wal.rmgr import heap2 as h2

HINT_BITS_LOGGED = True


def _prune(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = h2.XlHeapPrune.parse(record.main_data)
    bd = h2.PruneBlockData.parse(block.data, xlrec.flags)
    if bd.redirected or bd.nowdead or bd.nowunused:
        lp_truncate_only = not xlrec.flags & h2.XLHP_CLEANUP_LOCK
        nmax = page_ops.page_get_max_offset(page)
        for off in (*(f for f, _t in bd.redirected), *bd.nowdead, *bd.nowunused):
            if off < 1 or off > nmax:
                raise RedoError(f"prune at {record.lsn}: offset {off} beyond {nmax} items")
        for fromoff, tooff in bd.redirected:
            page_ops.item_id_set_redirect(page, fromoff, tooff)
        for off in bd.nowdead:
            page_ops.item_id_set_dead(page, off)
        for off in bd.nowunused:
            page_ops.item_id_set_unused(page, off)
        if lp_truncate_only:
            page_ops.page_truncate_line_pointer_array(page)
        else:
            page_ops.page_repair_fragmentation(page)
    for plan in bd.plans:
        for off in plan.offsets:
            tup = normal_tuple(page, off, record)
            # heap_execute_freeze_tuple
            set_u32(page, tup + T_XMAX, plan.xmax)
            if plan.frzflags & h2.XLH_FREEZE_XVAC:
                set_u32(page, tup + T_CID, FROZEN_TRANSACTION_ID)
            if plan.frzflags & h2.XLH_INVALID_XVAC:
                set_u32(page, tup + T_CID, INVALID_TRANSACTION_ID)
            set_u16(page, tup + T_INFOMASK, plan.t_infomask)
            set_u16(page, tup + T_INFOMASK2, plan.t_infomask2)


def _visible(record: DecodedRecord, block: BlockRef, page: bytearray) -> bool | None:
    xlrec = h2.XlHeapVisible.parse(record.main_data)
    if block.block_id == 1:  # the heap page
        page_ops.page_set_all_visible(page)
        return None if HINT_BITS_LOGGED else False
    if block.block_id != 0:
        raise RedoError(f"heap2 visible at {record.lsn}: unexpected block {block.block_id}")
    heap = record.block(1)
    if heap is None:
        raise RedoError(f"heap2 visible at {record.lsn}: no heap block reference")
    if page_ops.page_is_new(page):
        page_ops.page_init(page, 0)
    changed = vm_set(page, block.blkno, heap.blkno, xlrec.flags & h2.VISIBILITYMAP_VALID_BITS)
    return None if changed else False


def _multi_insert(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    isinit = bool(record.info & h2.XLOG_HEAP_INIT_PAGE)
    xlrec = h2.XlHeapMultiInsert.parse(record.main_data, isinit)
    if isinit:
        page_ops.page_init(page, 0)
    tuples = h2.parse_multi_insert_tuples(block.data, xlrec.ntuples)
    if isinit:
        _fill_init_page(record, block, page, tuples)
        tuples = ()
    for i, t in enumerate(tuples):
        offnum = page_ops.FIRST_OFFSET_NUMBER + i if isinit else xlrec.offsets[i]
        hdr = h.XlHeapHeader(t.t_infomask2, t.t_infomask, t.t_hoff)
        add_tuple(page, build_new_tuple(record.xl_xid, hdr, t.data, block.blkno, offnum),
                  offnum, record)
    if xlrec.flags & h.XLH_INSERT_ALL_VISIBLE_CLEARED:
        page_ops.page_clear_all_visible(page)
    if xlrec.flags & h.XLH_INSERT_ALL_FROZEN_SET:
        page_ops.page_set_all_visible(page)


_LP_NORMAL_BITS = page_ops.LP_NORMAL << 15


def _fill_init_page(record: DecodedRecord, block: BlockRef, page: bytearray,
                    tuples: tuple[h2.MultiInsertTuple, ...]) -> None:
    """MULTI_INSERT+INIT: tuples 1..n appended to a fresh page in one pass.

    Byte-identical to n PageAddItem calls at offsets 1..n on a page just
    initialised: each tuple goes right below the previous one (MAXALIGNed),
    each line pointer is appended, no free-line-pointer hint exists.
    """
    upper = page_ops.BLCKSZ
    words: list[int] = []
    for i, t in enumerate(tuples):
        offnum = i + 1
        tup = build_new_tuple(record.xl_xid, h.XlHeapHeader(t.t_infomask2, t.t_infomask, t.t_hoff),
                              t.data, block.blkno, offnum)
        size = len(tup)
        upper -= (size + 7) & ~7
        if (upper < page_ops.SIZE_OF_PAGE_HEADER + page_ops.ITEM_ID_SIZE * offnum
                or offnum > page_ops.MAX_HEAP_TUPLES_PER_PAGE):
            raise RedoError(f"failed to add tuple {offnum} at {record.lsn}: page full")
        page[upper:upper + size] = tup
        words.append(upper | _LP_NORMAL_BITS | (size << 17))
    if words:
        struct.pack_into(f"<{len(words)}I", page, page_ops.SIZE_OF_PAGE_HEADER, *words)
        page_ops.set_lower(page, page_ops.SIZE_OF_PAGE_HEADER + page_ops.ITEM_ID_SIZE * len(words))
        page_ops.set_upper(page, upper)


def _lock_updated(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = h2.XlHeapLockUpdated.parse(record.main_data)
    tup = normal_tuple(page, xlrec.offnum, record)
    clear_xmax_bits(page, tup)
    fix_infomask_from_infobits(page, tup, xlrec.infobits_set)
    set_u32(page, tup + T_XMAX, xlrec.xmax)


def heap2_redo(record: DecodedRecord, block: BlockRef, page: bytearray) -> bool | None:
    op = record.info & h2.XLOG_HEAP_OPMASK
    if op == h2.XLOG_HEAP2_VISIBLE:
        return _visible(record, block, page)
    if block.fork == VISIBILITYMAP_FORKNUM:
        if op in (h2.XLOG_HEAP2_MULTI_INSERT, h2.XLOG_HEAP2_LOCK_UPDATED):
            redo_vm_clear(record, block, page)
            return None
        raise unsupported(record)
    if op in (h2.XLOG_HEAP2_PRUNE_ON_ACCESS, h2.XLOG_HEAP2_PRUNE_VACUUM_SCAN,
              h2.XLOG_HEAP2_PRUNE_VACUUM_CLEANUP):
        _prune(record, block, page)
    elif op == h2.XLOG_HEAP2_MULTI_INSERT:
        _multi_insert(record, block, page)
    elif op == h2.XLOG_HEAP2_LOCK_UPDATED:
        _lock_updated(record, block, page)
    else:  # NEW_CID and REWRITE have no blocks
        raise unsupported(record)
    return None


register(RM_HEAP2_ID, heap2_redo)
