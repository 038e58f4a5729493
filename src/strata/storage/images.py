"""Image layers: every key of a key range at one LSN, so reads stop replaying
the deltas below it.

Fed by: the maintenance worker / process, `strata compact --images`, and gc
(images at the retention horizon). Feeds: new image layers (read floors).
Owns: the image trigger (FORMAT.md section 7a): which key ranges get images,
and when.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from strata.errors import LsnOutOfRangeError, RedoError, UnsupportedRecordError
from strata.key import Key
from strata.lsn import Lsn
from strata.storage import commit
from strata.storage.batch import BatchBuilder, EntryBatch
from strata.storage.layerfile import LayerWriter
from strata.storage.layermap import Layer, LayerMap, ReadStats, covers
from strata.storage.manifest import LayerEntry, Level
from strata.storage.naming import LayerName
from strata.storage.scan import Chains, scan_chains
from strata.storage.store import LayerStore
from strata.storage.values import PageImage, ValueKind

log = logging.getLogger(__name__)
_IMAGE = int(ValueKind.PAGE_IMAGE)


def floor_lsn(lm: LayerMap, start: bytes, end: bytes, upto: int) -> int:
    """Newest LSN c <= upto such that images at c..upto cover [start, end); -1 if none."""
    ranges: list[tuple[bytes, bytes]] = []
    imgs = [im.name for im in lm.images  # newest first
            if im.name.image_lsn <= upto and im.name.key_start < end
            and start < im.name.key_end]
    for i, n in enumerate(imgs):
        ranges.append((n.key_start, n.key_end))
        last_of_lsn = i + 1 == len(imgs) or imgs[i + 1].image_lsn != n.image_lsn
        if last_of_lsn and covers(start, end, ranges):
            return n.image_lsn
    return -1


def image_partitions(lm: LayerMap) -> list[tuple[bytes, bytes]]:
    """Key ranges image creation considers: those of L1 layers, else the L0 span."""
    l1 = sorted({(d.name.key_start, d.name.key_end) for d in lm.deltas
                 if d.entry.level == Level.L1})
    if l1:
        return l1
    l0 = lm.l0()
    if l0:
        return [(min(d.name.key_start for d in l0), max(d.name.key_end for d in l0))]
    return []


def create_image_layers(store: LayerStore, lsn: int | None = None, threshold: int | None = None,
                        ranges: list[tuple[bytes, bytes]] | None = None,
                        record_threshold: int | None = None,
                        progress: Callable[[int, int], None] | None = None) -> list[LayerName]:
    """Write image layers at `lsn` (default durable_lsn) over every key range (an
    image partition) that, above its newest image, has either more than `threshold`
    (default config.image_delta_threshold) delta layers, or a key that may have more
    than `record_threshold` (default config.image_record_threshold) delta entries.

    The per-key count is an upper bound, read from layer headers only: the sum of
    `max_key_entries` over those delta layers (a key's entries there cannot exceed
    it). It may over-count (a layer straddling the floor, different keys' maxima),
    never under-count. `progress(done, total)`: key ranges looked at so far, of
    all. Returns: names of the new image layers.

    Raises: LsnOutOfRangeError if lsn is above durable_lsn or below retention_lsn.
    """
    with store.maint_lock:
        m = store.manifest
        at = m.durable_lsn if lsn is None else lsn
        if not m.retention_lsn <= at <= m.durable_lsn:
            raise LsnOutOfRangeError(
                f"image layers can only be made between retention_lsn {Lsn(m.retention_lsn)} "
                f"and durable_lsn {Lsn(m.durable_lsn)}, not at {Lsn(at)}",
                nearest=Lsn(m.durable_lsn))
        cfg = store.config
        thr = cfg.image_delta_threshold if threshold is None else threshold
        rthr = cfg.image_record_threshold if record_threshold is None else record_threshold
        made: list[LayerName] = []
        parts = image_partitions(store.view().layer_map) if ranges is None else ranges
        for i, (start, end) in enumerate(parts):
            if progress is not None:
                progress(i, len(parts))
            lm = store.view().layer_map
            floor = floor_lsn(lm, start, end, at)
            if floor == at:
                continue
            above = [d for d in lm.deltas
                     if d.name.key_start < end and start < d.name.key_end
                     and d.name.lsn_end - 1 > floor and d.name.lsn_start <= at]
            if len(above) > thr or chain_bound(above, rthr) > rthr:
                made += make_images(store, start, end, at)
        if progress is not None:
            progress(len(parts), len(parts))
        return made


def chain_bound(deltas: list[Layer], limit: int) -> int:
    """Upper bound of any key's delta entries in `deltas` (sum of each layer's
    max_key_entries); stops once past `limit`, so old (v1) layers, which count on
    first use, are only read when needed."""
    total = 0
    # header-only (v2) layers first: a v1 layer is counted by reading its blocks
    for d in sorted(deltas, key=lambda d: d.file.version < 2):
        total += d.file.max_key_entries()
        if total > limit:
            break
    return total


def make_images(store: LayerStore, start: bytes, end: bytes, at: int) -> list[LayerName]:
    """Write and commit image layers holding every key of [start, end) at `at`.

    Column-wise per scan window: keys whose value at `at` is an image already (the
    floor image, or an image entry with nothing above it) are copied as a block of
    rows; only the others cost redo, one key at a time. A key redo cannot rebuild
    is left out and the image layers end before it and restart after it.

    Raises: MaintenanceStopped (nothing committed, no file left) once a stop is
    requested; EditConflict if `at` left [retention_lsn, durable_lsn] meanwhile."""
    view = store.view()
    stats = ReadStats()
    cfg = store.config
    out = _ImageOutput(store, start, at)
    try:
        for ch in scan_chains(view, start, end, at, stats):
            store.checkpoint()
            rows, skipped = _window_images(store, ch, at, stats)
            for kb in skipped:  # split around each key that cannot be imaged
                a, z = rows.key_slice(kb, kb)
                out.add(rows.slice(0, a), cfg.target_file_bytes)
                out.skip(kb)
                rows = rows.slice(z, len(rows))
            out.add(rows, cfg.target_file_bytes)
        outputs = out.close(end)
        store.checkpoint()
    except BaseException:
        out.abort()
        raise
    commit.commit(store, commit.Edit("image", add=tuple(outputs)))
    store.count(image_layers_created=len(outputs),
                bytes_imaged=sum(o.entry.size for o in outputs))
    return [o.entry.name for o in outputs]


def _window_images(store: LayerStore, ch: Chains, at: int,
                   stats: ReadStats) -> tuple[EntryBatch, list[bytes]]:
    """The image rows (at `at`) of every key present in a window, in key order, and
    the keys left out because redo cannot rebuild them."""
    b = ch.batch
    present = ch.present()
    single = present & (ch.stop - ch.first == 1) & (b.kinds[ch.first] == _IMAGE)
    copied = b.take(ch.first[single]).with_lsn(at)
    built = BatchBuilder()
    skipped: list[bytes] = []
    for g in np.flatnonzero(present & ~single).tolist():
        store.checkpoint()
        kb = b.key_at(int(ch.first[g]))
        key = Key.from_bytes(kb)
        try:
            page = ch.value(g, key, store.redo, stats)
        except (UnsupportedRecordError, RedoError) as e:
            # This key cannot be rebuilt (e.g. an access method with no redo yet):
            # leave it out of every image layer, so its reads keep using its deltas
            # (Invariant: an image layer holds every key of its range at its LSN).
            if not skipped:
                log.info("image layers at %s skip %s: %s", Lsn(at), key, e)
            skipped.append(kb)
            continue
        if page is not None:
            built.add(kb, at, PageImage(page))
    both = EntryBatch.concat([copied, built.build()])
    return both.take(np.argsort(both.order_keys, kind="stable")), skipped


class _ImageOutput:
    """The image layer files of one make_images: cut at ~target_file_bytes and around
    skipped keys."""

    def __init__(self, store: LayerStore, start: bytes, at: int) -> None:
        self.store, self.at, self.cur = store, at, start
        self.outputs: list[commit.NewLayer] = []
        self.w = self._writer()

    def _writer(self) -> LayerWriter:
        cfg = self.store.config
        return LayerWriter(self.store.directory, block_bytes=cfg.block_bytes,
                           zstd_level=cfg.zstd_level, owner=self.store.role.value)

    def _finish(self, ke: bytes) -> None:
        name = LayerName.image(self.cur, ke, self.at)
        sealed = self.w.seal(name)
        self.outputs.append(commit.NewLayer(LayerEntry(name, Level.IMAGE, sealed.size), sealed))
        self.w = self._writer()

    def add(self, rows: EntryBatch, target: int) -> None:
        if len(rows) and self.w.raw_bytes >= target:
            first = rows.key_at(0)
            self._finish(first)
            self.cur = first
        self.w.add_batch(rows)

    def skip(self, kb: bytes) -> None:
        if self.cur < kb:
            self._finish(kb)
        self.cur = Key.from_bytes(kb).next().to_bytes()

    def close(self, end: bytes) -> list[commit.NewLayer]:
        if self.cur < end:
            self._finish(end)
        self.w.abort()
        return self.outputs

    def abort(self) -> None:
        self.w.abort()
        commit.Edit("image", add=tuple(self.outputs)).abort()
