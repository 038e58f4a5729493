"""The layer map and the read path: which layers a read visits, and how a
value is rebuilt from them.

Fed by: the store's current snapshot (memtables + live layer files).
Feeds: GetPage@LSN (`read_key`), range scans (scan.py applies the same rules
column-wise), image creation, compaction planning, gc. Owns: read-path rules
(FORMAT.md invariants 5-8):

- a read at LSN X sees every entry with lsn <= X;
- the newest image layer covering the key with image lsn <= X is a floor: it
  holds the key's value at that LSN or proves the key absent there;
- above the floor, sources are read newest first (active memtable, frozen
  memtables, delta layers by LSN) until a chain end (image value, will_init
  record, tombstone); records are then applied oldest first by `redo`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from strata.key import KEY_SIZE, Key
from strata.storage.layerfile import LayerFile
from strata.storage.manifest import LayerEntry, Level
from strata.storage.memtable import FrozenMemtable, Memtable
from strata.storage.naming import LayerName
from strata.storage.values import Entry, PageImage, Tombstone, WalRecord, ends_chain

# redo(key, base, records) -> page; base None = start from nothing; each record
# carries the LSN it is stored at (`WalRecord.lsn`).
Redo = Callable[[Key, bytes | None, list[WalRecord]], bytes]


@dataclass(slots=True)
class ReadStats:
    """Read amplification of one or many reads."""

    layers_visited: int = 0
    deltas_applied: int = 0
    redo_calls: int = 0

    def add(self, other: ReadStats) -> None:
        self.layers_visited += other.layers_visited
        self.deltas_applied += other.deltas_applied
        self.redo_calls += other.redo_calls


@dataclass(frozen=True, slots=True)
class Layer:
    """A live layer: its manifest entry and its open file."""

    entry: LayerEntry
    file: LayerFile

    @property
    def name(self) -> LayerName:
        return self.entry.name


def covers(start: bytes, end: bytes, ranges: Iterable[tuple[bytes, bytes]]) -> bool:
    """True if the union of half-open `ranges` contains [start, end)."""
    pos = start
    for rs, re_ in sorted(ranges):
        if rs > pos:
            break
        if re_ > pos:
            pos = re_
        if pos >= end:
            return True
    return pos >= end


@dataclass(frozen=True, slots=True)
class LayerMap:
    """An immutable snapshot of the live layers (readers never lock)."""

    layers: tuple[Layer, ...] = ()
    deltas: tuple[Layer, ...] = field(default=(), init=False)  # newest LSN first
    images: tuple[Layer, ...] = field(default=(), init=False)  # newest LSN first
    # Delta layers grouped by LSN range, newest first; within a band key ranges are
    # disjoint (invariant 6), so a point lookup bisects each band instead of
    # testing every layer: (lsn_start, lsn_end, key_starts, layers by key_start).
    bands: tuple[tuple[int, int, list[bytes], list[Layer]], ...] = field(default=(), init=False)
    # `images` and `deltas` bounds as arrays, in their order: a read finds its candidate
    # layers with a few numpy comparisons instead of a Python test of every layer (a
    # 30-minute pgbench history at scale 100 leaves 2,000+ image layers, and a cold
    # scan asks once per window)
    image_bounds: _Bounds = field(init=False, repr=False, compare=False)
    delta_bounds: _Bounds = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        d = sorted((la for la in self.layers if not la.name.is_image),
                   key=lambda la: (la.name.lsn_start, la.name.key_start), reverse=True)
        i = sorted((la for la in self.layers if la.name.is_image),
                   key=lambda la: (la.name.lsn_start, la.name.key_start), reverse=True)
        object.__setattr__(self, "deltas", tuple(d))
        object.__setattr__(self, "images", tuple(i))
        groups: dict[tuple[int, int], list[Layer]] = {}
        for la in d:
            groups.setdefault((la.name.lsn_start, la.name.lsn_end), []).append(la)
        bands = []
        for (ls, le), members in sorted(groups.items(), reverse=True):
            members.sort(key=lambda la: la.name.key_start)
            bands.append((ls, le, [la.name.key_start for la in members], members))
        object.__setattr__(self, "bands", tuple(bands))
        object.__setattr__(self, "image_bounds", _Bounds(i))
        object.__setattr__(self, "delta_bounds", _Bounds(d))

    def l0(self) -> list[Layer]:
        return sorted((la for la in self.deltas if la.entry.level == Level.L0),
                      key=lambda la: la.name.lsn_start)

    def floor_image(self, key: bytes, lsn: int) -> Layer | None:
        for j in self.image_bounds.candidates(key, key, lsn, point=True):
            im = self.images[j]
            n = im.name
            if n.image_lsn <= lsn and n.key_start <= key < n.key_end:
                return im
        return None

    def search(self, key: bytes, lsn: int) -> tuple[list[Layer], Layer | None]:
        """For (key, lsn): delta layers that may hold entries above the floor image
        (newest first) and that image (or None)."""
        img = self.floor_image(key, lsn)
        floor = img.name.image_lsn if img is not None else -1
        ds = []
        for ls, le, starts, members in self.bands:
            if ls > lsn or le - 1 <= floor:
                continue
            j = bisect.bisect_right(starts, key) - 1
            if j >= 0 and key < members[j].name.key_end:
                ds.append(members[j])
        return ds, img

    def images_for_scan(self, start: bytes, end: bytes, lsn: int) -> list[Layer]:
        """Image layers at or below `lsn` overlapping [start, end) and not hidden
        behind newer images that are themselves at or below `lsn`."""
        out: list[Layer] = []
        for j in self.image_bounds.candidates(start, end, lsn):  # newest first
            im = self.images[j]
            n = im.name
            if n.image_lsn > lsn or not (n.key_start < end and start < n.key_end):
                continue
            s, e = max(start, n.key_start), min(end, n.key_end)
            newer = [(o.name.key_start, o.name.key_end) for o in out
                     if o.name.image_lsn > n.image_lsn]
            if not covers(s, e, newer):
                out.append(im)
        return out

    def deltas_for_scan(self, start: bytes, end: bytes, lsn: int,
                        images: Sequence[Layer]) -> list[Layer]:
        out = []
        for j in self.delta_bounds.candidates(start, end, lsn):
            d = self.deltas[j]
            n = d.name
            if n.lsn_start > lsn or not (n.key_start < end and start < n.key_end):
                continue
            s, e = max(start, n.key_start), min(end, n.key_end)
            # skippable if images at or above its newest entry cover its part of the range
            newer = [(im.name.key_start, im.name.key_end) for im in images
                     if im.name.image_lsn >= n.lsn_end - 1]
            if not covers(s, e, newer):
                out.append(d)
        return out


class _Bounds:
    """Key range and first LSN of each of a sequence of layers, as arrays."""

    __slots__ = ("key_end", "key_start", "lsn_start")

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.key_start = np.array([la.name.key_start for la in layers], dtype=f"S{KEY_SIZE}")
        self.key_end = np.array([la.name.key_end for la in layers], dtype=f"S{KEY_SIZE}")
        self.lsn_start = np.array([la.name.lsn_start for la in layers], dtype=np.uint64)

    def candidates(self, start: bytes, end: bytes, lsn: int, point: bool = False) -> list[int]:
        """Indexes, ascending, of the layers that may start at or below `lsn` and
        overlap [start, end) (hold `start`, with `point`): a superset the caller
        tests exactly (keys of another length than KEY_SIZE select every layer;
        numpy orders equal-length bytes as Python does)."""
        if lsn < 0 or not len(self.lsn_start):
            return []
        ok = self.lsn_start <= np.uint64(min(lsn, (1 << 64) - 1))
        if len(start) == KEY_SIZE and len(end) == KEY_SIZE:
            ok &= (self.key_start <= start) if point else (self.key_start < end)
            ok &= self.key_end > start
        return np.flatnonzero(ok).tolist()  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class ReadView:
    """Everything a read needs, captured atomically: memtables and layers."""

    active: Memtable
    frozen: tuple[FrozenMemtable, ...]  # oldest first
    layer_map: LayerMap


def finish_chain(key: Key, chain: list[Entry], redo: Redo, stats: ReadStats) -> bytes | None:
    """`chain` is newest first and ends (at its last element) at a chain end or
    at the oldest entry there is. Returns the value, or None if the key is absent."""
    if not chain:
        return None
    oldest = chain[-1].value
    base: bytes | None = None
    recs: list[WalRecord]
    if isinstance(oldest, PageImage):
        base = oldest.data
        tail = chain[-2::-1]
    elif isinstance(oldest, Tombstone):
        tail = chain[-2::-1]
    else:
        tail = chain[::-1]
    recs = []
    for e in tail:
        v = e.value
        if not isinstance(v, WalRecord):  # pragma: no cover - chain cut guarantees it
            raise AssertionError(f"chain for {key} not cut at {v!r}")
        recs.append(WalRecord(v.data, v.will_init, e.lsn))
    if not recs:
        return base
    stats.deltas_applied += len(recs)
    stats.redo_calls += 1
    return redo(key, base, recs)


def _cut(entries_newest_first: Iterable[Entry], chain: list[Entry]) -> bool:
    """Append to `chain` until a chain end; True if one was reached."""
    for e in entries_newest_first:
        chain.append(e)
        if ends_chain(e.value):
            return True
    return False


def read_key(view: ReadView, key: Key, lsn: int, redo: Redo, stats: ReadStats) -> bytes | None:
    """GetPage@LSN without cache: the value of `key` at `lsn`, None if absent."""
    kb = key.to_bytes()
    deltas, img = view.layer_map.search(kb, lsn)
    floor = img.name.image_lsn if img is not None else -1
    lo, hi = floor + 1, lsn + 1
    chain: list[Entry] = []
    done = _cut(reversed(view.active.get(kb, lo, hi)), chain)
    for fm in reversed(view.frozen):
        if done:
            break
        done = _cut(reversed(fm.get(kb, lo, hi)), chain)
    for d in deltas:
        if done:
            break
        stats.layers_visited += 1
        done = _cut(reversed(d.file.get_chain(kb, lo, hi)[0]), chain)
    if not done and img is not None:
        stats.layers_visited += 1
        chain.extend(img.file.get(kb, floor, floor + 1))
    return finish_chain(key, chain, redo, stats)
