"""Full-page image restore: holes, pglz (hand-written decoder), lz4 and zstd
framed as PostgreSQL 18 frames them (xlogreader.c RestoreBlockImage:
LZ4_decompress_safe on a raw LZ4 block, ZSTD_decompress on a zstd frame)."""

from __future__ import annotations

import struct
from pathlib import Path

import lz4.block
import pytest
import zstandard

from strata.errors import WalDecodeError
from strata.lsn import Lsn
from strata.wal.decoder import decode_record
from strata.wal.image import restore_page
from strata.wal.pglz import PglzError, pglz_decompress
from strata.wal.record import (
    BKPBLOCK_HAS_IMAGE,
    BKPIMAGE_APPLY,
    BKPIMAGE_COMPRESS_LZ4,
    BKPIMAGE_COMPRESS_PGLZ,
    BKPIMAGE_COMPRESS_ZSTD,
    BKPIMAGE_HAS_HOLE,
    BlockImage,
)
from tests.wal.craft import block_header, record_bytes

DATA = Path(__file__).resolve().parents[1] / "data" / "wal"
PAGE = (DATA / "heap_insert_hole.page0").read_bytes()  # a real heap page with free space


def _hole(page: bytes) -> tuple[int, int]:
    lower, upper = struct.unpack_from("<HH", page, 12)  # pd_lower, pd_upper
    return lower, upper - lower


def _record_with_image(stored: bytes, bimg_info: int, hole_offset: int,
                       hole_length: int | None) -> bytes:
    body = block_header(0, BKPBLOCK_HAS_IMAGE, 0,
                        image=(len(stored), hole_offset, bimg_info, hole_length)) + stored
    return record_bytes(0, 0xB0, body)  # XLOG/FPI


@pytest.mark.parametrize("method", ["lz4", "zstd"])
def test_lz4_and_zstd_images_restore_to_the_original_page(method: str) -> None:
    hole_off, hole_len = _hole(PAGE)
    assert hole_len > 0 and PAGE[hole_off:hole_off + hole_len] == bytes(hole_len)
    stored = PAGE[:hole_off] + PAGE[hole_off + hole_len:]
    if method == "lz4":
        comp = lz4.block.compress(stored, store_size=False)  # LZ4_compress_default: raw block
        flag = BKPIMAGE_COMPRESS_LZ4
    else:
        comp = zstandard.ZstdCompressor(level=3).compress(stored)  # ZSTD_compress: a frame
        flag = BKPIMAGE_COMPRESS_ZSTD
    raw = _record_with_image(comp, flag | BKPIMAGE_HAS_HOLE | BKPIMAGE_APPLY, hole_off, hole_len)
    rec = decode_record(raw, Lsn(0x3000028), Lsn(0x3000028 + len(raw)))
    img = rec.blocks[0].image
    assert img is not None and img.compressed and img.hole_length == hole_len
    assert restore_page(img) == PAGE


@pytest.mark.parametrize("flag", [BKPIMAGE_COMPRESS_LZ4, BKPIMAGE_COMPRESS_ZSTD,
                                  BKPIMAGE_COMPRESS_PGLZ])
def test_corrupt_compressed_image_raises_naming_the_lsn(flag: int) -> None:
    img = BlockImage(b"\xff" * 40, flag | BKPIMAGE_APPLY, 0, 0)
    with pytest.raises(WalDecodeError, match=r"could not decompress image at 0/3000028, block 2"):
        restore_page(img, lsn=0x3000028, block_id=2)


def test_lz4_image_of_the_wrong_size_is_rejected() -> None:
    comp = lz4.block.compress(PAGE[:4000], store_size=False)
    with pytest.raises(WalDecodeError):
        restore_page(BlockImage(comp, BKPIMAGE_COMPRESS_LZ4, 0, 0))


def test_uncompressed_image_hole_is_zero_filled() -> None:
    hole_off, hole_len = _hole(PAGE)
    stored = PAGE[:hole_off] + PAGE[hole_off + hole_len:]
    assert restore_page(BlockImage(stored, BKPIMAGE_HAS_HOLE, hole_off, hole_len)) == PAGE
    assert restore_page(BlockImage(PAGE, 0, 0, 0)) == PAGE


def test_pglz_literals_and_overlapping_back_references() -> None:
    # ctrl 0b1000: three literals, then a match of 9 at distance 3 (overlapping)
    assert pglz_decompress(bytes([0x08]) + b"abc" + bytes([0x06, 0x03]), 12) == b"abc" * 4
    # a long match: length nibble 15 -> 18 + next byte (2) = 20 bytes, distance 1
    data = bytes([0x02]) + b"x" + bytes([0x0F, 0x01, 0x02])
    assert pglz_decompress(data, 21) == b"x" * 21
    # a 12-bit distance: high nibble of the first byte is bits 8..11
    lit = bytes(range(256)) + bytes(range(44))  # 300 distinct-ish bytes
    items = bytearray()
    for i in range(0, 296, 8):  # 37 groups of 8 literals
        items += bytes([0]) + lit[i:i + 8]
    # last group: 4 literals, then (bit 4) a match of length 5 at distance 300
    items += bytes([0x10]) + lit[296:300] + bytes([0x10 | 0x02, 300 - 256])
    assert pglz_decompress(bytes(items), 305) == lit + lit[:5]


def test_pglz_output_is_capped_at_the_requested_size() -> None:
    # would give 21 bytes and two more literals
    data = bytes([0x02]) + b"x" + bytes([0x0F, 0x01, 0x02]) + b"yz"
    assert pglz_decompress(data, 10, check_complete=False) == b"x" * 10
    with pytest.raises(PglzError):
        pglz_decompress(data, 10, check_complete=True)  # input not fully consumed


@pytest.mark.parametrize("data", [
    bytes([0x01, 0x00, 0x00]),  # distance 0
    bytes([0x02]) + b"a" + bytes([0x00, 0x05]),  # distance beyond the output so far
    bytes([0x02]) + b"a" + bytes([0x00]),  # back-reference cut off
    bytes([0x02]) + b"a" + bytes([0x0F, 0x01]),  # long length byte missing
    bytes([0x00]) + b"abc",  # too little output for the requested size
])
def test_pglz_corrupt_input_is_rejected(data: bytes) -> None:
    with pytest.raises(PglzError):
        pglz_decompress(data, 100)


def test_pglz_real_wal_images_match_pg_waldump_pages() -> None:
    found = 0
    for bin_path in DATA.glob("*_pglz*.bin"):
        raw = bin_path.read_bytes()
        rec = decode_record(raw, Lsn(0), Lsn(0))
        for b in rec.blocks:
            page_file = DATA / f"{bin_path.stem}.page{b.block_id}"
            if b.image is not None and b.image.compressed and page_file.exists():
                assert b.image.bimg_info & BKPIMAGE_COMPRESS_PGLZ
                assert restore_page(b.image) == page_file.read_bytes()
                found += 1
    assert found >= 3
