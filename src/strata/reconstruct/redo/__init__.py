"""The redo dispatcher: apply one decoded WAL record to one block's page.

What it is: the per-block equivalent of PostgreSQL's recovery loop
(`rm_redo` + `XLogReadBufferForRedoExtended`). Fed by decoded records
(`strata.wal.record.DecodedRecord`) and the block's previous page; feeds the
page store (GetPage@LSN) and the wal_consistency_checking oracle. Owns the
registry of per-rmgr redo functions; rmgr modules (xlog, heap, heap2,
sequence, generic, btree, hash, gist, brin) call `register` at import.

Rules, as PostgreSQL applies them to a block reference:

1. An image with BKPIMAGE_APPLY wins: the page is the restored image, stamped
   with the record's end LSN unless it is an all-zero (new) page.
2. Otherwise, if the page's LSN is already at or past the record's end LSN,
   the record was applied before: the page comes back unchanged (BLK_DONE).
3. WILL_INIT: redo starts from an all-zero page (the rmgr function
   initialises it, as PostgreSQL's redo does after XLogInitBufferForRedo).
4. A missing page (None): a visibility-map page reads as zeros (VM redo uses
   RBM_ZERO_ON_ERROR and initialises new pages); any other fork is a
   RedoError.
5. After the rmgr function ran, pd_lsn = record.end_lsn, unless the function
   returned False (PostgreSQL changed the page without stamping it, e.g. a
   visibility-map bit that was already set).

A registered function has the signature `fn(record, block, page) -> bool | None`
and edits `page` (a bytearray of BLCKSZ) in place for that one block.
An rmgr whose redo also changes a page it restored from an apply-image
(PostgreSQL's BLK_RESTORED branch: GiST sets the NSN, which no image can
hold) registers `register_after_image(rmid, fn)`; `fn` runs on the restored
page before it is stamped.
Unknown rmgrs and record types raise UnsupportedRecordError.
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Callable, Mapping

from strata.errors import RedoError, UnsupportedRecordError
from strata.pg.constants import BLCKSZ
from strata.reconstruct.redo import page_ops
from strata.wal import rmgr as wal_rmgr
from strata.wal.record import BlockRef, DecodedRecord
from strata.wal.rmgr import (  # noqa: F401  (re-exported for the rmgr redo modules)
    RM_BRIN_ID,
    RM_BTREE_ID,
    RM_CLOG_ID,
    RM_COMMIT_TS_ID,
    RM_DBASE_ID,
    RM_GENERIC_ID,
    RM_GIN_ID,
    RM_GIST_ID,
    RM_HASH_ID,
    RM_HEAP2_ID,
    RM_HEAP_ID,
    RM_LOGICALMSG_ID,
    RM_MULTIXACT_ID,
    RM_RELMAP_ID,
    RM_REPLORIGIN_ID,
    RM_SEQ_ID,
    RM_SMGR_ID,
    RM_SPGIST_ID,
    RM_STANDBY_ID,
    RM_TBLSPC_ID,
    RM_XACT_ID,
    RM_XLOG_ID,
    rmgr_name,
)

RedoFn = Callable[[DecodedRecord, BlockRef, bytearray], "bool | None"]

VISIBILITYMAP_FORKNUM = 2

_REGISTRY: dict[int, RedoFn] = {}
_AFTER_IMAGE: dict[int, Callable[[DecodedRecord, BlockRef, bytearray], None]] = {}
_loaded = False
# Modules that register redo functions; optional ones may not exist yet.
_BUILTIN_MODULES = ("xlog", "heap", "heap2", "sequence", "generic", "btree", "hash", "gin",
                    "gist", "spgist", "brin")


def register(rmid: int, fn: RedoFn) -> None:
    """Install the redo function of resource manager `rmid` (last one wins)."""
    _REGISTRY[rmid] = fn


def register_after_image(rmid: int,
                         fn: Callable[[DecodedRecord, BlockRef, bytearray], None]) -> None:
    """Install what rmgr `rmid` does to a block it restored from an apply-image."""
    _AFTER_IMAGE[rmid] = fn


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in _BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{name}")


def registered_rmgrs() -> frozenset[int]:
    """The rmgr ids that have a redo function."""
    _ensure_loaded()
    return frozenset(_REGISTRY)


def record_type_name(record: DecodedRecord) -> str:
    """pg_waldump's record type name."""
    return wal_rmgr.record_type_name(record.xl_rmid, record.xl_info)


def unsupported(record: DecodedRecord) -> UnsupportedRecordError:
    return UnsupportedRecordError(rmgr_name(record.xl_rmid), record_type_name(record), record.lsn)


