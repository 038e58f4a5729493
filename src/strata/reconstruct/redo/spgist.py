"""SP-GiST (RM_SPGIST_ID = 16) redo and mask: PostgreSQL 18's spgxlog.c, per block.

What it is: `spg_redo_block(record, block, page)` applies one SP-GiST WAL
record to one of its block references, editing `page` in place, with the
semantics of spg_redo in src/backend/access/spgist/spgxlog.c (REL_18);
`spg_mask(page)` is spgxlog.c's spg_mask. Every redo routine of spgxlog.c
changes each page from that page's own previous state plus the record (and
the block numbers of its other block references) alone, so per-block redo is
exact.

Fed by: the redo dispatcher (`strata.reconstruct.redo.redo_block`), which has
already handled apply-images, BLK_DONE and WILL_INIT, and stamps pd_lsn after.
Feeds: GetPage@LSN and the wal_consistency_checking oracle. Owns nothing
persistent; registers itself for RM_SPGIST_ID at import, and its mask.

What each block gets (the block ids are listed in `strata.wal.rmgr.spgist`):

=================  ==============================================================
ADD_LEAF           0 leaf added (or replacing a placeholder / DEAD tuple), head of its
                   chain relinked; 1 parent's node link -> the leaf
MOVE_LEAFS         1 destination: the moved tuples (+ the new one); 0 source: moved
                   tuples become a REDIRECT (first) and PLACEHOLDERs; 2 parent link
ADD_NODE           0 inner tuple replaced in place, or (with block 1) turned into a
                   REDIRECT to its enlarged copy on 1; parent link on 0, 1 or 2
SPLIT_TUPLE        0 prefix tuple replaces the old one (+ postfix if same page); 1 postfix
PICKSPLIT          0 source leaf: deletions to REDIRECT/PLACEHOLDER (or re-init), its
                   share of the leaf tuples; 1 new leaf: its share; 2 new inner tuple
                   (+ parent link if it is the parent); 3 parent link
VACUUM_LEAF        0 tuples to DEAD / PLACEHOLDER, moves, chain relinks
VACUUM_ROOT        0 tuples deleted
VACUUM_REDIRECT    0 REDIRECTs to PLACEHOLDERs, trailing placeholders removed
=================  ==============================================================
"""

from __future__ import annotations

from collections.abc import Callable

from strata.errors import RedoError
from strata.reconstruct import mask as bufmask
from strata.reconstruct.redo import (
    RM_SPGIST_ID,
    block_error,
    index_tuples,
    page_ops,
    register,
    run_handler,
)
from strata.reconstruct.redo import spgist_page as sp
from strata.wal.record import BlockRef, DecodedRecord
from strata.wal.rmgr import spgist as x

_INFO_MASK = 0xF0


def _fail(record: DecodedRecord, block: BlockRef, what: str) -> RedoError:
    return block_error("SPGist", x.spg_identify, record, block, what)


def _blkno(record: DecodedRecord, block: BlockRef, block_id: int) -> int:
    """XLogRecGetBlockTag(record, block_id): the block number of another reference."""
    other = record.block(block_id)
    if other is None:
        raise _fail(record, block, f"record has no block reference {block_id}")
    return other.blkno


def _leaf_flags(stores_nulls: bool) -> int:
    return sp.SPGIST_LEAF | (sp.SPGIST_NULLS if stores_nulls else 0)


