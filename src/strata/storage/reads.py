"""Reads of an open store: GetPage@LSN (through the page cache), range scans and
key listings at an LSN, with the retention check.

Fed by: PageStore (and the read-only reader). Feeds: reconstruct/historical,
ingest's own reads, the CLI. Owns: the rule that reads below retention_lsn are
refused (invariant 9) and that only results at LSN <= ingested_lsn are cached
(invariant 11). The read-path rules themselves live in layermap.py.
"""

from __future__ import annotations

from collections.abc import Iterator

from strata.errors import LsnOutOfRangeError
from strata.key import Key, KeyRange
from strata.lsn import Lsn
from strata.storage.changes import changed_keys
from strata.storage.layermap import ReadStats, ReadView, read_key
from strata.storage.manifest import Manifest
from strata.storage.scan import scan_dense as dense
from strata.storage.scan import scan_keys, scan_values
from strata.storage.store import LayerStore, Role


def check_lsn(manifest: Manifest, lsn: int, durable_only: bool = False) -> None:
    """Raises: LsnOutOfRangeError naming the oldest readable LSN if lsn is below it, or
    (`durable_only`: a reader, which sees no memtable) the newest durable one if lsn is
    above it."""
    r = manifest.retention_lsn
    if lsn < r:
        raise LsnOutOfRangeError(
            f"LSN {Lsn(lsn)} is below the retention horizon; the oldest readable LSN is "
            f"{Lsn(r)}", nearest=Lsn(r))
    d = manifest.durable_lsn
    if durable_only and lsn > d:
        raise LsnOutOfRangeError(
            f"LSN {Lsn(lsn)} is not durable in this snapshot (durable_lsn {Lsn(d)}): the "
            "writer has not flushed it yet, or the reader must refresh", nearest=Lsn(d))


def _view_at(store: LayerStore, lsn: int) -> tuple[ReadView, bool]:
    view, manifest, ingested = store.read_state()
    check_lsn(manifest, lsn, durable_only=store.role is Role.READER)
    return view, lsn <= ingested


def get(store: LayerStore, key: Key, lsn: int) -> bytes | None:
    """GetPage@LSN: the value of `key` at `lsn`, or None if it has none there."""
    view, cacheable = _view_at(store, lsn)
    if cacheable:
        hit, v = store.cache.get(key, lsn)
        if hit:
            store.note_get(None)
            return v
    stats = ReadStats()
    v = read_key(view, key, lsn, store.redo, stats)
    if cacheable:
        store.cache.put(key, lsn, v)
    store.note_get(stats)
    return v


def scan(store: LayerStore, key_range: KeyRange, lsn: int) -> Iterator[tuple[Key, bytes]]:
    """(key, value) for every key present at `lsn` in `key_range`, in key order."""
    view, _ = _view_at(store, lsn)
    stats = ReadStats()
    try:
        yield from scan_values(view, key_range.start.to_bytes(), key_range.end.to_bytes(),
                               lsn, store.redo, stats)
    finally:
        store.count(layers_visited=stats.layers_visited, deltas_applied=stats.deltas_applied,
                    redo_calls=stats.redo_calls)


def scan_dense(store: LayerStore, start: Key, count: int, lsn: int, width: int,
               out: bytearray | memoryview | None = None) -> bytearray | memoryview:
    """`scan.scan_dense` of `count` keys from `start` at `lsn` (into `out` if given)."""
    view, _ = _view_at(store, lsn)
    stats = ReadStats()
    try:
        return dense(view, start.to_bytes(), count, lsn, store.redo, stats, width, out)
    finally:
        store.count(layers_visited=stats.layers_visited, deltas_applied=stats.deltas_applied,
                    redo_calls=stats.redo_calls)


def keys(store: LayerStore, key_range: KeyRange, lsn: int) -> Iterator[Key]:
    """Keys present at `lsn` in `key_range`, in order (no reconstruction)."""
    view, _ = _view_at(store, lsn)
    yield from scan_keys(view, key_range.start.to_bytes(), key_range.end.to_bytes(), lsn,
                         ReadStats())


def changed(store: LayerStore, key_range: KeyRange, after: int, upto: int
            ) -> Iterator[tuple[bytes, list[int]]]:
    """Keys of `key_range` with entries in (after, upto] (`changes.changed_keys`)."""
    view, _ = _view_at(store, upto)
    yield from changed_keys(view, key_range.start.to_bytes(), key_range.end.to_bytes(), after,
                            upto)
