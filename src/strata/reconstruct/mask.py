"""Page masking as PostgreSQL 18 does it for wal_consistency_checking.

What it is: the bufmask helpers (src/backend/access/common/bufmask.c) and the
rm_mask functions of the resource managers whose redo we own: heap_mask
(heapam_xlog.c; Heap and Heap2 share it), seq_mask (sequence.c) and
generic_mask (generic_xlog.c). A registry maps rmgr id -> mask function so
other AMs plug in (btree registers btree_mask from its own module); a second
one holds the known differences between PostgreSQL's redo and its primary
that no mask hides (GiST's F_TUPLES_DELETED after Gist/DELETE).
Fed by pages (bytearray, masked in place); feeds the oracle in
`reconstruct.check`. MASK_MARKER is 0, as in PostgreSQL.
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Callable

from strata.errors import RedoError
from strata.pg.structs import U16, U32
from strata.reconstruct.redo import (
    RM_GENERIC_ID,
    RM_HEAP2_ID,
    RM_HEAP_ID,
    RM_SEQ_ID,
    page_ops,
)
from strata.wal.record import BlockRef, DecodedRecord

MASK_MARKER = 0

MaskFn = Callable[[bytearray, int], None]
# (record, block, our masked page, server's masked page) -> True when the two
# differ only where PostgreSQL's own redo differs from its primary
KnownDifferenceFn = Callable[[DecodedRecord, BlockRef, bytes, bytes], bool]

_REGISTRY: dict[int, MaskFn] = {}
_KNOWN_DIFFERENCES: dict[int, KnownDifferenceFn] = {}
_OPTIONAL_MODULES = tuple(f"strata.reconstruct.redo.{m}"
                          for m in ("btree", "hash", "gin", "gist", "spgist", "brin"))
_loaded = False


# heap tuple header (see redo.heap)
_T_CID = 8
_T_CTID_POSID = 16
_T_INFOMASK = 20
_HEAP_XMIN_FROZEN = 0x0300
_HEAP_XMAX_COMMITTED = 0x0400
_HEAP_XMAX_INVALID = 0x0800
_HEAP_XACT_MASK = 0xFFF0
_SPEC_TOKEN_OFFSET_NUMBER = 0xFFFE


def register(rmid: int, fn: MaskFn) -> None:
    """Install the rm_mask function of resource manager `rmid`."""
    _REGISTRY[rmid] = fn


def register_known_difference(rmid: int, fn: KnownDifferenceFn) -> None:
    """Install the test for a difference between PostgreSQL's redo and its
    primary that rm_mask does not hide (PostgreSQL's own standby fails its
    consistency check there too). The oracle counts such blocks apart
    (`TypeStats.upstream`), never as matches."""
    _KNOWN_DIFFERENCES[rmid] = fn


def known_difference(rmid: int) -> KnownDifferenceFn | None:
    mask_for(rmid)  # loads the optional rmgr modules
    return _KNOWN_DIFFERENCES.get(rmid)


def mask_for(rmid: int) -> MaskFn | None:
    """The mask function of `rmid`, or None (PostgreSQL then compares raw pages)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for name in _OPTIONAL_MODULES:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as e:
                if e.name != name:
                    raise
    return _REGISTRY.get(rmid)


def masked(rmid: int, page: bytes | bytearray, blkno: int) -> bytearray:
    """A masked copy of `page` as rmgr `rmid` masks it."""
    out = bytearray(page)
    fn = mask_for(rmid)
    if fn is not None:
        fn(out, blkno)
    return out


# -- bufmask.c --------------------------------------------------------------------

def mask_page_lsn_and_checksum(page: bytearray) -> None:
    page[0:8] = bytes(8)
    page[page_ops.OFF_CHECKSUM:page_ops.OFF_CHECKSUM + 2] = b"\x00\x00"


def mask_page_hint_bits(page: bytearray) -> None:
    """pd_prune_xid, PD_PAGE_FULL, PD_HAS_FREE_LINES and PD_ALL_VISIBLE."""
    page_ops.set_prune_xid(page, MASK_MARKER)
    page_ops.set_flags(page, page_ops.get_flags(page) & ~(
        page_ops.PD_PAGE_FULL | page_ops.PD_HAS_FREE_LINES | page_ops.PD_ALL_VISIBLE))


