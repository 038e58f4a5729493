"""Struct parsers for Heap (rmgr 10) WAL records, PostgreSQL 18.6 layout.

What it is: typed, frozen views of the structs in access/heapam_xlog.h of
the 18.6 server (the headers shipped in the wheel are the truth). Fed by a
record's main data / block data bytes; feeds reconstruct.redo.heap and
anything that describes heap records. No I/O, no page logic.

18.6 note: records that clear visibility-map bits name the VM page as an
extra block reference (HEAP_*_BLKREF_VM); older 18.x WAL clears the bit
without one. The flags below are the same in both shapes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.pg.structs import U16
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    XLOG_HEAP_CONFIRM,
    XLOG_HEAP_DELETE,
    XLOG_HEAP_HOT_UPDATE,
    XLOG_HEAP_INIT_PAGE,
    XLOG_HEAP_INPLACE,
    XLOG_HEAP_INSERT,
    XLOG_HEAP_LOCK,
    XLOG_HEAP_OPMASK,
    XLOG_HEAP_TRUNCATE,
    XLOG_HEAP_UPDATE,
    need,
)

XLH_INSERT_ALL_VISIBLE_CLEARED = 1 << 0
XLH_INSERT_LAST_IN_MULTI = 1 << 1
XLH_INSERT_IS_SPECULATIVE = 1 << 2
XLH_INSERT_CONTAINS_NEW_TUPLE = 1 << 3
XLH_INSERT_ON_TOAST_RELATION = 1 << 4
XLH_INSERT_ALL_FROZEN_SET = 1 << 5

XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED = 1 << 0
XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED = 1 << 1
XLH_UPDATE_CONTAINS_OLD_TUPLE = 1 << 2
XLH_UPDATE_CONTAINS_OLD_KEY = 1 << 3
XLH_UPDATE_CONTAINS_NEW_TUPLE = 1 << 4
XLH_UPDATE_PREFIX_FROM_OLD = 1 << 5
XLH_UPDATE_SUFFIX_FROM_OLD = 1 << 6

XLH_DELETE_ALL_VISIBLE_CLEARED = 1 << 0
XLH_DELETE_CONTAINS_OLD_TUPLE = 1 << 1
XLH_DELETE_CONTAINS_OLD_KEY = 1 << 2
XLH_DELETE_IS_SUPER = 1 << 3
XLH_DELETE_IS_PARTITION_MOVE = 1 << 4

XLHL_XMAX_IS_MULTI = 0x01
XLHL_XMAX_LOCK_ONLY = 0x02
XLHL_XMAX_EXCL_LOCK = 0x04
XLHL_XMAX_KEYSHR_LOCK = 0x08
XLHL_KEYS_UPDATED = 0x10

XLH_LOCK_ALL_FROZEN_CLEARED = 0x01

# block ids (18.6)
HEAP_INSERT_BLKREF_HEAP = 0
HEAP_INSERT_BLKREF_VM = 1
HEAP_DELETE_BLKREF_HEAP = 0
HEAP_DELETE_BLKREF_VM = 1
HEAP_UPDATE_BLKREF_HEAP_NEW = 0
HEAP_UPDATE_BLKREF_HEAP_OLD = 1
HEAP_UPDATE_BLKREF_VM_NEW = 2
HEAP_UPDATE_BLKREF_VM_OLD = 3
HEAP_LOCK_BLKREF_HEAP = 0
HEAP_LOCK_BLKREF_VM = 1

SIZE_OF_HEAP_HEADER = 5

_INSERT = struct.Struct("<HB")
_DELETE = struct.Struct("<IHBB")
_UPDATE = struct.Struct("<IHBBIH")
_HEADER = struct.Struct("<HHB")
_LOCK = struct.Struct("<IHBB")
_CONFIRM = struct.Struct("<H")
_INPLACE = struct.Struct("<HxxIIBxxxi")
_TRUNCATE = struct.Struct("<IIB")


@dataclass(frozen=True, slots=True)
class XlHeapHeader:
    t_infomask2: int
    t_infomask: int
    t_hoff: int

    @classmethod
    def parse(cls, data: bytes, offset: int = 0) -> XlHeapHeader:
        need(data, offset + SIZE_OF_HEAP_HEADER, "xl_heap_header")
        return cls(*_HEADER.unpack_from(data, offset))


@dataclass(frozen=True, slots=True)
class XlHeapInsert:
    offnum: int
    flags: int

    @classmethod
    def parse(cls, data: bytes) -> XlHeapInsert:
        need(data, _INSERT.size, "xl_heap_insert")
        return cls(*_INSERT.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlHeapDelete:
    xmax: int
    offnum: int
    infobits_set: int
    flags: int

    @classmethod
    def parse(cls, data: bytes) -> XlHeapDelete:
        need(data, _DELETE.size, "xl_heap_delete")
        return cls(*_DELETE.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlHeapUpdate:
    old_xmax: int
    old_offnum: int
    old_infobits_set: int
    flags: int
    new_xmax: int
    new_offnum: int

    @classmethod
    def parse(cls, data: bytes) -> XlHeapUpdate:
        need(data, _UPDATE.size, "xl_heap_update")
        return cls(*_UPDATE.unpack_from(data))


@dataclass(frozen=True, slots=True)
class HeapUpdateBlockData:
    """Block 0 data of an UPDATE/HOT_UPDATE: optional prefix/suffix lengths,
    the xl_heap_header, then the new tuple's bytes after the fixed header
    (null bitmap / padding / data, minus any prefix or suffix shared with
    the old tuple)."""

    prefixlen: int
    suffixlen: int
    header: XlHeapHeader
    tuple_data: bytes

    @classmethod
    def parse(cls, data: bytes, flags: int) -> HeapUpdateBlockData:
        pos = 0
        prefixlen = suffixlen = 0
        if flags & XLH_UPDATE_PREFIX_FROM_OLD:
            need(data, pos + 2, "update prefix length")
            prefixlen = U16.unpack_from(data, pos)[0]
            pos += 2
        if flags & XLH_UPDATE_SUFFIX_FROM_OLD:
            need(data, pos + 2, "update suffix length")
            suffixlen = U16.unpack_from(data, pos)[0]
            pos += 2
        header = XlHeapHeader.parse(data, pos)
        pos += SIZE_OF_HEAP_HEADER
        return cls(prefixlen, suffixlen, header, bytes(data[pos:]))


@dataclass(frozen=True, slots=True)
class XlHeapLock:
    """xl_heap_lock (also the layout of Heap2's xl_heap_lock_updated)."""

    xmax: int
    offnum: int
    infobits_set: int
    flags: int

    @classmethod
    def parse(cls, data: bytes) -> XlHeapLock:
        need(data, _LOCK.size, "xl_heap_lock")
        return cls(*_LOCK.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlHeapConfirm:
    offnum: int

    @classmethod
    def parse(cls, data: bytes) -> XlHeapConfirm:
        need(data, _CONFIRM.size, "xl_heap_confirm")
        return cls(_CONFIRM.unpack_from(data)[0])


@dataclass(frozen=True, slots=True)
class XlHeapInplace:
    offnum: int
    db_id: int
    ts_id: int
    relcache_init_file_inval: bool
    nmsgs: int

    @classmethod
    def parse(cls, data: bytes) -> XlHeapInplace:
        need(data, _INPLACE.size, "xl_heap_inplace")
        off, db, ts, inval, nmsgs = _INPLACE.unpack_from(data)
        return cls(off, db, ts, bool(inval), nmsgs)


@dataclass(frozen=True, slots=True)
class XlHeapTruncate:
    db_id: int
    nrelids: int
    flags: int
    relids: tuple[int, ...]

    @classmethod
    def parse(cls, data: bytes) -> XlHeapTruncate:
        need(data, 12, "xl_heap_truncate")
        db, n, flags = _TRUNCATE.unpack_from(data)
        need(data, 12 + 4 * n, "xl_heap_truncate relids")
        return cls(db, n, flags, struct.unpack_from(f"<{n}I", data, 12))
