"""Hash index (RM_HASH_ID = 12) redo and mask: PostgreSQL 18's hash_xlog.c, per block.

What it is: `hash_redo_block(record, block, page)` applies one hash WAL record
to one of its block references, editing `page` in place, with the semantics
of hash_redo in src/backend/access/hash/hash_xlog.c (REL_18); `hash_mask(page)`
is its hash_mask (what wal_consistency_checking ignores). Every routine of
hash_xlog.c changes each page from that page's previous state plus the record
alone (the metapage counters included), so per-block redo is exact.

Fed by: the redo dispatcher (`strata.reconstruct.redo`), which has handled
apply-images, BLK_DONE and WILL_INIT, and stamps pd_lsn afterwards unless a
routine returns False (PostgreSQL read the page but did not change it).
Feeds: GetPage@LSN and the wal_consistency_checking oracle. Owns nothing
persistent; registers its redo, its after-image hook and its mask at import.

Block ids per record type (hash_xlog.h) are listed in `strata.wal.rmgr.hash`.
Pages registered only for a cleanup lock (REGBUF_NO_CHANGE: the primary
bucket page of DELETE / MOVE_PAGE_CONTENTS / SQUEEZE_PAGE, and SQUEEZE's
write page when it takes nothing) are read and left untouched, LSN included.
SPLIT_ALLOCATE_PAGE's old bucket and both SPLIT_COMPLETE buckets get their
flags even when restored from an image (`hash_after_image`), as in PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable

from strata.errors import RedoError
from strata.pg.structs import U16
from strata.reconstruct import mask as bufmask
from strata.reconstruct.redo import (
    RM_HASH_ID,
    block_error,
    index_tuples,
    page_ops,
    register,
    register_after_image,
    run_handler,
)
from strata.reconstruct.redo import hash_page as hp
from strata.reconstruct.redo.page_ops import maxalign
from strata.wal.record import BlockRef, DecodedRecord
from strata.wal.rmgr import hash as x

RedoResult = bool | None
_SIZE_OF_INDEX_TUPLE_DATA = 8
_INDEX_SIZE_MASK = 0x1FFF


def _fail(record: DecodedRecord, block: BlockRef, what: str) -> RedoError:
    return block_error("Hash", x.hash_identify, record, block, what)


def _unexpected(record: DecodedRecord, block: BlockRef) -> RedoError:
    return _fail(record, block, "unexpected block reference")


def _add(record: DecodedRecord, block: BlockRef, page: bytearray,
         item: bytes | memoryview, offnum: int) -> None:
    if page_ops.page_add_item(page, item, offnum) != offnum:
        raise _fail(record, block, f"failed to add item of {len(item)} bytes at offset {offnum}")


def _add_moved_tuples(record: DecodedRecord, block: BlockRef, page: bytearray,
                      ntups: int) -> None:
    """Block data of MOVE_PAGE_CONTENTS / SQUEEZE_PAGE's write page: `ntups`
    target offsets, then the tuples (each MAXALIGNed), added in order."""
    data = block.data
    towrite = x.parse_offsets(data, ntups, 0, "moved tuple offsets")
    pos = 2 * ntups
    view = memoryview(data)
    n = 0
    while pos < len(data):
        if pos + _SIZE_OF_INDEX_TUPLE_DATA > len(data) or n >= ntups:
            raise _fail(record, block, f"malformed moved tuples at byte {pos}")
        t_info = U16.unpack_from(data, pos + 6)[0]
        itemsz = maxalign(t_info & _INDEX_SIZE_MASK)
        _add(record, block, page, view[pos:pos + itemsz], towrite[n])
        pos += itemsz
        n += 1
    if n != ntups:
        raise _fail(record, block, f"{n} moved tuples, record says {ntups}")


def _multi_delete(page: bytearray, data: bytes) -> None:
    """PageIndexMultiDelete of the OffsetNumber array in `data`."""
    n = len(data) // 2
    if n > 0:
        index_tuples.page_index_multi_delete(page, x.parse_offsets(data, n))


def _clear_flag(page: bytearray, bits: int) -> None:
    hp.set_flag(page, hp.get_flag(page) & ~bits)


# -- per record type ----------------------------------------------------------------

def _init_meta_page(record: DecodedRecord, block: BlockRef, page: bytearray) -> RedoResult:
    if block.block_id != 0:
        raise _unexpected(record, block)
    xlrec = x.XlHashInitMetaPage.parse(record.main_data)
    hp.init_metapage(page, xlrec.num_tuples, xlrec.procid, xlrec.ffactor)
    return None


def _init_bitmap_page(record: DecodedRecord, block: BlockRef, page: bytearray) -> RedoResult:
    xlrec = x.XlHashInitBitmapPage.parse(record.main_data)
    if block.block_id == 0:
        hp.init_bitmap_page(page, xlrec.bmsize)
    elif block.block_id == 1:
        nmaps = hp.get_u32(page, hp.META_NMAPS)
        num_buckets = hp.get_u32(page, hp.META_MAXBUCKET) + 1
        hp.set_u32(page, hp.mapp_pos(nmaps), num_buckets + 1)
        hp.set_u32(page, hp.META_NMAPS, nmaps + 1)
    else:
        raise _unexpected(record, block)
    return None


def _insert(record: DecodedRecord, block: BlockRef, page: bytearray) -> RedoResult:
    if block.block_id == 0:
        xlrec = x.XlHashInsert.parse(record.main_data)
        _add(record, block, page, block.data, xlrec.offnum)
    elif block.block_id == 1:
        hp.set_ntuples(page, hp.get_ntuples(page) + 1)
    else:
        raise _unexpected(record, block)
    return None


def _add_ovfl_page(record: DecodedRecord, block: BlockRef, page: bytearray) -> RedoResult:
    xlrec = x.XlHashAddOvflPage.parse(record.main_data)
    bid = block.block_id
    if bid == 0:
        left = record.block(1)
        if left is None:
            raise _fail(record, block, "no block 1 (the page before the new overflow page)")
        bucket = x.parse_u32(block.data, "overflow page bucket")
        hp.init_bucket_page(page, hp.INVALID_BLOCK_NUMBER, bucket, hp.LH_OVERFLOW_PAGE)
        hp.set_prevblkno(page, left.blkno)
    elif bid == 1:
        ovfl = record.block(0)
        if ovfl is None:
            raise _fail(record, block, "no block 0 (the new overflow page)")
        hp.set_nextblkno(page, ovfl.blkno)
    elif bid == 2:
        hp.bitmap_bit(page, x.parse_u32(block.data, "bitmap bit"), True)
    elif bid == 3:
        hp.init_bitmap_page(page, xlrec.bmsize)
    elif bid == 4:
        hp.set_u32(page, hp.META_FIRSTFREE, x.parse_u32(block.data, "firstfree"))
        if not xlrec.bmpage_found:
            ovflpoint = hp.get_u32(page, hp.META_OVFLPOINT)
            spares = hp.spares_pos(ovflpoint)
            hp.set_u32(page, spares, hp.get_u32(page, spares) + 1)
            newmap = record.block(3)
            if newmap is not None:
                nmaps = hp.get_u32(page, hp.META_NMAPS)
                hp.set_u32(page, hp.mapp_pos(nmaps), newmap.blkno)
                hp.set_u32(page, hp.META_NMAPS, nmaps + 1)
                hp.set_u32(page, spares, hp.get_u32(page, spares) + 1)
    else:
        raise _unexpected(record, block)
    return None


def _split_allocate_page(record: DecodedRecord, block: BlockRef,
                         page: bytearray) -> RedoResult:
    xlrec = x.XlHashSplitAllocatePage.parse(record.main_data)
    bid = block.block_id
    if bid == 0:
        hp.set_flag(page, xlrec.old_bucket_flag)
        hp.set_prevblkno(page, xlrec.new_bucket)
    elif bid == 1:
        hp.init_bucket_page(page, xlrec.new_bucket, xlrec.new_bucket, xlrec.new_bucket_flag)
    elif bid == 2:
        hp.set_u32(page, hp.META_MAXBUCKET, xlrec.new_bucket)
        data, pos = block.data, 0
        if xlrec.flags & x.XLH_SPLIT_META_UPDATE_MASKS:
            hp.set_u32(page, hp.META_LOWMASK, x.parse_u32(data, "lowmask", pos))
            hp.set_u32(page, hp.META_HIGHMASK, x.parse_u32(data, "highmask", pos + 4))
            pos += 8
        if xlrec.flags & x.XLH_SPLIT_META_UPDATE_SPLITPOINT:
            ovflpoint = x.parse_u32(data, "ovflpoint", pos)
            hp.set_u32(page, hp.spares_pos(ovflpoint), x.parse_u32(data, "ovflpages", pos + 4))
            hp.set_u32(page, hp.META_OVFLPOINT, ovflpoint)
    else:
        raise _unexpected(record, block)
    return None


def _split_page(record: DecodedRecord, block: BlockRef, page: bytearray) -> RedoResult:
    # hash_xlog_split_page: "Hash split record did not contain a full-page image"
    raise _fail(record, block, "SPLIT_PAGE without an image to restore")


def _split_complete(record: DecodedRecord, block: BlockRef, page: bytearray) -> RedoResult:
    xlrec = x.XlHashSplitComplete.parse(record.main_data)
    if block.block_id == 0:
        hp.set_flag(page, xlrec.old_bucket_flag)
    elif block.block_id == 1:
        hp.set_flag(page, xlrec.new_bucket_flag)
    else:
        raise _unexpected(record, block)
    return None


def _move_page_contents(record: DecodedRecord, block: BlockRef,
                        page: bytearray) -> RedoResult:
    xlrec = x.XlHashMovePageContents.parse(record.main_data)
    bid = block.block_id
    if bid == 0:
        return False  # the primary bucket page, locked for cleanup, not changed
    if bid == 1:
        if xlrec.ntups > 0:
            _add_moved_tuples(record, block, page, xlrec.ntups)
    elif bid == 2:
        _multi_delete(page, block.data)
    else:
        raise _unexpected(record, block)
    return None


def _squeeze_page(record: DecodedRecord, block: BlockRef, page: bytearray) -> RedoResult:
    xlrec = x.XlHashSqueezePage.parse(record.main_data)
    bid = block.block_id
    if bid == 0:
        return False  # the primary bucket page, locked for cleanup, not changed
    if bid == 1:
        if not (xlrec.is_prim_bucket_same_wrt or xlrec.ntups > 0
                or xlrec.is_prev_bucket_same_wrt):
            raise _unexpected(record, block)
        if xlrec.ntups > 0:
            _add_moved_tuples(record, block, page, xlrec.ntups)
        if xlrec.is_prev_bucket_same_wrt:
            hp.set_nextblkno(page, xlrec.nextblkno)
        # PostgreSQL stamps the write page only when it changed it
        return xlrec.ntups > 0 or xlrec.is_prev_bucket_same_wrt
    if bid == 2:
        hp.init_unused_page(page)
    elif bid == 3:
        if xlrec.is_prev_bucket_same_wrt:
            raise _unexpected(record, block)
        hp.set_nextblkno(page, xlrec.nextblkno)
    elif bid == 4:
        hp.set_prevblkno(page, xlrec.prevblkno)
    elif bid == 5:
        hp.bitmap_bit(page, x.parse_u32(block.data, "bitmap bit"), False)
    elif bid == 6:
        hp.set_u32(page, hp.META_FIRSTFREE, x.parse_u32(block.data, "firstfree"))
    else:
        raise _unexpected(record, block)
    return None


def _delete(record: DecodedRecord, block: BlockRef, page: bytearray) -> RedoResult:
    xlrec = x.XlHashDelete.parse(record.main_data)
    if block.block_id == 0:
        return False  # the primary bucket page, locked for cleanup, not changed
    if block.block_id != 1:
        raise _unexpected(record, block)
    _multi_delete(page, block.data)
    if xlrec.clear_dead_marking:
        _clear_flag(page, hp.LH_PAGE_HAS_DEAD_TUPLES)
    return None


def _split_cleanup(record: DecodedRecord, block: BlockRef, page: bytearray) -> RedoResult:
    if block.block_id != 0:
        raise _unexpected(record, block)
    _clear_flag(page, hp.LH_BUCKET_NEEDS_SPLIT_CLEANUP)
    return None


def _update_meta_page(record: DecodedRecord, block: BlockRef, page: bytearray) -> RedoResult:
    if block.block_id != 0:
        raise _unexpected(record, block)
    hp.set_ntuples(page, x.XlHashUpdateMetaPage.parse(record.main_data).ntuples)
    return None


def _vacuum_one_page(record: DecodedRecord, block: BlockRef, page: bytearray) -> RedoResult:
    xlrec = x.XlHashVacuumOnePage.parse(record.main_data)
    if block.block_id == 0:
        index_tuples.page_index_multi_delete(page, xlrec.offsets)
        _clear_flag(page, hp.LH_PAGE_HAS_DEAD_TUPLES)
    elif block.block_id == 1:
        hp.set_ntuples(page, hp.get_ntuples(page) - xlrec.ntuples)
    else:
        raise _unexpected(record, block)
    return None


_HANDLERS: dict[int, Callable[[DecodedRecord, BlockRef, bytearray], RedoResult]] = {
    x.XLOG_HASH_INIT_META_PAGE: _init_meta_page,
    x.XLOG_HASH_INIT_BITMAP_PAGE: _init_bitmap_page,
    x.XLOG_HASH_INSERT: _insert,
    x.XLOG_HASH_ADD_OVFL_PAGE: _add_ovfl_page,
    x.XLOG_HASH_SPLIT_ALLOCATE_PAGE: _split_allocate_page,
    x.XLOG_HASH_SPLIT_PAGE: _split_page,
    x.XLOG_HASH_SPLIT_COMPLETE: _split_complete,
    x.XLOG_HASH_MOVE_PAGE_CONTENTS: _move_page_contents,
    x.XLOG_HASH_SQUEEZE_PAGE: _squeeze_page,
    x.XLOG_HASH_DELETE: _delete,
    x.XLOG_HASH_SPLIT_CLEANUP: _split_cleanup,
    x.XLOG_HASH_UPDATE_META_PAGE: _update_meta_page,
    x.XLOG_HASH_VACUUM_ONE_PAGE: _vacuum_one_page,
}

HASH_RECORD_TYPES: frozenset[int] = frozenset(_HANDLERS)


def hash_redo_block(record: DecodedRecord, block: BlockRef, page: bytearray) -> RedoResult:
    """Apply hash `record` to `block`'s page, in place (hash_xlog.c semantics).

    Requires: `page` is the block's state before the record (all zeros for a
    WILL_INIT block). Returns False when PostgreSQL leaves the page (and its
    LSN) untouched. Raises: UnsupportedRecordError for an unknown record
    type; RedoError when the page cannot take the change (PostgreSQL would
    PANIC/ERROR) or the record has no such block.
    """
    return run_handler(_HANDLERS, record.info, record, block, page, _fail)


def hash_after_image(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    """What hash_xlog.c does to a page it restored from an image (BLK_RESTORED):
    SPLIT_ALLOCATE_PAGE's old bucket and SPLIT_COMPLETE's buckets get the
    record's flags (already in the image, since the primary set them first)."""
    t = record.info
    if t == x.XLOG_HASH_SPLIT_ALLOCATE_PAGE and block.block_id == 0:
        _split_allocate_page(record, block, page)
    elif t == x.XLOG_HASH_SPLIT_COMPLETE and block.block_id in (0, 1):
        _split_complete(record, block, page)


# -- mask -----------------------------------------------------------------------

def hash_mask(page: bytearray, blkno: int = 0) -> None:
    """hash_mask (hash_xlog.c), in place: LSN and checksum, header hint bits,
    unused space; all content of an unused page; line-pointer flags of bucket
    and overflow pages (LP_DEAD is set without WAL); LH_PAGE_HAS_DEAD_TUPLES."""
    bufmask.mask_page_lsn_and_checksum(page)
    bufmask.mask_page_hint_bits(page)
    bufmask.mask_unused_space(page)
    pagetype = hp.get_flag(page) & hp.LH_PAGE_TYPE
    if pagetype == hp.LH_UNUSED_PAGE:
        bufmask.mask_page_content(page)  # the opaque too (pd_special stays)
    elif pagetype in (hp.LH_BUCKET_PAGE, hp.LH_OVERFLOW_PAGE):
        bufmask.mask_lp_flags(page)
    hp.set_flag(page, hp.get_flag(page) & ~hp.LH_PAGE_HAS_DEAD_TUPLES)


register(RM_HASH_ID, hash_redo_block)
register_after_image(RM_HASH_ID, hash_after_image)
bufmask.register(RM_HASH_ID, hash_mask)
