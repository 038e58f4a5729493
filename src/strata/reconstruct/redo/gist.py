"""GiST (RM_GIST_ID = 14) redo and mask: PostgreSQL 18's gistxlog.c, per block.

What it is: `gist_redo_block(record, block, page)` applies one GiST WAL record
to one of its block references, editing `page` in place, with the semantics
of gist_redo in src/backend/access/gist/gistxlog.c (REL_18); `gist_mask(page)`
is its gist_mask. Each routine changes a page from its own previous state
plus the record, so per-block redo is exact.

Fed by: the redo dispatcher (`strata.reconstruct.redo`), which handles
apply-images, BLK_DONE and WILL_INIT and stamps pd_lsn afterwards. Feeds:
GetPage@LSN and the wal_consistency_checking oracle. Owns nothing
persistent; registers its redo, its after-image hook and its mask at import.

The NSN and follow-right logic: a split marks every new page but the last
F_FOLLOW_RIGHT (their right sibling has no downlink yet) unless it is a
root split; the record that inserts the missing downlink (PAGE_UPDATE, or a
PAGE_SPLIT of the parent) names the left child as an extra block (block 1,
resp. block 0) whose NSN becomes the record's end LSN and whose
F_FOLLOW_RIGHT is cleared. PostgreSQL does that even when the child was
restored from an image (the NSN cannot be in the image): `gist_after_image`.

Page layout (gist.h): GISTPageOpaqueData at pd_special (16 bytes): nsn as
PageXLogRecPtr (xlogid u32, xrecoff u32), rightlink u32, flags u16,
gist_page_id u16 (0xFF81). A deleted page keeps its FullTransactionId
deleteXid at PageGetContents, with pd_lower just past it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from strata.errors import RedoError
from strata.pg.constants import BLCKSZ
from strata.pg.structs import U16, U32, U64
from strata.reconstruct import mask as bufmask
from strata.reconstruct.redo import (
    RM_GIST_ID,
    block_error,
    index_tuples,
    page_ops,
    register,
    register_after_image,
    run_handler,
)
from strata.reconstruct.redo.page_ops import maxalign
from strata.wal.record import BlockRef, DecodedRecord
from strata.wal.rmgr import gist as x

SIZE_OF_GIST_PAGE_OPAQUE = 16
_OPAQUE = struct.Struct("<IIIHH")

F_LEAF = 1 << 0
F_DELETED = 1 << 1
F_TUPLES_DELETED = 1 << 2
F_FOLLOW_RIGHT = 1 << 3
F_HAS_GARBAGE = 1 << 4
GIST_PAGE_ID = 0xFF81
GIST_ROOT_BLKNO = 0
INVALID_BLOCK_NUMBER = 0xFFFFFFFF
_CONTENTS = maxalign(page_ops.SIZE_OF_PAGE_HEADER)


# -- page layout ------------------------------------------------------------------

def _opaque_pos(page: bytes | bytearray) -> int:
    special = page_ops.get_special(page)
    if special + SIZE_OF_GIST_PAGE_OPAQUE > BLCKSZ:
        raise RedoError(f"GiST page has special space at {special}: too small for its opaque")
    return special


def get_flags(page: bytes | bytearray) -> int:
    return int(U16.unpack_from(page, _opaque_pos(page) + 12)[0])


def set_flags(page: bytearray, flags: int) -> None:
    U16.pack_into(page, _opaque_pos(page) + 12, flags & 0xFFFF)


def get_nsn(page: bytes | bytearray) -> int:
    hi, lo = struct.unpack_from("<II", page, _opaque_pos(page))
    return (hi << 32) | lo


def set_nsn(page: bytearray, nsn: int) -> None:
    struct.pack_into("<II", page, _opaque_pos(page), (nsn >> 32) & 0xFFFFFFFF, nsn & 0xFFFFFFFF)


def set_rightlink(page: bytearray, blkno: int) -> None:
    U32.pack_into(page, _opaque_pos(page) + 8, blkno)


def gist_init_page(page: bytearray, flags: int) -> None:
    """gistinitpage: PageInit with the opaque, rightlink invalid, NSN 0."""
    page_ops.page_init(page, SIZE_OF_GIST_PAGE_OPAQUE)
    _OPAQUE.pack_into(page, _opaque_pos(page), 0, 0, INVALID_BLOCK_NUMBER, flags, GIST_PAGE_ID)


def gist_page_set_deleted(page: bytearray, delete_xid: int) -> None:
    """GistPageSetDeleted: F_DELETED, the deleteXid after the header."""
    set_flags(page, get_flags(page) | F_DELETED)
    page_ops.set_lower(page, _CONTENTS + 8)
    U64.pack_into(page, _CONTENTS, delete_xid)


def _fail(record: DecodedRecord, block: BlockRef, what: str) -> RedoError:
    return block_error("Gist", x.gist_identify, record, block, what)


def _fill(record: DecodedRecord, block: BlockRef, page: bytearray,
          tuples: list[bytes] | tuple[bytes, ...]) -> None:
    """gistfillbuffer(page, tuples, InvalidOffsetNumber): append in order."""
    off = page_ops.page_get_max_offset(page) + 1
    for tup in tuples:
        if page_ops.page_add_item(page, tup, off) != off:
            raise _fail(record, block, f"failed to add item to GiST index page, size {len(tup)}")
        off += 1


def _clear_follow_right(record: DecodedRecord, page: bytearray) -> None:
    """gistRedoClearFollowRight on the left child of a completed split."""
    set_nsn(page, record.end_lsn)
    set_flags(page, get_flags(page) & ~F_FOLLOW_RIGHT)


# -- per record type ----------------------------------------------------------------

def _page_update(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if block.block_id == 1:
        _clear_follow_right(record, page)
        return
    if block.block_id != 0:
        raise _fail(record, block, "unexpected block reference")
    xlrec = x.GistxlogPageUpdate.parse(record.main_data)
    data = x.parse_page_update_data(block.data, xlrec)
    if xlrec.ntodelete == 1 and xlrec.ntoinsert == 1:
        # one tuple replaced by another: PageIndexTupleOverwrite, like gistplacetopage
        if not index_tuples.page_index_tuple_overwrite(page, data.todelete[0], data.tuples[0]):
            raise _fail(record, block, "failed to add item to GiST index page, "
                                       f"size {len(data.tuples[0])}")
        return
    if xlrec.ntodelete > 0:
        index_tuples.page_index_multi_delete(page, data.todelete)
        if get_flags(page) & F_LEAF:
            set_flags(page, get_flags(page) | F_TUPLES_DELETED)
    _fill(record, block, page, data.tuples)


def _delete(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if block.block_id != 0:
        raise _fail(record, block, "unexpected block reference")
    xlrec = x.GistxlogDelete.parse(record.main_data)
    index_tuples.page_index_multi_delete(page, xlrec.offsets)
    set_flags(page, (get_flags(page) & ~F_HAS_GARBAGE) | F_TUPLES_DELETED)


def _page_split(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if block.block_id == 0:
        _clear_follow_right(record, page)
        return
    xlrec = x.GistxlogPageSplit.parse(record.main_data)
    i = block.block_id - 1
    if i >= xlrec.npage:
        raise _fail(record, block, f"block beyond the {xlrec.npage} split pages")
    first = record.block(1)
    isrootsplit = first is not None and first.blkno == GIST_ROOT_BLKNO
    tuples = x.parse_split_page_data(block.data)
    isroot = block.blkno == GIST_ROOT_BLKNO
    gist_init_page(page, F_LEAF if xlrec.origleaf and not isroot else 0)
    _fill(record, block, page, tuples)
    if isroot:
        set_rightlink(page, INVALID_BLOCK_NUMBER)
        set_nsn(page, xlrec.orignsn)
        set_flags(page, get_flags(page) & ~F_FOLLOW_RIGHT)
        return
    if i < xlrec.npage - 1:
        nxt = record.block(i + 2)
        if nxt is None:
            raise _fail(record, block, f"split page {i + 2} is missing")
        set_rightlink(page, nxt.blkno)
    else:
        set_rightlink(page, xlrec.origrlink)
    set_nsn(page, xlrec.orignsn)
    if i < xlrec.npage - 1 and not isrootsplit and xlrec.markfollowright:
        set_flags(page, get_flags(page) | F_FOLLOW_RIGHT)
    else:
        set_flags(page, get_flags(page) & ~F_FOLLOW_RIGHT)


def _page_delete(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    xlrec = x.GistxlogPageDelete.parse(record.main_data)
    if block.block_id == 0:
        gist_page_set_deleted(page, xlrec.delete_xid)
    elif block.block_id == 1:
        index_tuples.page_index_tuple_delete(page, xlrec.downlink_offset)
    else:
        raise _fail(record, block, "unexpected block reference")


def _no_block(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    # PAGE_REUSE (a hot-standby conflict point) and ASSIGN_LSN register no block
    raise _fail(record, block, "record type has no block to redo")


_HANDLERS: dict[int, Callable[[DecodedRecord, BlockRef, bytearray], None]] = {
    x.XLOG_GIST_PAGE_UPDATE: _page_update,
    x.XLOG_GIST_DELETE: _delete,
    x.XLOG_GIST_PAGE_REUSE: _no_block,
    x.XLOG_GIST_PAGE_SPLIT: _page_split,
    x.XLOG_GIST_PAGE_DELETE: _page_delete,
    x.XLOG_GIST_ASSIGN_LSN: _no_block,
}

GIST_RECORD_TYPES: frozenset[int] = frozenset(_HANDLERS)


def gist_redo_block(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    """Apply GiST `record` to `block`'s page, in place (gistxlog.c semantics).

    Requires: `page` is the block's state before the record (all zeros for a
    WILL_INIT block). Raises: UnsupportedRecordError for an unknown record
    type; RedoError when the page cannot take the change or the record has
    no such block.
    """
    run_handler(_HANDLERS, record.info, record, block, page, _fail)


def gist_after_image(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    """gistRedoClearFollowRight on a child restored from an image (BLK_RESTORED)."""
    if ((record.info == x.XLOG_GIST_PAGE_UPDATE and block.block_id == 1)
            or (record.info == x.XLOG_GIST_PAGE_SPLIT and block.block_id == 0)):
        _clear_follow_right(record, page)


# -- mask -----------------------------------------------------------------------

def gist_mask(page: bytearray, blkno: int = 0) -> None:
    """gist_mask (gistxlog.c), in place: LSN and checksum, header hint bits,
    unused space, the NSN, F_FOLLOW_RIGHT (set on the left child after its
    record was written), leaf line-pointer flags (LP_DEAD is set without WAL)
    and F_HAS_GARBAGE (never set by redo)."""
    bufmask.mask_page_lsn_and_checksum(page)
    bufmask.mask_page_hint_bits(page)
    bufmask.mask_unused_space(page)
    set_nsn(page, bufmask.MASK_MARKER)
    set_flags(page, get_flags(page) | F_FOLLOW_RIGHT)
    if get_flags(page) & F_LEAF:
        bufmask.mask_lp_flags(page)
    set_flags(page, get_flags(page) & ~F_HAS_GARBAGE)


def tuples_deleted_difference(record: DecodedRecord, block: BlockRef, ours: bytes,
                              server: bytes) -> bool:
    """The one place PostgreSQL 18's GiST redo and primary disagree beyond
    gist_mask: gistRedoDeleteRecord sets F_TUPLES_DELETED, gistprunepage (the
    primary's side of Gist/DELETE) does not, so PostgreSQL's own standby stops
    with "inconsistent page found" on it (tests/reconstruct/test_gist_oracle.py
    shows it). We follow redo, as a standby and native PITR do; the bit stays
    until the page is rebuilt, so later records of the same page show it too.
    Nothing in 18 reads the bit. True when the masked pages differ only in it,
    set on ours."""
    if not get_flags(ours) & F_TUPLES_DELETED or get_flags(server) & F_TUPLES_DELETED:
        return False
    theirs = bytearray(server)
    set_flags(theirs, get_flags(theirs) | F_TUPLES_DELETED)
    return bytes(theirs) == ours


register(RM_GIST_ID, gist_redo_block)
register_after_image(RM_GIST_ID, gist_after_image)
bufmask.register(RM_GIST_ID, gist_mask)
bufmask.register_known_difference(RM_GIST_ID, tuples_deleted_difference)
