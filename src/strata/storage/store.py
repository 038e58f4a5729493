"""LayerStore: the layer store engine (one writer, many readers).

Fed by: pagestore.PageStore (puts, watermarks, maintenance calls from its
background worker). Feeds: GetPage@LSN and range scans. Owns: the layer
directory: recovery on open, flush (frozen memtable -> L0), compact_l0
(L0 -> L1), create_image_layers, gc, and every manifest commit.

Concurrency: `_lock` guards the in-memory state swap (memtables, layer map,
watermarks) and is held only for pointer swaps; `_maint` serialises
maintenance, so the manifest has one writer. Readers take a `ReadView`
under `_lock` and then read without locks (layer files are immutable; a file
removed by compaction or gc stays readable through its open descriptor).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import BinaryIO

from strata.errors import CorruptionError, LsnOutOfRangeError, RedoError, UnsupportedRecordError
from strata.key import Key, KeyRange
from strata.lsn import Lsn
from strata.storage.cache import PageCache
from strata.storage.config import StorageConfig
from strata.storage.directory import ensure_fd_budget, lock_directory
from strata.storage.layerfile import LayerWriter, fsync_dir, open_layer, write_layer
from strata.storage.layermap import (
    Layer,
    LayerMap,
    ReadStats,
    ReadView,
    Redo,
    covers,
    finish_chain,
    read_key,
    scan_entries,
    scan_keys,
    scan_values,
)
from strata.storage.manifest import LayerEntry, Level, Manifest, commit_manifest, load_manifest
from strata.storage.memtable import FrozenMemtable, Memtable
from strata.storage.metrics import StoreMetrics
from strata.storage.naming import TMP_SUFFIX, LayerName, is_layer_filename
from strata.storage.values import Entry, PageImage, Tombstone, Value, WalRecord

log = logging.getLogger(__name__)


def _advice(directory: Path) -> str:
    home = directory.parent
    return (f"Reads from this store are refused. To proceed: run `strata verify --home {home}` "
            f"to list every damaged file; restore damaged layer files from a copy, or move "
            f"{directory} aside and re-import from the primary (ingest restarts from the slot).")


def _no_crash_point(point: str) -> None:
    return None


class LayerStore:
    """See module docstring. Create with `LayerStore.open`."""

    # Test hook: called at each step of the commit protocol (e.g. "flush:renamed",
    # between a layer's rename and the manifest edit) so crash tests can die there.
    crash_point: Callable[[str], None] = staticmethod(_no_crash_point)

    def __init__(self, directory: Path, redo: Redo, config: StorageConfig,
                 manifest: Manifest, layers: list[Layer]) -> None:
        self.directory = directory
        self.redo = redo
        self.config = config
        self._manifest = manifest
        self._lock = threading.Lock()
        self._maint = threading.RLock()  # compaction / image creation / gc, one at a time
        self._flush_lock = threading.Lock()  # flushes, one at a time (never waits for _maint)
        self._commit_lock = threading.Lock()  # a manifest edit: compute, commit, publish
        self._durable_changed = threading.Condition(self._lock)
        self._view = ReadView(Memtable(), (), LayerMap(tuple(layers)))
        self._ingested = manifest.durable_lsn
        self._frozen_end = manifest.durable_lsn  # inclusive end of the newest frozen range
        self._cache = PageCache(config.cache_pages)
        self.metrics = StoreMetrics()
        self._mlock = threading.Lock()
        self._closed = False
        self._lockfile: BinaryIO | None = None

    # -- open / recovery -----------------------------------------------------------
    @classmethod
    def open(cls, directory: Path | str, redo: Redo,
             config: StorageConfig | None = None) -> LayerStore:
        """Load the last committed manifest; delete .tmp and unreferenced layer files.

        Raises: CorruptionError (naming file and offset, with advice) if the manifest or
        a layer it references is damaged or missing; nothing is deleted in that case.
        """
        directory = Path(directory)
        config = config or StorageConfig()
        directory.mkdir(parents=True, exist_ok=True)
        lock = lock_directory(directory)
        try:
            return cls._open_locked(directory, redo, config, lock)
        except BaseException:
            lock.close()
            raise

    @classmethod
    def _open_locked(cls, directory: Path, redo: Redo, config: StorageConfig,
                     lock: BinaryIO) -> LayerStore:
        try:
            manifest = load_manifest(directory)
        except CorruptionError as e:
            raise CorruptionError(f"{e}. {_advice(directory)}") from e
        if manifest is None:
            manifest = Manifest().edit()
            commit_manifest(directory, manifest)
        ensure_fd_budget(len(manifest.layers))
        layers: list[Layer] = []
        try:
            for le in manifest.layers:
                f = open_layer(directory / le.name.filename())
                if f.size != le.size or f.name != le.name:
                    f.close()
                    raise CorruptionError(f"layer file {f.path}: size {f.size} / header {f.name} "
                                          f"disagree with the manifest ({le.size}) at offset 0")
                layers.append(Layer(le, f))
                if config.verify_on_open:
                    f.verify()
        except CorruptionError as e:
            for la in layers:
                la.file.close()
            raise CorruptionError(f"{e}. {_advice(directory)}") from e
        live = manifest.names()
        removed = 0
        for fn in os.listdir(directory):
            if fn.endswith(TMP_SUFFIX) or (is_layer_filename(fn) and fn not in live):
                os.unlink(directory / fn)
                removed += 1
        if removed:
            fsync_dir(directory)
            log.info("recovery removed %d leftover files in %s", removed, directory)
        store = cls(directory, redo, config, manifest, layers)
        store._lockfile = lock
        return store

    def close(self) -> None:
        with self._maint, self._flush_lock, self._commit_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            for la in self._view.layer_map.layers:
                la.file.close()
            if self._lockfile is not None:
                self._lockfile.close()  # releases the flock

    # -- watermarks ----------------------------------------------------------------
    @property
    def durable_lsn(self) -> Lsn:
        return Lsn(self._manifest.durable_lsn)

    @property
    def ingested_lsn(self) -> Lsn:
        return Lsn(self._ingested)

    @property
    def retention_lsn(self) -> Lsn:
        return Lsn(self._manifest.retention_lsn)

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def view(self) -> ReadView:
        with self._lock:
            return self._view

    # -- writes --------------------------------------------------------------------
    def put(self, key: bytes, lsn: int, value: Value) -> None:
        """Requires: lsn > ingested_lsn (ingest restarts from durable_lsn after a crash)."""
        if lsn <= self._ingested:
            raise ValueError(f"put at {Lsn(lsn)} at or below ingested_lsn {self.ingested_lsn}")
        if not isinstance(value, PageImage | WalRecord | Tombstone):
            raise TypeError(f"not a storage value: {value!r}")
        if key[0] == 0xFF:  # reserved: above every real key, used as a range end
            raise ValueError(f"key kind 0xFF is reserved, cannot store {key.hex()}")
        with self._lock:  # freeze() may swap the memtable from another thread
            self._view.active.put(key, lsn, value)

    def note_put(self, entries: int, nbytes: int) -> None:
        with self._mlock:
            self.metrics.entries_put += entries
            self.metrics.bytes_put += nbytes

    def advance(self, lsn: int) -> FrozenMemtable | None:
        """Everything up to `lsn` has been put. Freezes the memtable if it is full.

        Requires: lsn >= ingested_lsn and >= every LSN put so far.
        Returns: the newly frozen memtable, if any.
        """
        if lsn < self._ingested:
            raise ValueError(f"advance to {Lsn(lsn)} below ingested_lsn {self.ingested_lsn}")
        active = self._view.active
        if active.max_lsn > lsn:
            raise ValueError(f"advance to {Lsn(lsn)} below a put at {Lsn(active.max_lsn)}")
        self._ingested = lsn
        if active.size_bytes >= self.config.memtable_bytes:
            return self.freeze()
        return None

    def freeze(self) -> FrozenMemtable | None:
        """Seal the active memtable as (last frozen end, ingested_lsn]; None if nothing new."""
        with self._lock:
            old = self._view.active
            if self._ingested <= self._frozen_end and len(old) == 0:
                return None
            # puts above ingested_lsn (a record not yet advanced past) stay active
            fm, rest = old.freeze(self._frozen_end + 1, self._ingested + 1)
            self._frozen_end = self._ingested
            self._view = ReadView(rest, (*self._view.frozen, fm), self._view.layer_map)
            return fm

    def frozen_count(self) -> int:
        return len(self._view.frozen)

    def _commit(self, point: str, *, add: Sequence[Layer] = (),
                remove: AbstractSet[LayerName] = frozenset(),
                durable_lsn: int | None = None, retention_lsn: int | None = None,
                drop_frozen: FrozenMemtable | None = None) -> list[Layer]:
        """One manifest edit: computed from the current manifest, committed (the single
        commit point), then published to readers. Returns: layers no longer live."""
        with self._commit_lock:
            self.crash_point(f"{point}:renamed")
            m = self._manifest.edit(add=tuple(la.entry for la in add), remove=tuple(remove),
                                    durable_lsn=durable_lsn, retention_lsn=retention_lsn)
            commit_manifest(self.directory, m)
            self.crash_point(f"{point}:committed")
            with self._lock:
                keep = [la for la in self._view.layer_map.layers if la.name not in remove]
                gone = [la for la in self._view.layer_map.layers if la.name in remove]
                keep_names = {la.name for la in keep}
                new = keep + [la for la in add if la.name not in keep_names]
                if add:
                    ensure_fd_budget(len(new) + len(gone))
                frozen = tuple(f for f in self._view.frozen if f is not drop_frozen)
                self._view = ReadView(self._view.active, frozen, LayerMap(tuple(new)))
                self._manifest = m
                self._durable_changed.notify_all()
            return gone

    def _write(self, name: LayerName, entries: list[Entry] | Iterator[Entry]) -> LayerEntry:
        w = write_layer(self.directory, name, entries, block_bytes=self.config.block_bytes,
                        zstd_level=self.config.zstd_level)
        return LayerEntry(name, Level.IMAGE if name.is_image else Level.L0, w.size)

    def _cut_long_chains(self, entries: list[Entry]) -> Iterator[Entry]:
        """The entries of a frozen memtable, in order, with every
        `flush_image_interval`-th delta of a key's unbroken chain replaced by the
        page it produces (see StorageConfig.flush_image_interval).

        The page is computed incrementally: the key's value just before its first
        delta here (read through the current view, which still holds this frozen
        memtable) plus the deltas since, so each delta is redone about once. A key
        redo cannot rebuild keeps its deltas.
        """
        k = self.config.flush_image_interval
        if k <= 0:
            yield from entries
            return
        view = self.view()
        stats = ReadStats()
        cur: bytes | None = None
        base: bytes | None = None
        base_known = False
        give_up = False
        pending: list[WalRecord] = []
        pending_start = 0  # LSN of the first delta in `pending` when base is unknown
        for e in entries:
            if e.key != cur:
                cur, base, base_known, give_up, pending = e.key, None, False, False, []
            v = e.value
            if give_up:
                pass
            elif isinstance(v, PageImage):
                base, base_known, pending = v.data, True, []
            elif isinstance(v, Tombstone):
                base, base_known, pending = None, True, []
            elif v.will_init:
                base, base_known, pending = None, True, [v]
            else:
                if not pending:
                    pending_start = e.lsn
                pending.append(v)
                if len(pending) >= k:
                    key = Key.from_bytes(e.key)
                    try:
                        if not base_known:
                            base = read_key(view, key, pending_start - 1, self.redo, stats)
                        page = self.redo(key, base, pending)
                    except (UnsupportedRecordError, RedoError):
                        give_up = True  # keep this key's deltas as they are
                    else:
                        base, base_known, pending = page, True, []
                        yield Entry(e.key, e.lsn, PageImage(page))
                        continue
            yield e

    def flush_one(self) -> bool:
        """Flush the oldest frozen memtable to an L0 layer and commit. Returns: False if none."""
        with self._flush_lock:
            frozen = self._view.frozen
            if not frozen:
                return False
            fm = frozen[0]
            add: list[Layer] = []
            span = fm.key_span
            if span is not None:
                name = LayerName.delta(span[0], Key.from_bytes(span[1]).next().to_bytes(),
                                       fm.lsn_start, fm.lsn_end)
                le = self._write(name, self._cut_long_chains(fm.entries))
                add.append(Layer(le, open_layer(self.directory / name.filename())))
                with self._mlock:
                    self.metrics.flushes += 1
                    self.metrics.bytes_flushed += le.size
            self._commit("flush", add=add, durable_lsn=fm.lsn_end - 1, drop_frozen=fm)
            return True

    def flush_frozen(self) -> None:
        while self.flush_one():
            pass

    def wait_durable(self, lsn: int, timeout: float | None = None) -> bool:
        with self._lock:
            return self._durable_changed.wait_for(
                lambda: self._manifest.durable_lsn >= lsn or self._closed, timeout)

    def _retire(self, gone: list[Layer]) -> None:
        """Unlink files of layers no longer in the (already committed) manifest."""
        live = self._manifest.names()
        for la in gone:
            fn = la.name.filename()
            if fn in live:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / fn)
            self.crash_point("retire:unlinked-one")
        if gone:
            fsync_dir(self.directory)
            with self._mlock:
                self.metrics.layers_removed += len(gone)

    # -- compaction ----------------------------------------------------------------
    def compact_l0(self, force: bool = False) -> list[LayerName]:
        """Merge every L0 layer and re-cut into L1 layers of ~target_file_bytes with
        narrow key ranges covering the L0s' whole LSN span. Runs when at least
        l0_compaction_trigger L0s exist (or any, with `force`).

        Invariant kept: delta layers covering one key have disjoint LSN ranges.
        Returns: the names of the new L1 layers.
        """
        with self._maint:
            l0s = self._view.layer_map.l0()
            if not l0s or (len(l0s) < self.config.l0_compaction_trigger and not force):
                return []
            lsn_start = l0s[0].name.lsn_start
            lsn_end = l0s[-1].name.lsn_end
            ks = min(la.name.key_start for la in l0s)
            ke = max(la.name.key_end for la in l0s)
            merged = heapq.merge(*(la.file.scan(ks, ke) for la in l0s),
                                 key=lambda e: (e.key, e.lsn))
            existing = {la.name for la in self._view.layer_map.layers}
            outputs: list[LayerEntry] = []
            cfg = self.config
            w = LayerWriter(self.directory, block_bytes=cfg.block_bytes, zstd_level=cfg.zstd_level)
            cur_start = ks
            try:
                for e in merged:
                    if w.raw_bytes >= cfg.target_file_bytes and e.key != w.last_key:
                        outputs.append(self._finish_l1(w, cur_start, e.key, lsn_start, lsn_end,
                                                       existing))
                        w = LayerWriter(self.directory, block_bytes=cfg.block_bytes,
                                        zstd_level=cfg.zstd_level)
                        cur_start = e.key
                    w.add(e)
                outputs.append(self._finish_l1(w, cur_start, ke, lsn_start, lsn_end, existing))
            except BaseException:
                w.abort()
                raise
            add = [Layer(le, open_layer(self.directory / le.name.filename())) for le in outputs]
            gone = self._commit("compact", add=add, remove={la.name for la in l0s})
            self._retire(gone)
            with self._mlock:
                self.metrics.compactions += 1
                self.metrics.bytes_compacted += sum(le.size for le in outputs)
            return [le.name for le in outputs]

    def _finish_l1(self, w: LayerWriter, ks: bytes, ke: bytes, ls: int, le: int,
                   existing: set[LayerName]) -> LayerEntry:
        name = LayerName.delta(ks, ke, ls, le)
        if name in existing:
            # One L0 re-cut into one file of the same ranges: identical entries, keep the file.
            w.abort()
            size = (self.directory / name.filename()).stat().st_size
            return LayerEntry(name, Level.L1, size)
        return LayerEntry(name, Level.L1, w.finish(name).size)

    # -- image layers --------------------------------------------------------------
    def _floor_lsn(self, start: bytes, end: bytes, upto: int) -> int:
        """Newest LSN c <= upto such that images at c..upto cover [start, end); -1 if none."""
        ranges: list[tuple[bytes, bytes]] = []
        imgs = [im.name for im in self._view.layer_map.images  # newest first
                if im.name.image_lsn <= upto and im.name.key_start < end
                and start < im.name.key_end]
        for i, n in enumerate(imgs):
            ranges.append((n.key_start, n.key_end))
            last_of_lsn = i + 1 == len(imgs) or imgs[i + 1].image_lsn != n.image_lsn
            if last_of_lsn and covers(start, end, ranges):
                return n.image_lsn
        return -1

    def image_partitions(self) -> list[tuple[bytes, bytes]]:
        """Key ranges image creation considers: those of L1 layers, else the L0 span."""
        lm = self._view.layer_map
        l1 = sorted({(d.name.key_start, d.name.key_end) for d in lm.deltas
                     if d.entry.level == Level.L1})
        if l1:
            return l1
        l0 = lm.l0()
        if l0:
            return [(min(d.name.key_start for d in l0), max(d.name.key_end for d in l0))]
        return []

    def create_image_layers(self, lsn: int | None = None, threshold: int | None = None,
                            ranges: list[tuple[bytes, bytes]] | None = None,
                            record_threshold: int | None = None) -> list[LayerName]:
        """Write image layers at `lsn` (default durable_lsn) over every key range (an
        image partition) that, above its newest image, has either more than `threshold`
        (default config.image_delta_threshold) delta layers, or a key that may have more
        than `record_threshold` (default config.image_record_threshold) delta entries.

        The per-key count is an upper bound, read from layer headers only: the sum of
        `max_key_entries` over those delta layers (a key's entries there cannot exceed
        it). It may over-count (a layer straddling the floor, different keys' maxima),
        never under-count. Returns: names of the new image layers.

        Raises: LsnOutOfRangeError if lsn is above durable_lsn or below retention_lsn.
        """
        with self._maint:
            at = self._manifest.durable_lsn if lsn is None else lsn
            if not self._manifest.retention_lsn <= at <= self._manifest.durable_lsn:
                raise LsnOutOfRangeError(
                    f"image layers can only be made between retention_lsn {self.retention_lsn} "
                    f"and durable_lsn {self.durable_lsn}, not at {Lsn(at)}",
                    nearest=self.durable_lsn)
            thr = self.config.image_delta_threshold if threshold is None else threshold
            rthr = (self.config.image_record_threshold if record_threshold is None
                    else record_threshold)
            made: list[LayerName] = []
            for start, end in (self.image_partitions() if ranges is None else ranges):
                floor = self._floor_lsn(start, end, at)
                if floor == at:
                    continue
                above = [d for d in self._view.layer_map.deltas
                         if d.name.key_start < end and start < d.name.key_end
                         and d.name.lsn_end - 1 > floor and d.name.lsn_start <= at]
                if len(above) > thr or self._chain_bound(above, rthr) > rthr:
                    made += self._make_images(start, end, at)
            return made

    @staticmethod
    def _chain_bound(deltas: list[Layer], limit: int) -> int:
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

    def _make_images(self, start: bytes, end: bytes, at: int) -> list[LayerName]:
        view = self.view()
        stats = ReadStats()
        cfg = self.config
        outputs: list[LayerEntry] = []
        w = LayerWriter(self.directory, block_bytes=cfg.block_bytes, zstd_level=cfg.zstd_level)
        cur = start
        skipped = 0
        try:
            for kb, chain in scan_entries(view, start, end, at, stats):
                key = Key.from_bytes(kb)
                try:
                    page = finish_chain(key, chain, self.redo, stats)
                except (UnsupportedRecordError, RedoError) as e:
                    # This key cannot be rebuilt (e.g. an access method with no
                    # redo yet): leave it out of every image layer, so its reads
                    # keep using its deltas. The image layers end before it and
                    # restart after it (Invariant: an image layer holds every
                    # key of its range at its LSN).
                    skipped += 1
                    if skipped == 1:
                        log.info("image layers at %s skip %s: %s", Lsn(at), key, e)
                    if cur < kb:
                        name = LayerName.image(cur, kb, at)
                        outputs.append(LayerEntry(name, Level.IMAGE, w.finish(name).size))
                        w = LayerWriter(self.directory, block_bytes=cfg.block_bytes,
                                        zstd_level=cfg.zstd_level)
                    cur = key.next().to_bytes()
                    continue
                if page is None:
                    continue
                if w.raw_bytes >= cfg.target_file_bytes:
                    name = LayerName.image(cur, kb, at)
                    outputs.append(LayerEntry(name, Level.IMAGE, w.finish(name).size))
                    w = LayerWriter(self.directory, block_bytes=cfg.block_bytes,
                                    zstd_level=cfg.zstd_level)
                    cur = kb
                w.add(Entry(kb, at, PageImage(page)))
            if cur < end:
                name = LayerName.image(cur, end, at)
                outputs.append(LayerEntry(name, Level.IMAGE, w.finish(name).size))
            else:
                w.abort()
        except BaseException:
            w.abort()
            raise
        add = [Layer(le, open_layer(self.directory / le.name.filename())) for le in outputs]
        self._commit("image", add=add)
        with self._mlock:
            self.metrics.image_layers_created += len(outputs)
            self.metrics.bytes_imaged += sum(le.size for le in outputs)
        return [le.name for le in outputs]

    # -- retention / gc ------------------------------------------------------------
    def horizon(self) -> int | None:
        d = self.config.retention_lsn_distance
        if d is None:
            return None
        return max(0, self._manifest.durable_lsn - d)

    def gc(self, horizon: int | None = None, make_images: bool = True) -> list[LayerName]:
        """Raise retention_lsn to `horizon` (default durable_lsn - retention distance) and
        remove layers no read at or above it can need: deltas wholly at or below it whose
        keys images at [their newest LSN, horizon] cover, and images hidden by newer
        images at or below it. With `make_images`, first writes images at the horizon
        where deltas wholly below it are not yet covered.

        Returns: names of the removed layers. Reads below retention_lsn then raise
        LsnOutOfRangeError.
        """
        with self._maint:
            h = self.horizon() if horizon is None else horizon
            if h is None:
                return []
            h = min(h, self._manifest.durable_lsn)
            h = max(h, self._manifest.retention_lsn)
            if h > self._manifest.retention_lsn:
                self._commit("retention", retention_lsn=h)
            lm = self._view.layer_map
            if make_images:
                need: list[tuple[bytes, bytes]] = []
                for d in lm.deltas:
                    n = d.name
                    if n.lsn_end - 1 <= h and not self._covered(n.key_start, n.key_end,
                                                                 n.lsn_end - 1, h):
                        need.append((n.key_start, n.key_end))
                for s, e in _merge_ranges(need):
                    if self._floor_lsn(s, e, h) < h:
                        self._make_images(s, e, h)
                lm = self._view.layer_map
            remove: set[LayerName] = set()
            for d in lm.deltas:
                n = d.name
                if n.lsn_end - 1 <= h and self._covered(n.key_start, n.key_end, n.lsn_end - 1, h):
                    remove.add(n)
            for im in lm.images:
                n = im.name
                if n.image_lsn < h and self._covered(n.key_start, n.key_end, n.image_lsn + 1, h):
                    remove.add(n)
            if not remove:
                return []
            gone = self._commit("gc", remove=remove)
            self._retire(gone)
            return sorted(remove)

    def _covered(self, start: bytes, end: bytes, lo: int, hi: int) -> bool:
        ranges = [(im.name.key_start, im.name.key_end) for im in self._view.layer_map.images
                  if lo <= im.name.image_lsn <= hi]
        return covers(start, end, ranges)

    # -- reads ---------------------------------------------------------------------
    def _check_lsn(self, lsn: int) -> None:
        r = self._manifest.retention_lsn
        if lsn < r:
            raise LsnOutOfRangeError(
                f"LSN {Lsn(lsn)} is below the retention horizon; the oldest readable LSN is "
                f"{Lsn(r)}", nearest=Lsn(r))

    def get(self, key: Key, lsn: int) -> bytes | None:
        """GetPage@LSN: the value of `key` at `lsn`, or None if it has none there."""
        with self._lock:
            self._check_lsn(lsn)
            view = self._view
            cacheable = lsn <= self._ingested
        if cacheable:
            hit, v = self._cache.get(key, lsn)
            if hit:
                with self._mlock:
                    self.metrics.gets += 1
                    self.metrics.cache_hits += 1
                return v
        stats = ReadStats()
        v = read_key(view, key, lsn, self.redo, stats)
        if cacheable:
            self._cache.put(key, lsn, v)
        with self._mlock:
            m = self.metrics
            m.gets += 1
            m.cache_misses += 1
            m.layers_visited += stats.layers_visited
            m.deltas_applied += stats.deltas_applied
            m.redo_calls += stats.redo_calls
        return v

    def scan(self, key_range: KeyRange, lsn: int) -> Iterator[tuple[Key, bytes]]:
        """(key, value) for every key present at `lsn` in `key_range`, in key order."""
        with self._lock:
            self._check_lsn(lsn)
            view = self._view
        stats = ReadStats()
        try:
            yield from scan_values(view, key_range.start.to_bytes(), key_range.end.to_bytes(),
                                   lsn, self.redo, stats)
        finally:
            with self._mlock:
                self.metrics.layers_visited += stats.layers_visited
                self.metrics.deltas_applied += stats.deltas_applied
                self.metrics.redo_calls += stats.redo_calls

    def keys(self, key_range: KeyRange, lsn: int) -> Iterator[Key]:
        """Keys present at `lsn` in `key_range`, in order (no reconstruction)."""
        with self._lock:
            self._check_lsn(lsn)
            view = self._view
        yield from scan_keys(view, key_range.start.to_bytes(), key_range.end.to_bytes(), lsn,
                             ReadStats())

    @property
    def cache(self) -> PageCache:
        return self._cache


def _merge_ranges(ranges: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out



