"""Range reads, column-wise: every key of a key range at an LSN, and the merge
of whole layers, a window of keys at a time.

Fed by: a ReadView (memtables + layer files). Feeds: range scans
(`scan_values`, `scan_keys`: materializing a database, ingest's own reads),
image creation (`scan_chains`: each key's chain, for redo) and compaction
(`merged_windows`: the entries of several delta layers in (key, lsn) order).
Owns: how a key range is cut into windows, and the vectorized form of the
read rules of layermap.py (FORMAT.md section 7).

A window is a key range whose entries, over all sources, come to about
`WINDOW_BYTES` (from the layers' block indexes). Per window each source yields
one EntryBatch; the batches are concatenated and sorted with numpy, and the
chain of each key (its floor image, then the entries above it up to the
newest chain end) is found with array operations. Only the per-key result
(redo, and the (Key, value) handed out) is Python work per key.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from strata.key import KEY_SIZE, Key
from strata.storage.batch import KEY_ORDER, EntryBatch, key_order
from strata.storage.layerfile import LayerFile
from strata.storage.layermap import Layer, ReadStats, ReadView, Redo, read_key
from strata.storage.values import ValueKind, WalRecord

# Raw bytes of blocks a window holds: 64 blocks of 256 KiB. A window cut through
# every source's blocks costs per window (edge blocks decoded alone and cut, numpy
# calls per source), so a window should hold many blocks of each source: at 4 MiB
# (16 blocks over 5-8 sources) a cold scan of a long history cost ~25 % more
# (BENCHMARKS.md, thirty-third session). Memory: at most about this much decoded per
# window, plus one edge block per source (blocks a read skips count here too).
WINDOW_BYTES = 16 << 20
# A dense read of at most this many keys reads them one by one, as GetPage does: a
# range read decodes the whole block of every source whose blocks span the range,
# while a point read asks each layer's key filter, then a block's head, then its
# values only up to the key's. Cold, in process, on a 5-minute scale-100 store: one
# page 1.67 ms as a range read against 0.40 ms as a point read, two 1.68 against
# 0.72, four 1.85 against 1.66, eight 2.17 against 3.47 (BENCHMARKS.md,
# thirty-fourth session). A lazy file system's random reads are mostly one page.
POINT_READS_MAX = 3
_IMAGE = int(ValueKind.PAGE_IMAGE)
_RECORD = int(ValueKind.WAL_RECORD)
_INIT = int(ValueKind.WAL_RECORD_INIT)
_TOMBSTONE = int(ValueKind.TOMBSTONE)


# The slot `WindowRedo.into` builds a chain in when storage lays out values of its
# own (the flush's chain cuts, image creation): a value of this size (a relation
# page) can be built there; any other goes through the redo's `__call__`.
SLOT_BYTES = 8192


@runtime_checkable
class WindowRedo(Protocol):
    """A Redo that can also build many chains of a window into a page buffer in one
    call (`scan_dense` uses it when the store's redo is one; storage knows nothing of
    what the values mean, the redo does: `reconstruct.Reconstructor`).

    `into(dst, width, batch, first, stop, slots, base=None)`: chain c is rows
    [first[c], stop[c]) of `batch`, oldest first, one key's, neither a lone image nor
    ending in a tombstone; its value is laid at dst[slots[c] * width:][:width]. Returns
    a bool per chain: True where it laid the value, False where it did not (the slot
    may hold part of the work: `scan_dense` builds that chain through `__call__` and
    overwrites it). Must equal `__call__` byte for byte where it says True.

    `base` (the flush's chain cuts) lets a chain go on from a page: base[c] == c, its
    slot already holds the value its rows (deltas only) apply to; base[c] < c, chain
    base[c]'s value is that base (False when that chain is False); -1, as without."""

    def __call__(self, key: Key, base: bytes | None, records: list[WalRecord]) -> bytes: ...

    def into(self, dst: memoryview | bytearray, width: int, batch: EntryBatch,
             first: np.ndarray, stop: np.ndarray, slots: np.ndarray,
             base: np.ndarray | None = None) -> np.ndarray: ...


def windows(files: Sequence[LayerFile], start: bytes, end: bytes
            ) -> Iterator[tuple[bytes, bytes]]:
    """Consecutive key ranges covering [start, end), cut at block first keys so that
    each holds about `WINDOW_BYTES` (read at the call: a test may set it) raw bytes of
    the files' blocks."""
    target = WINDOW_BYTES
    blocks = sorted((b.first_key, b.raw_len) for f in files
                    for b in (f.blocks[i] for i in f.blocks_in(start, end)))
    cur, acc = start, 0
    for first_key, raw_len in blocks:
        if acc >= target and cur < first_key < end:
            yield cur, first_key
            cur, acc = first_key, 0
        acc += raw_len
    yield cur, end


def _sorted_by_key_lsn(b: EntryBatch, tags: np.ndarray) -> tuple[EntryBatch, np.ndarray]:
    order = key_order(b.keys, b.lsns)
    return b.take(order), tags[order]


class Chains:
    """The chain at one LSN of every key of a window that has entries there, in key
    order: key g's chain is rows [first[g], stop[g]) of `batch`, oldest first; its
    oldest row is a chain end (image, will_init record, tombstone) or the oldest
    entry the key has above its floor. Immutable by convention; the batch's
    columns are turned into Python lists once, on the first `value` (a per-key
    loop then indexes lists, not numpy arrays: ~3 us less per page)."""

    __slots__ = ("_rows", "batch", "first", "stop")

    def __init__(self, batch: EntryBatch, first: np.ndarray, stop: np.ndarray) -> None:
        self.batch = batch
        self.first = first
        self.stop = stop
        self._rows: tuple[list[int], list[int], list[int], list[int], list[int]] | None = None

    def __len__(self) -> int:
        return len(self.first)

    def present(self) -> np.ndarray:
        """Per key: True unless its newest entry is a tombstone."""
        return np.asarray(self.batch.kinds[self.stop - 1] != _TOMBSTONE)

    def value(self, g: int, key: Key, redo: Redo, stats: ReadStats) -> bytes | None:
        """Key g's value (None: absent), running redo when the chain has records."""
        return self.rows_value(int(self.first[g]), int(self.stop[g]), key, redo, stats)

    def rows_value(self, a: int, z: int, key: Key, redo: Redo,
                   stats: ReadStats) -> bytes | None:
        """The value of the chain in rows [a, z) (a key's [first, stop))."""
        if self._rows is None:
            b = self.batch
            self._rows = (b.kinds.tolist(), b.starts.tolist(), b.ends.tolist(),
                          [0] * len(b) if b.buf is None else b.buf.tolist(), b.lsns.tolist())
        kinds, starts, ends, which, lsns = self._rows
        bufs = self.batch.bufs
        kind = kinds[a]
        base: bytes | None = None
        if kind == _IMAGE:
            base = bufs[which[a]][starts[a]:ends[a]]
            a += 1
        elif kind == _TOMBSTONE:
            a += 1
        if a == z:
            return base
        recs = [WalRecord(bufs[which[i]][starts[i]:ends[i]], kinds[i] == _INIT, lsns[i])
                for i in range(a, z)]
        stats.deltas_applied += len(recs)
        stats.redo_calls += 1
        return redo(key, base, recs)


def floors_of(ok: np.ndarray, img_ranges: Sequence[tuple[bytes, bytes, int]]) -> np.ndarray:
    """Each key's floor: the newest image LSN of `img_ranges` ((key_start, key_end,
    image_lsn) of each image layer read) whose range holds it, -1 where none does.
    `ok`: the keys as `order_keys`."""
    floor = np.full(len(ok), -1, dtype=np.int64)
    for ks, ke, il in img_ranges:
        cover = (ok >= ks) & (ok < ke)
        floor = np.where(cover & (il > floor), il, floor)
    return floor


def chains_of(b: EntryBatch, tags: np.ndarray,
              img_ranges: Sequence[tuple[bytes, bytes, int]]) -> Chains:
    """The chains in `b` (entries of every source at or below the read LSN; `tags`:
    0 for rows of image layers, 1 for the others) under the image floors
    `img_ranges` ((key_start, key_end, image_lsn) of each image layer read)."""
    floor = floors_of(b.order_keys, img_ranges)
    # the floor image itself, and everything else above the floor
    keep = np.where(tags == 0, b.lsns == floor, b.lsns > floor)
    b, tags = _sorted_by_key_lsn(b.take(keep), tags[keep])
    n = len(b)
    if n == 0:
        return Chains(b, np.empty(0, np.int64), np.empty(0, np.int64))
    ok = b.order_keys
    first = np.flatnonzero(np.concatenate([[True], ok[1:] != ok[:-1]]))
    stop = np.concatenate([first[1:], [n]])
    is_end = (tags == 0) | (b.kinds != _RECORD)
    last_end = np.maximum.accumulate(np.where(is_end, np.arange(n), -1))
    return Chains(b, np.maximum(last_end[stop - 1], first), stop)


def scan_chains(view: ReadView, start: bytes, end: bytes, lsn: int,
                stats: ReadStats) -> Iterator[Chains]:
    """Per window of [start, end), in key order: the chains at `lsn` of its keys.
    Streaming: about one window of every source in memory at a time."""
    for w in window_chains(view, start, end, lsn, stats):
        if w.chains is not None:
            yield w.chains


class Window(NamedTuple):
    """One window of a range read at an LSN: the chains of its keys (None: no key
    left), and the image blocks set aside (`window_chains(copy_blocks=True)`): each
    (file, block index), in key order, none of its keys in `chains`."""

    chains: Chains | None
    copies: list[tuple[LayerFile, int]]


def window_chains(view: ReadView, start: bytes, end: bytes, lsn: int, stats: ReadStats,
                  copy_blocks: bool = False) -> Iterator[Window]:
    """`scan_chains`, a Window at a time. With `copy_blocks` (image creation at `lsn`),
    an image block that already holds the values at `lsn` of every key of its range
    (`unchanged_blocks`) is not read: it is handed out to be copied whole."""
    lm = view.layer_map
    images = lm.images_for_scan(start, end, lsn)
    deltas = lm.deltas_for_scan(start, end, lsn, images)
    stats.layers_visited += len(images) + len(deltas)
    hi = lsn + 1
    img_ranges = [(im.name.key_start, im.name.key_end, im.name.image_lsn) for im in images]
    for ws, we in windows([la.file for la in (*images, *deltas)], start, end):
        # delta blocks at or below the image floor of all their keys are never read
        floors = [r for r in img_ranges if r[0] < we and ws < r[1]]
        parts = [la.file.batch_range(ws, we, 0, hi, floors) for la in deltas]
        parts += [fm.batch_range(ws, we, 0, hi) for fm in view.frozen]
        parts.append(view.active.batch_range(ws, we, 0, hi))
        copies = unchanged_blocks(images, img_ranges, parts, ws, we) if copy_blocks else []
        skips: dict[int, set[int]] = {}
        for f, i in copies:
            skips.setdefault(id(f), set()).add(i)
        parts[:0] = [im.file.batch_range(ws, we, 0, hi, skip=skips.get(id(im.file), ()))
                     for im in images]
        tags = np.concatenate([np.full(len(p), 0 if i < len(images) else 1, np.uint8)
                               for i, p in enumerate(parts)])
        b = EntryBatch.concat(parts)
        yield Window(chains_of(b, tags, img_ranges) if len(b) else None, copies)


def unchanged_blocks(images: Sequence[Layer], img_ranges: Sequence[tuple[bytes, bytes, int]],
                     others: Sequence[EntryBatch], start: bytes,
                     end: bytes) -> list[tuple[LayerFile, int]]:
    """The blocks of `images` (a read's image layers; `img_ranges` their ranges and
    LSNs) inside [start, end) that hold the value of every key of their key range at
    the read's LSN: no entry of `others` (the read's delta and memtable rows there)
    above its key's floor and no newer image layer falls in their range (an older
    one's rows there are below their floor: the chains drop them). Only blocks in
    two frames (`LayerFile.image_block_parts`). In key order."""
    d = EntryBatch.concat([p for p in others if len(p)])
    ok = d.order_keys
    touched = np.unique(ok[d.lsns > floors_of(ok, img_ranges)]) if len(d) else np.empty(
        0, KEY_ORDER)
    out: list[tuple[LayerFile, int]] = []
    for im in images:
        f = im.file
        over = [(o.name.key_start, o.name.key_end) for o in images
                if o.name.image_lsn > im.name.image_lsn]
        for i in f.blocks_in(start, end):
            b = f.blocks[i]
            if (b.head_len and start <= b.first_key and b.last_key < end
                    and not any(s <= b.last_key and b.first_key < e for s, e in over)
                    and touched.searchsorted(b.first_key, "left")
                    == touched.searchsorted(b.last_key, "right")):
                out.append((f, i))
    out.sort(key=lambda c: c[0].blocks[c[1]].first_key)
    return out


def scan_values(view: ReadView, start: bytes, end: bytes, lsn: int, redo: Redo,
                stats: ReadStats) -> Iterator[tuple[Key, bytes]]:
    """(key, value at lsn) for every key present at `lsn` in [start, end), sorted."""
    for ch in scan_chains(view, start, end, lsn, stats):
        keys = ch.batch.keys.tobytes()
        # Python lists, not numpy scalars, in the per-key loop
        present = ch.present().tolist()
        for g, (a, z) in enumerate(zip(ch.first.tolist(), ch.stop.tolist(), strict=True)):
            if not present[g]:
                continue
            key = Key.unpack_from(keys, KEY_SIZE * a)
            v = ch.rows_value(a, z, key, redo, stats)
            if v is not None:
                yield key, v


def scan_dense(view: ReadView, start: bytes, count: int, lsn: int, redo: Redo,
               stats: ReadStats, width: int, out: bytearray | memoryview | None = None
               ) -> bytearray | memoryview:
    """The values at `lsn` of the `count` keys from `start` on that differ from it only
    in their last 4 bytes (a big-endian index), laid out `width` bytes apart: bytes
    [i * width, (i + 1) * width) hold the value of the key whose index is start's + i,
    zeros where that key has none. What `scan_values` yields for those keys, without a
    Python object per key whose chain is one image (a scan of an image layer's pages);
    at most `POINT_READS_MAX` keys are read one by one (`layermap.read_key`).
    Written into `out` (`count * width` writable bytes, whatever they held) when given,
    which is returned; else into a new bytearray.

    Raises: ValueError if a value is not `width` bytes long, `out` is not
    `count * width` bytes, or the keys would run past index 2^32 - 1."""
    base = int.from_bytes(start[-4:], "big")
    if base + count > 0xFFFFFFFF:
        raise ValueError(f"{count} keys from index {base} run past 2^32 - 1")
    end = start[:-4] + (base + count).to_bytes(4, "big")
    if out is None:
        out, dirty = bytearray(count * width), False
    elif len(out) != count * width:
        raise ValueError(f"{len(out)} bytes given for {count} values of {width}")
    else:
        dirty = True  # what no value overwrites is zeroed at the end
    dst = memoryview(out)
    if count <= POINT_READS_MAX:
        for i in range(count):
            v = read_key(view, Key.from_bytes(start[:-4] + (base + i).to_bytes(4, "big")),
                         lsn, redo, stats)
            if v is not None and len(v) != width:
                raise ValueError(f"a value of {len(v)} bytes where {width} are laid out")
            dst[i * width:(i + 1) * width] = bytes(width) if v is None else v
        return out
    filled = np.zeros(count, dtype=bool)
    for ch in scan_chains(view, start, end, lsn, stats):
        first = ch.first
        keys = ch.batch.keys.view(np.uint8).reshape(-1, KEY_SIZE)
        slots = keys[first, -4:].copy().view(">u4").ravel().astype(np.int64) - base
        lone = (ch.stop - first == 1) & (ch.batch.kinds[first] == _IMAGE)  # one image
        g = np.flatnonzero(lone)
        if len(g):
            _copy_images(ch.batch, first[g], slots[g], dst, width)
            filled[slots[g]] = True
        rest = np.flatnonzero(~lone & ch.present())
        if len(rest):
            filled[_redo_into(ch, rest, slots, dst, width, redo, stats)] = True
    if dirty:
        for h, t in _runs(np.flatnonzero(~filled)):
            dst[h * width:(t + 1) * width] = bytes((t + 1 - h) * width)
    return out


def _copy_images(b: EntryBatch, rows: np.ndarray, at: np.ndarray, dst: memoryview,
                 width: int) -> None:
    """The image values of rows `rows` of `b` into slots `at` of `dst` (`width` bytes
    each): one copy per run of values next to each other in one buffer and in `dst`.
    Raises: ValueError if a value is not `width` bytes long."""
    starts, ends = b.starts[rows], b.ends[rows]
    if np.any(ends - starts != width):
        raise ValueError(f"a value of {int((ends - starts).max())} bytes where "
                         f"{width} are laid out")
    which = np.zeros(len(rows), np.uint32) if b.buf is None else b.buf[rows]
    new = np.ones(len(rows), dtype=bool)
    new[1:] = ((at[1:] != at[:-1] + 1) | (which[1:] != which[:-1])
               | (starts[1:] != ends[:-1]))
    heads = np.flatnonzero(new)
    tails = np.append(heads[1:], len(rows)) - 1
    srcs = [memoryview(x) for x in b.bufs]
    for h, t in zip(heads.tolist(), tails.tolist(), strict=True):
        o, s0 = int(at[h]) * width, int(starts[h])
        n = (t - h + 1) * width
        dst[o:o + n] = srcs[int(which[h])][s0:s0 + n]


def _redo_into(ch: Chains, keys: np.ndarray, slots: np.ndarray, dst: memoryview, width: int,
               redo: Redo, stats: ReadStats) -> list[int]:
    """The values of the chains `keys` of `ch` (through redo: the whole window at once
    where `redo` is a WindowRedo, one key at a time for the rest) into their `slots` of
    `dst`; returns the slots written (a chain may have no value).
    Raises: ValueError if a value is not `width` bytes long."""
    written: list[int] = []
    if isinstance(redo, WindowRedo):
        first, stop, at = ch.first[keys], ch.stop[keys], slots[keys]
        done = redo.into(dst, width, ch.batch, first, stop, at)
        if done.any():
            heads = first[done]
            ends_first = np.isin(ch.batch.kinds[heads], (_IMAGE, _TOMBSTONE))
            stats.deltas_applied += int((stop[done] - heads).sum() - ends_first.sum())
            stats.redo_calls += len(heads)
            written = at[done].tolist()
            keys = keys[~done]
            if not len(keys):
                return written
    raw = ch.batch.keys.tobytes()
    at = slots.tolist()
    for r in keys.tolist():
        a, z = int(ch.first[r]), int(ch.stop[r])
        v = ch.rows_value(a, z, Key.unpack_from(raw, KEY_SIZE * a), redo, stats)
        o = at[r] * width
        if v is None:
            dst[o:o + width] = bytes(width)  # whatever `into` left there
            continue
        if len(v) != width:
            raise ValueError(f"a value of {len(v)} bytes where {width} are laid out")
        dst[o:o + width] = v
        written.append(at[r])
    return written


def _runs(ix: np.ndarray) -> Iterator[tuple[int, int]]:
    """(first, last) of each run of consecutive integers in the sorted `ix`."""
    if len(ix) == 0:
        return
    cut = np.flatnonzero(np.diff(ix) != 1)
    heads = np.concatenate([ix[:1], ix[cut + 1]]).tolist()
    tails = np.concatenate([ix[cut], ix[-1:]]).tolist()
    yield from zip(heads, tails, strict=True)


def scan_keys(view: ReadView, start: bytes, end: bytes, lsn: int,
              stats: ReadStats) -> Iterator[Key]:
    """Keys present at `lsn` (no reconstruction): newest chain entry not a tombstone."""
    for ch in scan_chains(view, start, end, lsn, stats):
        raw = ch.batch.keys
        for g in np.flatnonzero(ch.present()).tolist():
            yield Key.from_bytes(raw[int(ch.first[g])].tobytes())


def merged_windows(files: Sequence[LayerFile], start: bytes,
                   end: bytes) -> Iterator[EntryBatch]:
    """The entries of `files` (delta layers with pairwise disjoint LSN ranges, given
    oldest first) in (key, lsn) order, a window at a time (compaction's merge)."""
    for ws, we in windows(files, start, end):
        b = EntryBatch.concat([f.batch_range(ws, we) for f in files])
        if len(b):
            # rows are in (source, key, lsn) order and sources in LSN order: a stable
            # sort by key alone leaves each key's rows in LSN order
            yield b.take(key_order(b.keys))
