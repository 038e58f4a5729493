"""Deletion and overwrite of index tuples on a page: bufpage.c's PageIndexTupleDelete,
PageIndexMultiDelete, PageIndexTupleDeleteNoCompact and PageIndexTupleOverwrite,
byte for byte (the wal_consistency_checking oracle compares the result).

What it is: the part of the page toolbox only index redo uses (btree, hash,
gist, gin, spgist, brin). Fed by those redo modules; built on `page_ops`
(header fields, line pointers, compaction). Owns nothing.

Raises: RedoError where PostgreSQL would ERROR on a corrupted page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from strata.errors import RedoError
from strata.pg.constants import BLCKSZ
from strata.pg.structs import U32
from strata.reconstruct.redo import page_ops
from strata.reconstruct.redo.page_ops import (
    ITEM_ID_SIZE,
    SIZE_OF_PAGE_HEADER,
    check_pointers,
    compactify,
    get_lower,
    item_id,
    item_id_set_unused,
    line_pointers,
    lp_pos,
    maxalign,
    page_get_max_offset,
    page_is_empty,
    set_item_id,
    set_lower,
    set_upper,
    store_line_pointers,
)


def _checked_item(page: bytearray, offnum: int, upper: int, special: int) -> tuple[int, int]:
    nline = page_get_max_offset(page)
    if offnum <= 0 or offnum > nline:
        raise RedoError(f"invalid index offnum: {offnum}")
    off, _fl, ln = item_id(page, offnum)
    if off < upper or off + ln > special or off != maxalign(off):
        raise RedoError(f"corrupted line pointer: offset = {off}, size = {ln}")
    return off, ln


def _shift_lp_offsets(page: bytearray, nline: int, limit_off: int, delta: int,
                      only_storage: bool) -> None:
    """Add `delta` to lp_off of every item whose offset <= limit_off."""
    base = SIZE_OF_PAGE_HEADER
    for i in range(nline):
        p = base + i * ITEM_ID_SIZE
        w = U32.unpack_from(page, p)[0]
        if only_storage and (w >> 17) == 0:
            continue
        if (w & 0x7FFF) <= limit_off:
            U32.pack_into(page, p, (w & ~0x7FFF) | (((w & 0x7FFF) + delta) & 0x7FFF))


def page_index_tuple_delete(page: bytearray, offnum: int) -> None:
    """PageIndexTupleDelete: remove the item and its line pointer, closing
    both gaps (line pointers after it shift down)."""
    lower, upper, special = check_pointers(page)
    off, ln = _checked_item(page, offnum, upper, special)
    size = maxalign(ln)
    lp = lp_pos(offnum)
    nbytes = lower - (lp + ITEM_ID_SIZE)
    if nbytes > 0:
        page[lp:lp + nbytes] = page[lp + ITEM_ID_SIZE:lp + ITEM_ID_SIZE + nbytes]
    if off > upper:
        page[upper + size:off + size] = page[upper:off]
    set_upper(page, upper + size)
    set_lower(page, lower - ITEM_ID_SIZE)
    if not page_is_empty(page):
        _shift_lp_offsets(page, page_get_max_offset(page), off, size, only_storage=False)


_compiled_multi_delete: Callable[[bytearray, Sequence[int]], str | None] | None = (
    None if page_ops.pagec is None else page_ops.pagec.index_multi_delete)


def page_index_multi_delete(page: bytearray, itemnos: Sequence[int]) -> None:
    """PageIndexMultiDelete: `itemnos` sorted ascending; remaining line
    pointers are renumbered and storage compacted (compactify_tuples).
    Compiled (`_pagec.c`) when built; `page_index_multi_delete_python` is the
    reference it equals byte for byte.

    Raises: RedoError on corrupt pointers or offsets (the page unchanged)."""
    if len(itemnos) <= 2:
        for o in reversed(itemnos):
            page_index_tuple_delete(page, o)
        return
    if _compiled_multi_delete is not None and len(page) == BLCKSZ:
        err = _compiled_multi_delete(page, itemnos)
        if err is not None:
            raise RedoError(err)
        return
    page_index_multi_delete_python(page, itemnos)


def page_index_multi_delete_python(page: bytearray, itemnos: Sequence[int]) -> None:
    """`page_index_multi_delete` of more than two items in Python: the reference."""
    nitems = len(itemnos)
    lower, upper, special = check_pointers(page)
    nline = page_get_max_offset(page)
    words = line_pointers(page, nline)
    items: list[tuple[int, int, int]] = []
    newwords: list[int] = []
    totallen = 0
    nextitm = 0
    for i, w in enumerate(words):
        offnum = i + 1
        off, ln = w & 0x7FFF, w >> 17
        if off < upper or off + ln > special or off != maxalign(off):
            raise RedoError(f"corrupted line pointer: offset = {off}, size = {ln}")
        if nextitm < nitems and offnum == itemnos[nextitm]:
            nextitm += 1
        else:
            alen = maxalign(ln)
            items.append((len(newwords), off, alen))
            totallen += alen
            newwords.append(w)
    if nextitm != nitems:
        raise RedoError("incorrect index offsets supplied")
    if totallen > special - lower:
        raise RedoError(
            f"corrupted item lengths: total {totallen}, available space {special - lower}")
    nused = len(newwords)
    set_lower(page, SIZE_OF_PAGE_HEADER + nused * ITEM_ID_SIZE)
    if nused > 0:
        compactify(page, newwords, items, special)
        store_line_pointers(page, newwords)
    else:
        set_upper(page, special)


def page_index_tuple_delete_no_compact(page: bytearray, offnum: int) -> None:
    """PageIndexTupleDeleteNoCompact: remove the item's storage; the line
    pointer becomes unused (or is dropped if it is the last one)."""
    _lower, upper, special = check_pointers(page)
    off, ln = _checked_item(page, offnum, upper, special)
    size = maxalign(ln)
    nline = page_get_max_offset(page)
    if offnum < nline:
        item_id_set_unused(page, offnum)
    else:
        set_lower(page, get_lower(page) - ITEM_ID_SIZE)
        nline -= 1
    if off > upper:
        page[upper + size:off + size] = page[upper:off]
    set_upper(page, upper + size)
    if not page_is_empty(page):
        _shift_lp_offsets(page, nline, off, size, only_storage=True)


def page_index_tuple_overwrite(page: bytearray, offnum: int,
                               newtup: bytes | bytearray | memoryview) -> bool:
    """PageIndexTupleOverwrite: replace the item's bytes in place, moving the
    tuples below it when the aligned size changes. False if it cannot fit."""
    lower, upper, special = check_pointers(page)
    itemcount = page_get_max_offset(page)
    off, oldlen = _checked_item(page, offnum, upper, special)
    oldsize = maxalign(oldlen)
    newsize = len(newtup)
    alignednewsize = maxalign(newsize)
    if alignednewsize > oldsize + (upper - lower):
        return False
    size_diff = oldsize - alignednewsize
    if size_diff != 0:
        chunk = bytes(page[upper:off])
        page[upper + size_diff:upper + size_diff + len(chunk)] = chunk
        set_upper(page, upper + size_diff)
        _shift_lp_offsets(page, itemcount, off, size_diff, only_storage=True)
    _o, fl, _l = item_id(page, offnum)
    newoff = off + size_diff
    set_item_id(page, offnum, newoff, fl, newsize)
    page[newoff:newoff + newsize] = newtup
    return True
