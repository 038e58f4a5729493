"""The block index of an open layer file, kept as the bytes it was read as.

Fed by: `layerfile.LayerFile` (the index bytes, their CRC already checked).
Feeds: the layer file's reads (which blocks may hold a key or a key range),
image rules (`images.block_bytes`), `windows` in scan.py, dump-layer.
Owns: no file; the layout is the index record of FORMAT.md (100 bytes a block
from version 6, `INDEX_ENTRY`; 92 in versions 4 and 5, `INDEX_ENTRY_V4`; 76
before, `INDEX_ENTRY_V3`), and this module is its only reader.

Version 4 adds each block's smallest and largest LSN: a read at LSN X, or above
an image floor F, skips the blocks whose entries all lie above X or at or below
F without reading them (a layer whose LSN range straddles X or F holds such
blocks: at a point in the past, the full-page images written after it). Older
files report bounds that never exclude a block (0 and 2^64 - 1).

Version 6 adds the length and CRC-32C of a block's head frame (its keys, LSNs,
kinds and value lengths, compressed apart from its values): a reader that needs
no value (the image trigger's chain count) reads and decompresses those bytes
alone. Older files report 0 (no head frame: `LayerFile.block_heads` then reads
whole blocks).

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
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from strata.key import KEY_SIZE

# offset u64 | compressed len u32 | raw len u32 | entries u32 | crc32c u32 |
# first key 18s | first lsn u64 | last key 18s | last lsn u64 (versions 1-3) |
# min lsn u64 | max lsn u64 (version 4) | head len u32 | head crc32c u32 (version 6)
INDEX_ENTRY = struct.Struct(">QIIII18sQ18sQQQII")
INDEX_ENTRY_V4 = struct.Struct(">QIIII18sQ18sQQQ")
INDEX_ENTRY_V3 = struct.Struct(">QIIII18sQ18sQ")
BOUNDS_VERSION = 4  # the first layer format version whose index has LSN bounds
HEAD_VERSION = 6  # the first whose blocks are two frames, head and values
_FIELDS = [("offset", ">u8"), ("comp_len", ">u4"), ("raw_len", ">u4"), ("entries", ">u4"),
           ("crc", ">u4"), ("first_key", f"S{KEY_SIZE}"), ("first_lsn", ">u8"),
           ("last_key", f"S{KEY_SIZE}"), ("last_lsn", ">u8")]
_DTYPE_V3 = np.dtype(_FIELDS)
_DTYPE_V4 = np.dtype([*_FIELDS, ("min_lsn", ">u8"), ("max_lsn", ">u8")])
_DTYPE = np.dtype([*_FIELDS, ("min_lsn", ">u8"), ("max_lsn", ">u8"), ("head_len", ">u4"),
                   ("head_crc", ">u4")])
assert _DTYPE_V3.itemsize == INDEX_ENTRY_V3.size == 76
assert _DTYPE_V4.itemsize == INDEX_ENTRY_V4.size == 92
assert _DTYPE.itemsize == INDEX_ENTRY.size == 100
NO_MAX_LSN = (1 << 64) - 1  # the max LSN a block of a version < 4 file reports
_BOUNDS_AT = struct.Struct(">QQ")  # min lsn, max lsn: in a v4+ record, after v3's fields
_BOUNDS_OFFSET = INDEX_ENTRY_V3.size
_FEW = 4  # ranges of at most this many blocks are tested without numpy


def index_entry(version: int) -> struct.Struct:
    """The index record of layer format `version`."""
    if version >= HEAD_VERSION:
        return INDEX_ENTRY
    return INDEX_ENTRY_V4 if version >= BOUNDS_VERSION else INDEX_ENTRY_V3


def _dtype(version: int) -> np.dtype:
    if version >= HEAD_VERSION:
        return _DTYPE
    return _DTYPE_V4 if version >= BOUNDS_VERSION else _DTYPE_V3


def _overlaps(min_lsn: int, max_lsn: int, lo: int, hi: int) -> bool:
    """A block whose entries lie in [min_lsn, max_lsn] may hold one in [lo, hi)."""
    return (lo <= 0 or max_lsn >= min(lo, NO_MAX_LSN)) and (hi > NO_MAX_LSN or min_lsn < hi)


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
    min_lsn: int = 0
    max_lsn: int = NO_MAX_LSN
    head_len: int = 0  # compressed bytes of the head frame (version 6; before: 0, none)
    head_crc: int = 0


class BlockIndex:
    """The index records of one layer file, in block (= key, lsn) order."""

    def __init__(self, raw: bytes, version: int = HEAD_VERSION) -> None:
        self._entry = index_entry(version)
        if len(raw) % self._entry.size:
            raise ValueError(f"index of {len(raw)} bytes is not whole records")
        self._raw = raw
        self._rec = np.frombuffer(raw, dtype=_dtype(version))
        self._first = np.ascontiguousarray(self._rec["first_key"])
        self._last = np.ascontiguousarray(self._rec["last_key"])
        self._bounds = version >= BOUNDS_VERSION
        self._all_fields = version >= HEAD_VERSION

    def __len__(self) -> int:
        return len(self._rec)

    def __getitem__(self, i: int) -> BlockInfo:
        n = len(self._rec)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"block {i} of {n}")
        fields = self._entry.unpack_from(self._raw, i * self._entry.size)
        # (before v4 the bounds are absent, before v6 the head frame: BlockInfo's
        # defaults, which exclude nothing and name no head)
        return BlockInfo._make(fields) if self._all_fields else BlockInfo(*fields)

    def __iter__(self) -> Iterator[BlockInfo]:
        rows = self._entry.iter_unpack(self._raw)
        return map(BlockInfo._make, rows) if self._all_fields else (BlockInfo(*r) for r in rows)

    def within_lsns(self, blocks: range, lo: int, hi: int) -> Sequence[int]:
        """The blocks of `blocks` that may hold an entry with lo <= lsn < hi (all of
        them in a file without LSN bounds)."""
        if not self._bounds or not blocks:
            return blocks
        if len(blocks) <= _FEW:  # a point read's range: struct beats numpy's set-up
            size, raw = self._entry.size, self._raw
            keep = []
            for i in blocks:
                mn, mx = _BOUNDS_AT.unpack_from(raw, i * size + _BOUNDS_OFFSET)
                if _overlaps(mn, mx, lo, hi):
                    keep.append(i)
            return blocks if len(keep) == len(blocks) else keep
        rec = self._rec[blocks.start:blocks.stop]
        ok = np.ones(len(rec), dtype=bool)
        if lo > 0:
            ok &= rec["max_lsn"] >= min(lo, NO_MAX_LSN)
        if hi <= NO_MAX_LSN:
            ok &= rec["min_lsn"] < hi
        if ok.all():
            return blocks
        return (np.flatnonzero(ok) + blocks.start).tolist()  # type: ignore[no-any-return]

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

    def key_run_bound(self, blocks: range) -> int:
        """An upper bound of the entries any one key has in `blocks` (a range from
        `overlapping`), from the index alone: a key's entries are consecutive, so
        they lie in one block, or straddle blocks whose boundary keys are that key
        (every block in between holds it alone: first key == last key). The bound
        sums the entry counts of each such run of blocks (FORMAT.md section 7a)."""
        if not blocks:
            return 0
        sl = slice(blocks.start, blocks.stop)
        w = self._rec["entries"][sl].astype(np.int64)
        first, last = self._first[sl], self._last[sl]
        # link[i]: block i starts with the key block i - 1 ends with
        link = np.zeros(len(w), dtype=bool)
        link[1:] = first[1:] == last[:-1]
        # back[j]: the entries of the key ending block j, in j and the blocks before it
        # (j holds that key alone and it came from j - 1: the run goes on back; a
        # cumulative sum restarted wherever it does not)
        grows = link & (first == last)
        total = np.cumsum(w)
        restart = np.maximum.accumulate(np.where(grows, 0, np.arange(len(w))))
        back = total - total[restart] + w[restart]
        # the key starting block i: its entries in i, plus back[i - 1] if it came from there
        through = w.copy()
        through[1:] += np.where(link[1:], back[:-1], 0)
        return int(through.max())

    def window_starts(self, window: int) -> list[int]:
        """The blocks, after the first, that start a new run of about `window` raw
        bytes: block i starts one when the raw bytes before it pass a multiple of
        `window` that those before block i - 1 did not (so a window holds at least
        one block, whatever the block size the file was written with)."""
        before = np.cumsum(self._rec["raw_len"].astype(np.int64)) - self._rec["raw_len"]
        ids = before // max(1, window)
        return (np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist()

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
