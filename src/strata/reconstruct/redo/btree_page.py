"""Btree page and index-tuple layout of PostgreSQL 18 (nbtree.h, itup.h) and the
posting-list routines of nbtdedup.c, in our own Python.

What it is: the nbtree-specific layer above `page_ops` (which owns the generic
page header and line pointers): the special-space opaque struct
(BTPageOpaqueData), the metapage (BTMetaPageData), IndexTupleData fields, pivot
and posting-list tuple encodings, and `_bt_form_posting`,
`_bt_update_posting`, `_bt_swap_posting`, which redo needs byte for byte.
Fed by `reconstruct.redo.btree`; feeds nothing else. Owns no state.

Index tuples are `bytes`/`bytearray` values laid out as on the page:
t_tid (ItemPointerData: bi_hi u16, bi_lo u16, ip_posid u16) then t_info u16;
the size is t_info & INDEX_SIZE_MASK and is always MAXALIGNed for btree.
"""

from __future__ import annotations

import struct

from strata.errors import RedoError
from strata.pg.constants import BLCKSZ
from strata.pg.structs import U16, U32, U64
from strata.reconstruct.redo import page_ops
from strata.reconstruct.redo.page_ops import maxalign

# BTPageOpaqueData: btpo_prev u32, btpo_next u32, btpo_level u32, btpo_flags u16,
# btpo_cycleid u16 (16 bytes, at pd_special).
SIZE_OF_BT_PAGE_OPAQUE = 16
_OPAQUE = struct.Struct("<IIIHH")

BTP_LEAF = 1 << 0
BTP_ROOT = 1 << 1
BTP_DELETED = 1 << 2
BTP_META = 1 << 3
BTP_HALF_DEAD = 1 << 4
BTP_SPLIT_END = 1 << 5
BTP_HAS_GARBAGE = 1 << 6
BTP_INCOMPLETE_SPLIT = 1 << 7
BTP_HAS_FULLXID = 1 << 8

P_NONE = 0
P_HIKEY = 1
P_FIRSTKEY = 2

BTREE_METAPAGE = 0
BTREE_MAGIC = 0x053162

# IndexTupleData.t_info bits (itup.h) and nbtree's use of the reserved bit.
INDEX_SIZE_MASK = 0x1FFF
INDEX_ALT_TID_MASK = 0x2000  # INDEX_AM_RESERVED_BIT
INDEX_VAR_MASK = 0x4000
INDEX_NULL_MASK = 0x8000
BT_OFFSET_MASK = 0x0FFF
BT_STATUS_OFFSET_MASK = 0xF000
BT_PIVOT_HEAP_TID_ATTR = 0x1000
BT_IS_POSTING = 0x2000

SIZE_OF_INDEX_TUPLE_DATA = 8
SIZE_OF_ITEM_POINTER = 6
_OFF_T_INFO = 6
_OFF_POSID = 4

