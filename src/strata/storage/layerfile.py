"""Layer files: the on-disk layer format (v7; reads v1-v6) and its reader.

Fed by: layer files `layerwriter` wrote. Feeds: the layer map's reads, verify,
dump-layer. Owns: the byte layout's constants (FORMAT.md) and its checks; the
write half (and the .tmp names of the commit protocol) is `layerwriter`'s.

Anatomy: ``[header 72][block 0]...[block n-1][index][footer 44]``. Blocks are
zstd frames of entries sorted by (key, lsn) (blocks.py: rows in v1/v2, columns
from v3; from v6 two frames a block, the head of the columns and the values);
the index holds a record per block with its CRC-32C, from v4 its LSN bounds and
from v6 its head frame's length and CRC (blockindex.py). From v7 a key filter
(keyfilter.py) lies between the last block and the index: a point read asks it
first (`may_hold`) and reads none of the layer's blocks for a key it rules out;
it is loaded on that first question and checked by its own CRC. A reader checks
header, footer and index at open and a block's CRC (or its head's, reading the
head alone: `block_heads`) before every decompression. Versions: FORMAT.md
section 9.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Container, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import google_crc32c
import numpy as np
import zstandard

from strata.errors import CorruptionError
from strata.storage.batch import EntryBatch, KeyRuns
from strata.storage.blockindex import (
    BOUNDS_VERSION,
    HEAD_VERSION,
    INDEX_ENTRY,
    BlockIndex,
    BlockInfo,
    index_entry,
)
from strata.storage.blocks import (
    HeadColumns,
    chain_in_columns,
    decode_columns,
    decode_many_columns,
    decode_many_heads,
    decode_rows,
    find_in_columns,
    find_in_rows,
    head_size,
    values_through,
)
from strata.storage.cache import BLOCKS
from strata.storage.keyfilter import MIN_SECTION, KeyFilter, build_section, distinct_key_hashes
from strata.storage.naming import LayerKind, LayerName
from strata.storage.values import Entry, ValueKind, ends_chain

MAGIC = b"STRATALY"
FOOTER_MAGIC = b"STRATAFT"
FORMAT_VERSION = 7
SUPPORTED_VERSIONS = (1, 2, 3, 4, 5, 6, 7)
COLUMN_VERSION = 3  # first version whose blocks are column-wise
LSN_DELTA_VERSION = 5  # first version whose blocks keep LSNs as differences
FILTER_VERSION = 7  # first version with a key filter between the blocks and the index
# max_key_entries is a u32; a longer run is recorded as this (still an upper bound
# for the image trigger's purpose: it only has to exceed a threshold).
MAX_KEY_ENTRIES_CAP = 0xFFFFFFFF
COMPRESSION_ZSTD = 1

# magic 8s | version u16 | layer kind u8 | compression u8 |
# max_key_entries u32 (v3: longest record run of one key; v2: most entries of one key;
#   v1: reserved, 0) |
# key_start 18s | key_end 18s | lsn_start u64 | lsn_end u64 | header crc32c u32
HEADER = struct.Struct(">8sHBBI18s18sQQI")
# index offset u64 | index len u64 | blocks u32 | entries u64 | index crc u32 |
# footer crc u32 | magic 8s
FOOTER = struct.Struct(">QQIQII8s")
assert (HEADER.size, INDEX_ENTRY.size, FOOTER.size) == (72, 100, 44)


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(data))


def crc32c_extend(crc: int, data: bytes) -> int:
    """The CRC-32C of the bytes whose CRC is `crc` followed by `data`."""
    return int(google_crc32c.extend(crc, data))


class MissingLayerError(CorruptionError):
    """A layer file is not there. For a reader that took its manifest before a
    commit retired the file this is not damage: it re-reads the manifest."""


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


def _prefix(d: zstandard.ZstdDecompressor, frame: memoryview, size: int) -> bytes:
    """The first `size` bytes `frame` decompresses to (fewer if it ends before)."""
    reader = d.stream_reader(frame, read_size=len(frame))
    parts, got = [], 0
    while got < size and (part := reader.read(size - got)):
        parts.append(part)
        got += len(part)
    return b"".join(parts)


class LayerFile:
    """An open, header/index-verified layer file. Immutable; safe for many readers.

    Raises (on open and on every read): CorruptionError naming the file and offset.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._f: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - lives with the object
        except FileNotFoundError as e:
            raise MissingLayerError(f"layer file {self.path} is missing") from e
        try:
            self._load()
        except BaseException:
            self._f.close()
            raise

    def _fail(self, offset: int, what: str) -> CorruptionError:
        return CorruptionError(f"layer file {self.path}: {what} at offset {offset}")

    def _load(self) -> None:
        fd = self._f.fileno()
        st = os.fstat(fd)  # identity: this file, not its name (caches of what it holds)
        self.size, self.identity = st.st_size, (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if self.size < HEADER.size:
            raise self._fail(0, f"file is {self.size} bytes, shorter than its {HEADER.size}-byte header")
        head = os.pread(fd, HEADER.size, 0)
        (magic, version, kind, compression, mke, ks, ke, ls, le, hcrc) = HEADER.unpack(head)
        if magic != MAGIC:
            raise self._fail(0, f"bad magic {magic!r} (expected {MAGIC!r})")
        if version not in SUPPORTED_VERSIONS:
            raise self._fail(8, f"unsupported format version {version} (this build reads "
                                f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
        if crc32c(head[:-4]) != hcrc:
            raise self._fail(HEADER.size - 4, "header checksum mismatch")
        if compression != COMPRESSION_ZSTD:
            raise self._fail(11, f"unknown compression {compression}")
        try:
            self.name = LayerName(LayerKind(kind), ks, ke, ls, le)
        except ValueError as e:
            raise self._fail(10, f"unknown layer kind {kind}") from e
        if ke < ks or le <= ls:
            raise self._fail(16, "empty or negative key/LSN range in header")
        if self.size < HEADER.size + FOOTER.size:
            raise self._fail(self.size, "file ends before its footer (truncated)")
        foot_off = self.size - FOOTER.size
        foot = os.pread(fd, FOOTER.size, foot_off)
        (index_off, index_len, nblocks, nentries, icrc, fcrc, fmagic) = FOOTER.unpack(foot)
        if fmagic != FOOTER_MAGIC:
            raise self._fail(foot_off + 36, "bad footer magic (file truncated or overwritten)")
        if crc32c(foot[:28]) != fcrc:
            raise self._fail(foot_off + 32, "footer checksum mismatch")
        entry = index_entry(version)
        if (index_off < HEADER.size or index_off + index_len != foot_off
                or index_len != nblocks * entry.size):
            raise self._fail(foot_off, "footer points outside the file")
        index = os.pread(fd, index_len, index_off)
        if crc32c(index) != icrc:
            raise self._fail(index_off, "index checksum mismatch")
        blocks = BlockIndex(index, version)
        bad = blocks.misplaced(HEADER.size, index_off)
        if bad is not None:
            raise self._fail(index_off + bad * entry.size, f"block {bad} out of place")
        blocks_end = HEADER.size + blocks.comp_bytes(range(len(blocks)))
        gap = index_off - blocks_end  # v7: the key filter's section; before: nothing
        if ((gap < MIN_SECTION if version >= FILTER_VERSION else gap != 0)
                or blocks.total_entries() != nentries):
            raise self._fail(index_off, "index does not account for every block byte/entry")
        self.filter_span = (blocks_end, gap)  # (offset, bytes) of the key filter
        self._filter: KeyFilter | None = None
        self.version = version
        self._lsn_deltas = version >= LSN_DELTA_VERSION
        # v1 has no such field (reserved, 0): unknown until counted on demand
        self._max_key_entries: int | None = mke if version >= 2 else None
        self.blocks = blocks
        self.entry_count = nentries
        self.index_offset = index_off

    def close(self) -> None:
        self._f.close()

    def max_key_entries(self) -> int:
        """The largest number of entries one key has in this layer (an upper bound of
        how much of a key's delta chain this layer holds). v2: from the header; v1: by
        walking every block's entry headers once (then cached).

        Raises: CorruptionError if a v1 block is damaged."""
        if self._max_key_entries is None:
            # benign race: two threads may both count; they get the same number
            self._max_key_entries = self._count_max_key_entries()
        return self._max_key_entries

    def _count_max_key_entries(self) -> int:
        runs = KeyRuns(chains=self.version >= COLUMN_VERSION)
        for i in range(len(self.blocks)):
            runs.add(self.block_batch(i))
        return runs.best

    # -- reads -------------------------------------------------------------------
    def may_hold(self, key: bytes) -> bool:
        """False if this layer surely has no entry of `key` (its v7 key filter says
        so); True if it may (before v7: always). Raises: CorruptionError if the
        filter, read on the first call, is damaged."""
        if self.version < FILTER_VERSION:
            return True
        f = self._filter
        if f is None:  # benign race: two threads may both load it
            f = self._filter = self.key_filter()
        return f.may_hold(key)

    def _filter_bytes(self) -> bytes:
        off, n = self.filter_span
        data = os.pread(self._f.fileno(), n, off)
        if len(data) != n:
            raise self._fail(off, "key filter truncated")
        return data

    def key_filter(self) -> KeyFilter:
        """The v7 key filter, read from the file and checked (its CRC, its shape).
        Raises: CorruptionError; ValueError before v7 (no filter)."""
        if self.version < FILTER_VERSION:
            raise ValueError(f"{self.path}: a version {self.version} layer has no key filter")
        try:
            return KeyFilter.parse(self._filter_bytes())
        except ValueError as e:
            raise self._fail(self.filter_span[0], f"key filter unreadable: {e}") from e

    def _block_frames(self, i: int, b: BlockInfo | None = None, known_head: bytes | None = None,
                      values_upto: int | None = None) -> tuple[bytes, bytes | None]:
        """Block i decompressed: (its head, its values) for v6, (the whole block, None)
        before (the decoders take either, so a v6 block is never joined). `known_head`:
        its head frame, already read by `_head` (not decompressed again). `values_upto`
        (a point read, with `known_head`): only the first that many bytes of the values
        are needed; where they lie in the frame's first half, only they are
        decompressed (zstd decodes a frame in blocks of up to 128 KiB, and a read that
        stops early skips the later ones; the whole block's CRC is checked all the
        same)."""
        if b is None:
            b = self.blocks[i]
        comp = os.pread(self._f.fileno(), b.comp_len, b.offset)
        if len(comp) != b.comp_len:
            raise self._fail(b.offset, f"block {i} truncated")
        if crc32c(comp) != b.crc:
            raise self._fail(b.offset, f"block {i} checksum mismatch")
        want = b.raw_len  # bytes this read decompresses (head + values, or the block)
        try:
            cut = head_size(b.entries)
            if self.version >= HEAD_VERSION and b.head_len:
                if b.head_len > b.comp_len or cut > b.raw_len:
                    raise self._fail(b.offset, f"block {i}: head frame of {b.head_len} bytes "
                                               f"({cut} raw) does not fit the block")
                d, frames = _decompressor(), memoryview(comp)  # (slices without a copy)
                head = (d.decompress(frames[:b.head_len], max_output_size=cut)
                        if known_head is None else known_head)
                values: bytes | None
                if values_upto is not None and values_upto <= (b.raw_len - cut) // 2:
                    values = _prefix(d, frames[b.head_len:], values_upto)
                    want = cut + values_upto
                else:
                    values = d.decompress(frames[b.head_len:], max_output_size=b.raw_len - cut)
            else:
                head, values = _decompressor().decompress(comp, max_output_size=b.raw_len), None
        except zstandard.ZstdError as e:
            raise self._fail(b.offset, f"block {i} undecodable: {e}") from e
        got = len(head) + (len(values) if values is not None else 0)
        if got != want or (values is not None and len(head) != cut):
            raise self._fail(b.offset, f"block {i} decompressed to {got} bytes, "
                                       f"index says {b.raw_len}")
        return head, values

    def block_batch(self, i: int, b: BlockInfo | None = None) -> EntryBatch:
        """Block i (whose index entry is `b`, when the caller has it) as a batch,
        sorted by (key, lsn). Raises: CorruptionError."""
        cached = BLOCKS.get((self.identity, i))
        if cached is not None:
            return cached
        if b is None:
            b = self.blocks[i]
        raw, values = self._block_frames(i, b)
        try:
            batch = (decode_columns(raw, self._lsn_deltas, values)
                     if self.version >= COLUMN_VERSION else decode_rows(raw))
        except ValueError as e:
            raise self._fail(b.offset, f"block {i} undecodable: {e}") from e
        if len(batch) != b.entries:
            raise self._fail(b.offset, f"block {i} holds {len(batch)} entries, "
                                       f"index says {b.entries}")
        BLOCKS.put((self.identity, i), batch, b.raw_len)  # a scan's next window reads it too
        return batch

    def image_block_parts(self, i: int) -> tuple[bytes, bytes]:
        """Block i of a v6 image layer written in two frames, for a copy into a newer
        image layer (`LayerWriter.copy_image_block`): (its head decompressed, its
        values frame as stored), the whole block's CRC and the head's checked. Raises:
        CorruptionError; ValueError if the block is not an image layer's in two frames."""
        b = self.blocks[i]
        if self.version < HEAD_VERSION or not b.head_len or not self.name.is_image:
            raise ValueError(f"{self.path} block {i} is not an image block in two frames")
        comp = os.pread(self._f.fileno(), b.comp_len, b.offset)
        if len(comp) != b.comp_len:
            raise self._fail(b.offset, f"block {i} truncated")
        if crc32c(comp) != b.crc:
            raise self._fail(b.offset, f"block {i} checksum mismatch")
        head = self._head(i, b)
        return head, comp[b.head_len:]

    def _head(self, i: int, b: BlockInfo) -> bytes:
        """Block i's head (v6): its head frame, CRC-checked and decompressed; of a
        block written as one frame (head_len 0), the head of the whole block."""
        cut = head_size(b.entries)
        if not b.head_len:
            whole, _ = self._block_frames(i, b)
            if len(whole) < cut:
                raise self._fail(b.offset, f"block {i} of {len(whole)} bytes cannot hold "
                                           f"{b.entries} entries")
            return whole[:cut]
        comp = os.pread(self._f.fileno(), b.head_len, b.offset)
        if len(comp) != b.head_len or b.head_len > b.comp_len:
            raise self._fail(b.offset, f"block {i} head truncated")
        if crc32c(comp) != b.head_crc:
            raise self._fail(b.offset, f"block {i} head checksum mismatch")
        try:
            head = _decompressor().decompress(comp, max_output_size=cut)
        except zstandard.ZstdError as e:
            raise self._fail(b.offset, f"block {i} head undecodable: {e}") from e
        if len(head) != cut:
            raise self._fail(b.offset, f"block {i} head decompressed to {len(head)} bytes, "
                                       f"{b.entries} entries need {cut}")
        return head

    def block_heads(self, start: bytes, end: bytes, lo: int = 0,
                    hi: int = 1 << 63) -> HeadColumns:
        """Key, LSN and kind of the entries with start <= key < end and lo <= lsn < hi,
        in (key, lsn) order, without their values: from v6 the blocks' head frames
        alone are read (a few per cent of a block of full-page images); before, whole
        blocks (`batch_range`). Raises: CorruptionError."""
        if self.version < HEAD_VERSION:
            b = self.batch_range(start, end, lo, hi)
            return HeadColumns(b.keys, b.lsns, b.kinds)
        which = self.blocks.within_lsns(self.blocks_in(start, end), lo, hi)
        heads = [self._head(i, self.blocks[i]) for i in which]
        try:
            cols = decode_many_heads(heads, self._lsn_deltas)
        except ValueError as e:
            for i, h in zip(which, heads, strict=True):  # name the damaged block
                try:
                    decode_many_heads([h], self._lsn_deltas)
                except ValueError as e1:
                    raise self._fail(self.blocks[i].offset, f"block {i} head undecodable: "
                                                            f"{e1}") from e1
            raise self._fail(self.blocks[which[0]].offset, f"block heads undecodable: {e}") from e
        keys = cols.order_keys()
        a, z = np.searchsorted(keys, start, "left"), np.searchsorted(keys, end, "left")
        if a or z < len(keys):
            cols = HeadColumns(*(c[a:z] for c in cols))
        if len(cols.lsns) and (lo > int(cols.lsns.min()) or hi <= int(cols.lsns.max())):
            ok = (cols.lsns >= lo) & (cols.lsns < hi)
            cols = HeadColumns(*(c[ok] for c in cols))
        return cols

    def read_block(self, i: int) -> list[Entry]:
        return list(self.block_batch(i).entries())

    def get(self, key: bytes, lo: int, hi: int) -> list[Entry]:
        """Entries of `key` with lo <= lsn < hi, oldest first."""
        out: list[Entry] = []
        if not self.may_hold(key):
            return out
        for i in self.blocks.within_lsns(self.blocks.holding(key), lo, hi):
            out.extend(self._find(i, key, lo, hi))
        return out

    def get_chain(self, key: bytes, lo: int, hi: int) -> tuple[list[Entry], bool]:
        """The newest part of `key`'s chain here (lo <= lsn < hi), oldest first: every
        entry from the newest chain end on, and whether there was one (see
        `blocks.chain_in_columns`: the rows below it are not decoded). A key the v7
        filter rules out reads no block."""
        out: list[Entry] = []
        if not self.may_hold(key):
            return out, False
        # newest block first; blocks wholly outside [lo, hi) are not read
        for k in reversed(self.blocks.within_lsns(self.blocks.holding(key), lo, hi)):
            b = self.blocks[k]
            # v6: a block whose key range spans the key but whose head does not hold it
            # (most probes of an L1 by a point read) decompresses its head alone
            head = self._head(k, b) if b.head_len else None
            upto = None if head is None else self._values_through(k, b, head, key)
            if head is not None and upto is None:
                continue
            raw, values = self._block_frames(k, b, head, upto)
            try:
                if self.version >= COLUMN_VERSION:
                    part, ended = chain_in_columns(raw, key, lo, hi, self._lsn_deltas, values)
                else:
                    part = find_in_rows(raw, key, lo, hi)
                    cut = [x for x, e in enumerate(part) if ends_chain(e.value)]
                    part, ended = (part[cut[-1]:], True) if cut else (part, False)
            except (struct.error, ValueError) as e:
                raise self._fail(self.blocks[k].offset, f"block {k} undecodable: {e}") from e
            out[:0] = part
            if ended:
                return out, True
        return out, False

    def _values_through(self, i: int, b: BlockInfo, head: bytes, key: bytes) -> int | None:
        try:
            return values_through(head, key)
        except ValueError as e:
            raise self._fail(b.offset, f"block {i} head undecodable: {e}") from e

    def _find(self, i: int, key: bytes, lo: int, hi: int) -> list[Entry]:
        """Entries of `key` in block i, decoding only those (GetPage's hot path)."""
        raw, values = self._block_frames(i)
        try:
            if self.version >= COLUMN_VERSION:
                return find_in_columns(raw, key, lo, hi, self._lsn_deltas, values)
            return find_in_rows(raw, key, lo, hi)
        except (struct.error, ValueError) as e:
            raise self._fail(self.blocks[i].offset, f"block {i} undecodable: {e}") from e

    def blocks_in(self, start: bytes, end: bytes) -> range:
        """Indexes of the blocks that may hold keys in [start, end)."""
        return self.blocks.overlapping(start, end)

    def batch_range(self, start: bytes, end: bytes, lo: int = 0, hi: int = 1 << 63,
                    floors: Sequence[tuple[bytes, bytes, int]] = (),
                    skip: Container[int] = ()) -> EntryBatch:
        """Entries with start <= key < end and lo <= lsn < hi, sorted by (key, lsn).
        `floors` ((key_start, key_end, image_lsn) of image layers): a block whose entries
        all lie at or below the image LSN of a range holding all its keys is not read (a
        reader above that floor never applies them). Blocks whose index is in `skip` are
        not read either (image creation copies them whole). Whole blocks are decoded
        together."""
        all_lsns = lo <= self.name.lsn_start and self.name.lsn_end <= hi
        parts: list[EntryBatch] = []
        run: list[tuple[int, BlockInfo]] = []  # whole blocks not decoded yet
        for i in self.blocks.within_lsns(self.blocks_in(start, end), lo, hi):
            if i in skip:
                continue
            b = self.blocks[i]
            if floors and any(ks <= b.first_key and b.last_key < ke and b.max_lsn <= il
                              for ks, ke, il in floors):
                continue
            if start <= b.first_key and b.last_key < end and self.version >= COLUMN_VERSION:
                run.append((i, b))
                continue
            if run:
                parts.append(self._run_batch(run))
                run = []
            parts.append(self.block_batch(i, b))  # at an edge: the select below cuts it
            all_lsns = False
        if run:
            parts.append(self._run_batch(run))
        batch = EntryBatch.concat(parts)
        return batch if all_lsns else batch.select(start, end, lo, hi)

    def _run_batch(self, run: Sequence[tuple[int, BlockInfo]]) -> EntryBatch:
        """Consecutive v3+ blocks (index, info) as one batch. Raises: CorruptionError."""
        frames = [self._block_frames(i, b) for i, b in run]
        try:
            split = [v for _, v in frames if v is not None]
            if len(split) == len(frames):  # two frames a block (v6 delta layers)
                batch = decode_many_columns([h for h, _ in frames], self._lsn_deltas, split)
            else:  # one frame a block (before v6, v6 image layers; both mixed: joined)
                batch = decode_many_columns([h if v is None else h + v for h, v in frames],
                                            self._lsn_deltas)
            if len(batch) == sum(b.entries for _, b in run):
                return batch
        except ValueError:
            pass
        for i, b in run:  # a damaged block: decoded alone, it is named
            self.block_batch(i, b)
        raise self._fail(run[0][1].offset, f"blocks {run[0][0]}..{run[-1][0]} undecodable")

    def scan(self, start: bytes, end: bytes, lo: int = 0, hi: int = 1 << 64) -> Iterator[Entry]:
        """Entries with start <= key < end and lo <= lsn < hi, in (key, lsn) order."""
        for i in self.blocks.within_lsns(self.blocks_in(start, end), lo, hi):
            yield from self.block_batch(i).select(start, end, lo, hi).entries()

    def verify(self) -> int:
        """Read every block; check CRCs (a v6 head frame's too: it is read alone by
        `block_heads`), order and ranges, and that a v7 key filter is the one the
        layer's keys make, byte for byte. Returns: the entry count."""
        prev: tuple[bytes, int] | None = None
        n = 0
        hashes: list[np.ndarray] = []
        runs = KeyRuns(chains=self.version >= COLUMN_VERSION)
        name = self.name
        for i, b in enumerate(self.blocks):
            batch = self.block_batch(i)
            if b.head_len:
                self._head(i, b)
            m = len(batch)
            if m == 0:
                continue
            ok, lsn = batch.order_keys, batch.lsns
            first = (batch.key_at(0), int(lsn[0]))
            same = ok[1:] == ok[:-1]
            if (prev is not None and first <= prev) or np.any(ok[1:] < ok[:-1]) \
                    or np.any(same & (lsn[1:] <= lsn[:-1])):
                raise self._fail(b.offset, f"block {i}: entries out of (key, lsn) order")
            if (first[0] < name.key_start or batch.key_at(m - 1) >= name.key_end
                    or int(lsn.min()) < name.lsn_start or int(lsn.max()) >= name.lsn_end):
                raise self._fail(b.offset, f"block {i}: entry outside the header's ranges")
            if name.is_image and np.any(batch.kinds != ValueKind.PAGE_IMAGE):
                raise self._fail(b.offset, f"block {i}: non-image value in an image layer")
            if (first != (b.first_key, b.first_lsn)
                    or (batch.key_at(m - 1), int(lsn[-1])) != (b.last_key, b.last_lsn)):
                raise self._fail(b.offset, f"block {i}: index first/last disagree with it")
            if self.version >= BOUNDS_VERSION and (b.min_lsn, b.max_lsn) != (int(lsn.min()),
                                                                          int(lsn.max())):
                raise self._fail(b.offset, f"block {i}: index LSN bounds disagree with it")
            runs.add(batch)
            hashes.append(distinct_key_hashes(batch.keys, None if prev is None else prev[0]))
            prev = (batch.key_at(m - 1), int(lsn[-1]))
            n += m
        best = runs.best
        if self.version >= 2 and self._max_key_entries != min(best, MAX_KEY_ENTRIES_CAP):
            what = "records in a run" if self.version >= COLUMN_VERSION else "entries"
            raise self._fail(12, f"header max_key_entries {self._max_key_entries} but a key "
                                 f"has {best} {what}")
        if self.version >= FILTER_VERSION:
            self.key_filter()  # its CRC and shape first, then its content
            want = build_section(np.concatenate(hashes) if hashes
                                 else np.zeros(0, dtype=np.uint64))
            if self._filter_bytes() != want:
                raise self._fail(self.filter_span[0], "key filter is not the one the "
                                                       "layer's keys make")
        return n


class DeltaLayer(LayerFile):
    """A delta layer (L0 from a flush, L1 from compaction): every version of the keys
    in its key range over its LSN range."""


class ImageLayer(LayerFile):
    """An image layer: the value of every key present in its key range at one LSN."""


def open_layer(path: Path) -> LayerFile:
    """Open a layer file as a `DeltaLayer` or `ImageLayer` (by its header's kind).

    Raises: CorruptionError naming the file and offset."""
    f = LayerFile(path)
    f.__class__ = ImageLayer if f.name.is_image else DeltaLayer
    return f
