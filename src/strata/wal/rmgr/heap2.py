"""Struct parsers for Heap2 (rmgr 9) WAL records, PostgreSQL 18.6 layout.

What it is: typed, frozen views of xl_heap_prune (PRUNE_ON_ACCESS /
PRUNE_VACUUM_SCAN / PRUNE_VACUUM_CLEANUP, with freeze plans and the
redirected / dead / unused arrays of block 0's data), xl_heap_visible,
xl_heap_multi_insert (+ xl_multi_insert_tuple entries), xl_heap_lock_updated.
Fed by record main data and block data; feeds reconstruct.redo.heap2.
Layouts from access/heapam_xlog.h of the 18.6 server.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.errors import WalDecodeError
from strata.pg.structs import U16, U32
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    XLOG_HEAP2_LOCK_UPDATED,
    XLOG_HEAP2_MULTI_INSERT,
    XLOG_HEAP2_NEW_CID,
    XLOG_HEAP2_PRUNE_ON_ACCESS,
    XLOG_HEAP2_PRUNE_VACUUM_CLEANUP,
    XLOG_HEAP2_PRUNE_VACUUM_SCAN,
    XLOG_HEAP2_REWRITE,
    XLOG_HEAP2_VISIBLE,
    XLOG_HEAP_INIT_PAGE,
    XLOG_HEAP_OPMASK,
    need,
)
from strata.wal.rmgr.heap import XlHeapLock

XLHP_IS_CATALOG_REL = 1 << 1
XLHP_CLEANUP_LOCK = 1 << 2
XLHP_HAS_CONFLICT_HORIZON = 1 << 3
XLHP_HAS_FREEZE_PLANS = 1 << 4
XLHP_HAS_REDIRECTIONS = 1 << 5
XLHP_HAS_DEAD_ITEMS = 1 << 6
XLHP_HAS_NOW_UNUSED_ITEMS = 1 << 7

XLH_FREEZE_XVAC = 0x02
XLH_INVALID_XVAC = 0x04

VISIBILITYMAP_ALL_VISIBLE = 0x01
VISIBILITYMAP_ALL_FROZEN = 0x02
VISIBILITYMAP_VALID_BITS = 0x03
VISIBILITYMAP_XLOG_CATALOG_REL = 0x04

HEAP_MULTI_INSERT_BLKREF_HEAP = 0
HEAP_MULTI_INSERT_BLKREF_VM = 1

SIZE_OF_HEAP_PRUNE = 2
SIZE_OF_MULTI_INSERT_TUPLE = 7

_PRUNE = struct.Struct("<BB")
_FREEZE_PLAN = struct.Struct("<IHHBxH")
_VISIBLE = struct.Struct("<IB")
_MULTI_INSERT = struct.Struct("<BxH")
_MULTI_TUPLE = struct.Struct("<HHHB")


@dataclass(frozen=True, slots=True)
class XlHeapPrune:
    """Main data of the three PRUNE_* records."""

    reason: int
    flags: int
    snapshot_conflict_horizon: int | None

    @classmethod
    def parse(cls, data: bytes) -> XlHeapPrune:
        need(data, SIZE_OF_HEAP_PRUNE, "xl_heap_prune")
        reason, flags = _PRUNE.unpack_from(data)
        horizon = None
        if flags & XLHP_HAS_CONFLICT_HORIZON:
            need(data, SIZE_OF_HEAP_PRUNE + 4, "xl_heap_prune horizon")
            horizon = U32.unpack_from(data, SIZE_OF_HEAP_PRUNE)[0]  # stored unaligned
        return cls(reason, flags, horizon)


@dataclass(frozen=True, slots=True)
class FreezePlan:
    """xlhp_freeze_plan plus the offsets it applies to."""

    xmax: int
    t_infomask2: int
    t_infomask: int
    frzflags: int
    offsets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PruneBlockData:
    """Block 0 data of a PRUNE_* record (heap_xlog_deserialize_prune_and_freeze)."""

    plans: tuple[FreezePlan, ...]
    redirected: tuple[tuple[int, int], ...]  # (from, to)
    nowdead: tuple[int, ...]
    nowunused: tuple[int, ...]

    @classmethod
    def parse(cls, data: bytes, flags: int) -> PruneBlockData:
        pos = 0
        raw_plans: list[tuple[int, int, int, int, int]] = []
        if flags & XLHP_HAS_FREEZE_PLANS:
            need(data, 4, "xlhp_freeze_plans")
            nplans = U16.unpack_from(data, 0)[0]
            pos = 4  # uint16 nplans + 2 bytes of padding
            need(data, pos + nplans * _FREEZE_PLAN.size, "freeze plans")
            for _ in range(nplans):
                raw_plans.append(_FREEZE_PLAN.unpack_from(data, pos))
                pos += _FREEZE_PLAN.size

        def items(count_mul: int, what: str) -> tuple[int, ...]:
            nonlocal pos
            need(data, pos + 2, what)
            n = U16.unpack_from(data, pos)[0]
            pos += 2
            need(data, pos + 2 * n * count_mul, what)
            out = struct.unpack_from(f"<{n * count_mul}H", data, pos)
            pos += 2 * n * count_mul
            return out

        redirected: tuple[tuple[int, int], ...] = ()
        if flags & XLHP_HAS_REDIRECTIONS:
            flat = items(2, "redirected items")
            redirected = tuple(zip(flat[0::2], flat[1::2], strict=True))
        nowdead = items(1, "dead items") if flags & XLHP_HAS_DEAD_ITEMS else ()
        nowunused = items(1, "unused items") if flags & XLHP_HAS_NOW_UNUSED_ITEMS else ()
        plans: list[FreezePlan] = []
        for xmax, im2, im, frz, ntuples in raw_plans:
            need(data, pos + 2 * ntuples, "freeze offsets")
            offs = struct.unpack_from(f"<{ntuples}H", data, pos)
            pos += 2 * ntuples
            plans.append(FreezePlan(xmax, im2, im, frz, offs))
        if pos != len(data):
            raise WalDecodeError(f"prune block data: {len(data) - pos} trailing bytes")
        return cls(tuple(plans), redirected, nowdead, nowunused)


@dataclass(frozen=True, slots=True)
class XlHeapVisible:
    snapshot_conflict_horizon: int
    flags: int

    @classmethod
    def parse(cls, data: bytes) -> XlHeapVisible:
        need(data, _VISIBLE.size, "xl_heap_visible")
        return cls(*_VISIBLE.unpack_from(data))


@dataclass(frozen=True, slots=True)
class XlHeapMultiInsert:
    flags: int
    ntuples: int
    offsets: tuple[int, ...]  # empty when the record has XLOG_HEAP_INIT_PAGE

    @classmethod
    def parse(cls, data: bytes, is_init: bool) -> XlHeapMultiInsert:
        need(data, _MULTI_INSERT.size, "xl_heap_multi_insert")
        flags, ntuples = _MULTI_INSERT.unpack_from(data)
        offsets: tuple[int, ...] = ()
        if not is_init:
            need(data, 4 + 2 * ntuples, "xl_heap_multi_insert offsets")
            offsets = struct.unpack_from(f"<{ntuples}H", data, 4)
        return cls(flags, ntuples, offsets)


@dataclass(frozen=True, slots=True)
class MultiInsertTuple:
    """xl_multi_insert_tuple and its tuple bytes (after the fixed header)."""

    t_infomask2: int
    t_infomask: int
    t_hoff: int
    data: bytes


def parse_multi_insert_tuples(data: bytes, ntuples: int) -> tuple[MultiInsertTuple, ...]:
    """Block 0 data of MULTI_INSERT: each entry SHORTALIGNed, then its bytes.

    Alignment is relative to the start of the block data (PostgreSQL aligns
    the pointer; block data starts MAXALIGNed in its decode buffer).
    """
    out: list[MultiInsertTuple] = []
    pos = 0
    end = len(data)
    unpack = _MULTI_TUPLE.unpack_from
    for _ in range(ntuples):
        pos = (pos + 1) & ~1
        if pos + SIZE_OF_MULTI_INSERT_TUPLE > end:
            raise WalDecodeError("multi insert: truncated xl_multi_insert_tuple")
        datalen, im2, im, hoff = unpack(data, pos)
        pos += SIZE_OF_MULTI_INSERT_TUPLE
        if pos + datalen > end:
            raise WalDecodeError("multi insert: truncated tuple data")
        out.append(MultiInsertTuple(im2, im, hoff, data[pos:pos + datalen]))
        pos += datalen
    if pos != end:
        raise WalDecodeError("total tuple length mismatch in multi insert")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class XlHeapLockUpdated:
    xmax: int
    offnum: int
    infobits_set: int
    flags: int

    @classmethod
    def parse(cls, data: bytes) -> XlHeapLockUpdated:
        lk = XlHeapLock.parse(data)
        return cls(lk.xmax, lk.offnum, lk.infobits_set, lk.flags)
