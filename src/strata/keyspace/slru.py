"""SLRU_PAGE values: how pg_xact and pg_multixact pages are stored.

What it is: the tags and op codes of the SLRU page-value format and their
encoders; `iter_ops` reads a DELTA value back. Fed by: ingest (`ingest.transam`
builds values from WAL records, the import stores images). Feeds:
`reconstruct.slru.apply_value`, which applies values to pages. Owns the format:

Page-value format, version 1 (all integers little-endian)::

    value := tag u8, body
    tag 0x01 IMAGE      body = the 8,192-byte page
    tag 0x02 DELTA      body = op*  (applied in order to the previous page;
                        a missing previous page reads as all zeros, as SLRU
                        reads do during recovery)
        op 0x01 XID_STATUS  status u8, count u16, count x slot u16
                            (slot = xid % 32768: set those xids' 2 status bits)
        op 0x02 PATCH       offset u16, length u16, length bytes
                            (overwrite bytes of the page)
    tag 0x03 TRUNCATED  body = empty: the page no longer exists

Tags and op codes are written to disk: never renumber.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence

from strata.errors import CorruptionError
from strata.pg.constants import BLCKSZ
from strata.storage.values import TOMBSTONE, PageImage, Value, WalRecord

TAG_IMAGE = 0x01
TAG_DELTA = 0x02
TAG_TRUNCATED = 0x03
OP_XID_STATUS = 0x01
OP_PATCH = 0x02
_OP_STATUS = struct.Struct("<BBH")
_OP_PATCH = struct.Struct("<BHH")
TRUNCATED_VALUE = bytes([TAG_TRUNCATED])


def image_value(page: bytes) -> bytes:
    if len(page) != BLCKSZ:
        raise ValueError(f"an SLRU page is {BLCKSZ} bytes, got {len(page)}")
    return bytes([TAG_IMAGE]) + bytes(page)


def xid_status_op(status: int, slots: Sequence[int]) -> bytes:
    out = bytearray()
    for i in range(0, len(slots), 0xFFFF):
        chunk = slots[i:i + 0xFFFF]
        out += _OP_STATUS.pack(OP_XID_STATUS, status, len(chunk))
        out += struct.pack(f"<{len(chunk)}H", *chunk)
    return bytes(out)


def patch_op(offset: int, data: bytes) -> bytes:
    if offset < 0 or offset + len(data) > BLCKSZ:
        raise ValueError(f"patch [{offset}, {offset + len(data)}) outside an SLRU page")
    return _OP_PATCH.pack(OP_PATCH, offset, len(data)) + data


def delta_value(ops: Iterable[bytes]) -> bytes:
    return bytes([TAG_DELTA]) + b"".join(ops)


def is_image_value(value: bytes) -> bool:
    """Whether `value` stands alone (image or truncation) or needs the page before it."""
    return bool(value) and value[0] in (TAG_IMAGE, TAG_TRUNCATED)




def iter_ops(value: bytes) -> Iterator[tuple[int, int, bytes | tuple[int, ...]]]:
    """The ops of a DELTA value in order: (OP_XID_STATUS, status, slots) or
    (OP_PATCH, offset, bytes).

    Requires: value[0] == TAG_DELTA. Raises: CorruptionError on a malformed value.
    """
    pos, end = 1, len(value)
    try:
        while pos < end:
            op = value[pos]
            if op == OP_XID_STATUS:
                _, status, n = _OP_STATUS.unpack_from(value, pos)
                pos += _OP_STATUS.size
                yield op, status, struct.unpack_from(f"<{n}H", value, pos)
                pos += 2 * n
            elif op == OP_PATCH:
                _, off, n = _OP_PATCH.unpack_from(value, pos)
                pos += _OP_PATCH.size
                if off + n > BLCKSZ or pos + n > end:
                    raise CorruptionError(f"SLRU patch [{off}, {off + n}) out of bounds")
                yield op, off, bytes(value[pos:pos + n])
                pos += n
            else:
                raise CorruptionError(f"unknown SLRU delta op {op:#04x} at byte {pos}")
    except struct.error as e:
        raise CorruptionError(f"truncated SLRU delta value: {e}") from e


def slru_store_value(value: bytes) -> Value:
    """How an SLRU page value is stored: an image as the bare page (so reads
    need no decoding), a truncation as a tombstone, a delta as a WalRecord
    (applied by `reconstruct.slru.apply_value`)."""
    if value[:1] == bytes([TAG_IMAGE]):
        return PageImage(value[1:])
    if value[:1] == bytes([TAG_TRUNCATED]):
        return TOMBSTONE
    return WalRecord(value)
