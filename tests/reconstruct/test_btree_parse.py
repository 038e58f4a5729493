"""Btree WAL struct parsers (strata.wal.rmgr.btree) on bytes from real PostgreSQL 18.6 WAL.

Every sample below is one record written by a PostgreSQL 18.6 primary running
the btree oracle workload of test_btree_oracle.py (main data and the block data
the parser reads), with the description pg_waldump 18.6 printed for it. Our
`btree_desc` must print exactly that, which checks every field offset,
including C struct padding (FullTransactionId alignment, OffsetNumber followed
by BlockNumber).
"""

from __future__ import annotations

import pytest

from strata.errors import WalDecodeError
from strata.lsn import Lsn
from strata.wal.record import BKPBLOCK_HAS_DATA, BlockRef, DecodedRecord, RelFileLocator
from strata.wal.rmgr import btree as x

# (record type, xl_info as written, main data hex, {block id: block data hex}, pg_waldump desc)
SAMPLES = [
    ("INSERT_LEAF", 0x02, "0001", {}, "off: 256"),
    ("INSERT_UPPER", 0x12, "0300", {}, "off: 3"),
    ("INSERT_META", 0x22, "0200", {2: "040000000300000001000000030000000100000000000000013b5700"}, "off: 2"),
    ("INSERT_POST", 0x52, "0d00", {}, "off: 13"),
    ("SPLIT_L", 0x32, "000000000e0004000000", {}, "level: 0, firstrightoff: 14, newitemoff: 4, postingoff: 0"),
    ("SPLIT_R", 0x42, "0000000035003b000000", {}, "level: 0, firstrightoff: 53, newitemoff: 59, postingoff: 0"),
    ("DEDUP", 0x62, "0400", {0: "0100650066006600cc00660032016600"}, "nintervals: 4"),
    ("DELETE", 0x72, "000000002100050000", {0: "02000b000c000d000e000f003b003c003d0046004700480049004a007400750076007f00800081008200ac00ad00b800b900ba00bb00e500e600f100f200f300f40001003a007300ab00e40003004e004f005000010051000100510003004e004f00500003004e004f005000"},
     "snapshotConflictHorizon: 0, ndeleted: 33, nupdated: 5, isCatalogRel: F, deleted: [2, 11, 12, 13, 14, 15, 59, 60, 61, 70, 71, 72, 73, 74, 116, 117, 118, 127, 128, 129, 130, 172, 173, 184, 185, 186, 187, 229, 230, 241, 242, 243, 244], updated: [{ off: 1, nptids: 3, ptids: [78, 79, 80] }, { off: 58, nptids: 1, ptids: [81] }, { off: 115, nptids: 1, ptids: [81] }, { off: 171, nptids: 3, ptids: [78, 79, 80] }, { off: 228, nptids: 3, ptids: [78, 79, 80] }]"),
    ("VACUUM", 0xc2, "17000200", {0: "050008000b000e001100140017001a001d0020002300260029002c002f003200350038003b003e00410044004700010002004a0000000300060009000c000f001200150018001b001e002100240027002a002d0030003300360039003c003f004200450048004b004e005100540057005a005d0060006300660069006c006f007200750078007b007e008100840087008a008d0090009300960099009c009f00a200a500a800ab00ae00b100b400b700ba00bd00c000c300c600c900cc00cf00d200d500d800db00250000000300060009000c000f001200150018001b001e002100240027002a002d0030003300360039003c003f004200450048004b004e005100540057005a005d0060006300660069006c00"},
     "ndeleted: 23, nupdated: 2, deleted: [5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35, 38, 41, 44, 47, 50, 53, 56, 59, 62, 65, 68, 71], updated: [{ off: 1, nptids: 74, ptids: [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48, 51, 54, 57, 60, 63, 66, 69, 72, 75, 78, 81, 84, 87, 90, 93, 96, 99, 102, 105, 108, 111, 114, 117, 120, 123, 126, 129, 132, 135, 138, 141, 144, 147, 150, 153, 156, 159, 162, 165, 168, 171, 174, 177, 180, 183, 186, 189, 192, 195, 198, 201, 204, 207, 210, 213, 216, 219] }, { off: 2, nptids: 37, ptids: [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48, 51, 54, 57, 60, 63, 66, 69, 72, 75, 78, 81, 84, 87, 90, 93, 96, 99, 102, 105, 108] }]"),
    ("MARK_PAGE_HALFDEAD", 0xb2, "01000000010000000000000002000000ffffffff", {}, "topparent: 4294967295, leaf: 1, left: 0, right: 2"),
    ("UNLINK_PAGE", 0x82, "030000001c0000000100000040000000fe020000000000002d00000040000000ffffffff", {},
     "left: 3, right: 28, level: 1, safexid: 0:766, leafleft: 45, leafright: 64, leaftopparent: 4294967295"),
    ("UNLINK_PAGE_META", 0x92, "00000000090000000000000009000000f6020000000000000000000009000000ffffffff", {4: "04000000030000000100000009000000000000000000000001180000"},
     "left: 0, right: 9, level: 0, safexid: 0:758, leafleft: 0, leafright: 9, leaftopparent: 4294967295"),
    ("NEWROOT", 0xa2, "0100000000000000", {}, "level: 0"),
    ("REUSE_PAGE", 0xd2, "7f060000050000000340000001000000f60200000000000000", {}, "rel: 1663/5/16387, snapshotConflictHorizon: 0:758, isCatalogRel: F"),
    ("META_CLEANUP", 0xe2, "", {0: "04000000030000000100000009000000000000000700000001000000"}, "last_cleanup_num_delpages: 7"),
]

_REL = RelFileLocator(1663, 5, 16387)


