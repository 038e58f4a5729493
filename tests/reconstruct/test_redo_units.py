"""Dispatcher rules, struct parsers and heap redo details without a server."""

from __future__ import annotations

import struct

import pytest

from strata.errors import RedoError, UnsupportedRecordError
from strata.lsn import Lsn
from strata.pg.constants import BLCKSZ
from strata.reconstruct import mask as bm
from strata.reconstruct.redo import (
    RM_GENERIC_ID,
    RM_HEAP2_ID,
    RM_HEAP_ID,
    RM_SEQ_ID,
    RM_STANDBY_ID,
    page_ops,
    redo_block,
    redo_block_inplace,
    redo_blocks,
    registered_rmgrs,
)
from strata.reconstruct.redo.heap import HEAPBLOCKS_PER_PAGE, VM_CONTENTS, vm_location
from strata.wal.record import (
    BKPBLOCK_HAS_DATA,
    BKPBLOCK_WILL_INIT,
    BKPIMAGE_APPLY,
    BlockImage,
    BlockRef,
    DecodedRecord,
    RelFileLocator,
)
from strata.wal.rmgr import heap as h
from strata.wal.rmgr import heap2 as h2
from strata.wal.rmgr.sequence import XlSeqRec

REL = RelFileLocator(1663, 5, 16384)


def _block(block_id: int = 0, *, data: bytes = b"", flags: int = 0, fork: int = 0,
           blkno: int = 0, image: BlockImage | None = None) -> BlockRef:
    ff = fork | flags | (BKPBLOCK_HAS_DATA if data else 0)
    return BlockRef(block_id, REL, fork, blkno, ff, image, data)


def _record(rmid: int, info: int, blocks: tuple[BlockRef, ...], main: bytes = b"",
            xid: int = 1000, lsn: int = 0x1000000) -> DecodedRecord:
    return DecodedRecord(Lsn(lsn), Lsn(lsn + 0x100), 0, xid, Lsn(0), info, rmid, 0, blocks, main)


def _heap_insert(offnum: int, payload: bytes, *, init: bool = False, flags: int = 0,
                 lsn: int = 0x1000000) -> DecodedRecord:
    hdr = struct.pack("<HHB", 2, 0x0802, 24)  # natts 2, HASVARWIDTH|XMAX_INVALID, hoff 24
    blk = _block(data=hdr + b"\x00" + payload, flags=BKPBLOCK_WILL_INIT if init else 0)
    info = h.XLOG_HEAP_INSERT | (h.XLOG_HEAP_INIT_PAGE if init else 0)
    return _record(RM_HEAP_ID, info, (blk,), struct.pack("<HB", offnum, flags), lsn=lsn)


def test_builtin_rmgrs_are_registered() -> None:
    assert {0, RM_HEAP_ID, RM_HEAP2_ID, RM_SEQ_ID, RM_GENERIC_ID} <= registered_rmgrs()


def test_rmgr_without_redo_raises_unsupported_naming_it() -> None:
    rec = _record(RM_STANDBY_ID, 0x00, (_block(data=b"x"),))  # Standby: no page redo
    with pytest.raises(UnsupportedRecordError) as ei:
        redo_block(rec, 0, page_ops.new_page())
    assert ei.value.rmgr == "Standby" and ei.value.record_type == "LOCK"
    assert ei.value.lsn == rec.lsn


def test_record_type_without_page_redo_raises_unsupported() -> None:
    rec = _record(RM_HEAP2_ID, h2.XLOG_HEAP2_NEW_CID, (_block(),))
    with pytest.raises(UnsupportedRecordError):
        redo_block(rec, 0, page_ops.new_page())


def test_insert_init_builds_tuple_like_heap_xlog_insert() -> None:
    rec = _heap_insert(1, b"hello", init=True)
    page = redo_block(rec, 0, None)
    assert page_ops.page_get_lsn(page) == rec.end_lsn
    assert page_ops.page_get_max_offset(page) == 1
    tup = page_ops.get_item(page, 1)
    xmin, xmax, cid = struct.unpack_from("<III", tup)
    assert (xmin, xmax, cid) == (1000, 0, 0)
    assert struct.unpack_from("<HHH", tup, 12) == (0, 0, 1)  # ctid (0,1)
    assert tup[22] == 24 and tup[24:] == b"hello"
    assert len(tup) == 23 + 1 + 5


def test_inplace_redo_edits_the_given_page_and_matches_copying_redo() -> None:
    first = redo_block(_heap_insert(1, b"a", init=True), 0, None)
    rec = _heap_insert(2, b"bb", lsn=0x2000000)
    work = bytearray(first)
    out = redo_block_inplace(rec, 0, work)
    assert out is work
    assert bytes(out) == redo_block(rec, 0, first)
    assert first != bytes(out)  # the copying variant left its input alone


def test_page_already_past_record_is_returned_unchanged() -> None:
    first = redo_block(_heap_insert(1, b"a", init=True), 0, None)
    old = _heap_insert(2, b"b", lsn=0x10)  # ends long before the page's LSN
    assert redo_block(old, 0, first) == first


