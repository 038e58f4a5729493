"""Heap tuples read from an 8 KB heap page: headers and raw attribute values.

What it is: `heap_tuples(page)` (every stored tuple with its item number and
header: xmin, xmax, infomask, ctid) and `attributes(tuple, attrs, toast)`
(the raw datum of each attribute, walked the way PostgreSQL's
heap_deform_tuple does, varlena headers removed, inline compression undone,
out-of-line TOAST values fetched through a callable).
Fed by: pages from the layer store (`restore.changes`). Feeds: row history.
Owns: nothing; the layout is PostgreSQL's (htup_details.h, varatt.h,
tupmacs.h), cited by name.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lz4.block

from strata.errors import RestoreError
from strata.reconstruct.redo.page_ops import LP_NORMAL, item_id, page_get_max_offset, page_is_new
from strata.wal.pglz import pglz_decompress

_HEADER = struct.Struct("<IIIHHHHHB")  # xmin, xmax, cid, ctid (hi, lo, pos), infomask2, infomask, hoff
HEAP_NATTS_MASK = 0x07FF
HEAP_HASNULL = 0x0001
HEAP_XMAX_LOCK_ONLY = 0x0080
HEAP_XMAX_INVALID = 0x0800
HEAP_XMAX_IS_MULTI = 0x1000
HEAP_XMIN_COMMITTED = 0x0100
HEAP_XMIN_INVALID = 0x0200
HEAP_XMIN_FROZEN = HEAP_XMIN_COMMITTED | HEAP_XMIN_INVALID
VARTAG_ONDISK = 18
TOAST_PGLZ, TOAST_LZ4 = 0, 1
ALIGN = {"c": 1, "s": 2, "i": 4, "d": 8}

# fetch(toastrelid, valueid) -> the value's chunks joined, or None when gone
ToastFetch = Callable[[int, int], bytes | None]


@dataclass(frozen=True, slots=True)
class HeapTuple:
    offnum: int
    xmin: int
    xmax: int
    infomask: int
    infomask2: int
    ctid: tuple[int, int]
    data: bytes  # the whole tuple, header included

    @property
    def natts(self) -> int:
        return self.infomask2 & HEAP_NATTS_MASK

    @property
    def xmax_updates(self) -> bool:
        """xmax names a transaction that deleted or updated it (not a lock)."""
        return (self.xmax != 0 and not self.infomask & HEAP_XMAX_INVALID
                and not self.infomask & HEAP_XMAX_LOCK_ONLY)


@dataclass(frozen=True, slots=True)
class Attr:
    """pg_attribute's facts needed to walk a tuple (dropped columns included)."""

    attnum: int
    attlen: int
    attalign: str
    attbyval: bool


class Toasted(bytes):
    """The raw value of an out-of-line datum that could not be fetched."""


class Missing(bytes):
    """An attribute the tuple does not have (added after it was written): its
    value is the column's missing value (pg_attribute.attmissingval) or NULL."""


MISSING = Missing(b"")


def heap_tuples(page: bytes) -> Iterator[HeapTuple]:
    if page_is_new(page):
        return
    for off in range(1, page_get_max_offset(page) + 1):
        lp_off, flags, length = item_id(page, off)
        if flags != LP_NORMAL or length < _HEADER.size:
            continue
        data = bytes(page[lp_off:lp_off + length])
        xmin, xmax, _, hi, lo, pos, im2, im, _ = _HEADER.unpack_from(data)
        yield HeapTuple(off, xmin, xmax, im, im2, ((hi << 16) | lo, pos), data)


def _decompress(data: bytes, tcinfo: int, what: str) -> bytes:
    rawsize, method = tcinfo & 0x3FFFFFFF, tcinfo >> 30
    if method == TOAST_PGLZ:
        return pglz_decompress(data, rawsize)
    if method == TOAST_LZ4:
        return bytes(lz4.block.decompress(data, uncompressed_size=rawsize))
    raise RestoreError(f"{what}: unknown compression method {method}")


def varlena(data: bytes, off: int, toast: ToastFetch | None) -> tuple[bytes, int]:
    """(the content of the varlena at `off`, its stored size)."""
    b0 = data[off]
    if b0 == 0x01:  # VARATT_IS_1B_E: an out-of-line pointer
        tag = data[off + 1]
        if tag != VARTAG_ONDISK:
            raise RestoreError(f"an in-memory TOAST pointer (tag {tag}) on a page")
        rawsize, extinfo, valueid, toastrelid = struct.unpack_from("<iIII", data, off + 2)
        size = 2 + 16
        chunks = toast(toastrelid, valueid) if toast is not None else None
        if chunks is None:
            return Toasted(b""), size
        if (extinfo & 0x3FFFFFFF) < rawsize - 4:
            # stored compressed: va_tcinfo, then the compressed bytes
            (tcinfo,) = struct.unpack_from("<I", chunks, 0)
            return _decompress(chunks[4:], tcinfo, "TOAST value"), size
        return chunks, size
    if b0 & 0x01:  # VARATT_IS_1B: short header
        length = b0 >> 1
        return data[off + 1:off + length], length
    (word,) = struct.unpack_from("<I", data, off)
    length = word >> 2
    if word & 0x03 == 0x02:  # VARATT_IS_4B_C: compressed inline
        (tcinfo,) = struct.unpack_from("<I", data, off + 4)
        return _decompress(data[off + 8:off + length], tcinfo, "compressed datum"), length
    return data[off + 4:off + length], length


def walk(data: bytes, start: int, attrs: list[Attr], nulls: Callable[[int], bool], count: int,
         toast: ToastFetch | None, base: int = 0) -> list[bytes | None]:
    """Raw datums of `count` consecutive values laid out from `start`
    (alignment relative to `base`), as heap_deform_tuple walks them."""
    out: list[bytes | None] = []
    off = start
    for i in range(count):
        a = attrs[i]
        if nulls(i):
            out.append(None)
            continue
        if a.attlen == -1:
            if data[off] == 0:  # a pad byte: the value is aligned (4-byte header)
                off = base + _align(off - base, a.attalign)
            value, size = varlena(data, off, toast)
            out.append(value)
            off += size
        elif a.attlen == -2:
            end = data.index(b"\0", off)
            out.append(data[off:end])
            off = end + 1
        else:
            off = base + _align(off - base, a.attalign)
            out.append(data[off:off + a.attlen])
            off += a.attlen
    return out


def _align(n: int, attalign: str) -> int:
    a = ALIGN[attalign]
    return (n + a - 1) & ~(a - 1)


def attributes(t: HeapTuple, attrs: list[Attr], toast: ToastFetch | None = None
               ) -> list[bytes | None]:
    """The raw datum of every attribute in `attrs` (attnum order, dropped ones
    included); attributes past the tuple's natts are MISSING."""
    data = t.data
    hoff = data[22]
    natts = min(t.natts, len(attrs))
    has_nulls = bool(t.infomask & HEAP_HASNULL)

    def isnull(i: int) -> bool:
        return has_nulls and not data[23 + (i >> 3)] & (1 << (i & 7))

    values = walk(data, hoff, attrs[:natts], isnull, natts, toast)
    return values + [MISSING] * (len(attrs) - natts)
