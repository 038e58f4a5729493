"""Full-page images: a `BlockImage` as stored in WAL -> the 8192-byte page.

What it is: PostgreSQL 18's RestoreBlockImage (xlogreader.c). A stored image
may be compressed (pglz: our own decoder; lz4: a raw LZ4 block as written by
LZ4_compress_default and read by LZ4_decompress_safe; zstd: a complete zstd
frame as written by ZSTD_compress) and may lack its "hole" (the free space
between pd_lower and pd_upper), which is put back as zeros.

Fed by: decoded block references (`wal.record.BlockImage`). Feeds: redo and
ingest (page images). Owns: nothing.
"""

from __future__ import annotations

from strata.errors import WalDecodeError
from strata.pg.constants import BLCKSZ
from strata.wal.pglz import pglz_decompress
from strata.wal.record import (
    BKPIMAGE_COMPRESS_LZ4,
    BKPIMAGE_COMPRESS_PGLZ,
    BKPIMAGE_COMPRESS_ZSTD,
    BlockImage,
)


def _where(lsn: int | None, block_id: int | None) -> str:
    parts = []
    if lsn is not None:
        parts.append(f"at {lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}")
    if block_id is not None:
        parts.append(f"block {block_id}")
    return (" " + ", ".join(parts)) if parts else ""


def decompress_image(image: BlockImage, *, lsn: int | None = None,
                     block_id: int | None = None) -> bytes:
    """The image bytes without compression (still without the hole).

    Raises: WalDecodeError when decompression fails or yields the wrong size.
    """
    if not image.compressed:
        return image.data
    want = BLCKSZ - image.hole_length
    info = image.bimg_info
    try:
        if info & BKPIMAGE_COMPRESS_PGLZ:
            out = pglz_decompress(image.data, want, True)
        elif info & BKPIMAGE_COMPRESS_LZ4:
            import lz4.block  # imported lazily: most WAL never needs it

            out = lz4.block.decompress(image.data, uncompressed_size=want)
        elif info & BKPIMAGE_COMPRESS_ZSTD:
            import zstandard

            out = zstandard.ZstdDecompressor().decompress(image.data, max_output_size=want)
        else:  # pragma: no cover - BKPIMAGE_COMPRESSED covers exactly these bits
            raise WalDecodeError(f"unknown image compression {info:#x}{_where(lsn, block_id)}")
    except WalDecodeError:
        raise
    except Exception as e:  # PglzError, lz4's LZ4BlockError, zstd.ZstdError
        raise WalDecodeError(
            f"could not decompress image{_where(lsn, block_id)}: {e}") from e
    if len(out) != want:
        raise WalDecodeError(
            f"could not decompress image{_where(lsn, block_id)}: got {len(out)} bytes, "
            f"expected {want}")
    return out


def restore_page(image: BlockImage, *, lsn: int | None = None,
                 block_id: int | None = None) -> bytes:
    """The full 8192-byte page of `image` (hole re-inserted, decompressed).

    Raises: WalDecodeError naming `lsn`/`block_id` (when given) on corrupt images.
    """
    data = decompress_image(image, lsn=lsn, block_id=block_id)
    hole_off = image.hole_offset
    hole_len = image.hole_length
    if hole_len == 0:
        if len(data) != BLCKSZ:
            raise WalDecodeError(
                f"block image of {len(data)} bytes without a hole{_where(lsn, block_id)}")
        return data
    if hole_off + hole_len > BLCKSZ or len(data) != BLCKSZ - hole_len:
        raise WalDecodeError(
            f"block image hole offset {hole_off} length {hole_len} does not fit "
            f"{len(data)} stored bytes{_where(lsn, block_id)}")
    return b"".join((data[:hole_off], bytes(hole_len), data[hole_off:]))