def test_apply_image_wins_and_gets_end_lsn() -> None:
    img_page = page_ops.new_page()
    page_ops.page_add_item(img_page, b"image-item")
    img = BlockImage(bytes(img_page), BKPIMAGE_APPLY, 0, 0)
    rec = _record(RM_STANDBY_ID, 0x00, (_block(image=img),))  # even for an rmgr without redo
    out = redo_block(rec, 0, None)
    assert page_ops.get_item(out, 1) == b"image-item"
    assert page_ops.page_get_lsn(out) == rec.end_lsn


def test_missing_main_fork_page_is_an_error_but_vm_reads_as_zeros() -> None:
    with pytest.raises(RedoError):
        redo_block(_heap_insert(1, b"a"), 0, None)
    vis = _record(RM_HEAP2_ID, h2.XLOG_HEAP2_VISIBLE,
                  (_block(0, fork=2, blkno=0), _block(1, blkno=5)), struct.pack("<IB", 700, 3))
    pages = redo_blocks(vis, {1: page_ops.new_page()})
    vm = pages[0]
    _b, byte, off = vm_location(5)
    assert (vm[VM_CONTENTS + byte] >> off) & 3 == 3
    assert page_ops.page_is_all_visible(pages[1])


def test_vm_block_of_insert_clears_bits_of_its_heap_block() -> None:
    vm = bytearray(page_ops.new_page())
    vm[VM_CONTENTS:VM_CONTENTS + 4] = b"\xff\xff\xff\xff"
    heap = redo_block(_heap_insert(1, b"a", init=True), 0, None)
    rec = _record(RM_HEAP_ID, h.XLOG_HEAP_INSERT,
                  (_block(0, data=struct.pack("<HHB", 2, 0x0802, 24) + b"\0b", blkno=6),
                   _block(1, fork=2, blkno=0)),
                  struct.pack("<HB", 2, h.XLH_INSERT_ALL_VISIBLE_CLEARED))
    out = redo_blocks(rec, {0: heap, 1: bytes(vm)})
    _b, byte, off = vm_location(6)
    assert out[1][VM_CONTENTS + byte] == 0xFF & ~(3 << off)
    assert out[1][VM_CONTENTS] == 0xFF  # other heap blocks untouched
    assert HEAPBLOCKS_PER_PAGE == (BLCKSZ - 24) * 4


def test_sequence_log_reinitialises_page_with_magic() -> None:
    tup = bytes(range(40))
    rec = _record(RM_SEQ_ID, 0, (_block(flags=BKPBLOCK_WILL_INIT),),
                  struct.pack("<III", 1663, 5, 99) + tup)
    page = redo_block(rec, 0, None)
    assert page_ops.get_special(page) == BLCKSZ - 8
    assert struct.unpack_from("<I", page, BLCKSZ - 8)[0] == 0x1717
    assert page_ops.get_item(page, 1) == tup
    assert XlSeqRec.parse(rec.main_data).locator == RelFileLocator(1663, 5, 99)


def test_generic_delta_applies_fragments_and_zeroes_hole() -> None:
    page = bytearray(page_ops.new_page())
    page[100:104] = b"junk"
    delta = (struct.pack("<HH", 8000, 3) + b"abc"
             + struct.pack("<HH", 12, 4) + struct.pack("<HH", 40, 7936))  # pd_lower, pd_upper
    out = redo_block(_record(RM_GENERIC_ID, 0, (_block(data=delta),)), 0, page)
    assert out[8000:8003] == b"abc" and page_ops.get_lower(out) == 40
    assert out[100:104] == b"\0\0\0\0"  # between pd_lower and pd_upper: zeroed


def test_prune_block_data_parses_real_record() -> None:
    # PRUNE_VACUUM_SCAN block 0 data and main data taken from a PostgreSQL 18.6 record
    data = bytes.fromhex("07000d0004001a00080027000c0041001c004e0010005b001400750018000600"
                         "110022003300550066007700020082008500")
    main = bytes.fromhex("35ecf5020000")
    xl = h2.XlHeapPrune.parse(main)
    assert xl.flags & h2.XLHP_CLEANUP_LOCK and xl.snapshot_conflict_horizon == 757
    bd = h2.PruneBlockData.parse(data, xl.flags)
    assert bd.redirected[:2] == ((13, 4), (26, 8)) and len(bd.redirected) == 7
    assert bd.nowdead == (17, 34, 51, 85, 102, 119)
    assert bd.nowunused == (130, 133)
    assert bd.plans == ()


def test_prune_freeze_plans_precede_offsets() -> None:
    plans = struct.pack("<Hxx", 1) + struct.pack("<IHHBxH", 0, 0x0002, 0x0B00, 0, 2)
    unused = struct.pack("<HH", 1, 9)
    frz = struct.pack("<HH", 3, 4)
    flags = h2.XLHP_HAS_FREEZE_PLANS | h2.XLHP_HAS_NOW_UNUSED_ITEMS
    bd = h2.PruneBlockData.parse(plans + unused + frz, flags)
    assert bd.nowunused == (9,)
    assert bd.plans[0].offsets == (3, 4) and bd.plans[0].t_infomask == 0x0B00


