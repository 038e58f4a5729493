"""Btree redo without a server: page re-creation against real server pages,
posting-list helpers (nbtdedup.c semantics), VACUUM's compaction order,
btree_mask, and the loud failures.

The "server page" samples are verification images PostgreSQL 18.6 wrote (with
wal_consistency_checking = 'all') for records of the btree oracle workload in
test_btree_oracle.py; these blocks are WILL_INIT, so redo needs no earlier
page. Each is given as the bytes up to pd_lower and from pd_upper on (the rest
is zero or masked).
"""

from __future__ import annotations

import struct

import pytest

from strata.errors import RedoError, UnsupportedRecordError
from strata.lsn import Lsn
from strata.pg.constants import BLCKSZ
from strata.reconstruct import mask as bufmask
from strata.reconstruct.redo import RM_BTREE_ID, page_ops, redo_block
from strata.reconstruct.redo import btree_page as bp
from strata.reconstruct.redo.btree import BTREE_RECORD_TYPES, btree_mask, btree_redo_block
from strata.wal.record import (
    BKPBLOCK_HAS_DATA,
    BKPBLOCK_WILL_INIT,
    BlockRef,
    DecodedRecord,
    RelFileLocator,
)
from strata.wal.rmgr import btree as x

REL = RelFileLocator(1663, 5, 16387)
END = Lsn(0x1AD9700)


def _record(xl_info: int, main: bytes, blocks: list[tuple[int, int, bytes, bool]]) -> DecodedRecord:
    """blocks: (block_id, blkno, data, will_init)."""
    refs = tuple(
        BlockRef(block_id=bid, rlocator=REL, fork=0, blkno=blkno,
                 fork_flags=(BKPBLOCK_HAS_DATA if data else 0) | (BKPBLOCK_WILL_INIT if wi else 0),
                 image=None, data=data)
        for bid, blkno, data, wi in blocks)
    return DecodedRecord(lsn=Lsn(END - 0x100), end_lsn=END, xl_tot_len=0, xl_xid=0,
                         xl_prev=Lsn(0), xl_info=xl_info, xl_rmid=RM_BTREE_ID, xl_crc=0,
                         blocks=refs, main_data=main)


def _server_page(head_hex: str, tail_hex: str) -> bytes:
    head, tail = bytes.fromhex(head_hex), bytes.fromhex(tail_hex)
    return head + bytes(BLCKSZ - len(head) - len(tail)) + tail


def _masked(page: bytes | bytearray) -> bytes:
    p = bytearray(page)
    btree_mask(p, 0)
    return bytes(p)


# -- re-created pages versus the server's ---------------------------------------------

def test_halfdead_leaf_is_recreated_like_the_server() -> None:
    rec = _record(0xB2, bytes.fromhex("01000000010000000000000002000000ffffffff"),
                  [(0, 1, b"", True), (1, 3, b"", False)])
    ours = redo_block(rec, 0, None)
    server = _server_page("000000001873ad01000000001c00e81ff01f042000000000e89f1000",
                          "ffffffff0000082000000000020000000000000011000000")
    assert _masked(ours) == _masked(server)
    assert page_ops.page_get_lsn(ours) == END


def test_unlinked_leaf_is_a_deleted_page_holding_safexid() -> None:
    rec = _record(0x82, bytes.fromhex(
        "00000000020000000000000002000000f6020000000000000000000002000000ffffffff"),
        [(0, 1, b"", True), (2, 2, b"", False)])
    ours = redo_block(rec, 0, None)
    server = _server_page("000000000097ad01000000002000f01ff01f042000000000f602000000000000",
                          "00000000020000000000000005010000")
    assert _masked(ours) == _masked(server)
    assert page_ops.get_lower(ours) == 32 and page_ops.get_upper(ours) == page_ops.get_special(ours)
    assert bp.get_flags(ours) == bp.BTP_DELETED | bp.BTP_HAS_FULLXID | bp.BTP_LEAF


def test_meta_cleanup_rewrites_the_metapage_like_the_server() -> None:
    rec = _record(0xE2, b"", [(0, 0, bytes.fromhex(
        "04000000030000000100000009000000000000000700000001000000"), True)])
    ours = redo_block(rec, 0, None)
    server = _server_page(
        "000000005012b00125f400004800f01ff01f0420000000006231050004000000030000000100000009"
        "000000000000000700000000000000000000000000f0bf0100000000000000",
        "00000000000000000000000008000000")
    assert _masked(ours) == _masked(server)
    # unmasked too: nothing but LSN/checksum may differ on a metapage
    assert ours[24:] == server[24:] and ours[10:24] == server[10:24]


