"""Transaction-id and multixact-id arithmetic as PostgreSQL 18 does it
(transam.h, transam.c, multixact.c): modulo-2^32 comparisons that skip the
special xids.

Fed by: nothing. Feeds: ingest (cluster values, SLRU), redo. Pure functions.
"""

from __future__ import annotations

from strata.pg.constants import FIRST_NORMAL_XID


def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def xid_precedes(a: int, b: int) -> bool:
    """TransactionIdPrecedes."""
    if a < FIRST_NORMAL_XID or b < FIRST_NORMAL_XID:
        return a < b
    return _int32(a - b) < 0


def xid_follows_or_equals(a: int, b: int) -> bool:
    """TransactionIdFollowsOrEquals."""
    if a < FIRST_NORMAL_XID or b < FIRST_NORMAL_XID:
        return a >= b
    return _int32(a - b) >= 0


def multi_precedes(a: int, b: int) -> bool:
    """MultiXactIdPrecedes (and MultiXactOffsetPrecedes: same arithmetic)."""
    return _int32(a - b) < 0


def xid_advance(xid: int) -> int:
    """TransactionIdAdvance: +1, skipping the special xids 0..2 on wraparound."""
    xid = (xid + 1) & 0xFFFFFFFF
    return FIRST_NORMAL_XID if xid < FIRST_NORMAL_XID else xid


def xid_retreat(xid: int) -> int:
    """TransactionIdRetreat: -1, skipping the special xids."""
    xid = (xid - 1) & 0xFFFFFFFF
    while xid < FIRST_NORMAL_XID:
        xid = (xid - 1) & 0xFFFFFFFF
    return xid