def mask_unused_space(page: bytearray) -> None:
    lower, upper, special = (page_ops.get_lower(page), page_ops.get_upper(page),
                             page_ops.get_special(page))
    if (lower > upper or special < upper or lower < page_ops.SIZE_OF_PAGE_HEADER
            or special > page_ops.BLCKSZ):
        raise RedoError(f"invalid page pd_lower {lower} pd_upper {upper} pd_special {special}")
    page[lower:upper] = bytes(upper - lower)


def mask_lp_flags(page: bytearray) -> None:
    """Every used line pointer's flags become LP_UNUSED (offset/length stay)."""
    for i in range(1, page_ops.page_get_max_offset(page) + 1):
        off, fl, ln = page_ops.item_id(page, i)
        if fl != page_ops.LP_UNUSED:
            page_ops.set_item_id(page, i, off, page_ops.LP_UNUSED, ln)


def mask_page_content(page: bytearray) -> None:
    page[page_ops.SIZE_OF_PAGE_HEADER:] = bytes(page_ops.BLCKSZ - page_ops.SIZE_OF_PAGE_HEADER)
    page[page_ops.OFF_LOWER:page_ops.OFF_LOWER + 2] = b"\x00\x00"
    page[page_ops.OFF_UPPER:page_ops.OFF_UPPER + 2] = b"\x00\x00"


# -- rm_mask functions --------------------------------------------------------------

def heap_mask(page: bytearray, blkno: int) -> None:
    """heap_mask: header fields, hint bits, unused space, then per tuple the
    transaction hint bits, the command id, speculative ctids and padding."""
    _heap_mask(page, blkno, _HEAP_XACT_MASK)


# The t_infomask bits that can differ without WAL: the four commit/abort hint
# bits, and HEAP_COMBOCID (redo always stores a plain cmax).
STRICT_INFOMASK_MASK = 0x0F00 | 0x0020


def heap_mask_strict(page: bytearray, blkno: int) -> None:
    """Our stricter variant of heap_mask (not PostgreSQL's): keeps the
    WAL-logged t_infomask bits (lock bits, IS_MULTI, UPDATED, MOVED) that
    heap_mask's HEAP_XACT_MASK hides, masking only hint bits and COMBOCID."""
    _heap_mask(page, blkno, STRICT_INFOMASK_MASK)


def _heap_mask(page: bytearray, blkno: int, xact_mask: int) -> None:
    mask_page_lsn_and_checksum(page)
    mask_page_hint_bits(page)
    mask_unused_space(page)
    for off in range(1, page_ops.page_get_max_offset(page) + 1):
        lp_off, flags, length = page_ops.item_id(page, off)
        if flags == page_ops.LP_NORMAL:
            im = U16.unpack_from(page, lp_off + _T_INFOMASK)[0]
            if (im & _HEAP_XMIN_FROZEN) != _HEAP_XMIN_FROZEN:
                im &= ~xact_mask
            else:
                im &= ~(_HEAP_XMAX_INVALID | _HEAP_XMAX_COMMITTED)
            U16.pack_into(page, lp_off + _T_INFOMASK, im)
            U32.pack_into(page, lp_off + _T_CID, MASK_MARKER)
            if U16.unpack_from(page, lp_off + _T_CTID_POSID)[0] == _SPEC_TOKEN_OFFSET_NUMBER:
                struct.pack_into("<HHH", page, lp_off + 12, (blkno >> 16) & 0xFFFF,
                                 blkno & 0xFFFF, off)
        if length != 0:
            padlen = page_ops.maxalign(length) - length
            if padlen > 0:
                page[lp_off + length:lp_off + length + padlen] = bytes(padlen)


def seq_mask(page: bytearray, blkno: int) -> None:
    mask_page_lsn_and_checksum(page)
    mask_unused_space(page)


def generic_mask(page: bytearray, blkno: int) -> None:
    mask_page_lsn_and_checksum(page)
    mask_unused_space(page)


register(RM_HEAP_ID, heap_mask)
register(RM_HEAP2_ID, heap_mask)
register(RM_SEQ_ID, seq_mask)
register(RM_GENERIC_ID, generic_mask)