def test_metadata_for_a_block_other_than_zero_is_refused() -> None:
    rec = _record(0xE2, b"", [(0, 7, bytes.fromhex(
        "04000000030000000100000009000000000000000700000001000000"), True)])
    with pytest.raises(RedoError):
        redo_block(rec, 0, None)


# -- synthetic pages ----------------------------------------------------------------

def _itup(key: int, blk: int, off: int) -> bytes:
    """A plain 16-byte int4 leaf tuple (t_tid, t_info = 16, key, padding)."""
    return struct.pack("<HHHHi4x", blk >> 16, blk & 0xFFFF, off, 16, key)


def _leaf(items: list[bytes], *, rightmost: bool = True, level: int = 0) -> bytearray:
    page = bytearray(BLCKSZ)
    bp.bt_pageinit(page)
    bp.set_opaque(page, 0, 0 if rightmost else 99, level, bp.BTP_LEAF if level == 0 else 0, 0)
    for i, it in enumerate(items, start=1):
        assert page_ops.page_add_item(page, it, i) == i
    return page


def test_insert_leaf_shifts_line_pointers_and_stamps_lsn() -> None:
    page = _leaf([_itup(1, 0, 1), _itup(3, 0, 3)])
    newtup = _itup(2, 0, 2)
    rec = _record(x.XLOG_BTREE_INSERT_LEAF, struct.pack("<H", 2), [(0, 1, newtup, False)])
    out = redo_block(rec, 0, page)
    assert [page_ops.get_item(out, i)[8:12] for i in (1, 2, 3)] == [
        struct.pack("<i", k) for k in (1, 2, 3)]
    assert page_ops.page_get_lsn(out) == END
    assert page == _leaf([_itup(1, 0, 1), _itup(3, 0, 3)])  # input untouched


def test_insert_upper_clears_incomplete_split_on_the_child() -> None:
    child = _leaf([_itup(1, 0, 1)])
    bp.set_flags(child, bp.BTP_LEAF | bp.BTP_INCOMPLETE_SPLIT)
    rec = _record(x.XLOG_BTREE_INSERT_UPPER, struct.pack("<H", 2),
                  [(0, 3, _itup(5, 7, 1), False), (1, 1, b"", False)])
    out = redo_block(rec, 1, child)
    assert bp.get_flags(out) == bp.BTP_LEAF


def test_mark_halfdead_parent_takes_right_downlink_and_drops_it() -> None:
    # internal page: hikey-less rightmost, downlinks to blocks 10, 11, 12
    parent = _leaf([_itup(0, 10, 1), _itup(5, 11, 1), _itup(9, 12, 1)], level=1)
    rec = _record(x.XLOG_BTREE_MARK_PAGE_HALFDEAD,
                  struct.pack("<H2xIIII", 2, 11, 10, 12, 0xFFFFFFFF),
                  [(0, 11, b"", True), (1, 3, b"", False)])
    out = redo_block(rec, 1, parent)
    assert page_ops.page_get_max_offset(out) == 2
    assert bp.tid_block(page_ops.get_item(out, 2)) == 12  # key 5 now points right
    assert page_ops.get_item(out, 2)[8:12] == struct.pack("<i", 5)


def test_vacuum_deletes_and_clears_cycle_id_but_delete_keeps_it() -> None:
    for info, cycle in ((x.XLOG_BTREE_VACUUM, 0), (x.XLOG_BTREE_DELETE, 77)):
        page = _leaf([_itup(k, 0, k) for k in range(1, 6)])
        bp.set_flags(page, bp.BTP_LEAF | bp.BTP_HAS_GARBAGE)
        bp.set_cycleid(page, 77)
        main = (struct.pack("<HH", 2, 0) if info == x.XLOG_BTREE_VACUUM
                else struct.pack("<IHH?", 0, 2, 0, False))
        rec = _record(info, main, [(0, 1, struct.pack("<HH", 2, 4), False)])
        out = redo_block(rec, 0, page)
        keys = [struct.unpack_from("<i", page_ops.get_item(out, i), 8)[0] for i in (1, 2, 3)]
        assert keys == [1, 3, 5] and page_ops.page_get_max_offset(out) == 3
        assert bp.get_flags(out) == bp.BTP_LEAF
        assert bp.get_opaque(out)[4] == cycle


