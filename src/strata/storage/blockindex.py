"""The block index of an open layer file, kept as the bytes it was read as.

Fed by: `layerfile.LayerFile` (the index bytes, their CRC already checked).
Feeds: the layer file's reads (which blocks may hold a key or a key range),
image rules (`images.block_bytes`), `windows` in scan.py, dump-layer.
Owns: no file; the layout is the index record of FORMAT.md (76 bytes a block,
`INDEX_ENTRY`), and this module is its only reader.

Why not a list of objects: every process that reads the store (each service,
each lazy file system, each spare) opens every layer file. One Python object
per block cost ~400 bytes and ~5 us at open, for ~10^5 blocks per process at
pgbench scale 300. Here a block costs its 76 index bytes (a numpy view over
them) plus its two keys copied into contiguous arrays for binary search, and
`BlockInfo` objects are built only for the blocks a read touches.

Keys are compared as numpy fixed-width byte strings (`S18`): for equal-length
keys numpy's order is the order of Python's bytes (unsigned, byte by byte,
trailing zero bytes included), which `tests/storage/test_blockindex.py` checks
against `bisect`, bounds of other lengths too. Keys are never read back through
numpy (a numpy bytes scalar drops trailing zero bytes): `BlockInfo` is unpacked
from the raw bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from strata.key import KEY_SIZE

# offset u64 | compressed len u32 | raw len u32 | entries u32 | crc32c u32 |
# first key 18s | first lsn u64 | last key 18s | last lsn u64
INDEX_ENTRY = struct.Struct(">QIIII18sQ18sQ")
_DTYPE = np.dtype([("offset", ">u8"), ("comp_len", ">u4"), ("raw_len", ">u4"),
                   ("entries", ">u4"), ("crc", ">u4"), ("first_key", f"S{KEY_SIZE}"),
                   ("first_lsn", ">u8"), ("last_key", f"S{KEY_SIZE}"), ("last_lsn", ">u8")])
assert _DTYPE.itemsize == INDEX_ENTRY.size == 76


class BlockInfo(NamedTuple):
    """One index record."""

    offset: int
    comp_len: int
    raw_len: int
    entries: int
    crc: int
    first_key: bytes
    first_lsn: int
    last_key: bytes
    last_lsn: int


class BlockIndex:
    """The index records of one layer file, in block (= key, lsn) order."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) % INDEX_ENTRY.size:
            raise ValueError(f"index of {len(raw)} bytes is not whole records")
        self._raw = raw
        self._rec = np.frombuffer(raw, dtype=_DTYPE)
        self._first = np.ascontiguousarray(self._rec["first_key"])
        self._last = np.ascontiguousarray(self._rec["last_key"])

    def __len__(self) -> int:
        return len(self._rec)

    def __getitem__(self, i: int) -> BlockInfo:
        n = len(self._rec)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"block {i} of {n}")
        return BlockInfo._make(INDEX_ENTRY.unpack_from(self._raw, i * INDEX_ENTRY.size))

    def __iter__(self) -> Iterator[BlockInfo]:
        return map(BlockInfo._make, INDEX_ENTRY.iter_unpack(self._raw))

    def misplaced(self, data_start: int, data_end: int) -> int | None:
        """The first block that does not start where the previous one ended (the
        first at `data_start`) or runs past `data_end`; None if there is none."""
        comp = self._rec["comp_len"].astype(np.int64)
        offs = self._rec["offset"].astype(np.int64)
        want = data_start + np.cumsum(comp) - comp
        bad = np.flatnonzero((offs != want) | (offs + comp > data_end))
        return int(bad[0]) if len(bad) else None

    def total_entries(self) -> int:
        return int(self._rec["entries"].astype(np.int64).sum())

    def comp_bytes(self, blocks: range) -> int:
        """Compressed bytes of `blocks` (a range from `overlapping`)."""
        return int(self._rec["comp_len"][blocks.start:blocks.stop].astype(np.int64).sum())

    def overlapping(self, start: bytes, end: bytes) -> range:
        """The blocks that may hold keys in [start, end): from the first whose last key
        is >= start, while the first key is < end."""
        i = self._search(self._last, start, "left")
        return range(i, max(i, self._search(self._first, end, "left")))

    def holding(self, key: bytes) -> range:
        """The blocks that may hold `key` (its entries can straddle blocks)."""
        i = self._search(self._last, key, "left")
        return range(i, max(i, self._search(self._first, key, "right")))

    @staticmethod
    def _search(keys: np.ndarray, key: bytes, side: str) -> int:
        """`bisect.bisect_<side>` of the stored keys, as Python orders bytes. A bound
        of another length is never equal to a stored key: a shorter one sorts before
        the keys it prefixes (its zero-padded self, searched on the left), a longer
        one after its 18-byte prefix (that prefix, searched on the right)."""
        if len(key) < KEY_SIZE:
            key, side = key.ljust(KEY_SIZE, b"\0"), "left"
        elif len(key) > KEY_SIZE:
            key, side = key[:KEY_SIZE], "right"
        return int(np.searchsorted(keys, key, side=side))  # type: ignore[call-overload]
