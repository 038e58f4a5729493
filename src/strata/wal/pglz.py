"""PostgreSQL's pglz decompressor (src/common/pg_lzcompress.c), hand-written.

What it is: `pglz_decompress` with the same semantics and corruption checks as
PostgreSQL 18: a control byte governs the next eight items; a clear bit is one
literal byte, a set bit a back-reference of two bytes (length nibble + 3, a
12-bit offset) or three (length 18 + the next byte). Copies may overlap their
source (a run repeats with the period of its offset). Output never exceeds
the requested size.

Fed by: `wal.image` (full-page images with BKPIMAGE_COMPRESS_PGLZ). Feeds:
page restore. Owns: nothing. Compression is not implemented: we never write
pglz data.
"""

from __future__ import annotations


class PglzError(ValueError):
    """The compressed data is corrupt (pglz_decompress would return -1)."""


def pglz_decompress(source: bytes, rawsize: int, check_complete: bool = True) -> bytes:
    """Decompress `source` into at most `rawsize` bytes.

    Requires: `source` is pglz data without any header (as in WAL images).
    Returns: the decompressed bytes.
    Raises: PglzError for a zero or out-of-range offset, a reference past the
    input, or (with `check_complete`) when input and output do not end together.
    """
    src = source
    srcend = len(src)
    dest = bytearray()
    sp = 0
    dp = 0
    while sp < srcend and dp < rawsize:
        ctrl = src[sp]
        sp += 1
        for _ in range(8):
            if sp >= srcend or dp >= rawsize:
                break
            if ctrl & 1:
                if sp + 1 >= srcend:
                    # Reading sp[1] would run past the input: PostgreSQL reads it
                    # and then fails the sp > srcend test.
                    raise PglzError("pglz: back-reference past the end of the input")
                b0 = src[sp]
                length = (b0 & 0x0F) + 3
                off = ((b0 & 0xF0) << 4) | src[sp + 1]
                sp += 2
                if length == 18:
                    if sp >= srcend:
                        raise PglzError("pglz: back-reference past the end of the input")
                    length += src[sp]
                    sp += 1
                if off == 0 or off > dp:
                    raise PglzError(f"pglz: invalid back-reference offset {off} at output {dp}")
                if length > rawsize - dp:
                    length = rawsize - dp
                start = dp - off
                if off >= length:
                    dest += dest[start:start + length]
                else:
                    # Overlapping copy: the last `off` bytes repeat.
                    pattern = dest[start:dp]
                    reps = length // off + 1
                    dest += (pattern * reps)[:length]
                dp += length
            else:
                dest.append(src[sp])
                sp += 1
                dp += 1
            ctrl >>= 1
    if check_complete and (dp != rawsize or sp != srcend):
        raise PglzError(
            f"pglz: decompressed {dp} of {rawsize} bytes using {sp} of {srcend} input bytes")
    return bytes(dest)