# -- posting lists ------------------------------------------------------------------

def _tid(blk: int, off: int) -> bytes:
    return struct.pack("<HHH", blk >> 16, blk & 0xFFFF, off)


def test_form_posting_lays_out_key_then_maxaligned_tid_array() -> None:
    base = _itup(42, 0, 1)
    tids = [_tid(0, 1), _tid(0, 2), _tid(1, 7)]
    tup = bp.bt_form_posting(base, tids)
    assert len(tup) == 40 == bp.itup_size(tup)  # MAXALIGN(16 + 3 * 6)
    assert bp.is_posting(tup) and not bp.is_pivot(tup)
    assert bp.n_posting(tup) == 3 and bp.posting_offset(tup) == 16
    assert bp.posting_tids(tup) == tids
    assert tup[8:12] == struct.pack("<i", 42) and tup[34:] == bytes(6)  # zero padding
    plain = bp.bt_form_posting(tup, [_tid(3, 4)])
    assert len(plain) == 16 and not bp.is_posting(plain) and plain[0:6] == _tid(3, 4)


def test_update_posting_drops_positions_and_may_become_plain() -> None:
    tup = bp.bt_form_posting(_itup(1, 0, 1), [_tid(0, i) for i in range(1, 5)])
    two = bp.bt_update_posting(tup, (0, 2))
    assert bp.posting_tids(two) == [_tid(0, 2), _tid(0, 4)] and len(two) == 32
    one = bp.bt_update_posting(tup, (0, 1, 3))
    assert not bp.is_posting(one) and one[0:6] == _tid(0, 3) and len(one) == 16
    with pytest.raises(RedoError):
        bp.bt_update_posting(tup, (0, 1, 2, 3))


def test_swap_posting_puts_new_tid_inside_and_returns_old_max() -> None:
    oposting = bp.bt_form_posting(_itup(1, 0, 1), [_tid(0, 1), _tid(0, 3), _tid(0, 5)])
    newitem = bytearray(_itup(1, 0, 4))
    nposting = bp.bt_swap_posting(newitem, oposting, 2)
    assert len(nposting) == len(oposting)
    assert bp.posting_tids(nposting) == [_tid(0, 1), _tid(0, 3), _tid(0, 4)]
    assert bytes(newitem[0:6]) == _tid(0, 5)
    with pytest.raises(RedoError):
        bp.bt_swap_posting(bytearray(_itup(1, 0, 4)), oposting, 3)


def test_insert_post_splits_posting_list_then_inserts_final_item() -> None:
    posting = bp.bt_form_posting(_itup(7, 0, 1), [_tid(0, 1), _tid(0, 3), _tid(0, 5)])
    page = _leaf([bytes(posting)])
    orignew = _itup(7, 0, 4)
    rec = _record(x.XLOG_BTREE_INSERT_POST, struct.pack("<H", 2),
                  [(0, 1, struct.pack("<H", 2) + orignew, False)])
    out = redo_block(rec, 0, page)
    assert bp.posting_tids(page_ops.get_item(out, 1)) == [_tid(0, 1), _tid(0, 3), _tid(0, 4)]
    assert page_ops.get_item(out, 2)[0:6] == _tid(0, 5)


def test_dedup_merges_logged_intervals_only() -> None:
    items = [_itup(1, 0, 1), _itup(1, 0, 2), _itup(1, 0, 3), _itup(2, 0, 4), _itup(3, 0, 5),
             _itup(3, 0, 6)]
    page = _leaf(items)
    bp.set_flags(page, bp.BTP_LEAF | bp.BTP_HAS_GARBAGE)
    # one interval: 3 items from offset 1; the two key-3 tuples stay apart
    rec = _record(x.XLOG_BTREE_DEDUP, struct.pack("<H", 1), [(0, 1, struct.pack("<HH", 1, 3), False)])
    out = redo_block(rec, 0, page)
    assert page_ops.page_get_max_offset(out) == 4
    assert bp.posting_tids(page_ops.get_item(out, 1)) == [_tid(0, 1), _tid(0, 2), _tid(0, 3)]
    assert page_ops.get_item(out, 4) == items[5]
    assert not bp.get_flags(out) & bp.BTP_HAS_GARBAGE
    bad = _record(x.XLOG_BTREE_DEDUP, struct.pack("<H", 2), [(0, 1, struct.pack("<HH", 1, 3) * 2, False)])
    with pytest.raises(RedoError):
        redo_block(bad, 0, page)