def _redo_add_leaf(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    r = x.SpgxlogAddLeaf.parse(record.main_data)
    if block.block_id == 0:
        if r.new_page:
            sp.spgist_init_page(page, _leaf_flags(r.stores_nulls))
        if r.offnum_leaf != r.offnum_head_leaf:
            # normal case: the tuple was added by SpGistPageAddNewItem
            sp.add_or_replace_tuple(page, r.leaf_tuple, r.offnum_leaf)
            if r.offnum_head_leaf != x.INVALID_OFFSET_NUMBER:
                sp.set_leaf_next_offset(page, r.offnum_head_leaf, r.offnum_leaf)
        else:
            sp.replace_item(page, r.leaf_tuple, r.offnum_leaf)  # replacing a DEAD tuple
    elif block.block_id == 1 and r.offnum_parent != x.INVALID_OFFSET_NUMBER:
        sp.update_node_link(page, r.offnum_parent, r.node_i, _blkno(record, block, 0),
                            r.offnum_leaf)
    else:
        raise _fail(record, block, "unexpected block reference")


def _redo_move_leafs(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    r = x.SpgxlogMoveLeafs.parse(record.main_data)
    last = r.to_insert[-1]
    if block.block_id == 1:  # destination
        if r.new_page:
            sp.spgist_init_page(page, _leaf_flags(r.stores_nulls))
        for tup, off in zip(r.leaf_tuples, r.to_insert, strict=True):
            sp.add_or_replace_tuple(page, tup, off)
    elif block.block_id == 0:  # source
        first = sp.SPGIST_PLACEHOLDER if r.state.is_build else sp.SPGIST_REDIRECT
        sp.multi_delete(page, r.to_delete, first, sp.SPGIST_PLACEHOLDER,
                        _blkno(record, block, 1), last, r.state.redirect_xid)
    elif block.block_id == 2:  # parent
        sp.update_node_link(page, r.offnum_parent, r.node_i, _blkno(record, block, 1), last)
    else:
        raise _fail(record, block, "unexpected block reference")


def _redo_add_node(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    r = x.SpgxlogAddNode.parse(record.main_data)
    if record.block(1) is None:
        if block.block_id != 0 or r.parent_blk != -1:
            raise _fail(record, block, "unexpected block reference")
        sp.replace_item(page, r.inner_tuple, r.offnum)  # update in place
        return
    blkno_new = _blkno(record, block, 1)
    if block.block_id == 1:  # the enlarged tuple's new page
        if r.new_page:
            sp.spgist_init_page(page, 0)
        sp.add_or_replace_tuple(page, r.inner_tuple, r.offnum_new)
    elif block.block_id == 0:  # the old tuple becomes a redirect (placeholder in a build)
        if r.state.is_build:
            dead = sp.form_dead_tuple(sp.SPGIST_PLACEHOLDER, sp.INVALID_BLOCK_NUMBER,
                                      sp.INVALID_OFFSET_NUMBER, r.state.redirect_xid)
        else:
            dead = sp.form_dead_tuple(sp.SPGIST_REDIRECT, blkno_new, r.offnum_new,
                                      r.state.redirect_xid)
        sp.replace_item(page, dead, r.offnum)
        if r.state.is_build:
            sp.add_placeholders(page, 1)
        else:
            sp.add_redirections(page, 1)
    elif block.block_id != 2 or r.parent_blk != 2:
        raise _fail(record, block, "unexpected block reference")
    if r.parent_blk == block.block_id:
        sp.update_node_link(page, r.offnum_parent, r.node_i, blkno_new, r.offnum_new)


def _redo_split_tuple(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    r = x.SpgxlogSplitTuple.parse(record.main_data)
    if block.block_id == 1 and not r.postfix_blk_same:
        if r.new_page:
            sp.spgist_init_page(page, 0)
        sp.add_or_replace_tuple(page, r.postfix_tuple, r.offnum_postfix)
    elif block.block_id == 0:
        sp.replace_item(page, r.prefix_tuple, r.offnum_prefix)
        if r.postfix_blk_same:
            sp.add_or_replace_tuple(page, r.postfix_tuple, r.offnum_postfix)
    else:
        raise _fail(record, block, "unexpected block reference")


def _add_selected_leaves(r: x.SpgxlogPickSplit, page: bytearray, *, dest: bool) -> None:
    """The leaf tuples PICKSPLIT puts on the destination page (`dest`) or the source."""
    for tup, off, sel in zip(r.leaf_tuples, r.to_insert, r.leaf_page_select, strict=True):
        if bool(sel) == dest:
            sp.add_or_replace_tuple(page, tup, off)


def _redo_picksplit(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    r = x.SpgxlogPickSplit.parse(record.main_data)
    blkno_inner = _blkno(record, block, 2)
    if block.block_id == 0:  # source leaf: deletions (or a re-init), then its tuples
        if r.is_root_split:
            raise _fail(record, block, "root split with a source leaf reference")
        if r.init_src:
            sp.spgist_init_page(page, _leaf_flags(r.stores_nulls))
        elif r.state.is_build:
            sp.multi_delete(page, r.to_delete, sp.SPGIST_PLACEHOLDER, sp.SPGIST_PLACEHOLDER,
                            sp.INVALID_BLOCK_NUMBER, sp.INVALID_OFFSET_NUMBER,
                            r.state.redirect_xid)
        else:
            sp.multi_delete(page, r.to_delete, sp.SPGIST_REDIRECT, sp.SPGIST_PLACEHOLDER,
                            blkno_inner, r.offnum_inner, r.state.redirect_xid)
        _add_selected_leaves(r, page, dest=False)
    elif block.block_id == 1:  # new leaf page: its tuples
        if r.init_dest:
            sp.spgist_init_page(page, _leaf_flags(r.stores_nulls))
        _add_selected_leaves(r, page, dest=True)
    elif block.block_id == 2:
        if r.init_inner:
            sp.spgist_init_page(page, sp.SPGIST_NULLS if r.stores_nulls else 0)
        sp.add_or_replace_tuple(page, r.inner_tuple, r.offnum_inner)
        if r.inner_is_parent:
            sp.update_node_link(page, r.offnum_parent, r.node_i, blkno_inner, r.offnum_inner)
    elif block.block_id == 3:
        sp.update_node_link(page, r.offnum_parent, r.node_i, blkno_inner, r.offnum_inner)
    else:
        raise _fail(record, block, "unexpected block reference")


def _swap_line_pointers(page: bytearray, a: int, b: int) -> None:
    pa = page_ops.SIZE_OF_PAGE_HEADER + (a - 1) * page_ops.ITEM_ID_SIZE
    pb = page_ops.SIZE_OF_PAGE_HEADER + (b - 1) * page_ops.ITEM_ID_SIZE
    page[pa:pa + 4], page[pb:pb + 4] = page[pb:pb + 4], page[pa:pa + 4]


def _redo_vacuum_leaf(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if block.block_id != 0:
        raise _fail(record, block, "unexpected block reference")
    r = x.SpgxlogVacuumLeaf.parse(record.main_data)
    xid = r.state.redirect_xid
    bad = sp.INVALID_BLOCK_NUMBER, sp.INVALID_OFFSET_NUMBER
    sp.multi_delete(page, r.to_dead, sp.SPGIST_DEAD, sp.SPGIST_DEAD, *bad, xid)
    sp.multi_delete(page, r.to_placeholder, sp.SPGIST_PLACEHOLDER, sp.SPGIST_PLACEHOLDER,
                    *bad, xid)
    nmax = page_ops.page_get_max_offset(page)
    for src, dest in zip(r.move_src, r.move_dest, strict=True):  # see vacuumLeafPage()
        if not (1 <= src <= nmax and 1 <= dest <= nmax):
            raise _fail(record, block, f"move {src} -> {dest} out of range")
        _swap_line_pointers(page, src, dest)
    sp.multi_delete(page, r.move_src, sp.SPGIST_PLACEHOLDER, sp.SPGIST_PLACEHOLDER, *bad, xid)
    for src, dest in zip(r.chain_src, r.chain_dest, strict=True):
        if sp.tupstate(page, src) != sp.SPGIST_LIVE:
            raise _fail(record, block, f"chain source {src} is not a live tuple")
        sp.set_leaf_next_offset(page, src, dest)


def _redo_vacuum_root(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if block.block_id != 0:
        raise _fail(record, block, "unexpected block reference")
    r = x.SpgxlogVacuumRoot.parse(record.main_data)
    index_tuples.page_index_multi_delete(page, r.offsets)  # the offsets are in order


def _redo_vacuum_redirect(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if block.block_id != 0:
        raise _fail(record, block, "unexpected block reference")
    r = x.SpgxlogVacuumRedirect.parse(record.main_data)
    for off in r.offsets:  # redirects become plain placeholders
        if sp.tupstate(page, off) != sp.SPGIST_REDIRECT:
            raise _fail(record, block, f"tuple {off} is not a redirect")
        sp.set_dead_tuple_placeholder(page, off)
    sp.add_redirections(page, -r.n_to_placeholder)
    sp.add_placeholders(page, r.n_to_placeholder)
    if r.first_placeholder != x.INVALID_OFFSET_NUMBER:  # drop placeholders at the end
        nmax = page_ops.page_get_max_offset(page)
        todelete = list(range(r.first_placeholder, nmax + 1))
        sp.add_placeholders(page, -len(todelete))
        index_tuples.page_index_multi_delete(page, todelete)


_HANDLERS: dict[int, Callable[[DecodedRecord, BlockRef, bytearray], None]] = {
    x.XLOG_SPGIST_ADD_LEAF: _redo_add_leaf,
    x.XLOG_SPGIST_MOVE_LEAFS: _redo_move_leafs,
    x.XLOG_SPGIST_ADD_NODE: _redo_add_node,
    x.XLOG_SPGIST_SPLIT_TUPLE: _redo_split_tuple,
    x.XLOG_SPGIST_PICKSPLIT: _redo_picksplit,
    x.XLOG_SPGIST_VACUUM_LEAF: _redo_vacuum_leaf,
    x.XLOG_SPGIST_VACUUM_ROOT: _redo_vacuum_root,
    x.XLOG_SPGIST_VACUUM_REDIRECT: _redo_vacuum_redirect,
}

SPGIST_RECORD_TYPES: frozenset[int] = frozenset(_HANDLERS)


def spg_redo_block(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    """Apply SP-GiST `record` to `block`'s page, in place (spgxlog.c semantics).

    Requires: `page` is the block's state before the record (all zeros for a
    WILL_INIT block); the caller stamps pd_lsn afterwards.
    Raises: UnsupportedRecordError for an unknown record type; RedoError when
    the page cannot take the change (PostgreSQL would ERROR/PANIC) or the
    record has no such block.
    """
    try:
        run_handler(_HANDLERS, record.info & _INFO_MASK, record, block, page, _fail)
    except RedoError as e:
        if str(e).startswith("SPGist/"):
            raise
        raise _fail(record, block, str(e)) from e


def spg_mask(page: bytearray, blkno: int = 0) -> None:
    """spg_mask (spgxlog.c), in place: LSN, checksum, header hint bits, and the
    unused space when pd_lower looks set."""
    bufmask.mask_page_lsn_and_checksum(page)
    bufmask.mask_page_hint_bits(page)
    if page_ops.get_lower(page) >= page_ops.SIZE_OF_PAGE_HEADER:
        bufmask.mask_unused_space(page)


register(RM_SPGIST_ID, spg_redo_block)
bufmask.register(RM_SPGIST_ID, spg_mask)