# BTMaxItemSize for BLCKSZ 8192: MAXALIGN_DOWN((8192 - MAXALIGN(24 + 3*4) - 16) / 3) - 8
BT_MAX_ITEM_SIZE = ((BLCKSZ - maxalign(page_ops.SIZE_OF_PAGE_HEADER + 3 * 4)
                     - maxalign(SIZE_OF_BT_PAGE_OPAQUE)) // 3) // 8 * 8 - maxalign(6)

# BTMetaPageData at PageGetContents (MAXALIGN(SizeOfPageHeaderData) = 24):
# magic, version, root, level, fastroot, fastlevel, last_cleanup_num_delpages (u32 each),
# 4 pad, float8 last_cleanup_num_heap_tuples, bool allequalimage; sizeof = 48.
_META = struct.Struct("<IIIIIII4xd?")
SIZE_OF_BT_META_PAGE_DATA = 48
META_OFFSET = maxalign(page_ops.SIZE_OF_PAGE_HEADER)


# -- opaque -----------------------------------------------------------------------

def opaque_pos(page: bytes | bytearray) -> int:
    special = page_ops.get_special(page)
    if special + SIZE_OF_BT_PAGE_OPAQUE > BLCKSZ:
        raise RedoError(f"btree page has special space at {special}: too small for its opaque")
    return special


def get_opaque(page: bytes | bytearray) -> tuple[int, int, int, int, int]:
    """(btpo_prev, btpo_next, btpo_level, btpo_flags, btpo_cycleid)."""
    return _OPAQUE.unpack_from(page, opaque_pos(page))  # type: ignore[return-value]


def set_opaque(page: bytearray, prev: int, next_: int, level: int, flags: int,
               cycleid: int) -> None:
    _OPAQUE.pack_into(page, opaque_pos(page), prev, next_, level, flags, cycleid)


def get_flags(page: bytes | bytearray) -> int:
    return U16.unpack_from(page, opaque_pos(page) + 12)[0]  # type: ignore[no-any-return]


def set_flags(page: bytearray, flags: int) -> None:
    U16.pack_into(page, opaque_pos(page) + 12, flags & 0xFFFF)


def set_prev(page: bytearray, blkno: int) -> None:
    U32.pack_into(page, opaque_pos(page), blkno)


def set_next(page: bytearray, blkno: int) -> None:
    U32.pack_into(page, opaque_pos(page) + 4, blkno)


def set_cycleid(page: bytearray, cycleid: int) -> None:
    U16.pack_into(page, opaque_pos(page) + 14, cycleid)


def is_rightmost(page: bytes | bytearray) -> bool:
    return U32.unpack_from(page, opaque_pos(page) + 4)[0] == P_NONE  # type: ignore[no-any-return]


def first_data_key(page: bytes | bytearray) -> int:
    """P_FIRSTDATAKEY: the high key occupies offset 1 unless the page is rightmost."""
    return P_HIKEY if is_rightmost(page) else P_FIRSTKEY


def bt_pageinit(page: bytearray) -> None:
    """_bt_pageinit: PageInit with BTPageOpaqueData special space."""
    page_ops.page_init(page, SIZE_OF_BT_PAGE_OPAQUE)


def bt_page_set_deleted(page: bytearray, safexid: int) -> None:
    """BTPageSetDeleted: flags DELETED|HAS_FULLXID, safexid as page contents."""
    set_flags(page, (get_flags(page) & ~BTP_HALF_DEAD) | BTP_DELETED | BTP_HAS_FULLXID)
    page_ops.set_lower(page, META_OFFSET + 8)
    page_ops.set_upper(page, page_ops.get_special(page))
    U64.pack_into(page, META_OFFSET, safexid)


def write_metapage(page: bytearray, *, version: int, root: int, level: int, fastroot: int,
                   fastlevel: int, last_cleanup_num_delpages: int, allequalimage: bool) -> None:
    """_bt_restore_meta's page: a fresh metapage holding these values."""
    bt_pageinit(page)
    _META.pack_into(page, META_OFFSET, BTREE_MAGIC, version, root, level, fastroot, fastlevel,
                    last_cleanup_num_delpages, -1.0, allequalimage)
    set_flags(page, BTP_META)
    # pd_lower just past the metadata, so a compressed FPI keeps it
    page_ops.set_lower(page, META_OFFSET + SIZE_OF_BT_META_PAGE_DATA)


# -- index tuples -------------------------------------------------------------

def itup_size(tup: bytes | bytearray | memoryview, pos: int = 0) -> int:
    """IndexTupleSize of the tuple at `pos`."""
    return U16.unpack_from(tup, pos + _OFF_T_INFO)[0] & INDEX_SIZE_MASK  # type: ignore[no-any-return]


def _t_info(tup: bytes | bytearray) -> int:
    return U16.unpack_from(tup, _OFF_T_INFO)[0]  # type: ignore[no-any-return]


def _posid(tup: bytes | bytearray) -> int:
    return U16.unpack_from(tup, _OFF_POSID)[0]  # type: ignore[no-any-return]


def tid_block(tup: bytes | bytearray) -> int:
    """ItemPointerGetBlockNumberNoCheck(&t_tid): downlink / posting offset / top parent."""
    hi, lo = struct.unpack_from("<HH", tup, 0)
    return int((hi << 16) | lo)


def set_tid_block(tup: bytearray, blkno: int, pos: int = 0) -> None:
    struct.pack_into("<HH", tup, pos, (blkno >> 16) & 0xFFFF, blkno & 0xFFFF)


def is_posting(tup: bytes | bytearray) -> bool:
    return bool(_t_info(tup) & INDEX_ALT_TID_MASK) and bool(_posid(tup) & BT_IS_POSTING)


def is_pivot(tup: bytes | bytearray) -> bool:
    return bool(_t_info(tup) & INDEX_ALT_TID_MASK) and not (_posid(tup) & BT_IS_POSTING)


def n_posting(tup: bytes | bytearray) -> int:
    return _posid(tup) & BT_OFFSET_MASK


def posting_offset(tup: bytes | bytearray) -> int:
    return tid_block(tup)


def posting_tids(tup: bytes | bytearray) -> list[bytes]:
    """The heap TIDs of a posting list tuple (6 bytes each, in order)."""
    off = posting_offset(tup)
    n = n_posting(tup)
    return [bytes(tup[off + 6 * i:off + 6 * i + 6]) for i in range(n)]


def heap_tids(tup: bytes | bytearray) -> list[bytes]:
    """A non-pivot tuple's heap TIDs: its posting list, or its one t_tid."""
    if is_posting(tup):
        return posting_tids(tup)
    return [bytes(tup[0:6])]


def _with_size(base: bytes | bytearray, keysize: int, newsize: int) -> bytearray:
    # palloc0(newsize) + memcpy(keysize) + t_info size bits replaced
    itup = bytearray(newsize)
    itup[:keysize] = base[:keysize]
    t_info = (U16.unpack_from(itup, _OFF_T_INFO)[0] & ~INDEX_SIZE_MASK) | newsize
    U16.pack_into(itup, _OFF_T_INFO, t_info)
    return itup


def _set_posting_or_plain(itup: bytearray, keysize: int, htids: list[bytes]) -> None:
    n = len(htids)
    if n > 1:
        # BTreeTupleSetPosting
        U16.pack_into(itup, _OFF_T_INFO, _t_info(itup) | INDEX_ALT_TID_MASK)
        U16.pack_into(itup, _OFF_POSID, n | BT_IS_POSTING)
        set_tid_block(itup, keysize)
        itup[keysize:keysize + 6 * n] = b"".join(htids)
    else:
        U16.pack_into(itup, _OFF_T_INFO, _t_info(itup) & ~INDEX_ALT_TID_MASK)
        itup[0:6] = htids[0]


def bt_form_posting(base: bytes | bytearray, htids: list[bytes]) -> bytearray:
    """_bt_form_posting: `base`'s key with `htids` as its posting list (or as
    its plain t_tid when there is only one)."""
    if not htids:
        raise RedoError("_bt_form_posting with no heap TIDs")
    keysize = posting_offset(base) if is_posting(base) else itup_size(base)
    n = len(htids)
    newsize = maxalign(keysize + 6 * n) if n > 1 else keysize
    if newsize > INDEX_SIZE_MASK:
        raise RedoError(f"posting list tuple of {newsize} bytes is too large")
    itup = _with_size(base, keysize, newsize)
    _set_posting_or_plain(itup, keysize, htids)
    return itup


def bt_update_posting(orig: bytes | bytearray, deletetids: tuple[int, ...]) -> bytearray:
    """_bt_update_posting: `orig` without the posting-list entries at positions
    `deletetids` (ascending)."""
    if not is_posting(orig):
        raise RedoError("posting-list update of a tuple that is not a posting list")
    tids = posting_tids(orig)
    drop = set(deletetids)
    keep = [t for i, t in enumerate(tids) if i not in drop]
    if not keep or len(keep) != len(tids) - len(deletetids):
        raise RedoError(f"posting-list update deletes {list(deletetids)} of {len(tids)} TIDs")
    keysize = posting_offset(orig)
    newsize = maxalign(keysize + 6 * len(keep)) if len(keep) > 1 else keysize
    itup = _with_size(orig, keysize, newsize)
    _set_posting_or_plain(itup, keysize, keep)
    return itup


def bt_swap_posting(newitem: bytearray, oposting: bytes | bytearray,
                    postingoff: int) -> bytearray:
    """_bt_swap_posting: returns the post-split posting list (same size as
    `oposting`) and rewrites `newitem`'s t_tid to oposting's old max TID."""
    if not is_posting(oposting):
        raise RedoError("posting list split of a tuple that is not a posting list")
    nhtids = n_posting(oposting)
    if not 0 < postingoff < nhtids:
        raise RedoError(
            f"posting list tuple with {nhtids} items cannot be split at offset {postingoff}")
    nposting = bytearray(oposting[:itup_size(oposting)])
    base = posting_offset(nposting)
    rep = base + 6 * postingoff
    nmove = (nhtids - postingoff - 1) * 6
    nposting[rep + 6:rep + 6 + nmove] = nposting[rep:rep + nmove]
    nposting[rep:rep + 6] = newitem[0:6]
    last = base + 6 * (nhtids - 1)
    newitem[0:6] = oposting[last:last + 6]
    return nposting


def truncated_hikey(topparent: int) -> bytes:
    """The dummy high key of a half-dead leaf: an 8-byte pivot tuple with zero
    key attributes whose t_tid block is the top parent (BTreeTupleSetTopParent)."""
    tup = bytearray(SIZE_OF_INDEX_TUPLE_DATA)
    U16.pack_into(tup, _OFF_T_INFO, SIZE_OF_INDEX_TUPLE_DATA | INDEX_ALT_TID_MASK)
    set_tid_block(tup, topparent)
    U16.pack_into(tup, _OFF_POSID, 0)
    return bytes(tup)