# -- PageIndexMultiDelete -----------------------------------------------------------

def test_vacuum_packs_survivors_in_line_pointer_order() -> None:
    # items placed out of line-pointer order (item 1 lowest on the page), as
    # inserts in descending key order leave them; compactify_tuples then packs
    # the survivors from pd_special down in item order, not by old address
    page = bytearray(BLCKSZ)
    bp.bt_pageinit(page)
    bp.set_opaque(page, 0, 0, 0, bp.BTP_LEAF, 0)
    for k in (1, 2, 3, 4, 5):
        assert page_ops.page_add_item(page, _itup(k, 0, k), 1) == 1
    rec = _record(x.XLOG_BTREE_VACUUM, struct.pack("<HH", 3, 0),
                  [(0, 1, struct.pack("<HHH", 1, 3, 5), False)])
    out = redo_block(rec, 0, page)
    assert page_ops.page_get_max_offset(out) == 2
    special = page_ops.get_special(out)
    assert page_ops.item_offset(out, 1) == special - 16
    assert page_ops.item_offset(out, 2) == special - 32
    assert [page_ops.get_item(out, i)[8:12] for i in (1, 2)] == [
        struct.pack("<i", 4), struct.pack("<i", 2)]
    assert page_ops.get_upper(out) == special - 32
    bad = _record(x.XLOG_BTREE_VACUUM, struct.pack("<HH", 3, 0),
                  [(0, 1, struct.pack("<HHH", 2, 3, 9), False)])
    with pytest.raises(RedoError):
        redo_block(bad, 0, page)


# -- mask -------------------------------------------------------------------------

def test_btree_mask_ignores_hints_on_leaf_pages_only() -> None:
    leaf = _leaf([_itup(1, 0, 1), _itup(2, 0, 2)])
    hinted = bytearray(leaf)
    page_ops.item_id_mark_dead(hinted, 1)
    bp.set_flags(hinted, bp.BTP_LEAF | bp.BTP_HAS_GARBAGE | bp.BTP_SPLIT_END)
    bp.set_cycleid(hinted, 9)
    page_ops.page_set_lsn(hinted, 0x1234)
    assert _masked(hinted) == _masked(leaf)
    inner = _leaf([_itup(1, 5, 1), _itup(2, 6, 1)], level=1)
    dead = bytearray(inner)
    page_ops.item_id_mark_dead(dead, 1)
    assert _masked(dead) != _masked(inner)  # line-pointer flags count on internal pages


def test_btree_mask_is_registered_for_the_oracle() -> None:
    assert bufmask.mask_for(RM_BTREE_ID) is btree_mask


# -- loud failures ------------------------------------------------------------------

def test_unknown_btree_record_type_is_unsupported() -> None:
    rec = _record(0xF0, b"", [(0, 1, b"", False)])
    with pytest.raises(UnsupportedRecordError):
        btree_redo_block(rec, rec.blocks[0], _leaf([]))


def test_reuse_page_has_no_block_to_redo() -> None:
    rec = _record(x.XLOG_BTREE_REUSE_PAGE, bytes(25), [(0, 1, b"", False)])
    with pytest.raises(RedoError):
        redo_block(rec, 0, _leaf([]))


def test_insert_beyond_the_line_pointer_array_is_a_redo_error() -> None:
    rec = _record(x.XLOG_BTREE_INSERT_LEAF, struct.pack("<H", 5), [(0, 1, _itup(1, 0, 1), False)])
    with pytest.raises(RedoError):
        redo_block(rec, 0, _leaf([_itup(0, 0, 1)]))


def test_truncated_tuple_data_is_a_redo_error_not_a_crash() -> None:
    # a NEWROOT whose logged root contents end inside a tuple header
    rec = _record(x.XLOG_BTREE_NEWROOT, struct.pack("<II", 3, 1),
                  [(0, 3, _itup(1, 5, 1) + b"\x00\x00\x00", True), (1, 1, b"", False)])
    with pytest.raises(RedoError):
        redo_block(rec, 0, None)


def test_every_pg18_btree_record_type_has_a_redo_handler() -> None:
    assert frozenset(x.BTREE_RECORD_NAMES) == BTREE_RECORD_TYPES
    assert len(BTREE_RECORD_TYPES) == 15
