"""Layer files, the write half: `LayerWriter` streams sorted entries into a
`.tmp` file in the format `layerfile` reads (FORMAT.md), `seal` fsyncs it, and
the commit protocol (commit.py) renames it; `write_layer` for tools and tests.

Fed by: flush (memtable -> L0), compaction (L0 -> L1), image creation. Feeds: the
commit protocol. Owns: the write half of the byte layout (header, blocks, index,
footer, their checksums; `layerfile` owns the constants and the reader) and the
temporary names (`tmp_layer_name`). Blocks are encoded a group at a time and
compressed together in one GIL-free zstd call (`COMPRESS_GROUP_BYTES`), each as
two frames, its head (keys, LSNs, kinds, value lengths) and its values (version
6: the chain count reads heads alone). The distinct keys' hashes are kept as
blocks are encoded and become the key filter written before the index at `seal`
(version 7, `keyfilter`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

from strata import durable
from strata.key import KEY_SIZE
from strata.storage.batch import (
    ENTRY_OVERHEAD,
    KEY_DTYPE,
    BatchBuilder,
    EntryBatch,
    KeyRuns,
)
from strata.storage.blockindex import INDEX_ENTRY
from strata.storage.blocks import N_FIELD, encode_many_columns, head_size
from strata.storage.keyfilter import build_section, distinct_key_hashes
from strata.storage.layerfile import (
    COMPRESSION_ZSTD,
    FOOTER,
    FOOTER_MAGIC,
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    MAX_KEY_ENTRIES_CAP,
    crc32c,
    crc32c_extend,
)
from strata.storage.naming import TMP_SUFFIX, LayerName
from strata.storage.values import Entry, PageImage, ValueKind

_LSN = struct.Struct(">q")
_IMAGE_KIND = bytes([int(ValueKind.PAGE_IMAGE)])

# Encoded blocks compressed together, in one call without the GIL (the frames are the
# ones compressing each alone makes).
COMPRESS_GROUP_BYTES = 2 << 20


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


_tmp_seq = itertools.count()


def tmp_layer_name(owner: str) -> str:
    """`layer-<owner>-<pid>-<n>.tmp`: `owner` says which role wrote it ("w" the
    writer, "m" the maintenance process), so recovery deletes only its own role's
    leftovers while the other role may still be writing (FORMAT.md section 6)."""
    return f"layer-{owner}-{os.getpid()}-{next(_tmp_seq)}{TMP_SUFFIX}"


class LayerWriter:
    """Streams sorted entries into `<dir>/<name>.tmp`; `seal` (or `finish`) ends it.

    Requires: entries added (one by one with `add`, or as sorted batches with
    `add_batch`) in strictly increasing (key, lsn) order, each inside the key range
    / LSN range given to `seal`. Blocks are written in the column layout (v3).
    The file gets its final name only through the commit protocol (or `finish`);
    it is not live until the manifest references it.
    """

    def __init__(self, directory: Path, *, block_bytes: int, zstd_level: int,
                 owner: str = "w", head_frames: bool = True) -> None:
        """`head_frames`: each block as two frames, head and values (delta layers:
        the image trigger's chain count reads heads alone; image layers: the next
        image copies a block whose keys did not change, `copy_image_block`); else one
        frame, head_len 0 (`write_layer`'s image layers, as image creation wrote them
        before the twenty-eighth session)."""
        self._dir = directory
        self._head_frames = head_frames
        self._tmp = directory / tmp_layer_name(owner)
        self._f = durable.fs().create(self._tmp)
        self._f.write(b"\0" * HEADER.size)
        self._pos = HEADER.size
        self._block_bytes = block_bytes
        self._cctx = zstandard.ZstdCompressor(level=zstd_level)
        self._parts: list[EntryBatch] = []  # rows of the block being filled
        self._part_bytes = 0
        self._rows = BatchBuilder()  # rows given one by one, not yet in _parts
        self._first: tuple[bytes, int] | None = None
        self._last: tuple[bytes, int] | None = None
        self._index: list[bytes] = []
        # encoded blocks not yet compressed: (raw, (entries, first key, first lsn, last
        # key, last lsn, min lsn, max lsn))
        self._pending: list[tuple[bytes, tuple[int, bytes, int, bytes, int, int, int]]] = []
        self._pending_bytes = 0
        self.entries = 0
        self.raw_bytes = 0
        self._runs = KeyRuns(chains=True)  # the header's max_key_entries (v3)
        self._hashes: list[np.ndarray] = []  # of the distinct keys encoded (the filter)
        self._last_hashed: bytes | None = None

    @property
    def max_key_entries(self) -> int:
        """The longest run of one key's records so far (see KeyRuns); final after seal."""
        return self._runs.best

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
        self._last = pos
        before = self._rows.nbytes
        self._rows.add(e.key, e.lsn, e.value)
        n = self._rows.nbytes - before
        self.entries += 1
        self.raw_bytes += n
        self._part_bytes += n
        if self._part_bytes >= self._block_bytes:
            self._flush_block()

    def add_batch(self, b: EntryBatch) -> None:
        """Add the rows of `b`. Requires: `b` sorted by (key, lsn), one row per (key, lsn),
        every row after the last one added. Raises: ValueError otherwise (nothing added)."""
        n = len(b)
        if n == 0:
            return
        ok = b.order_keys
        first = (b.key_at(0), int(b.lsns[0]))
        if n > 1:
            same = ok[1:] == ok[:-1]
            if np.any(ok[1:] < ok[:-1]) or np.any(same & (b.lsns[1:] <= b.lsns[:-1])):
                raise ValueError("batch not strictly increasing in (key, lsn)")
        if self._last is not None and first <= self._last:
            raise ValueError(f"entries out of order: {first!r} after {self._last!r}")
        self._take_rows()
        self._runs.add(b)
        if self._first is None:
            self._first = first
        self._last = (b.key_at(n - 1), int(b.lsns[-1]))
        sizes = b.lengths + ENTRY_OVERHEAD
        cum = np.cumsum(sizes)
        self.entries += n
        self.raw_bytes += int(cum[-1])
        done = 0
        whole: list[int] = []  # row ends of the blocks made of this batch's rows alone
        whole_from = 0  # where the first of them starts
        while done < n:
            # the block closes with the row that brings it to block_bytes or more
            need = self._block_bytes - self._part_bytes + (int(cum[done - 1]) if done else 0)
            cut = int(np.searchsorted(cum, need, "left"))
            if cut >= n:
                break
            if self._parts:  # the block begun before this batch
                self._parts.append(b.slice(done, cut + 1))
                self._part_bytes = 0
                self._flush_block()
            else:
                if not whole:
                    whole_from = done
                whole.append(cut + 1)
            done = cut + 1
        # in groups of blocks (bounded memory: a group's raw bytes, then its frames)
        group = max(1, COMPRESS_GROUP_BYTES // self._block_bytes)
        for g in range(0, len(whole), group):
            a = whole[g - 1] if g else whole_from
            self._encode_blocks(b.slice(a, whole[min(g + group, len(whole)) - 1]),
                                [e - a for e in whole[g:g + group]])
        if done < n:
            self._parts.append(b.slice(done, n) if done else b)
            self._part_bytes += int(cum[-1]) - (int(cum[done - 1]) if done else 0)

    def _encode_blocks(self, b: EntryBatch, ends: list[int]) -> None:
        """The blocks of rows [ends[i - 1], ends[i]) of `b` (the first from row 0; the
        last ends at len(b)), encoded together (`blocks.encode_many_columns`)."""
        starts = [0, *ends[:-1]]
        self._hash_keys(b.keys)
        keys = b.keys.tobytes()
        lsns = b.lsns.tolist()
        lmin = np.minimum.reduceat(b.lsns, starts).tolist()
        lmax = np.maximum.reduceat(b.lsns, starts).tolist()
        for i, raw in enumerate(encode_many_columns(b, ends)):
            s, e = starts[i], ends[i]
            self._pending.append((raw, (e - s, keys[KEY_SIZE * s:KEY_SIZE * (s + 1)], lsns[s],
                                        keys[KEY_SIZE * (e - 1):KEY_SIZE * e], lsns[e - 1],
                                        lmin[i], lmax[i])))
            self._pending_bytes += len(raw)
            if self._pending_bytes >= COMPRESS_GROUP_BYTES:
                self._write_pending()

    def copy_image_block(self, head: bytes, values_frame: bytes, lsn: int) -> None:
        """Append a block of an older image layer (`LayerFile.image_block_parts`) with
        every entry at `lsn`: its values frame as it is stored (neither decompressed
        nor compressed again), its head again with the new LSN (an image block's LSN
        column is its first LSN, then zeros). The block being filled is closed first.

        Requires: a writer in two frames; the block's first key after every key added.
        Raises: ValueError (nothing added) if `head` is not an image block's head of
        one LSN, or out of order."""
        (n,) = N_FIELD.unpack_from(head, 0) if len(head) >= 4 else (0,)
        lo = 4 + KEY_SIZE * n
        kinds = lo + 8 * n
        if (not self._head_frames or n == 0 or len(head) != head_size(n)
                or head.count(0, lo + 8, kinds) != 8 * (n - 1)
                or head[kinds:kinds + n] != _IMAGE_KIND * n):
            raise ValueError("not the head of an image block of one LSN")
        k0, k1 = head[4:4 + KEY_SIZE], head[lo - KEY_SIZE:lo]
        if self._last is not None and (k0, lsn) <= self._last:
            raise ValueError(f"entries out of order: {(k0, lsn)!r} after {self._last!r}")
        self._flush_block()
        self._write_pending()
        self._hash_keys(np.frombuffer(head, dtype=KEY_DTYPE, count=n, offset=4))
        hc = self._cctx.compress(head[:lo] + _LSN.pack(lsn) + head[lo + 8:])
        values = int(np.frombuffer(head, dtype=">u4", count=n, offset=kinds + n).sum())
        hcrc, size = crc32c(hc), len(hc) + len(values_frame)
        self._index.append(INDEX_ENTRY.pack(self._pos, size, len(head) + values, n,
                                            crc32c_extend(hcrc, values_frame), k0, lsn, k1,
                                            lsn, lsn, lsn, len(hc), hcrc))
        self._f.write(hc)
        self._f.write(values_frame)
        self._pos += size
        if self._first is None:
            self._first = (k0, lsn)
        self._last = (k1, lsn)
        self._runs.end(k1)
        self.entries += n
        self.raw_bytes += values + ENTRY_OVERHEAD * n

    def _hash_keys(self, keys: np.ndarray) -> None:
        """Keep the hashes of the distinct keys of `keys` (a sorted column, every key
        at or after the last one hashed) for the key filter."""
        if len(keys):
            self._hashes.append(distinct_key_hashes(keys, self._last_hashed))
            self._last_hashed = keys[-1].tobytes()

    def _take_rows(self) -> None:
        if len(self._rows):
            rows = self._rows.build()
            self._runs.add(rows)
            self._parts.append(rows)
            self._rows = BatchBuilder()

    def _flush_block(self) -> None:
        self._take_rows()
        block = EntryBatch.concat(self._parts)
        self._parts, self._part_bytes = [], 0
        n = len(block)
        if n == 0:
            return
        self._encode_blocks(block, [n])

    def _write_pending(self) -> None:
        """Compress the encoded blocks waiting (each as two zstd frames, head and values,
        or one, in one call that releases the GIL: a flush thread compresses while
        the ingest thread runs) and write them with their index entries."""
        if not self._pending:
            return
        if not self._head_frames:
            comps = self._cctx.multi_compress_to_buffer([raw for raw, _ in self._pending])
            for i, (raw, (n, k0, l0, k1, l1, lmin, lmax)) in enumerate(self._pending):
                comp = comps[i].tobytes()
                self._index.append(INDEX_ENTRY.pack(self._pos, len(comp), len(raw), n,
                                                    crc32c(comp), k0, l0, k1, l1, lmin, lmax,
                                                    0, 0))
                self._f.write(comp)
                self._pos += len(comp)
            self._pending, self._pending_bytes = [], 0
            return
        pieces: list[bytes | bytearray | memoryview] = []
        for raw, (n, *_) in self._pending:
            view, cut = memoryview(raw), head_size(n)
            pieces += (view[:cut], view[cut:])
        comps = self._cctx.multi_compress_to_buffer(pieces)
        for i, (raw, (n, k0, l0, k1, l1, lmin, lmax)) in enumerate(self._pending):
            head, values = comps[2 * i].tobytes(), comps[2 * i + 1].tobytes()
            hcrc = crc32c(head)
            size = len(head) + len(values)
            self._index.append(INDEX_ENTRY.pack(self._pos, size, len(raw), n,
                                                crc32c_extend(hcrc, values), k0, l0, k1, l1,
                                                lmin, lmax, len(head), hcrc))
            self._f.write(head)
            self._f.write(values)
            self._pos += size
        self._pending, self._pending_bytes = [], 0

    def finish(self, name: LayerName) -> WrittenLayer:
        """`seal`, then rename to `name` and fsync the directory: the file is in place
        (not live until a manifest names it). For tools and tests; the store's verbs
        seal and let the commit protocol rename.

        Raises: ValueError if an entry lies outside `name`'s ranges (nothing published).
        """
        s = self.seal(name)
        try:
            durable.fs().rename(s.tmp, self._dir / name.filename())
        except BaseException:
            self.abort()
            raise
        durable.fs().fsync_dir(self._dir)
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
            self._write_pending()
            section = build_section(np.concatenate(self._hashes) if self._hashes
                                    else np.zeros(0, dtype=np.uint64))
            self._f.write(section)
            index = b"".join(self._index)
            index_off = self._pos + len(section)
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
            self._f.fsync()
            self._f.close()
            return SealedLayer(name, self._tmp, size, self.entries, self.max_key_entries)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        with contextlib.suppress(FileNotFoundError):
            durable.fs().unlink(self._tmp)


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
    w = LayerWriter(directory, block_bytes=block_bytes, zstd_level=zstd_level,
                    head_frames=not name.is_image)
    return add_all(w, name, entries).finish(name)
