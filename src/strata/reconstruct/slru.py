"""SLRU pages at an LSN: applying stored SLRU values to pages.

What it is: `apply_value` / `reconstruct`, the redo of SLRU_PAGE values
(format: `strata.keyspace.slru`) onto 8 KB pages (layout: `strata.pg.slru`).
Fed by: the page store's redo callback (`reconstruct.reconstruct`) and tests.
Feeds: SLRU pages at any LSN. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable

from strata.errors import CorruptionError
from strata.keyspace.slru import OP_XID_STATUS, TAG_DELTA, TAG_IMAGE, TAG_TRUNCATED, iter_ops
from strata.pg.constants import BLCKSZ
from strata.pg.slru import ZERO_PAGE, clog_set_slot


def apply_value(page: bytes | None, value: bytes) -> bytes | None:
    """The page after `value` (None: the page does not exist).

    Requires: `page` is the page before `value` (None if absent).
    Raises: CorruptionError on a malformed value.
    """
    if not value:
        raise CorruptionError("empty SLRU page value")
    tag = value[0]
    if tag == TAG_IMAGE:
        if len(value) != 1 + BLCKSZ:
            raise CorruptionError(f"SLRU image value of {len(value)} bytes")
        return bytes(value[1:])
    if tag == TAG_TRUNCATED:
        return None
    if tag != TAG_DELTA:
        raise CorruptionError(f"unknown SLRU value tag {tag:#04x}")
    buf = bytearray(page if page is not None else ZERO_PAGE)
    for op, arg, body in iter_ops(value):
        if op == OP_XID_STATUS:
            for slot in body:  # type: ignore[union-attr]
                clog_set_slot(buf, slot, arg)
        else:
            buf[arg:arg + len(body)] = body  # type: ignore[index, arg-type]
    return bytes(buf)


def reconstruct(values: Iterable[bytes], base: bytes | None = None) -> bytes | None:
    """Apply values oldest first to `base` (None: no page yet)."""
    page = base
    for v in values:
        page = apply_value(page, v)
    return page
