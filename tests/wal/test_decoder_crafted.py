"""decode_record on crafted records: every header kind and every check of
PostgreSQL's DecodeXLogRecord (the real-WAL side is in test_samples.py and
test_against_pg.py)."""

from __future__ import annotations

import struct

import pytest

from strata.errors import WalDecodeError
from strata.lsn import Lsn
from strata.wal.decoder import decode_record
from strata.wal.record import (
    BKPBLOCK_HAS_DATA,
    BKPBLOCK_HAS_IMAGE,
    BKPBLOCK_SAME_REL,
    BKPBLOCK_WILL_INIT,
    BKPIMAGE_APPLY,
    BKPIMAGE_COMPRESS_PGLZ,
    BKPIMAGE_HAS_HOLE,
    RelFileLocator,
)
from tests.wal.craft import block_header, record_bytes

LSN = Lsn(0x2_0000_1000)


def decode(body: bytes, **kw: int) -> object:
    raw = record_bytes(10, 0, body, **kw)
    return decode_record(raw, LSN, LSN + len(raw))


def test_blocks_same_rel_data_image_origin_toplevel_and_long_main_data() -> None:
    img = bytes(range(256)) * 24  # 6144 stored bytes: a hole of 2048 at 100
    main = b"M" * 300  # needs XLR_BLOCK_ID_DATA_LONG
    body = (
        block_header(0, BKPBLOCK_HAS_DATA | BKPBLOCK_HAS_IMAGE | 2, 4,
                     image=(len(img), 100, BKPIMAGE_HAS_HOLE | BKPIMAGE_APPLY, None),
                     rloc=(1663, 5, 16384), blkno=7)
        + block_header(3, BKPBLOCK_SAME_REL | BKPBLOCK_WILL_INIT | BKPBLOCK_HAS_DATA, 2,
                       rloc=None, blkno=8)
        + bytes([253]) + struct.pack("<H", 9)
        + bytes([252]) + struct.pack("<I", 4242)
        + bytes([254]) + struct.pack("<I", len(main))
        + img + b"DAT0" + b"d3" + main
    )
    rec = decode(body, xid=4243)
    assert rec.xl_xid == 4243 and rec.origin == 9 and rec.toplevel_xid == 4242  # type: ignore[attr-defined]
    b0, b3 = rec.blocks  # type: ignore[attr-defined]
    assert (b0.block_id, b0.fork, b0.blkno, b0.data) == (0, 2, 7, b"DAT0")
    assert b0.rlocator == RelFileLocator(1663, 5, 16384)
    assert b0.image.data == img and b0.image.hole_offset == 100
    assert b0.image.hole_length == 8192 - len(img) and b0.apply_image
    assert b3.rlocator == b0.rlocator and b3.will_init and not b3.has_image
    assert (b3.block_id, b3.blkno, b3.data, b3.fork) == (3, 8, b"d3", 0)
    assert rec.main_data == main and rec.main_len == 300  # type: ignore[attr-defined]
    assert rec.fpi_len == len(img)  # type: ignore[attr-defined]


def test_compressed_image_with_hole_carries_its_hole_length() -> None:
    stored = b"z" * 500
    body = (block_header(0, BKPBLOCK_HAS_IMAGE, 0,
                         image=(500, 64, BKPIMAGE_HAS_HOLE | BKPIMAGE_COMPRESS_PGLZ, 1000))
            + stored)
    (b,) = decode(body).blocks  # type: ignore[attr-defined]
    assert b.image.hole_length == 1000 and b.image.compressed and not b.apply_image


def test_record_without_blocks_or_main_data() -> None:
    rec = decode(b"")
    assert rec.blocks == () and rec.main_data == b""  # type: ignore[attr-defined]


@pytest.mark.parametrize(("body", "message"), [
    (block_header(0, BKPBLOCK_HAS_DATA, 0), "BKPBLOCK_HAS_DATA set, but no data included"),
    (block_header(0, 0, 4) + b"xxxx", "BKPBLOCK_HAS_DATA not set, but data length is 4"),
    (block_header(1, 0, 0) + block_header(1, 0, 0), "out-of-order block_id 1"),
    (block_header(2, 0, 0) + block_header(0, 0, 0), "out-of-order block_id 0"),
    (bytes([33]) + bytes(20), "invalid block_id 33"),
    (block_header(0, BKPBLOCK_SAME_REL, 0, rloc=None), "BKPBLOCK_SAME_REL set but no previous rel"),
    (block_header(0, BKPBLOCK_HAS_IMAGE, 0, image=(8192, 0, BKPIMAGE_HAS_HOLE, None))
     + bytes(8192), "BKPIMAGE_HAS_HOLE set, but hole offset 0 length 0"),
    (block_header(0, BKPBLOCK_HAS_IMAGE, 0, image=(8000, 10, 0, None)) + bytes(8000),
     "BKPIMAGE_HAS_HOLE not set, but hole offset 10 length 192"),
    (block_header(0, BKPBLOCK_HAS_IMAGE, 0, image=(8192, 0, BKPIMAGE_COMPRESS_PGLZ, None))
     + bytes(8192), "BKPIMAGE_COMPRESSED set, but block image length 8192"),
    (block_header(0, BKPBLOCK_HAS_IMAGE, 0, image=(8000, 0, BKPIMAGE_COMPRESS_PGLZ, None))
     + bytes(8000), None),  # valid: compressed without hole
    (bytes([255, 10]) + b"short", "record with invalid length"),
    (bytes([255, 2]) + b"long!", "record with invalid length"),
    (bytes([254, 1, 0]), "record with invalid length"),
    (block_header(0, BKPBLOCK_HAS_DATA, 9)[:5], "record with invalid length"),
])
def test_inconsistent_headers_raise_naming_the_lsn(body: bytes, message: str | None) -> None:
    if message is None:
        decode(body)
        return
    with pytest.raises(WalDecodeError) as ei:
        decode(body)
    assert message in str(ei.value)
    assert str(LSN) in str(ei.value)


def test_uncompressed_image_without_hole_must_be_a_full_page() -> None:
    # bimg_len 8000, no hole flag: hole_length is computed as 192, which the
    # "HAS_HOLE not set" check rejects first, exactly as PostgreSQL orders them.
    body = block_header(0, BKPBLOCK_HAS_IMAGE, 0, image=(8000, 0, 0, None)) + bytes(8000)
    with pytest.raises(WalDecodeError, match="HAS_HOLE not set, but hole offset 0 length 192"):
        decode(body)


def test_length_mismatch_between_header_and_bytes_is_an_error() -> None:
    raw = record_bytes(10, 0, bytes([255, 1, 65]))
    with pytest.raises(WalDecodeError, match="does not match"):
        decode_record(raw + b"\0", LSN, LSN)
