"""What Heap and Heap2 records do to the visibility map (VM), PostgreSQL 18.

What it is: the VM's layout (visibilitymap.c: two bits per heap block, after
a page header), which heap blocks' bits a record clears, read from the
record's flags, and where those flags sit in main data (also used in vector
form by `strata.ingest.batched`). Fed by decoded records; feeds VM redo
(`reconstruct.redo.heap`) and ingest, which must store a VM page that is
never more visible than the primary's. No I/O, no page logic.

Two shapes of the same records (wal-census): 18.6 names the VM page of a
clear as an extra block reference (HEAP_*_BLKREF_VM, the update's VM_NEW and
VM_OLD) when the bits were really cleared; older 18.x minors clear the bits
during redo with no block reference at all. A record whose flags say "cleared"
but that names no VM page is therefore either an old minor's implicit clear
or an 18.6 record whose VM bits were already clear: ingest treats both as
"the VM page may have changed" (`implicit_clears`).
"""

from __future__ import annotations

from strata.errors import WalDecodeError
from strata.pg.constants import BLCKSZ, ForkNumber
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import (
    RM_HEAP2_ID,
    RM_HEAP_ID,
    XLOG_HEAP2_LOCK_UPDATED,
    XLOG_HEAP2_MULTI_INSERT,
    XLOG_HEAP_DELETE,
    XLOG_HEAP_HOT_UPDATE,
    XLOG_HEAP_INSERT,
    XLOG_HEAP_LOCK,
    XLOG_HEAP_OPMASK,
    XLOG_HEAP_UPDATE,
)
from strata.wal.rmgr.heap import (
    HEAP_UPDATE_BLKREF_HEAP_OLD,
    XLH_DELETE_ALL_VISIBLE_CLEARED,
    XLH_INSERT_ALL_VISIBLE_CLEARED,
    XLH_LOCK_ALL_FROZEN_CLEARED,
    XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED,
    XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED,
)
from strata.wal.rmgr.heap2 import (  # noqa: F401  (re-exported: the VM's bits)
    VISIBILITYMAP_ALL_FROZEN,
    VISIBILITYMAP_ALL_VISIBLE,
    VISIBILITYMAP_VALID_BITS,
)

BITS_PER_HEAPBLOCK = 2
HEAPBLOCKS_PER_BYTE = 8 // BITS_PER_HEAPBLOCK
VM_CONTENTS = 24  # MAXALIGN(SizeOfPageHeaderData): the map starts here
VM_MAPSIZE = BLCKSZ - VM_CONTENTS
HEAPBLOCKS_PER_PAGE = VM_MAPSIZE * HEAPBLOCKS_PER_BYTE

# (rmid, op) -> (offset of the flags byte in main data, the flag bits that say
# VM bits were cleared): xl_heap_insert, xl_heap_delete, xl_heap_update,
# xl_heap_lock, xl_heap_multi_insert, xl_heap_lock_updated.
CLEAR_FLAGS: dict[tuple[int, int], tuple[int, int]] = {
    (RM_HEAP_ID, XLOG_HEAP_INSERT): (2, XLH_INSERT_ALL_VISIBLE_CLEARED),
    (RM_HEAP_ID, XLOG_HEAP_DELETE): (7, XLH_DELETE_ALL_VISIBLE_CLEARED),
    (RM_HEAP_ID, XLOG_HEAP_UPDATE): (7, XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED
                                     | XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED),
    (RM_HEAP_ID, XLOG_HEAP_HOT_UPDATE): (7, XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED
                                         | XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED),
    (RM_HEAP_ID, XLOG_HEAP_LOCK): (7, XLH_LOCK_ALL_FROZEN_CLEARED),
    (RM_HEAP2_ID, XLOG_HEAP2_MULTI_INSERT): (0, XLH_INSERT_ALL_VISIBLE_CLEARED),
    (RM_HEAP2_ID, XLOG_HEAP2_LOCK_UPDATED): (7, XLH_LOCK_ALL_FROZEN_CLEARED),
}
_FROZEN_ONLY = {(RM_HEAP_ID, XLOG_HEAP_LOCK), (RM_HEAP2_ID, XLOG_HEAP2_LOCK_UPDATED)}
_UPDATES = {(RM_HEAP_ID, XLOG_HEAP_UPDATE), (RM_HEAP_ID, XLOG_HEAP_HOT_UPDATE)}


def vm_location(heap_blk: int) -> tuple[int, int, int]:
    """(VM block, byte in the map, bit offset) of a heap block."""
    return (heap_blk // HEAPBLOCKS_PER_PAGE,
            (heap_blk % HEAPBLOCKS_PER_PAGE) // HEAPBLOCKS_PER_BYTE,
            (heap_blk % HEAPBLOCKS_PER_BYTE) * BITS_PER_HEAPBLOCK)


def visibility_clears(record: DecodedRecord) -> list[tuple[int, int]]:
    """(heap block, VM bits) that `record` clears, from its flags (empty for
    records that clear nothing).

    Raises: WalDecodeError for main data too short to hold the flags, or a
    clear without the heap block reference it applies to."""
    kind = (record.xl_rmid, record.info & XLOG_HEAP_OPMASK)
    at = CLEAR_FLAGS.get(kind)
    if at is None:
        return []
    off, mask = at
    data = record.main_data
    if len(data) <= off:
        raise WalDecodeError(f"record at {record.lsn}: main data of {len(data)} bytes "
                             "has no flags byte")
    flags = data[off] & mask
    if not flags:
        return []
    heap = record.block(0)
    if heap is None:
        raise WalDecodeError(f"record at {record.lsn} clears visibility bits but has no "
                             "heap block reference 0")
    if kind in _FROZEN_ONLY:
        return [(heap.blkno, VISIBILITYMAP_ALL_FROZEN)]
    if kind not in _UPDATES:
        return [(heap.blkno, VISIBILITYMAP_VALID_BITS)]
    old = record.block(HEAP_UPDATE_BLKREF_HEAP_OLD)
    out: list[tuple[int, int]] = []
    if flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED:
        out.append((old.blkno if old is not None else heap.blkno, VISIBILITYMAP_VALID_BITS))
    if flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED:
        out.append((heap.blkno, VISIBILITYMAP_VALID_BITS))
    return out


def names_vm_page(record: DecodedRecord) -> bool:
    """Whether `record` has a visibility-map block reference (18.6's shape)."""
    return any(b.fork == ForkNumber.VM for b in record.blocks)


def cleared_vm_pages(record: DecodedRecord) -> list[int]:
    """The VM blocks holding bits `record` clears. Sorted, no repeats."""
    return sorted({heap_blk // HEAPBLOCKS_PER_PAGE for heap_blk, _ in visibility_clears(record)})


def implicit_clears(record: DecodedRecord) -> list[int]:
    """VM blocks whose bits `record` clears without naming them: empty when it
    clears nothing or names its VM pages. Sorted, no repeats."""
    return [] if names_vm_page(record) else cleared_vm_pages(record)
