"""SP-GiST page layout of PostgreSQL 18 and the page operations its redo shares.

What it is: from src/include/access/spgist_private.h and spgutils.c /
spgdoinsert.c: SpGistInitPage, spgFormDeadTuple, spgUpdateNodeLink,
spgPageIndexMultiDelete and spgxlog.c's addOrReplaceTuple. Pages are
bytearrays of BLCKSZ edited in place, as in `page_ops`.

Fed by: `strata.reconstruct.redo.spgist`. Feeds nothing else. Owns: the layout
of SpGistPageOpaqueData (special space: flags, nRedirection, nPlaceholder,
spgist_page_id, all uint16) and of the three tuple kinds:

- inner tuple: u32 bit field (tupstate:2, allTheSame:1, nNodes:13,
  prefixSize:16), u16 size, 2 pad bytes, the prefix (prefixSize bytes), then
  nNodes node tuples (IndexTupleData: t_tid, t_info whose low 13 bits are the
  node's size); a node's t_tid is its downlink;
- leaf tuple: u32 bit field (tupstate:2, size:30), u16 t_info (nextOffset in
  the low 14 bits), ItemPointerData heapPtr, then the datum(s);
- dead tuple (REDIRECT / DEAD / PLACEHOLDER): u32 bit field as a leaf tuple,
  u16 t_info (0), ItemPointerData pointer, TransactionId xid: 16 bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from strata.errors import RedoError
from strata.pg.structs import U16, U32
from strata.reconstruct.redo import index_tuples, page_ops

# SpGistPageOpaqueData flags
SPGIST_META = 1 << 0
SPGIST_DELETED = 1 << 1
SPGIST_LEAF = 1 << 2
SPGIST_NULLS = 1 << 3
SPGIST_PAGE_ID = 0xFF82
SIZE_OF_SPGIST_OPAQUE = 8

# tupstate values
SPGIST_LIVE = 0
SPGIST_REDIRECT = 1
SPGIST_DEAD = 2
SPGIST_PLACEHOLDER = 3

SGDTSIZE = 16  # MAXALIGN(sizeof(SpGistDeadTupleData))
SGITHDRSZ = 8  # MAXALIGN(sizeof(SpGistInnerTupleData))
INVALID_BLOCK_NUMBER = 0xFFFFFFFF
INVALID_OFFSET_NUMBER = 0

_OPAQUE = struct.Struct("<HHHH")
_DEAD = struct.Struct("<IHHHHI")  # word, t_info, pointer (bi_hi, bi_lo, posid), xid
_TID = struct.Struct("<HHH")


# -- special space -------------------------------------------------------------

def _opaque_pos(page: bytes | bytearray) -> int:
    return page_ops.get_special(page)


def get_flags(page: bytes | bytearray) -> int:
    return int(U16.unpack_from(page, _opaque_pos(page))[0])


def _add_counter(page: bytearray, field: int, delta: int) -> None:
    pos = _opaque_pos(page) + 2 * field
    U16.pack_into(page, pos, (U16.unpack_from(page, pos)[0] + delta) & 0xFFFF)


def add_redirections(page: bytearray, delta: int) -> None:
    """nRedirection += delta."""
    _add_counter(page, 1, delta)


def add_placeholders(page: bytearray, delta: int) -> None:
    """nPlaceholder += delta."""
    _add_counter(page, 2, delta)


def spgist_init_page(page: bytearray, flags: int) -> None:
    """SpGistInitPage: PageInit with SP-GiST special space, flags and page id."""
    page_ops.page_init(page, SIZE_OF_SPGIST_OPAQUE)
    _OPAQUE.pack_into(page, _opaque_pos(page), flags, 0, 0, SPGIST_PAGE_ID)


# -- tuples ------------------------------------------------------------------------

def tupstate(page: bytes | bytearray, offnum: int) -> int:
    """The tupstate of the tuple at `offnum` (any kind: the low 2 bits)."""
    return int(U32.unpack_from(page, page_ops.item_offset(page, offnum))[0]) & 0x3


def form_dead_tuple(state: int, blkno: int, offnum: int, redirect_xid: int) -> bytes:
    """spgFormDeadTuple: a REDIRECT points at (blkno, offnum) and carries the
    redirect xid; other states carry an invalid pointer and xid 0."""
    word = state | (SGDTSIZE << 2)
    if state == SPGIST_REDIRECT:
        return _DEAD.pack(word, 0, blkno >> 16, blkno & 0xFFFF, offnum, redirect_xid)
    return _DEAD.pack(word, 0, 0xFFFF, 0xFFFF, INVALID_OFFSET_NUMBER, 0)


def set_dead_tuple_placeholder(page: bytearray, offnum: int) -> None:
    """A REDIRECT becomes a PLACEHOLDER with an invalid pointer (xid kept)."""
    pos = page_ops.item_offset(page, offnum)
    word = U32.unpack_from(page, pos)[0]
    U32.pack_into(page, pos, (word & ~0x3) | SPGIST_PLACEHOLDER)
    _TID.pack_into(page, pos + 6, 0xFFFF, 0xFFFF, INVALID_OFFSET_NUMBER)


def set_leaf_next_offset(page: bytearray, offnum: int, next_offset: int) -> None:
    """SGLT_SET_NEXTOFFSET on the leaf tuple at `offnum`."""
    pos = page_ops.item_offset(page, offnum) + 4
    t_info = U16.unpack_from(page, pos)[0]
    U16.pack_into(page, pos, (t_info & 0xC000) | (next_offset & 0x3FFF))


def update_node_link(page: bytearray, offnum: int, node_n: int, blkno: int,
                     offset: int) -> None:
    """spgUpdateNodeLink on the inner tuple at `offnum`: node `node_n`'s
    downlink becomes (blkno, offset)."""
    if not 1 <= offnum <= page_ops.page_get_max_offset(page):
        raise RedoError(f"inner tuple offset {offnum} out of range")
    pos = page_ops.item_offset(page, offnum)
    word = U32.unpack_from(page, pos)[0]
    nnodes = (word >> 3) & 0x1FFF
    prefix_size = word >> 16
    node = pos + SGITHDRSZ + prefix_size
    for i in range(nnodes):
        if i == node_n:
            _TID.pack_into(page, node, blkno >> 16, blkno & 0xFFFF, offset)
            return
        size = U16.unpack_from(page, node + 6)[0] & 0x1FFF
        if size == 0:
            raise RedoError(f"zero-size node {i} in SP-GiST inner tuple at offset {offnum}")
        node += size
    raise RedoError(f"failed to find requested node {node_n} in SPGiST inner tuple")


# -- page edits ----------------------------------------------------------------------

def add_item_at(page: bytearray, item: bytes, offnum: int) -> None:
    """PageAddItem at exactly `offnum` (no overwrite), or RedoError."""
    if page_ops.page_add_item(page, item, offnum) != offnum:
        raise RedoError(f"failed to add item of size {len(item)} to SPGiST index page "
                        f"at offset {offnum}")


def replace_item(page: bytearray, item: bytes, offnum: int) -> None:
    """PageIndexTupleDelete + PageAddItem at the same offset."""
    index_tuples.page_index_tuple_delete(page, offnum)
    add_item_at(page, item, offnum)


def add_or_replace_tuple(page: bytearray, item: bytes, offnum: int) -> None:
    """addOrReplaceTuple (spgxlog.c): add at `offnum`, replacing the
    placeholder there if the offset is in use."""
    if offnum <= page_ops.page_get_max_offset(page):
        if tupstate(page, offnum) != SPGIST_PLACEHOLDER:
            raise RedoError("SPGiST tuple to be replaced is not a placeholder")
        add_placeholders(page, -1)
        index_tuples.page_index_tuple_delete(page, offnum)
    add_item_at(page, item, offnum)


def multi_delete(page: bytearray, itemnos: Sequence[int], firststate: int, reststate: int,
                 blkno: int, offnum: int, redirect_xid: int) -> None:
    """spgPageIndexMultiDelete: remove the tuples at `itemnos` keeping offsets:
    the first listed becomes a dead tuple of `firststate`, the rest of
    `reststate` (REDIRECTs point at (blkno, offnum))."""
    if not itemnos:
        return
    sortednos = sorted(itemnos)
    index_tuples.page_index_multi_delete(page, sortednos)
    first = itemnos[0]
    for itemno in sortednos:
        state = firststate if itemno == first else reststate
        add_item_at(page, form_dead_tuple(state, blkno, offnum, redirect_xid), itemno)
        if state == SPGIST_REDIRECT:
            add_redirections(page, 1)
        elif state == SPGIST_PLACEHOLDER:
            add_placeholders(page, 1)
