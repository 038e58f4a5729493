"""PostgreSQL 18 page layout operations on 8 KB pages (our own Python, from the
semantics of src/backend/storage/page/bufpage.c, bufpage.h, itemid.h and
checksum_impl.h).

What it is: the page-level toolbox every redo module uses. Pages are
`bytearray`s of BLCKSZ bytes that are modified **in place**; nothing here
allocates a new page unless its name says so. Fed by the redo modules
(heap, heap2, btree, hash, gist, brin, sequence, generic, xlog); feeds nothing else. Owns the
byte layout of the page header and of line pointers.

Byte-exactness: placement of new items, compaction order, and what is (and is
not) cleared follow bufpage.c exactly, because the wal_consistency_checking
oracle compares our pages with PostgreSQL's byte for byte after masking.

API (page = bytearray of BLCKSZ; offsets are 1-based OffsetNumbers):

- constants: BLCKSZ, SIZE_OF_PAGE_HEADER, ITEM_ID_SIZE, LP_UNUSED/NORMAL/REDIRECT/DEAD,
  PD_HAS_FREE_LINES, PD_PAGE_FULL, PD_ALL_VISIBLE, PD_VALID_FLAG_BITS, INVALID_OFFSET_NUMBER,
  MAX_HEAP_TUPLES_PER_PAGE, MAX_INDEX_TUPLES_PER_PAGE, maxalign(n)
- header: PageHeader.parse(page) (frozen value), page_get_lsn / page_set_lsn, get_checksum, get/set of
  pd_flags, pd_lower, pd_upper, pd_special, pd_prune_xid;
  page_is_new, page_is_empty, page_get_max_offset,
  page_has_free_line_pointers / page_set_has_free_line_pointers /
  page_clear_has_free_line_pointers, page_set_all_visible / page_clear_all_visible /
  page_is_all_visible
- page_init(page, special_size), new_page(special_size) -> bytearray,
  page_get_temp_page_copy_special(page) -> bytearray
- line pointers: item_id(page, off) -> (lp_off, lp_flags, lp_len), set_item_id,
  item_id_set_unused / item_id_set_dead / item_id_set_redirect / item_id_set_normal /
  item_id_mark_dead, item_offset, item_len, item_flags
- items: get_item(page, off) -> bytes, item_slice(page, off) -> (start, end)
- page_add_item(page, item, offnum, *, overwrite=False, is_heap=False) -> offnum | 0
  (PageAddItemExtended: offnum 0 = first free slot / append)
- page_repair_fragmentation(page), page_truncate_line_pointer_array(page)
- page_get_free_space / page_get_exact_free_space / page_get_heap_free_space /
  page_get_free_space_for_multiple_tuples
- index tuples (PageIndexTupleDelete and friends): `index_tuples`
- pg_checksum_page(page, blkno) -> int

Raises: RedoError for corrupted page pointers or impossible operations where
PostgreSQL would ERROR/PANIC.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from strata.errors import RedoError
from strata.pg import checksum
from strata.pg.checksum import checksum_page
from strata.pg.constants import BLCKSZ
from strata.pg.structs import U16, U32

log = logging.getLogger(__name__)

MAXIMUM_ALIGNOF = 8
SIZE_OF_PAGE_HEADER = 24
ITEM_ID_SIZE = 4
PG_PAGE_LAYOUT_VERSION = 4

LP_UNUSED = 0
LP_NORMAL = 1
LP_REDIRECT = 2
LP_DEAD = 3

PD_HAS_FREE_LINES = 0x0001
PD_PAGE_FULL = 0x0002
PD_ALL_VISIBLE = 0x0004
PD_VALID_FLAG_BITS = 0x0007

INVALID_OFFSET_NUMBER = 0
FIRST_OFFSET_NUMBER = 1

# MaxHeapTuplesPerPage = (BLCKSZ - SizeOfPageHeaderData) / (MAXALIGN(SizeofHeapTupleHeader) + sizeof(ItemIdData))
MAX_HEAP_TUPLES_PER_PAGE = (BLCKSZ - SIZE_OF_PAGE_HEADER) // (24 + ITEM_ID_SIZE)
# MaxIndexTuplesPerPage = (BLCKSZ - SizeOfPageHeaderData) / (MAXALIGN(sizeof(IndexTupleData) + 1) + sizeof(ItemIdData))
MAX_INDEX_TUPLES_PER_PAGE = (BLCKSZ - SIZE_OF_PAGE_HEADER) // (16 + ITEM_ID_SIZE)

# pd_lsn is PageXLogRecPtr {uint32 xlogid; uint32 xrecoff}: high word first.
_LSN = struct.Struct("<II")
_HEADER = struct.Struct("<IIHHHHHHI")

OFF_LSN = 0
OFF_CHECKSUM = 8
OFF_FLAGS = 10
OFF_LOWER = 12
OFF_UPPER = 14
OFF_SPECIAL = 16
OFF_PAGESIZE_VERSION = 18
OFF_PRUNE_XID = 20


def maxalign(n: int) -> int:
    return (n + (MAXIMUM_ALIGNOF - 1)) & ~(MAXIMUM_ALIGNOF - 1)


@dataclass(frozen=True, slots=True)
class PageHeader:
    """PageHeaderData, decoded (a value; edits go through the setters below)."""

    lsn: int
    checksum: int
    flags: int
    lower: int
    upper: int
    special: int
    pagesize_version: int
    prune_xid: int

    @classmethod
    def parse(cls, page: bytes | bytearray | memoryview) -> PageHeader:
        hi, lo, cks, flags, lower, upper, special, psv, prune = _HEADER.unpack_from(page, 0)
        return cls((hi << 32) | lo, cks, flags, lower, upper, special, psv, prune)

    @property
    def page_size(self) -> int:
        return self.pagesize_version & 0xFF00

    @property
    def layout_version(self) -> int:
        return self.pagesize_version & 0x00FF


# -- header accessors -----------------------------------------------------------

def page_get_lsn(page: bytes | bytearray | memoryview) -> int:
    hi, lo = _LSN.unpack_from(page, OFF_LSN)
    return (hi << 32) | lo


def page_set_lsn(page: bytearray, lsn: int) -> None:
    _LSN.pack_into(page, OFF_LSN, (lsn >> 32) & 0xFFFFFFFF, lsn & 0xFFFFFFFF)


def _get16(page: bytes | bytearray | memoryview, off: int) -> int:
    return U16.unpack_from(page, off)[0]  # type: ignore[no-any-return]


def get_checksum(page: bytes | bytearray | memoryview) -> int:
    return _get16(page, OFF_CHECKSUM)


def get_flags(page: bytes | bytearray | memoryview) -> int:
    return _get16(page, OFF_FLAGS)


def set_flags(page: bytearray, value: int) -> None:
    U16.pack_into(page, OFF_FLAGS, value)


def get_lower(page: bytes | bytearray | memoryview) -> int:
    return _get16(page, OFF_LOWER)


def set_lower(page: bytearray, value: int) -> None:
    U16.pack_into(page, OFF_LOWER, value)


def get_upper(page: bytes | bytearray | memoryview) -> int:
    return _get16(page, OFF_UPPER)


def set_upper(page: bytearray, value: int) -> None:
    U16.pack_into(page, OFF_UPPER, value)


def get_special(page: bytes | bytearray | memoryview) -> int:
    return _get16(page, OFF_SPECIAL)


def set_special(page: bytearray, value: int) -> None:
    U16.pack_into(page, OFF_SPECIAL, value)


def get_prune_xid(page: bytes | bytearray | memoryview) -> int:
    return U32.unpack_from(page, OFF_PRUNE_XID)[0]  # type: ignore[no-any-return]


def set_prune_xid(page: bytearray, xid: int) -> None:
    U32.pack_into(page, OFF_PRUNE_XID, xid)


def page_is_new(page: bytes | bytearray | memoryview) -> bool:
    """PageIsNew: pd_upper == 0 (never initialised)."""
    return get_upper(page) == 0


def page_get_max_offset(page: bytes | bytearray | memoryview) -> int:
    """PageGetMaxOffsetNumber."""
    lower = get_lower(page)
    if lower <= SIZE_OF_PAGE_HEADER:
        return 0
    return (lower - SIZE_OF_PAGE_HEADER) // ITEM_ID_SIZE


def page_is_empty(page: bytes | bytearray | memoryview) -> bool:
    return get_lower(page) <= SIZE_OF_PAGE_HEADER


def page_has_free_line_pointers(page: bytes | bytearray | memoryview) -> bool:
    return bool(get_flags(page) & PD_HAS_FREE_LINES)


def page_set_has_free_line_pointers(page: bytearray) -> None:
    set_flags(page, get_flags(page) | PD_HAS_FREE_LINES)


def page_clear_has_free_line_pointers(page: bytearray) -> None:
    set_flags(page, get_flags(page) & ~PD_HAS_FREE_LINES)


def page_is_all_visible(page: bytes | bytearray | memoryview) -> bool:
    return bool(get_flags(page) & PD_ALL_VISIBLE)


def page_set_all_visible(page: bytearray) -> None:
    set_flags(page, get_flags(page) | PD_ALL_VISIBLE)


def page_clear_all_visible(page: bytearray) -> None:
    set_flags(page, get_flags(page) & ~PD_ALL_VISIBLE)


# -- init ---------------------------------------------------------------------

def page_init(page: bytearray, special_size: int = 0) -> None:
    """PageInit: zero the page, set lower/upper/special and size+version."""
    special_size = maxalign(special_size)
    if special_size + SIZE_OF_PAGE_HEADER >= BLCKSZ:
        raise RedoError(f"special size {special_size} does not fit a page")
    page[:] = bytes(BLCKSZ)
    set_lower(page, SIZE_OF_PAGE_HEADER)
    set_upper(page, BLCKSZ - special_size)
    set_special(page, BLCKSZ - special_size)
    U16.pack_into(page, OFF_PAGESIZE_VERSION, BLCKSZ | PG_PAGE_LAYOUT_VERSION)


def new_page(special_size: int = 0) -> bytearray:
    page = bytearray(BLCKSZ)
    page_init(page, special_size)
    return page


def page_get_temp_page_copy_special(page: bytes | bytearray) -> bytearray:
    """PageGetTempPageCopySpecial: a fresh page with the same special space."""
    special = get_special(page)
    temp = new_page(BLCKSZ - special)
    temp[special:] = page[special:]
    return temp


# -- line pointers ----------------------------------------------------------

def lp_pos(offnum: int) -> int:
    return SIZE_OF_PAGE_HEADER + (offnum - 1) * ITEM_ID_SIZE


def item_id(page: bytes | bytearray | memoryview, offnum: int) -> tuple[int, int, int]:
    """(lp_off, lp_flags, lp_len) of line pointer `offnum` (1-based)."""
    w = U32.unpack_from(page, lp_pos(offnum))[0]
    return w & 0x7FFF, (w >> 15) & 0x3, w >> 17


def item_offset(page: bytes | bytearray | memoryview, offnum: int) -> int:
    return U32.unpack_from(page, lp_pos(offnum))[0] & 0x7FFF  # type: ignore[no-any-return]


def item_flags(page: bytes | bytearray | memoryview, offnum: int) -> int:
    return (U32.unpack_from(page, lp_pos(offnum))[0] >> 15) & 0x3  # type: ignore[no-any-return]


def item_len(page: bytes | bytearray | memoryview, offnum: int) -> int:
    return U32.unpack_from(page, lp_pos(offnum))[0] >> 17  # type: ignore[no-any-return]


def set_item_id(page: bytearray, offnum: int, lp_off: int, lp_flags: int, lp_len: int) -> None:
    U32.pack_into(page, lp_pos(offnum),
                   (lp_off & 0x7FFF) | ((lp_flags & 0x3) << 15) | ((lp_len & 0x7FFF) << 17))


def item_id_set_unused(page: bytearray, offnum: int) -> None:
    set_item_id(page, offnum, 0, LP_UNUSED, 0)


def item_id_set_dead(page: bytearray, offnum: int) -> None:
    set_item_id(page, offnum, 0, LP_DEAD, 0)


def item_id_set_redirect(page: bytearray, offnum: int, link: int) -> None:
    set_item_id(page, offnum, link, LP_REDIRECT, 0)


def item_id_set_normal(page: bytearray, offnum: int, off: int, length: int) -> None:
    set_item_id(page, offnum, off, LP_NORMAL, length)


def item_id_mark_dead(page: bytearray, offnum: int) -> None:
    """ItemIdMarkDead: flags only; offset and length (storage) stay."""
    off, _flags, length = item_id(page, offnum)
    set_item_id(page, offnum, off, LP_DEAD, length)


def item_slice(page: bytes | bytearray | memoryview, offnum: int) -> tuple[int, int]:
    off, _flags, length = item_id(page, offnum)
    return off, off + length


def get_item(page: bytes | bytearray | memoryview, offnum: int) -> bytes:
    off, _flags, length = item_id(page, offnum)
    return bytes(page[off:off + length])


def check_pointers(page: bytes | bytearray, *, special_aligned: bool = True) -> tuple[int, int, int]:
    lower, upper, special = get_lower(page), get_upper(page), get_special(page)
    if (lower < SIZE_OF_PAGE_HEADER or lower > upper or upper > special or special > BLCKSZ
            or (special_aligned and special != maxalign(special))):
        raise RedoError(
            f"corrupted page pointers: lower = {lower}, upper = {upper}, special = {special}")
    return lower, upper, special


# -- add ------------------------------------------------------------------------

_PTRS = struct.Struct("<HHHH")  # pd_flags, pd_lower, pd_upper, pd_special


def page_add_item(page: bytearray, item: bytes | bytearray | memoryview, offnum: int = 0, *,
                  overwrite: bool = False, is_heap: bool = False) -> int:
    """PageAddItemExtended. Returns the offset used, or 0 (InvalidOffsetNumber)
    where PostgreSQL returns InvalidOffsetNumber (no room, bad offset, slot in use).

    offnum 0: first unused line pointer if the page hints it has one, else append.
    overwrite (PAI_OVERWRITE): reuse slot `offnum` (which must be unused);
    otherwise a slot below the end shifts the following line pointers up.
    """
    flags, lower0, upper0, special = _PTRS.unpack_from(page, OFF_FLAGS)
    if (lower0 < SIZE_OF_PAGE_HEADER or lower0 > upper0 or upper0 > special
            or special > BLCKSZ):
        raise RedoError(
            f"corrupted page pointers: lower = {lower0}, upper = {upper0}, special = {special}")
    limit = (lower0 - SIZE_OF_PAGE_HEADER) // ITEM_ID_SIZE + 1
    needshuffle = False
    if offnum != INVALID_OFFSET_NUMBER:
        if overwrite:
            if offnum < limit:
                w = U32.unpack_from(page, lp_pos(offnum))[0]
                if (w >> 15) & 0x3 != LP_UNUSED or (w >> 17) != 0:
                    return INVALID_OFFSET_NUMBER
        elif offnum < limit:
            needshuffle = True
    else:
        if flags & PD_HAS_FREE_LINES:
            offnum = FIRST_OFFSET_NUMBER
            while offnum < limit:
                w = U32.unpack_from(page, lp_pos(offnum))[0]
                if (w >> 15) & 0x3 == LP_UNUSED and (w >> 17) == 0:
                    break
                offnum += 1
            if offnum >= limit:
                # the hint was wrong: clear it (PostgreSQL does, as a side effect)
                page_clear_has_free_line_pointers(page)
        else:
            offnum = limit
    if offnum > limit:
        return INVALID_OFFSET_NUMBER
    if is_heap and offnum > MAX_HEAP_TUPLES_PER_PAGE:
        return INVALID_OFFSET_NUMBER
    size = len(item)
    lower = lower0 + ITEM_ID_SIZE if (offnum == limit or needshuffle) else lower0
    upper = upper0 - ((size + 7) & ~7)
    if lower > upper:
        return INVALID_OFFSET_NUMBER
    pos = lp_pos(offnum)
    if needshuffle:
        n = (limit - offnum) * ITEM_ID_SIZE
        page[pos + ITEM_ID_SIZE:pos + ITEM_ID_SIZE + n] = page[pos:pos + n]
    U32.pack_into(page, pos, upper | (LP_NORMAL << 15) | (size << 17))
    page[upper:upper + size] = item
    U16.pack_into(page, OFF_LOWER, lower)
    U16.pack_into(page, OFF_UPPER, upper)
    return offnum


# -- compaction ---------------------------------------------------------------

def compactify(page: bytearray, words: list[int], items: Sequence[tuple[int, int, int]],
                special: int) -> None:
    """compactify_tuples: `items` are (lp index 0-based, itemoff, alignedlen)
    in line-pointer order; `words` are the line pointers (updated in place,
    the caller writes them back).

    PostgreSQL (14+) does not sort: it packs the items from pd_special down
    in line-pointer order, each keeping its aligned length (in place when
    they are presorted by descending offset, through a scratch copy when
    not); bytes outside the moved items are left as they were. The net
    placement is the same on every code path, so we compute it directly.
    """
    src = bytes(page)
    upper = special
    for idx, itemoff, alen in items:
        upper -= alen
        if upper != itemoff:
            page[upper:upper + alen] = src[itemoff:itemoff + alen]
        words[idx] = (words[idx] & ~0x7FFF) | upper
    set_upper(page, upper)


def line_pointers(page: bytes | bytearray, nline: int) -> list[int]:
    return list(struct.unpack_from(f"<{nline}I", page, SIZE_OF_PAGE_HEADER))


def store_line_pointers(page: bytearray, words: Sequence[int]) -> None:
    struct.pack_into(f"<{len(words)}I", page, SIZE_OF_PAGE_HEADER, *words)


def _load_compiled() -> Any:
    """`_pagec` (see _pagec.c), or None when it is not built (said once)."""
    try:
        from strata.reconstruct.redo import _pagec  # type: ignore[attr-defined]
    except ImportError:
        log.warning("the compiled page operations (strata.reconstruct.redo._pagec) are not "
                    "built: pages are rebuilt with the pure-Python ones, slower")
        return None
    return _pagec


pagec = _load_compiled()


def set_checksums(buf: bytearray | memoryview, blknos: Sequence[int]) -> None:
    """pd_checksum of each page of `buf` (len(blknos) pages, in place; new pages left
    alone): compiled (`_pagec.set_checksums`) when built, else `checksum.set_checksums`,
    the reference it is tested against."""
    if pagec is None:
        checksum.set_checksums(buf, blknos)
    else:
        pagec.set_checksums(buf, np.asarray(blknos, dtype="<u4").tobytes())

_compiled_repair: Callable[[bytearray], str | None] | None = (
    None if pagec is None else pagec.repair_fragmentation)


def page_repair_fragmentation(page: bytearray) -> None:
    """PageRepairFragmentation: compact tuple storage, zero unused line
    pointers, drop trailing unused ones, and set/clear PD_HAS_FREE_LINES.
    Compiled (`_pagec.c`) when built; `repair_fragmentation_python` is the
    reference it equals byte for byte.

    Raises: RedoError on corrupt pointers or lengths (the page unchanged)."""
    if _compiled_repair is not None and len(page) == BLCKSZ:
        err = _compiled_repair(page)
        if err is not None:
            raise RedoError(err)
        return
    repair_fragmentation_python(page)


def repair_fragmentation_python(page: bytearray) -> None:
    """`page_repair_fragmentation` in Python: the reference."""
    lower, upper, special = check_pointers(page)
    nline = page_get_max_offset(page)
    words = line_pointers(page, nline)
    items: list[tuple[int, int, int]] = []
    nunused = 0
    totallen = 0
    finalusedlp = INVALID_OFFSET_NUMBER
    for i, w in enumerate(words):
        if (w >> 15) & 0x3 != LP_UNUSED:
            ln = w >> 17
            if ln != 0:
                off = w & 0x7FFF
                if off < upper or off >= special:
                    raise RedoError(f"corrupted line pointer: {off}")
                alen = (ln + 7) & ~7
                totallen += alen
                items.append((i, off, alen))
            finalusedlp = i + 1
        else:
            words[i] = 0  # ItemIdSetUnused
            nunused += 1
    if not items:
        set_upper(page, special)
    else:
        if totallen > special - lower:
            raise RedoError(
                f"corrupted item lengths: total {totallen}, available space {special - lower}")
        compactify(page, words, items, special)
    if nline:
        store_line_pointers(page, words)
    if finalusedlp != nline:
        nunusedend = nline - finalusedlp
        nunused -= nunusedend
        set_lower(page, get_lower(page) - ITEM_ID_SIZE * nunusedend)
    if nunused > 0:
        page_set_has_free_line_pointers(page)
    else:
        page_clear_has_free_line_pointers(page)


def page_truncate_line_pointer_array(page: bytearray) -> None:
    """PageTruncateLinePointerArray: drop trailing LP_UNUSED items (never the
    first one) and set the free-line-pointer hint if unused ones remain."""
    countdone = False
    sethint = False
    nunusedend = 0
    for i in range(page_get_max_offset(page), 0, -1):
        fl = item_flags(page, i)
        if not countdone and i > FIRST_OFFSET_NUMBER:
            if fl == LP_UNUSED:
                nunusedend += 1
            else:
                countdone = True
        elif fl == LP_UNUSED:
            sethint = True
            break
    if nunusedend > 0:
        set_lower(page, get_lower(page) - ITEM_ID_SIZE * nunusedend)
    if sethint:
        page_set_has_free_line_pointers(page)
    else:
        page_clear_has_free_line_pointers(page)


# -- free space -----------------------------------------------------------------

def page_get_free_space(page: bytes | bytearray) -> int:
    space = get_upper(page) - get_lower(page)
    if space < ITEM_ID_SIZE:
        return 0
    return space - ITEM_ID_SIZE


def page_get_free_space_for_multiple_tuples(page: bytes | bytearray, ntups: int) -> int:
    space = get_upper(page) - get_lower(page)
    if space < ntups * ITEM_ID_SIZE:
        return 0
    return space - ntups * ITEM_ID_SIZE


def page_get_exact_free_space(page: bytes | bytearray) -> int:
    return max(0, get_upper(page) - get_lower(page))


def page_get_heap_free_space(page: bytes | bytearray) -> int:
    space = page_get_free_space(page)
    if space > 0:
        nline = page_get_max_offset(page)
        if nline >= MAX_HEAP_TUPLES_PER_PAGE:
            if page_has_free_line_pointers(page):
                if all(item_flags(page, i) != LP_UNUSED for i in range(1, nline + 1)):
                    space = 0
            else:
                space = 0
    return space


# -- checksum -------------------------------------------------------------------


def pg_checksum_page(page: bytes | bytearray, blkno: int) -> int:
    """pg_checksum_page: the 16-bit data checksum of a (non-new) page for
    block `blkno`, computed with pd_checksum taken as zero."""
    return checksum_page(page, blkno)


def iter_line_pointers(page: bytes | bytearray | memoryview) -> Iterable[tuple[int, int, int, int]]:
    """(offnum, lp_off, lp_flags, lp_len) for every line pointer."""
    for i in range(1, page_get_max_offset(page) + 1):
        off, fl, ln = item_id(page, i)
        yield i, off, fl, ln
