"""SLRU pages at an LSN: applying stored SLRU values to pages.

What it is: `apply_value` / `apply_values` / `reconstruct`, the redo of SLRU_PAGE values
(format: `strata.keyspace.slru`) onto 8 KB pages (layout: `strata.pg.slru`).
Fed by: the page store's redo callback (`reconstruct.reconstruct`) and tests.
Feeds: SLRU pages at any LSN. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from strata.errors import CorruptionError
from strata.keyspace.slru import OP_XID_STATUS, TAG_DELTA, TAG_IMAGE, TAG_TRUNCATED, iter_ops
from strata.pg.constants import BLCKSZ
from strata.pg.slru import CLOG_BITS_PER_XACT, CLOG_XACTS_PER_BYTE, ZERO_PAGE, clog_set_slot


def apply_value(page: bytes | None, value: bytes) -> bytes | None:
    """The page after `value` (None: the page does not exist).

    Requires: `page` is the page before `value` (None if absent).
    Raises: CorruptionError on a malformed value.
    """
    return apply_values(page, (value,))


def apply_values(page: bytes | None, values: Iterable[bytes]) -> bytes | None:
    """The page after `values`, oldest first: `apply_value` of each in turn, on one
    page buffer for the whole run (a chain of commits is one status op each).

    Raises: CorruptionError on a malformed value."""
    buf = None if page is None else bytearray(page)
    if isinstance(values, list) and len(values) >= _RUN_MIN and buf is not None \
            and _one_slot_run(buf, values):
        return bytes(buf)
    for value in values:
        if not value:
            raise CorruptionError("empty SLRU page value")
        tag = value[0]
        if tag == TAG_IMAGE:
            if len(value) != 1 + BLCKSZ:
                raise CorruptionError(f"SLRU image value of {len(value)} bytes")
            buf = bytearray(value[1:])
        elif tag == TAG_TRUNCATED:
            buf = None
        elif tag != TAG_DELTA:
            raise CorruptionError(f"unknown SLRU value tag {tag:#04x}")
        else:
            if buf is None:
                buf = bytearray(ZERO_PAGE)
            _apply_delta(buf, value)
    return None if buf is None else bytes(buf)


_RUN_MIN = 8  # values in a run worth one numpy step
# a plain commit's (or abort's) value: TAG_DELTA, OP_XID_STATUS, status, count 1, slot
ONE_SLOT = 7


def _one_slot_run(buf: bytearray, values: list[bytes]) -> bool:
    """Apply `values` to `buf` in one numpy step when every one is a single status
    op of one xid (a chain of commits); else False with `buf` untouched."""
    if any(len(v) != ONE_SLOT for v in values):
        return False
    rows = np.frombuffer(b"".join(values), dtype=np.uint8).reshape(-1, ONE_SLOT)
    return apply_one_slot_rows(np.frombuffer(buf, dtype=np.uint8), rows)


def apply_one_slot_rows(page: np.ndarray, rows: np.ndarray) -> bool:
    """Apply the values `rows` (n x `ONE_SLOT` bytes, oldest first) to the writable
    page array `page` when every one is a single status op of one xid; else False
    with `page` untouched. A later status of the same xid wins, as applying them in
    order does."""
    a = rows
    if not ((a[:, 0] == TAG_DELTA) & (a[:, 1] == OP_XID_STATUS) & (a[:, 3] == 1)
            & (a[:, 4] == 0)).all():
        return False
    slots = a[:, 5].astype(np.int64) | (a[:, 6].astype(np.int64) << 8)
    _, last = np.unique(slots[::-1], return_index=True)  # each slot's last value
    keep = len(slots) - 1 - last
    slots, status = slots[keep], a[keep, 2] & 3
    shift = ((slots % CLOG_XACTS_PER_BYTE) * CLOG_BITS_PER_XACT).astype(np.uint8)
    byteno = slots // CLOG_XACTS_PER_BYTE
    np.bitwise_and.at(page, byteno, ~(np.uint8(3) << shift))
    np.bitwise_or.at(page, byteno, status << shift)
    return True


def _apply_delta(buf: bytearray, value: bytes) -> None:
    for op, arg, body in iter_ops(value):
        if op == OP_XID_STATUS:
            for slot in body:  # type: ignore[union-attr]
                clog_set_slot(buf, slot, arg)
        else:
            buf[arg:arg + len(body)] = body  # type: ignore[index, arg-type]


def reconstruct(values: Iterable[bytes], base: bytes | None = None) -> bytes | None:
    """Apply values oldest first to `base` (None: no page yet)."""
    return apply_values(base, values)
