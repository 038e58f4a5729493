"""pd_checksum of 8 KB pages: PostgreSQL's pg_checksum_page, vectorised with numpy.

The one implementation in pgStrata: `materialize` and the lazy file systems
checksum batches of pages they write or serve (`set_checksums`, through
`reconstruct.redo.page_ops.set_checksums`, which runs the compiled `_pagec` one,
~1 us a page, when it is built and this one, the reference, otherwise); redo's
page_ops uses `checksum_page`. Owns nothing.

The algorithm is src/include/storage/checksum_impl.h: 32 parallel FNV-1a-style
lanes over the page seen as uint32[64][32] (with pd_checksum read as zero), two
extra rounds of zeros, the lanes xor-folded, the block number xor-ed in, then
``(sum % 65535) + 1``. Here one numpy operation advances a lane for every page of
a batch at once, so the cost per page is a few microseconds instead of the
~2 ms a Python loop takes. `checksum_page_py` is the plain transcription, kept
as the readable reference the vectorised one is tested against.

Byte order: words are read little-endian, which is what a little-endian server
(x86-64, aarch64) computes; pages from a big-endian server are not supported.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from strata.pg.constants import BLCKSZ

N_SUMS = 32
_ROWS = BLCKSZ // (4 * N_SUMS)  # 64
FNV_PRIME = 16777619
PD_CHECKSUM_OFFSET = 8  # PageHeaderData: pd_lsn (8 bytes), then pd_checksum (uint16)
PD_UPPER_OFFSET = 14

CHECKSUM_BASE_OFFSETS: tuple[int, ...] = (
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A,
    0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA,
    0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE,
    0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E,
    0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
)
_BASE = np.array(CHECKSUM_BASE_OFFSETS, dtype=np.uint32)
_PRIME = np.uint32(FNV_PRIME)
_M32 = 0xFFFFFFFF


def checksum_page_py(page: bytes, blkno: int) -> int:
    """pg_checksum_page, line by line (reference; slow)."""
    if len(page) != BLCKSZ:
        raise ValueError(f"a page is {BLCKSZ} bytes, got {len(page)}")
    buf = bytearray(page)
    buf[PD_CHECKSUM_OFFSET:PD_CHECKSUM_OFFSET + 2] = b"\0\0"
    words = np.frombuffer(bytes(buf), dtype="<u4").tolist()
    sums = list(CHECKSUM_BASE_OFFSETS)
    for i in range(_ROWS + 2):
        for j in range(N_SUMS):
            value = words[i * N_SUMS + j] if i < _ROWS else 0
            tmp = sums[j] ^ value
            sums[j] = ((tmp * FNV_PRIME) & _M32) ^ (tmp >> 17)
    result = 0
    for s in sums:
        result ^= s
    result ^= blkno & _M32
    return (result % 65535) + 1


def checksum_pages(pages: npt.NDArray[np.uint8], blknos: npt.NDArray[np.uint32] | Sequence[int]
                   ) -> npt.NDArray[np.uint16]:
    """pg_checksum_page for every row of `pages` (shape (n, 8192), uint8).

    Returns: the n checksums (the pages are not modified).
    """
    n = pages.shape[0]
    if pages.shape != (n, BLCKSZ):
        raise ValueError(f"pages must have shape (n, {BLCKSZ}), got {pages.shape}")
    # (rows, pages, lanes): each step below reads one contiguous row of every page
    # one copy (never a view: pd_checksum is masked below and the caller's pages stay intact)
    words = np.array(pages.view("<u4").reshape(n, _ROWS, N_SUMS).transpose(1, 0, 2),
                     dtype=np.uint32, order="C", copy=True)
    words[0, :, PD_CHECKSUM_OFFSET // 4] &= np.uint32(0xFFFF0000)  # pd_checksum reads as 0
    sums = np.empty((n, N_SUMS), dtype=np.uint32)
    sums[:] = _BASE
    tmp = np.empty_like(sums)
    shifted = np.empty_like(sums)
    for i in range(_ROWS + 2):
        if i < _ROWS:
            np.bitwise_xor(sums, words[i], out=tmp)
        else:
            tmp[:] = sums
        np.right_shift(tmp, 17, out=shifted)
        np.multiply(tmp, _PRIME, out=sums)  # wraps modulo 2**32 as uint32 does in C
        np.bitwise_xor(sums, shifted, out=sums)
    result = np.bitwise_xor.reduce(sums, axis=1)
    result ^= np.asarray(blknos, dtype=np.uint32)
    return ((result % np.uint32(65535)) + np.uint32(1)).astype(np.uint16)


def checksum_page(page: bytes | bytearray, blkno: int) -> int:
    """pg_checksum_page of one page (pd_checksum is read as zero)."""
    if len(page) != BLCKSZ:
        raise ValueError(f"a page is {BLCKSZ} bytes, got {len(page)}")
    arr = np.frombuffer(bytes(page), dtype=np.uint8).reshape(1, BLCKSZ)
    return int(checksum_pages(arr, [blkno])[0])


def set_checksums(buf: bytearray | memoryview, blknos: Sequence[int]) -> None:
    """Write a valid pd_checksum into each page of `buf` (len(blknos) pages, in place).

    New pages (pd_upper == 0: all-zero pages) are left alone: PostgreSQL verifies
    no checksum on them.
    """
    n = len(blknos)
    arr = np.frombuffer(buf, dtype=np.uint8).reshape(n, BLCKSZ)
    upper = arr[:, PD_UPPER_OFFSET:PD_UPPER_OFFSET + 2].copy().view("<u2").reshape(n)
    live = np.nonzero(upper)[0]
    if live.size == 0:
        return
    blk = np.asarray(blknos, dtype=np.uint32)
    if live.size == n:  # the usual case: no fancy-index copy of the pages
        sums = checksum_pages(arr, blk)
        arr[:, PD_CHECKSUM_OFFSET:PD_CHECKSUM_OFFSET + 2] = (
            sums.astype("<u2").view(np.uint8).reshape(n, 2))
        return
    sums = checksum_pages(arr[live], blk[live])
    arr[live, PD_CHECKSUM_OFFSET:PD_CHECKSUM_OFFSET + 2] = (
        sums.astype("<u2").view(np.uint8).reshape(live.size, 2))