def block_error(rmgr: str, identify: Callable[[int], str | None], record: DecodedRecord,
                block: BlockRef, what: str) -> RedoError:
    """The RedoError of `record` on `block`, named as pg_waldump names the record
    (`identify(xl_info)`, else its info bits)."""
    name = identify(record.xl_info) or f"0x{record.info:02X}"
    return RedoError(f"{rmgr}/{name} at {record.lsn}, block {block.block_id} "
                     f"({block.rlocator} blk {block.blkno}): {what}")


def run_handler(handlers: Mapping[int, RedoFn], op: int, record: DecodedRecord,
                block: BlockRef, page: bytearray,
                fail: Callable[[DecodedRecord, BlockRef, str], RedoError]) -> bool | None:
    """An rmgr's redo of one block: the handler of record type `op` on `page`.

    Raises: UnsupportedRecordError for a type without a handler; `fail(...)` for
    page or record data too malformed to apply (what PostgreSQL would PANIC on)."""
    fn = handlers.get(op)
    if fn is None:
        raise unsupported(record)
    try:
        return fn(record, block, page)
    except (IndexError, ValueError, struct.error) as e:  # malformed pages or record data
        raise fail(record, block, f"malformed page or record data: {e}") from e


def restore_image(block: BlockRef, lsn: int | None = None) -> bytearray:
    """The block's full-page image as an 8 KB page (hole filled, decompressed).

    Raises: WalDecodeError naming `lsn` and the block id for a corrupt image.
    """
    from strata.wal.image import restore_page

    assert block.image is not None
    page = bytearray(restore_page(block.image, lsn=lsn, block_id=block.block_id))
    if len(page) != BLCKSZ:
        raise RedoError(f"image of block {block.blkno} restored to {len(page)} bytes")
    return page


def redo_block(record: DecodedRecord, block_id: int, page: bytes | bytearray | None) -> bytes:
    """The page of block `block_id` after applying `record` to `page`.

    Requires: `page` is the block's state before the record (None: the block
    does not exist yet).
    Returns: the new page (a fresh bytes object; `page` is not modified).
    Raises: UnsupportedRecordError (rmgr or record type without redo),
    RedoError (block missing from the record, page missing, page state the
    record cannot apply to).
    """
    block = record.block(block_id)
    if block is None:
        raise RedoError(f"record at {record.lsn} has no block reference {block_id}")
    return bytes(_redo_one(record, block, page))


def redo_block_inplace(record: DecodedRecord, block_id: int,
                       page: bytearray | None) -> bytearray:
    """Like `redo_block`, but may edit and return `page` itself (no copies):
    for replaying a chain of records onto one page. Callers must use the
    returned object (an apply-image or WILL_INIT replaces the page).
    Raises: as `redo_block`; after an error `page` may be partly modified
    (callers that need the old state use `redo_block`).
    """
    block = record.block(block_id)
    if block is None:
        raise RedoError(f"record at {record.lsn} has no block reference {block_id}")
    return _redo_one(record, block, page, inplace=True)


def _redo_one(record: DecodedRecord, block: BlockRef,
              page: bytes | bytearray | None, *, inplace: bool = False) -> bytearray:
    if block.apply_image:
        img = restore_image(block, record.lsn)
        _ensure_loaded()
        after = _AFTER_IMAGE.get(record.xl_rmid)
        if after is not None:
            after(record, block, img)
        if not page_ops.page_is_new(img):
            page_ops.page_set_lsn(img, record.end_lsn)
        return img
    _ensure_loaded()
    fn = _REGISTRY.get(record.xl_rmid)
    if fn is None:
        raise unsupported(record)
    if block.will_init:
        work = bytearray(BLCKSZ)
    elif page is None:
        if block.fork != VISIBILITYMAP_FORKNUM:
            raise RedoError(
                f"redo of {rmgr_name(record.xl_rmid)}/{record_type_name(record)} at {record.lsn}: "
                f"block {block.rlocator} fork {block.fork} blk {block.blkno} does not exist")
        work = bytearray(BLCKSZ)
    else:
        if len(page) != BLCKSZ:
            raise RedoError(f"page of block {block.blkno} has {len(page)} bytes, not {BLCKSZ}")
        if not page_ops.page_is_new(page) and page_ops.page_get_lsn(page) >= record.end_lsn:
            # BLK_DONE: already applied
            return page if inplace and isinstance(page, bytearray) else bytearray(page)
        work = page if inplace and isinstance(page, bytearray) else bytearray(page)
    if fn(record, block, work) is not False:
        page_ops.page_set_lsn(work, record.end_lsn)
    return work


def redo_blocks(record: DecodedRecord,
                pages: Mapping[int, bytes | bytearray | None]) -> dict[int, bytes]:
    """Apply `record` to every block reference it has.

    `pages` maps block_id -> previous page (None or absent: block missing).
    Returns block_id -> new page for every block reference of the record.
    """
    out: dict[int, bytes] = {}
    for block in record.blocks:
        out[block.block_id] = bytes(_redo_one(record, block, pages.get(block.block_id)))
    return out
