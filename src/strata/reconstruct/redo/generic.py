"""Generic WAL (rmgr 20) redo: generic_redo of PostgreSQL 18
(access/transam/generic_xlog.c).

What it is: each block's data is a list of (offset u16, length u16, bytes)
deltas copied onto the page; then the hole between pd_lower and pd_upper is
zeroed, as PostgreSQL does. Full-image blocks arrive as apply-images and
never reach this function. Fed by the dispatcher; registers itself for
RM_GENERIC_ID.
"""

from __future__ import annotations

import struct

from strata.errors import RedoError
from strata.pg.constants import BLCKSZ
from strata.reconstruct.redo import RM_GENERIC_ID, page_ops, register, unsupported
from strata.wal.record import BlockRef, DecodedRecord

_DELTA_HDR = struct.Struct("<HH")


def apply_page_redo(page: bytearray, delta: bytes) -> None:
    """applyPageRedo: copy every fragment of `delta` onto the page."""
    pos = 0
    end = len(delta)
    while pos < end:
        if pos + 4 > end:
            raise RedoError("generic delta: truncated fragment header")
        offset, length = _DELTA_HDR.unpack_from(delta, pos)
        pos += 4
        if pos + length > end or offset + length > BLCKSZ:
            raise RedoError(f"generic delta: fragment {offset}+{length} out of bounds")
        page[offset:offset + length] = delta[pos:pos + length]
        pos += length


def generic_redo(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if record.info != 0:
        raise unsupported(record)
    apply_page_redo(page, block.data)
    lower, upper = page_ops.get_lower(page), page_ops.get_upper(page)
    if upper > lower:
        page[lower:upper] = bytes(upper - lower)


register(RM_GENERIC_ID, generic_redo)
