"""Layer files: writer and reader of the on-disk layer format (v2; reads v1 too).

Fed by: flush (frozen memtable -> L0 delta), compaction (L0 -> L1 deltas),
image creation (scan -> image layer). Feeds: the layer map's reads, verify,
dump-layer. Owns: the byte layout documented in FORMAT.md, its checksums and
the write half of the commit protocol (.tmp, fsync, rename, fsync dir).

Anatomy: ``[header 72][block 0]...[block n-1][index][footer 44]``. Blocks are
zstd frames of encoded entries sorted by (key, lsn); the index holds one
76-byte record per block with its CRC-32C. A reader checks header, footer and
index when it opens a file and a block's CRC before every decompression.

Version 2 adds one header field (the v1 reserved u32 at offset 12): the largest
number of entries any single key has in the layer (`max_key_entries`), so image
creation can bound a key's delta chain without reading blocks. A v1 file reports
it by walking its entry headers once (`LayerFile.max_key_entries`).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import google_crc32c
import zstandard

from strata.errors import CorruptionError
from strata.storage.naming import TMP_SUFFIX, LayerKind, LayerName
from strata.storage.values import (
    ENTRY_HEADER,
    Entry,
    PageImage,
    decode_entries,
    encode_entry,
    make_value,
)

MAGIC = b"STRATALY"
FOOTER_MAGIC = b"STRATAFT"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
# max_key_entries is a u32; a longer run is recorded as this (still an upper bound
# for the image trigger's purpose: it only has to exceed a threshold).
MAX_KEY_ENTRIES_CAP = 0xFFFFFFFF
COMPRESSION_ZSTD = 1

# magic 8s | version u16 | layer kind u8 | compression u8 |
# max_key_entries u32 (v2; v1: reserved, 0) |
# key_start 18s | key_end 18s | lsn_start u64 | lsn_end u64 | header crc32c u32
HEADER = struct.Struct(">8sHBBI18s18sQQI")
# offset u64 | compressed len u32 | raw len u32 | entries u32 | crc32c u32 |
# first key 18s | first lsn u64 | last key 18s | last lsn u64
INDEX_ENTRY = struct.Struct(">QIIII18sQ18sQ")
# index offset u64 | index len u64 | blocks u32 | entries u64 | index crc u32 |
# footer crc u32 | magic 8s
FOOTER = struct.Struct(">QQIQII8s")
assert (HEADER.size, INDEX_ENTRY.size, FOOTER.size) == (72, 76, 44)


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(data))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class BlockInfo:
    offset: int
    comp_len: int
    raw_len: int
    entries: int
    crc: int
    first_key: bytes
    first_lsn: int
    last_key: bytes
    last_lsn: int


@dataclass(frozen=True, slots=True)
class WrittenLayer:
    name: LayerName
    size: int
    entries: int
    max_key_entries: int


@dataclass(frozen=True, slots=True)
class SealedLayer:
    """A complete, fsynced layer file still under its temporary name: the commit
    protocol renames it to `name.filename()` (commit.py) or deletes it."""

    name: LayerName
    tmp: Path
    size: int
    entries: int
    max_key_entries: int


class MissingLayerError(CorruptionError):
    """A layer file is not there. For a reader that took its manifest before a
    commit retired the file this is not damage: it re-reads the manifest."""


_tmp_seq = itertools.count()


def tmp_layer_name(owner: str) -> str:
    """`layer-<owner>-<pid>-<n>.tmp`: `owner` says which role wrote it ("w" the
    writer, "m" the maintenance process), so recovery deletes only its own role's
    leftovers while the other role may still be writing (FORMAT.md section 6)."""
    return f"layer-{owner}-{os.getpid()}-{next(_tmp_seq)}{TMP_SUFFIX}"


class LayerWriter:
    """Streams sorted entries into `<dir>/<name>.tmp`; `finish` publishes the file.

    Requires: entries added in strictly increasing (key, lsn) order, each inside
    the key range / LSN range given to `finish`. The file becomes visible under its
    final name only after fsync(file), rename and fsync(dir); it is not live until
    the manifest references it.
    """

    def __init__(self, directory: Path, *, block_bytes: int, zstd_level: int,
                 owner: str = "w") -> None:
        self._dir = directory
        self._tmp = directory / tmp_layer_name(owner)
        self._f: BinaryIO = open(self._tmp, "wb")  # noqa: SIM115 - closed in finish/abort
        self._f.write(b"\0" * HEADER.size)
        self._pos = HEADER.size
        self._block_bytes = block_bytes
        self._cctx = zstandard.ZstdCompressor(level=zstd_level)
        self._buf: list[bytes] = []
        self._buf_len = 0
        self._buf_n = 0
        self._first: tuple[bytes, int] | None = None
        self._last: tuple[bytes, int] | None = None
        self._block_first: tuple[bytes, int] = (b"", 0)
        self._index: list[bytes] = []
        self.entries = 0
        self.raw_bytes = 0
        # longest run of one key so far (entries are key-sorted, so a run is contiguous)
        self._run = 0
        self.max_key_entries = 0

    @property
    def first_key(self) -> bytes | None:
        return None if self._first is None else self._first[0]

    @property
    def last_key(self) -> bytes | None:
        return None if self._last is None else self._last[0]

    def add(self, e: Entry) -> None:
        pos = (e.key, e.lsn)
        if self._last is not None and pos <= self._last:
            raise ValueError(f"entries out of order: {pos!r} after {self._last!r}")
        if self._first is None:
            self._first = pos
        if self._buf_n == 0:
            self._block_first = pos
        self._run = self._run + 1 if self._last is not None and self._last[0] == e.key else 1
        if self._run > self.max_key_entries:
            self.max_key_entries = self._run
        enc = encode_entry(e)
        self._buf.append(enc)
        self._buf_len += len(enc)
        self._buf_n += 1
        self._last = pos
        self.entries += 1
        self.raw_bytes += len(enc)
        if self._buf_len >= self._block_bytes:
            self._flush_block()

    def _flush_block(self) -> None:
        if self._buf_n == 0:
            return
        raw = b"".join(self._buf)
        comp = self._cctx.compress(raw)
        assert self._last is not None
        self._index.append(INDEX_ENTRY.pack(
            self._pos, len(comp), len(raw), self._buf_n, crc32c(comp),
            self._block_first[0], self._block_first[1], self._last[0], self._last[1],
        ))
        self._f.write(comp)
        self._pos += len(comp)
        self._buf, self._buf_len, self._buf_n = [], 0, 0

    def finish(self, name: LayerName) -> WrittenLayer:
        """`seal`, then rename to `name` and fsync the directory: the file is in place
        (not live until a manifest names it). For tools and tests; the store's verbs
        seal and let the commit protocol rename.

        Raises: ValueError if an entry lies outside `name`'s ranges (nothing published).
        """
        s = self.seal(name)
        try:
            os.rename(s.tmp, self._dir / name.filename())
        except BaseException:
            self.abort()
            raise
        fsync_dir(self._dir)
        return WrittenLayer(name, s.size, s.entries, s.max_key_entries)

    def seal(self, name: LayerName) -> SealedLayer:
        """Write index, footer and header, then fsync; the file keeps its temporary name.

        Raises: ValueError if an entry lies outside `name`'s ranges (nothing kept).
        """
        try:
            if self._first is not None:
                assert self._last is not None
                if not (name.key_start <= self._first[0] and self._last[0] < name.key_end):
                    raise ValueError(f"entries outside the key range of {name}")
            self._flush_block()
            index = b"".join(self._index)
            index_off = self._pos
            self._f.write(index)
            footer_head = FOOTER.pack(index_off, len(index), len(self._index), self.entries,
                                      crc32c(index), 0, FOOTER_MAGIC)
            # footer crc covers the 28 bytes before it (offsets, counts, index crc)
            fcrc = crc32c(footer_head[:28])
            self._f.write(FOOTER.pack(index_off, len(index), len(self._index), self.entries,
                                      crc32c(index), fcrc, FOOTER_MAGIC))
            size = index_off + len(index) + FOOTER.size
            mke = min(self.max_key_entries, MAX_KEY_ENTRIES_CAP)
            head = HEADER.pack(MAGIC, FORMAT_VERSION, name.kind, COMPRESSION_ZSTD, mke,
                               name.key_start, name.key_end, name.lsn_start, name.lsn_end, 0)
            self._f.seek(0)
            self._f.write(HEADER.pack(MAGIC, FORMAT_VERSION, name.kind, COMPRESSION_ZSTD, mke,
                                      name.key_start, name.key_end, name.lsn_start, name.lsn_end,
                                      crc32c(head[:-4])))
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            return SealedLayer(name, self._tmp, size, self.entries, self.max_key_entries)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def add_all(w: LayerWriter, name: LayerName, entries: Iterable[Entry]) -> LayerWriter:
    """Add `entries` to `w`, checking them against `name`'s LSN range and kind.

    Raises: ValueError (and aborts `w`: its temporary file is gone)."""
    try:
        for e in entries:
            if not name.lsn_start <= e.lsn < name.lsn_end:
                raise ValueError(f"entry at LSN {e.lsn:X} outside the LSN range of {name}")
            if name.is_image and not isinstance(e.value, PageImage):
                raise ValueError(f"image layer {name} given a non-image value")
            w.add(e)
    except BaseException:
        w.abort()
        raise
    return w


def write_layer(directory: Path, name: LayerName, entries: Iterable[Entry], *,
                block_bytes: int, zstd_level: int) -> WrittenLayer:
    """Write a whole layer file under its final name (tools, tests, samples)."""
    w = LayerWriter(directory, block_bytes=block_bytes, zstd_level=zstd_level)
    return add_all(w, name, entries).finish(name)


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


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
        self.size = os.fstat(fd).st_size
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
        if (index_off < HEADER.size or index_off + index_len != foot_off
                or index_len != nblocks * INDEX_ENTRY.size):
            raise self._fail(foot_off, "footer points outside the file")
        index = os.pread(fd, index_len, index_off)
        if crc32c(index) != icrc:
            raise self._fail(index_off, "index checksum mismatch")
        blocks: list[BlockInfo] = []
        expect_off = HEADER.size
        total = 0
        for i in range(nblocks):
            b = BlockInfo(*INDEX_ENTRY.unpack_from(index, i * INDEX_ENTRY.size))
            if b.offset != expect_off or b.offset + b.comp_len > index_off:
                raise self._fail(index_off + i * INDEX_ENTRY.size, f"block {i} out of place")
            expect_off += b.comp_len
            total += b.entries
            blocks.append(b)
        if expect_off != index_off or total != nentries:
            raise self._fail(index_off, "index does not account for every block byte/entry")
        self.version = version
        # v1 has no such field (reserved, 0): unknown until counted on demand
        self._max_key_entries: int | None = mke if version >= 2 else None
        self.blocks = blocks
        self.entry_count = nentries
        self.index_offset = index_off
        self._last_keys = [b.last_key for b in blocks]

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
        best = run = 0
        prev: bytes | None = None
        hsize = ENTRY_HEADER.size
        unpack = ENTRY_HEADER.unpack_from
        for i in range(len(self.blocks)):
            raw = self._raw_block(i)
            pos, end = 0, len(raw)
            try:
                while pos < end:
                    k, _lsn, _kind, n = unpack(raw, pos)
                    run = run + 1 if k == prev else 1
                    prev = k
                    if run > best:
                        best = run
                    pos += hsize + n
            except struct.error as e:
                raise self._fail(self.blocks[i].offset, f"block {i} undecodable: {e}") from e
        return best

    # -- reads -------------------------------------------------------------------
    def _raw_block(self, i: int) -> bytes:
        b = self.blocks[i]
        comp = os.pread(self._f.fileno(), b.comp_len, b.offset)
        if len(comp) != b.comp_len:
            raise self._fail(b.offset, f"block {i} truncated")
        if crc32c(comp) != b.crc:
            raise self._fail(b.offset, f"block {i} checksum mismatch")
        try:
            raw = _decompressor().decompress(comp, max_output_size=b.raw_len)
        except zstandard.ZstdError as e:
            raise self._fail(b.offset, f"block {i} undecodable: {e}") from e
        if len(raw) != b.raw_len:
            raise self._fail(b.offset, f"block {i} decompressed to {len(raw)} bytes, "
                                       f"index says {b.raw_len}")
        return raw

    def read_block(self, i: int) -> list[Entry]:
        b = self.blocks[i]
        raw = self._raw_block(i)
        try:
            entries = decode_entries(raw)
        except ValueError as e:
            raise self._fail(b.offset, f"block {i} undecodable: {e}") from e
        if len(entries) != b.entries:
            raise self._fail(b.offset, f"block {i} holds {len(entries)} entries, index says {b.entries}")
        return entries

    def get(self, key: bytes, lo: int, hi: int) -> list[Entry]:
        """Entries of `key` with lo <= lsn < hi, oldest first."""
        out: list[Entry] = []
        i = bisect.bisect_left(self._last_keys, key)
        while i < len(self.blocks) and self.blocks[i].first_key <= key:
            out.extend(self._find(i, key, lo, hi))
            i += 1
        return out

    def _find(self, i: int, key: bytes, lo: int, hi: int) -> list[Entry]:
        """Entries of `key` in block i, walking entry headers only (no decoding of the
        others): GetPage's hot path."""
        raw = self._raw_block(i)
        out: list[Entry] = []
        pos, end = 0, len(raw)
        hsize = ENTRY_HEADER.size
        unpack = ENTRY_HEADER.unpack_from
        try:
            while pos < end:
                k, lsn, kind, n = unpack(raw, pos)
                if k > key:
                    break  # sorted: nothing further
                if k == key and lo <= lsn < hi:
                    out.append(Entry(k, lsn, make_value(kind, raw[pos + hsize : pos + hsize + n])))
                pos += hsize + n
            if pos > end:
                raise ValueError("entry runs past the end of the block")
        except (struct.error, ValueError) as e:
            raise self._fail(self.blocks[i].offset, f"block {i} undecodable: {e}") from e
        return out

    def scan(self, start: bytes, end: bytes, lo: int = 0, hi: int = 1 << 64) -> Iterator[Entry]:
        """Entries with start <= key < end and lo <= lsn < hi, in (key, lsn) order."""
        i = bisect.bisect_left(self._last_keys, start)
        while i < len(self.blocks) and self.blocks[i].first_key < end:
            for e in self.read_block(i):
                if start <= e.key < end and lo <= e.lsn < hi:
                    yield e
            i += 1

    def verify(self) -> int:
        """Read every block; check CRCs, order and ranges. Returns: the entry count."""
        prev: tuple[bytes, int] | None = None
        n = 0
        run = best = 0
        name = self.name
        for i, b in enumerate(self.blocks):
            for e in self.read_block(i):
                pos = (e.key, e.lsn)
                if prev is not None and pos <= prev:
                    raise self._fail(b.offset, f"block {i}: entries out of (key, lsn) order")
                run = run + 1 if prev is not None and prev[0] == e.key else 1
                best = max(best, run)
                if not (name.key_start <= e.key < name.key_end
                        and name.lsn_start <= e.lsn < name.lsn_end):
                    raise self._fail(b.offset, f"block {i}: entry outside the header's ranges")
                if name.is_image and not isinstance(e.value, PageImage):
                    raise self._fail(b.offset, f"block {i}: non-image value in an image layer")
                prev = pos
                n += 1
            if (b.first_key, b.first_lsn) > (b.last_key, b.last_lsn):
                raise self._fail(b.offset, f"block {i}: index first/last inverted")
        if self.version >= 2 and self._max_key_entries != min(best, MAX_KEY_ENTRIES_CAP):
            raise self._fail(12, f"header max_key_entries {self._max_key_entries} but a key "
                                 f"has {best} entries")
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
