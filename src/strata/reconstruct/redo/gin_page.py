"""GIN page layout of PostgreSQL 18 and the compressed posting-list codec.

What it is: the page-level knowledge GIN redo needs, from
src/include/access/ginblock.h, ginutil.c (GinInitPage, GinInitMetabuffer),
gindatapage.c (posting items of internal posting-tree pages) and
ginpostinglist.c (varbyte-encoded posting lists). Pages are bytearrays of
BLCKSZ edited in place, as in `page_ops`.

Fed by: `strata.reconstruct.redo.gin`. Feeds nothing else. Owns: the layout of
GinPageOpaqueData (special space: rightlink u32, maxoff u16, flags u16), of the
metapage (GinMetaPageData right after the page header, pd_lower just past it)
and of posting-tree pages (a right-bound ItemPointer at the start of the
contents, then PostingItems on internal pages or GinPostingList segments on
leaf pages, pd_lower marking the end of that data).

Posting lists: a segment is `first` (an ItemPointerData) + nbytes (u16) +
varbyte deltas, padded to an even length. Each item pointer is packed into
an integer as (block << 11) | offset, so integer order is TID order.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from strata.errors import RedoError
from strata.pg.constants import BLCKSZ
from strata.pg.structs import U16, U32
from strata.reconstruct.redo import page_ops
from strata.reconstruct.redo.page_ops import SIZE_OF_PAGE_HEADER, maxalign

# GinPageOpaqueData flags
GIN_DATA = 1 << 0
GIN_LEAF = 1 << 1
GIN_DELETED = 1 << 2
GIN_META = 1 << 3
GIN_LIST = 1 << 4
GIN_LIST_FULLROW = 1 << 5
GIN_INCOMPLETE_SPLIT = 1 << 6
GIN_COMPRESSED = 1 << 7

GIN_METAPAGE_BLKNO = 0
GIN_CURRENT_VERSION = 2
INVALID_BLOCK_NUMBER = 0xFFFFFFFF

SIZE_OF_GIN_OPAQUE = 8
_OPAQUE = struct.Struct("<IHH")
_ITEMPTR = struct.Struct("<HHH")

SIZE_OF_GIN_META_PAGE_DATA = 56
META_OFFSET = maxalign(SIZE_OF_PAGE_HEADER)  # PageGetContents
# GinMetaPageData defaults written by GinInitMetabuffer
_META = struct.Struct("<IIIIqIII4xqi4x")

# Posting-tree pages: contents start with the right bound (an ItemPointerData)
DATA_OFFSET = META_OFFSET + maxalign(6)  # GinDataPageGetData / GinDataLeafPageGetPostingList
SIZE_OF_POSTING_ITEM = 10  # BlockIdData child_blkno + ItemPointerData key
POSTING_LIST_HEADER = 8  # offsetof(GinPostingList, bytes)
MAX_HEAP_TUPLES_PER_PAGE_BITS = 11
_MAX_BYTES_PER_INTEGER = 7


# -- special space -------------------------------------------------------------

def opaque_pos(page: bytes | bytearray) -> int:
    return page_ops.get_special(page)


def get_opaque(page: bytes | bytearray) -> tuple[int, int, int]:
    """(rightlink, maxoff, flags)."""
    return _OPAQUE.unpack_from(page, opaque_pos(page))  # type: ignore[return-value]


def get_flags(page: bytes | bytearray) -> int:
    return int(U16.unpack_from(page, opaque_pos(page) + 6)[0])


def set_flags(page: bytearray, flags: int) -> None:
    U16.pack_into(page, opaque_pos(page) + 6, flags & 0xFFFF)


def get_maxoff(page: bytes | bytearray) -> int:
    return int(U16.unpack_from(page, opaque_pos(page) + 4)[0])


def set_maxoff(page: bytearray, maxoff: int) -> None:
    U16.pack_into(page, opaque_pos(page) + 4, maxoff & 0xFFFF)


def set_rightlink(page: bytearray, blkno: int) -> None:
    U32.pack_into(page, opaque_pos(page), blkno)


def gin_init_page(page: bytearray, flags: int) -> None:
    """GinInitPage: PageInit with GIN special space, flags, rightlink invalid."""
    page_ops.page_init(page, SIZE_OF_GIN_OPAQUE)
    _OPAQUE.pack_into(page, opaque_pos(page), INVALID_BLOCK_NUMBER, 0, flags)


def gin_init_metabuffer(page: bytearray) -> None:
    """GinInitMetabuffer: an empty metapage, pd_lower just past GinMetaPageData."""
    gin_init_page(page, GIN_META)
    _META.pack_into(page, META_OFFSET, INVALID_BLOCK_NUMBER, INVALID_BLOCK_NUMBER, 0, 0, 0,
                    0, 0, 0, 0, GIN_CURRENT_VERSION)
    page_ops.set_lower(page, META_OFFSET + SIZE_OF_GIN_META_PAGE_DATA)


# -- posting-tree pages ---------------------------------------------------------

def data_size(page: bytes | bytearray) -> int:
    """Bytes of posting data after the right bound (pd_lower - DATA_OFFSET)."""
    return page_ops.get_lower(page) - DATA_OFFSET


def set_data_size(page: bytearray, size: int) -> None:
    """GinDataPageSetDataSize: pd_lower marks the end of the posting data."""
    if size < 0 or DATA_OFFSET + size > page_ops.get_special(page):
        raise RedoError(f"GIN data size {size} does not fit the page")
    page_ops.set_lower(page, DATA_OFFSET + size)


def posting_item_pos(offset: int) -> int:
    """GinDataPageGetPostingItem(page, offset) (offset is 1-based)."""
    return DATA_OFFSET + (offset - 1) * SIZE_OF_POSTING_ITEM


def posting_item_set_block(page: bytearray, offset: int, blkno: int) -> None:
    """PostingItemSetBlockNumber on the item at `offset`."""
    struct.pack_into("<HH", page, posting_item_pos(offset), blkno >> 16, blkno & 0xFFFF)


def add_posting_item(page: bytearray, item: bytes, offset: int) -> None:
    """GinDataPageAddPostingItem: insert a PostingItem at `offset` (0: append),
    shifting later items, then maxoff++ and pd_lower past the items."""
    maxoff = get_maxoff(page)
    if offset == 0:
        pos = posting_item_pos(maxoff + 1)
    else:
        pos = posting_item_pos(offset)
        if offset != maxoff + 1:
            n = (maxoff - offset + 1) * SIZE_OF_POSTING_ITEM
            page[pos + SIZE_OF_POSTING_ITEM:pos + SIZE_OF_POSTING_ITEM + n] = page[pos:pos + n]
    page[pos:pos + SIZE_OF_POSTING_ITEM] = item
    maxoff += 1
    set_maxoff(page, maxoff)
    set_data_size(page, maxoff * SIZE_OF_POSTING_ITEM)


def delete_posting_item(page: bytearray, offset: int) -> None:
    """GinPageDeletePostingItem."""
    maxoff = get_maxoff(page)
    if not 1 <= offset <= maxoff:
        raise RedoError(f"GIN posting item {offset} out of range 1..{maxoff}")
    if offset != maxoff:
        pos = posting_item_pos(offset)
        n = (maxoff - offset) * SIZE_OF_POSTING_ITEM
        page[pos:pos + n] = page[pos + SIZE_OF_POSTING_ITEM:pos + SIZE_OF_POSTING_ITEM + n]
    maxoff -= 1
    set_maxoff(page, maxoff)
    set_data_size(page, maxoff * SIZE_OF_POSTING_ITEM)


# -- posting lists (ginpostinglist.c) -----------------------------------------------

def itemptr_to_int(blkno: int, offset: int) -> int:
    return (blkno << MAX_HEAP_TUPLES_PER_PAGE_BITS) | offset


def _read_itemptr(buf: bytes | bytearray | memoryview, pos: int) -> int:
    hi, lo, off = _ITEMPTR.unpack_from(buf, pos)
    return itemptr_to_int((hi << 16) | lo, off)


def segment_size(buf: bytes | bytearray | memoryview, pos: int) -> int:
    """SizeOfGinPostingList of the segment at `pos`."""
    return POSTING_LIST_HEADER + ((U16.unpack_from(buf, pos + 6)[0] + 1) & ~1)


def decode_segments(buf: bytes | bytearray | memoryview) -> list[int]:
    """ginPostingListDecodeAllSegments over `buf` (whole segments end to end)."""
    out: list[int] = []
    pos = 0
    end = len(buf)
    while pos < end:
        if pos + POSTING_LIST_HEADER > end:
            raise RedoError(f"truncated GIN posting list segment at byte {pos}")
        val = _read_itemptr(buf, pos)
        out.append(val)
        p = pos + POSTING_LIST_HEADER
        stop = p + U16.unpack_from(buf, pos + 6)[0]
        if stop > end:
            raise RedoError(f"GIN posting list segment at byte {pos} runs past its data")
        while p < stop:
            delta = 0
            shift = 0
            while True:  # decode_varbyte
                c = buf[p]
                p += 1
                delta |= (c & 0x7F) << shift
                if not c & 0x80 or shift == 42:
                    if shift == 42:
                        delta |= (c & 0x80) << shift  # the 7th byte keeps all 8 bits
                    break
                shift += 7
            val += delta
            out.append(val)
        pos += segment_size(buf, pos)
    return out


def encode_segment(items: Sequence[int], maxsize: int = BLCKSZ) -> tuple[bytes, int]:
    """ginCompressPostingList: (the segment, number of items packed) for as
    many `items` (packed TIDs, strictly ascending) as fit in `maxsize` bytes."""
    maxsize &= ~1  # SHORTALIGN_DOWN
    maxbytes = maxsize - POSTING_LIST_HEADER
    first = items[0]
    body = bytearray()
    prev = first
    npacked = 1
    for val in items[1:]:
        delta = val - prev
        if delta <= 0:
            raise RedoError("GIN posting list items are not in ascending order")
        enc = bytearray()
        while delta > 0x7F:
            enc.append(0x80 | (delta & 0x7F))
            delta >>= 7
        enc.append(delta)
        if len(enc) > maxbytes - len(body):
            break
        body += enc
        prev = val
        npacked += 1
    nbytes = len(body)
    if nbytes & 1:
        body.append(0)
    blk = first >> MAX_HEAP_TUPLES_PER_PAGE_BITS
    head = _ITEMPTR.pack(blk >> 16, blk & 0xFFFF, first & ((1 << MAX_HEAP_TUPLES_PER_PAGE_BITS) - 1))
    return head + U16.pack(nbytes) + bytes(body), npacked


def merge_items(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """ginMergeItemPointers: the union of two ascending lists (one copy of
    items present in both)."""
    if not a or not b or a[-1] < b[0]:
        return [*a, *b]
    if b[-1] < a[0]:
        return [*b, *a]
    return sorted(set(a) | set(b))