def _record(xl_info: int, main_hex: str, blocks: dict[int, str]) -> DecodedRecord:
    refs = tuple(
        BlockRef(block_id=bid, rlocator=_REL, fork=0, blkno=bid, fork_flags=BKPBLOCK_HAS_DATA,
                 image=None, data=bytes.fromhex(data))
        for bid, data in sorted(blocks.items()))
    return DecodedRecord(lsn=Lsn(0x1000000), end_lsn=Lsn(0x1000100), xl_tot_len=0, xl_xid=0,
                         xl_prev=Lsn(0), xl_info=xl_info, xl_rmid=x.RM_BTREE_ID, xl_crc=0,
                         blocks=refs, main_data=bytes.fromhex(main_hex))


@pytest.mark.parametrize(("name", "xl_info", "main_hex", "blocks", "desc"), SAMPLES,
                         ids=[s[0] for s in SAMPLES])
def test_btree_desc_matches_pg_waldump(name: str, xl_info: int, main_hex: str,
                                       blocks: dict[int, str], desc: str) -> None:
    rec = _record(xl_info, main_hex, blocks)
    assert x.btree_identify(xl_info) == name
    assert x.btree_desc(rec) == desc


def test_samples_cover_every_btree_record_type() -> None:
    assert {s[0] for s in SAMPLES} == set(x.BTREE_RECORD_NAMES.values())
    assert len(x.BTREE_RECORD_NAMES) == 15


def test_split_fields_parse_from_real_record() -> None:
    s = x.XlBtreeSplit.parse(bytes.fromhex("000000000e0004000000"))
    assert s == x.XlBtreeSplit(level=0, firstrightoff=14, newitemoff=4, postingoff=0)
    assert x.SIZE_OF_BTREE_SPLIT == 10


def test_unlink_page_skips_padding_before_full_xid() -> None:
    u = x.XlBtreeUnlinkPage.parse(bytes.fromhex(
        "030000001c0000000100000040000000fe020000000000002d00000040000000ffffffff"))
    assert (u.leftsib, u.rightsib, u.level) == (3, 28, 1)
    assert u.safexid == 766
    assert (u.leafleftsib, u.leafrightsib, u.leaftopparent) == (45, 64, 0xFFFFFFFF)
    assert x.SIZE_OF_BTREE_UNLINK_PAGE == 36


def test_mark_page_halfdead_skips_padding_after_offset() -> None:
    h = x.XlBtreeMarkPageHalfdead.parse(bytes.fromhex("01000000010000000000000002000000ffffffff"))
    assert h == x.XlBtreeMarkPageHalfdead(poffset=1, leafblk=1, leftblk=0, rightblk=2,
                                          topparent=0xFFFFFFFF)


def test_reuse_page_carries_locator_block_and_full_xid() -> None:
    r = x.XlBtreeReusePage.parse(bytes.fromhex("7f060000050000000340000001000000f60200000000000000"))
    assert r.locator == RelFileLocator(1663, 5, 16387)
    assert r.block == 1
    assert r.snapshot_conflict_horizon == 758
    assert r.is_catalog_rel is False
    assert x.SIZE_OF_BTREE_REUSE_PAGE == 25


def test_metadata_of_meta_cleanup() -> None:
    md = x.XlBtreeMetadata.parse(bytes.fromhex(
        "04000000030000000100000009000000000000000700000001000000"))
    assert md == x.XlBtreeMetadata(version=4, root=3, level=1, fastroot=9, fastlevel=0,
                                   last_cleanup_num_delpages=7, allequalimage=True)


def test_dedup_intervals_parse() -> None:
    iv = x.parse_dedup_intervals(bytes.fromhex("0100650066006600cc00660032016600"), 4)
    assert iv == (x.BTDedupInterval(1, 101), x.BTDedupInterval(102, 102),
                  x.BTDedupInterval(204, 102), x.BTDedupInterval(306, 102))


def test_delete_payload_splits_deleted_updated_and_posting_offsets() -> None:
    d = x.XlBtreeDelete.parse(bytes.fromhex("000000002100050000"))
    assert (d.ndeleted, d.nupdated, d.is_catalog_rel) == (33, 5, False)
    data = bytes.fromhex(SAMPLES[7][3][0])
    p = x.parse_delvacuum_payload(data, d.ndeleted, d.nupdated)
    assert len(p.deleted) == 33 and p.deleted[:3] == (2, 11, 12)
    assert p.updated_offsets == (1, 58, 115, 171, 228)
    assert [u.deletetids for u in p.updates] == [(78, 79, 80), (81,), (81,), (78, 79, 80),
                                                (78, 79, 80)]


@pytest.mark.parametrize(("info", "short"), [
    (x.XLOG_BTREE_INSERT_LEAF, b"\x01"),
    (x.XLOG_BTREE_SPLIT_L, bytes(9)),
    (x.XLOG_BTREE_DELETE, bytes(8)),
    (x.XLOG_BTREE_UNLINK_PAGE, bytes(35)),
    (x.XLOG_BTREE_REUSE_PAGE, bytes(24)),
    (x.XLOG_BTREE_NEWROOT, bytes(7)),
])
def test_short_main_data_is_a_decode_error(info: int, short: bytes) -> None:
    with pytest.raises(WalDecodeError):
        x.parse_main(info, short)


def test_truncated_update_array_is_a_decode_error() -> None:
    # one updated tuple claiming 3 posting offsets but carrying 2
    data = bytes.fromhex("0100" + "0300" + "01000200")
    with pytest.raises(WalDecodeError):
        x.parse_delvacuum_payload(data, 0, 1)


def test_unknown_record_type_is_a_decode_error() -> None:
    assert x.btree_identify(0xF0) is None
    with pytest.raises(WalDecodeError):
        x.parse_main(0xF0, bytes(16))
