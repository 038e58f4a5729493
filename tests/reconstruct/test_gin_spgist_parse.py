"""GIN and SP-GiST WAL parsers, the posting-list codec and redo edges, without a server.

Samples: tests/data/wal/gin_spgist_records.json (made by
make_gin_spgist_samples.py): for every shape of pg_waldump description the
oracle workloads produce, the smallest real PostgreSQL 18.6 record (xl_info,
main data, block data) with the description pg_waldump 18.6 printed for it.
Our desc functions must print exactly that, which checks every field offset
and C struct padding. Real posting lists from those records must decode and
re-encode to the same bytes (PostgreSQL's varbyte encoding). The rest checks
what the oracle cannot see: truncated data, unknown types, pre-9.4
uncompressed leaves, split and vacuum records without their forced images.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strata.errors import RedoError, UnsupportedRecordError, WalDecodeError
from strata.lsn import Lsn
from strata.reconstruct.mask import masked
from strata.reconstruct.redo import RM_GIN_ID, RM_SPGIST_ID, page_ops, redo_block
from strata.reconstruct.redo import gin as gin_redo
from strata.reconstruct.redo import gin_page as gp
from strata.reconstruct.redo import spgist_page as sp
from strata.wal.record import (
    BKPBLOCK_HAS_DATA,
    BKPBLOCK_HAS_IMAGE,
    BKPIMAGE_APPLY,
    BlockImage,
    BlockRef,
    DecodedRecord,
    RelFileLocator,
)
from strata.wal.rmgr import gin, spgist

SAMPLES: dict[str, list[dict[str, Any]]] = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "wal" / "gin_spgist_records.json").read_text())
_REL = RelFileLocator(1663, 5, 16387)


def _record(rmid: int, xl_info: int, main: bytes, blocks: dict[int, bytes], *,
            image: int | None = None) -> DecodedRecord:
    """A record with `blocks` (block id -> data); `image`: block 0 also carries
    an image (its bimg_info)."""
    ids = sorted(set(blocks) | ({0} if image is not None else set()))
    refs = tuple(
        BlockRef(block_id=bid, rlocator=_REL, fork=0, blkno=10 + bid,
                 fork_flags=(BKPBLOCK_HAS_DATA if blocks.get(bid) else 0)
                 | (BKPBLOCK_HAS_IMAGE if image is not None and bid == 0 else 0),
                 image=(BlockImage(data=bytes(8192), bimg_info=image, hole_offset=0,
                                   hole_length=0) if image is not None and bid == 0 else None),
                 data=blocks.get(bid, b""))
        for bid in ids)
    return DecodedRecord(lsn=Lsn(0x1000000), end_lsn=Lsn(0x1000100), xl_tot_len=0, xl_xid=0,
                         xl_prev=Lsn(0), xl_info=xl_info, xl_rmid=rmid, xl_crc=0, blocks=refs,
                         main_data=main)


def _sample_record(rmid: int, s: dict[str, Any]) -> DecodedRecord:
    return _record(rmid, s["xl_info"], bytes.fromhex(s["main"]),
                   {int(k): bytes.fromhex(v) for k, v in s["blocks"].items()})


GIN_SAMPLES = SAMPLES["Gin"]
SPG_SAMPLES = SAMPLES["SPGist"]


def _ids(samples: list[dict[str, Any]]) -> list[str]:
    return [f"{s['type']}:{s['desc'][:40]}" for s in samples]


@pytest.mark.parametrize("s", GIN_SAMPLES, ids=_ids(GIN_SAMPLES))
def test_gin_desc_matches_pg_waldump(s: dict[str, Any]) -> None:
    rec = _sample_record(RM_GIN_ID, s)
    assert gin.gin_identify(s["xl_info"]) == s["type"]
    assert gin.gin_desc(rec) == s["desc"]


@pytest.mark.parametrize("s", SPG_SAMPLES, ids=_ids(SPG_SAMPLES))
def test_spgist_desc_matches_pg_waldump(s: dict[str, Any]) -> None:
    rec = _sample_record(RM_SPGIST_ID, s)
    assert spgist.spg_identify(s["xl_info"]) == s["type"]
    assert spgist.spg_desc(rec) == s["desc"]


def test_samples_cover_every_record_type() -> None:
    assert {s["type"] for s in GIN_SAMPLES} == set(gin.GIN_RECORD_NAMES.values())
    assert {s["type"] for s in SPG_SAMPLES} == set(spgist.SPGIST_RECORD_NAMES.values())


def test_gin_desc_of_block_images_names_the_image_kind() -> None:
    s = next(s for s in GIN_SAMPLES if s["desc"] == "isdata: F isleaf: T isdelete: T")
    main = bytes.fromhex(s["main"])
    data = bytes.fromhex(s["blocks"]["0"])
    verify = _record(RM_GIN_ID, s["xl_info"], main, {0: data}, image=0)
    apply = _record(RM_GIN_ID, s["xl_info"], main, {0: data}, image=BKPIMAGE_APPLY)
    assert gin.gin_desc(verify) == "isdata: F isleaf: T (full page image, for WAL verification)"
    assert gin.gin_desc(apply) == "isdata: F isleaf: T (full page image)"


def _parse_all_gin(rec: DecodedRecord) -> None:
    m = gin.parse_main(rec.info, rec.main_data)
    b0 = rec.block(0)
    data = b0.data if b0 is not None else b""
    if isinstance(m, gin.XlGinInsert):
        if not m.is_data:
            gin.GinInsertEntry.parse(data)
        elif m.is_leaf:
            gin.GinRecompressDataLeaf.parse(data)
        else:
            gin.GinInsertDataInternal.parse(data)
    elif rec.info == gin.XLOG_GIN_VACUUM_DATA_LEAF_PAGE:
        gin.GinRecompressDataLeaf.parse(data)
    elif isinstance(m, gin.XlGinInsertListPage):
        gin.split_index_tuples(data, m.ntuples, "tuples")


def _parse_all(rec: DecodedRecord) -> None:
    if rec.xl_rmid == RM_GIN_ID:
        _parse_all_gin(rec)
    else:
        spgist.parse_main(rec.info, rec.main_data)


@pytest.mark.parametrize("s", GIN_SAMPLES + SPG_SAMPLES,
                         ids=_ids(GIN_SAMPLES) + _ids(SPG_SAMPLES))
def test_truncated_payloads_raise_wal_decode_errors(s: dict[str, Any]) -> None:
    """Every cut of the main data (and of block 0's data) parses or raises
    WalDecodeError: never struct.error or IndexError."""
    rmid = RM_GIN_ID if s in GIN_SAMPLES else RM_SPGIST_ID
    main = bytes.fromhex(s["main"])
    blocks = {int(k): bytes.fromhex(v) for k, v in s["blocks"].items()}
    data = blocks.get(0, b"")
    cuts = [(main[:cut], blocks) for cut in range(0, len(main), max(1, len(main) // 64))]
    cuts += [(main, {**blocks, 0: data[:cut]})
             for cut in range(0, len(data), max(1, len(data) // 64))]
    for m, b in cuts:
        with contextlib.suppress(WalDecodeError):
            _parse_all(_record(rmid, s["xl_info"], m, b))


def test_unknown_record_types_are_decode_errors_and_unsupported() -> None:
    with pytest.raises(WalDecodeError, match="unknown GIN record type 0xA0"):
        gin.parse_main(0xA0, b"")
    with pytest.raises(WalDecodeError, match="unknown SP-GiST record type 0x00"):
        spgist.parse_main(0x00, b"")
    for rmid in (RM_GIN_ID, RM_SPGIST_ID):
        rec = _record(rmid, 0xF0, b"", {0: b"x"})
        with pytest.raises(UnsupportedRecordError):
            redo_block(rec, 0, gp_page(gp.GIN_LEAF))


# -- posting lists ---------------------------------------------------------------

def _real_segments() -> list[bytes]:
    """Every GinPostingList carried by a sample (CREATE_PTREE's list, INSERT and
    REPLACE segments)."""
    segs: list[bytes] = []
    for s in GIN_SAMPLES:
        if s["type"] == "CREATE_PTREE":
            plist = gin.XlGinCreatePostingTree.parse(bytes.fromhex(s["main"])).posting_list
            pos = 0
            while pos < len(plist):
                size = gin.posting_list_size(plist, pos)
                segs.append(plist[pos:pos + size])
                pos += size
        elif s["blocks"].get("0") and (s["type"] == "VACUUM_DATA_LEAF_PAGE"
                                       or s["desc"].startswith("isdata: T isleaf: T")):
            leaf = gin.GinRecompressDataLeaf.parse(bytes.fromhex(s["blocks"]["0"]))
            segs.extend(a.segment for a in leaf.actions if a.segment)
    return segs


def test_real_posting_lists_decode_and_reencode_to_the_same_bytes() -> None:
    segs = _real_segments()
    assert len(segs) > 20
    for seg in segs:
        items = gp.decode_segments(seg)
        assert items == sorted(set(items))
        again, n = gp.encode_segment(items)
        assert n == len(items)
        assert again == seg


@given(st.lists(st.tuples(st.integers(0, 2**32 - 2), st.integers(1, 2047)), min_size=1,
                max_size=300, unique=True))
def test_posting_list_round_trip(tids: list[tuple[int, int]]) -> None:
    items = sorted(gp.itemptr_to_int(b, o) for b, o in tids)
    seg, n = gp.encode_segment(items)
    assert n == len(items)
    assert len(seg) % 2 == 0 and len(seg) == gp.segment_size(seg, 0)
    assert gp.decode_segments(seg) == items


def test_encode_stops_when_the_segment_is_full() -> None:
    items = [gp.itemptr_to_int(b, 1) for b in range(0, 100_000, 1000)]  # 3-byte deltas
    seg, n = gp.encode_segment(items, maxsize=gp.POSTING_LIST_HEADER + 10)
    assert n == 4  # the first item plus three deltas of 3 bytes (9 bytes, padded to 10)
    assert len(seg) == gp.POSTING_LIST_HEADER + 10
    assert gp.decode_segments(seg) == items[:4]


def test_merge_keeps_one_copy_of_shared_items() -> None:
    assert gp.merge_items([1, 5, 9], [5, 6]) == [1, 5, 6, 9]
    assert gp.merge_items([1, 2], [3, 4]) == [1, 2, 3, 4]
    assert gp.merge_items([7, 8], [3, 4]) == [3, 4, 7, 8]
    assert gp.merge_items([], [3]) == [3]


# -- redo edges ------------------------------------------------------------------------

def gp_page(flags: int) -> bytearray:
    page = bytearray(8192)
    gp.gin_init_page(page, flags)
    return page


def test_pre_9_4_uncompressed_leaf_is_compressed_before_segment_actions() -> None:
    page = gp_page(gp.GIN_DATA | gp.GIN_LEAF)  # no GIN_COMPRESSED: a pg_upgraded leaf
    tids = [(1, 1), (1, 2), (3, 7), (900, 1)]
    for i, (b, o) in enumerate(tids):
        struct.pack_into("<HHH", page, gp.DATA_OFFSET + 6 * i, b >> 16, b & 0xFFFF, o)
    gp.set_maxoff(page, len(tids))
    added = (5, 2)
    data = struct.pack("<HBBHHHH", 1, 0, gin.GIN_SEGMENT_ADDITEMS, 1, 0, added[0], added[1])
    rec = _record(RM_GIN_ID, gin.XLOG_GIN_VACUUM_DATA_LEAF_PAGE, b"", {0: data})
    out = bytearray(redo_block(rec, 0, page))
    assert gp.get_flags(out) & gp.GIN_COMPRESSED and gp.get_maxoff(out) == 0
    items = gp.decode_segments(out[gp.DATA_OFFSET:gp.DATA_OFFSET + gp.data_size(out)])
    assert items == sorted(gp.itemptr_to_int(b, o) for b, o in [*tids, added])


@pytest.mark.parametrize("info", [gin.XLOG_GIN_VACUUM_PAGE, gin.XLOG_GIN_SPLIT])
def test_gin_records_whose_pages_are_forced_images_refuse_redo_without_them(info: int) -> None:
    main = bytes(gin.SIZE_OF_GINXLOG_SPLIT) if info == gin.XLOG_GIN_SPLIT else b""
    rec = _record(RM_GIN_ID, info, main, {0: b""})
    with pytest.raises(RedoError, match="full-page image"):
        redo_block(rec, 0, gp_page(gp.GIN_LEAF))


def test_gin_mask_hides_a_deleted_page_but_not_a_live_one() -> None:
    a, b = gp_page(gp.GIN_DATA | gp.GIN_DELETED), gp_page(gp.GIN_DATA | gp.GIN_DELETED)
    a[100] = 1  # stale contents of a deleted page
    assert masked(RM_GIN_ID, a, 1) == masked(RM_GIN_ID, b, 1)
    c, d = gp_page(gp.GIN_DATA | gp.GIN_LEAF), gp_page(gp.GIN_DATA | gp.GIN_LEAF)
    gp.set_data_size(c, 10)
    gp.set_data_size(d, 10)
    c[gp.DATA_OFFSET] = 1  # posting data below pd_lower
    assert masked(RM_GIN_ID, c, 1) != masked(RM_GIN_ID, d, 1)
    d[gp.DATA_OFFSET] = 1
    d[gp.DATA_OFFSET + 500] = 7  # unused space
    assert masked(RM_GIN_ID, c, 1) == masked(RM_GIN_ID, d, 1)


def test_spgist_dead_tuples_and_node_links() -> None:
    page = bytearray(8192)
    sp.spgist_init_page(page, 0)
    # an inner tuple with a 4-byte prefix and two nodes (8-byte IndexTuples)
    inner = bytearray(struct.pack("<IH2x", (2 << 3) | (4 << 16), 8 + 4 + 16)) + b"pref"
    inner += struct.pack("<HHHH", 0xFFFF, 0xFFFF, 0, 8) * 2
    sp.add_item_at(page, bytes(inner), 1)
    sp.update_node_link(page, 1, 1, 0x12345, 9)
    pos = page_ops.item_offset(page, 1) + 8 + 4 + 8
    assert struct.unpack_from("<HHH", page, pos) == (0x1, 0x2345, 9)
    with pytest.raises(RedoError, match="node 2"):
        sp.update_node_link(page, 1, 2, 1, 1)
    redirect = sp.form_dead_tuple(sp.SPGIST_REDIRECT, 7, 3, 1234)
    assert struct.unpack("<IHHHHI", redirect) == (sp.SPGIST_REDIRECT | 16 << 2, 0, 0, 7, 3, 1234)
    placeholder = sp.form_dead_tuple(sp.SPGIST_PLACEHOLDER, 7, 3, 1234)
    assert struct.unpack("<IHHHHI", placeholder) == (sp.SPGIST_PLACEHOLDER | 16 << 2, 0, 0xFFFF,
                                                     0xFFFF, 0, 0)
    with pytest.raises(RedoError, match="not a placeholder"):
        sp.add_or_replace_tuple(page, redirect, 1)


def test_spg_mask_leaves_pages_without_a_header_alone() -> None:
    page = bytearray(8192)
    page[100] = 5
    out = masked(RM_SPGIST_ID, page, 3)
    assert out[100] == 5 and out == page


def test_gin_redo_errors_name_the_record_and_block() -> None:
    rec = _record(RM_GIN_ID, gin.XLOG_GIN_DELETE_PAGE, bytes(gin.SIZE_OF_GINXLOG_DELETE_PAGE),
                  {0: b""})
    with pytest.raises(RedoError, match=r"Gin/DELETE_PAGE at 0/1000000, block 0 .*posting-tree"):
        gin_redo.gin_redo_block(rec, rec.blocks[0], gp_page(gp.GIN_LEAF))