def test_update_block_data_prefix_and_suffix() -> None:
    data = struct.pack("<HH", 5, 7) + struct.pack("<HHB", 3, 0x2802, 24) + b"\x00rest"
    bd = h.HeapUpdateBlockData.parse(
        data, h.XLH_UPDATE_PREFIX_FROM_OLD | h.XLH_UPDATE_SUFFIX_FROM_OLD)
    assert (bd.prefixlen, bd.suffixlen, bd.header.t_hoff, bd.tuple_data) == (5, 7, 24, b"\x00rest")
    up = h.XlHeapUpdate.parse(struct.pack("<IHBBIH", 10, 3, 1, 0x60, 0, 9))
    assert (up.old_xmax, up.old_offnum, up.new_offnum, up.flags) == (10, 3, 9, 0x60)


def test_multi_insert_tuples_are_short_aligned() -> None:
    t1 = struct.pack("<HHHB", 3, 2, 0x0800, 24) + b"abc"          # 10 bytes, next at 10
    t2 = struct.pack("<HHHB", 1, 2, 0x0800, 24) + b"z"            # starts at 10
    bd = h2.parse_multi_insert_tuples(t1 + t2, 2)
    assert [t.data for t in bd] == [b"abc", b"z"]
    t1odd = struct.pack("<HHHB", 2, 2, 0x0800, 24) + b"ab"        # 9 bytes, pad to 10
    bd = h2.parse_multi_insert_tuples(t1odd + b"\0" + t2, 2)
    assert [t.data for t in bd] == [b"ab", b"z"]


def test_heap_mask_clears_hint_bits_cid_and_padding() -> None:
    page = redo_block(_heap_insert(1, b"hello", init=True), 0, None)
    p = bytearray(page)
    off = page_ops.item_offset(p, 1)
    struct.pack_into("<H", p, off + 20, 0x0802 | 0x0100)  # + XMIN_COMMITTED hint
    struct.pack_into("<I", p, off + 8, 77)
    p[off + 29] = 0xEE  # padding after the 29-byte tuple
    page_ops.page_set_all_visible(p)
    a, b = bytearray(page), bytearray(p)
    bm.heap_mask(a, 0)
    bm.heap_mask(b, 0)
    assert a == b
    assert bm.masked(RM_HEAP_ID, p, 0) == a


def test_multi_insert_init_fast_path_equals_page_add_item_appends() -> None:
    from strata.reconstruct.redo.heap import build_new_tuple

    bodies = [b"\x00" + bytes([65 + i]) * (7 + 5 * i) for i in range(12)]
    data = b""
    for body in bodies:
        data += b"\0" * (len(data) % 2) + struct.pack("<HHHB", len(body), 2, 0x0802, 24) + body
    rec = _record(RM_HEAP2_ID, h2.XLOG_HEAP2_MULTI_INSERT | h2.XLOG_HEAP_INIT_PAGE,
                  (_block(data=data, flags=BKPBLOCK_WILL_INIT, blkno=3),),
                  struct.pack("<BxH", 0, len(bodies)))
    page = redo_block(rec, 0, None)
    expected = page_ops.new_page()
    for i, body in enumerate(bodies):
        tup = build_new_tuple(1000, h.XlHeapHeader(2, 0x0802, 24), body, 3, i + 1)
        assert page_ops.page_add_item(expected, tup, i + 1, overwrite=True, is_heap=True) == i + 1
    page_ops.page_set_lsn(expected, rec.end_lsn)
    assert page == bytes(expected)


def test_an_index_rmgrs_redo_names_the_record_when_its_data_is_malformed() -> None:
    """Every index AM dispatches through `run_handler`: a handler's IndexError /
    ValueError / struct.error becomes a RedoError naming rmgr, record type, LSN and
    block; a record type without a handler is unsupported, never skipped."""
    from strata.reconstruct.redo import RM_BTREE_ID, run_handler
    from strata.reconstruct.redo.btree import btree_redo_block
    from strata.wal.rmgr import btree as xb

    block = BlockRef(0, REL, 0, 3, 0, None, b"\x01")
    rec = _record(RM_BTREE_ID, xb.XLOG_BTREE_INSERT_LEAF, (block,), main=struct.pack("<H", 1))
    with pytest.raises(RedoError, match=r"^Btree/INSERT_LEAF at 0/1000000, block 0 .*blk 3\): "
                                         r"malformed page or record data"):
        btree_redo_block(rec, block, bytearray(10))  # a page cut short

    def broken(r: DecodedRecord, b: BlockRef, p: bytearray) -> None:
        raise struct.error("cut short")

    def fail(r: DecodedRecord, b: BlockRef, what: str) -> RedoError:
        return RedoError(what)

    with pytest.raises(RedoError, match="malformed page or record data: cut short"):
        run_handler({1: broken}, 1, rec, block, bytearray(BLCKSZ), fail)
    with pytest.raises(UnsupportedRecordError):
        run_handler({1: broken}, 2, rec, block, bytearray(BLCKSZ), fail)
