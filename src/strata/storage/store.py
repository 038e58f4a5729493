"""LayerStore: the state of one open layer store (one writer, many readers).

Fed by: pagestore.PageStore (puts, watermarks) and the verbs beside it, which
each take a LayerStore: flush.py (frozen memtable -> L0), compaction.py
(L0 -> L1), images.py (image layers), gc.py (retention), reads.py (GetPage@LSN,
scans); every manifest edit goes through commit.py. Owns: recovery on open,
the memtables (put / advance / freeze), the in-memory read view and the
watermarks.

Concurrency: `_lock` guards the in-memory state swap (memtables, layer map,
manifest, watermarks) and is held only for pointer swaps; `maint_lock`
serialises maintenance (compaction, images, gc) and `flush_lock` flushes, so
the manifest has one writer at a time (commit.py orders the two). Readers take
a `ReadView` under `_lock` and then read without locks (layer files are
immutable; a file removed by compaction or gc stays readable through its open
descriptor).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from strata.errors import CorruptionError
from strata.lsn import Lsn
from strata.storage.cache import PageCache
from strata.storage.config import StorageConfig
from strata.storage.directory import ensure_fd_budget, lock_directory
from strata.storage.layerfile import fsync_dir, open_layer
from strata.storage.layermap import Layer, LayerMap, ReadView, Redo
from strata.storage.manifest import Manifest, commit_manifest, load_manifest
from strata.storage.memtable import FrozenMemtable, Memtable
from strata.storage.metrics import StoreMetrics
from strata.storage.naming import TMP_SUFFIX, LayerName, is_layer_filename
from strata.storage.values import PageImage, Tombstone, Value, WalRecord

log = logging.getLogger(__name__)


def advice(directory: Path) -> str:
    """What to do about a damaged store (appended to every CorruptionError at open)."""
    home = directory.parent
    return (f"Reads from this store are refused. To proceed: run `strata verify --home {home}` "
            f"to list every damaged file; restore damaged layer files from a copy, or move "
            f"{directory} aside and re-import from the primary (ingest restarts from the slot).")


def open_layers(directory: Path, manifest: Manifest, verify: bool) -> list[Layer]:
    """Open every layer `manifest` names, checking header, footer, index, and that
    size and header agree with the manifest.

    Raises: CorruptionError naming the file and offset (nothing stays open)."""
    layers: list[Layer] = []
    try:
        for le in manifest.layers:
            f = open_layer(directory / le.name.filename())
            if f.size != le.size or f.name != le.name:
                f.close()
                raise CorruptionError(f"layer file {f.path}: size {f.size} / header {f.name} "
                                      f"disagree with the manifest ({le.size}) at offset 0")
            layers.append(Layer(le, f))
            if verify:
                f.verify()
    except BaseException:
        for la in layers:
            la.file.close()
        raise
    return layers


class LayerStore:
    """See module docstring. Create with `LayerStore.open`."""

    def __init__(self, directory: Path, redo: Redo, config: StorageConfig,
                 manifest: Manifest, layers: list[Layer]) -> None:
        self.directory = directory
        self.redo = redo
        self.config = config
        self._manifest = manifest
        self._lock = threading.Lock()
        self.maint_lock = threading.RLock()  # compaction / image creation / gc, one at a time
        self.flush_lock = threading.Lock()  # flushes, one at a time (never waits for maint_lock)
        self.commit_lock = threading.Lock()  # a manifest edit: compute, commit, publish
        self._durable_changed = threading.Condition(self._lock)
        self._view = ReadView(Memtable(), (), LayerMap(tuple(layers)))
        self._ingested = manifest.durable_lsn
        self._frozen_end = manifest.durable_lsn  # inclusive end of the newest frozen range
        self.cache = PageCache(config.cache_pages)
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
            raise CorruptionError(f"{e}. {advice(directory)}") from e
        if manifest is None:
            manifest = Manifest().edit()
            commit_manifest(directory, manifest)
        ensure_fd_budget(len(manifest.layers))
        try:
            layers = open_layers(directory, manifest, config.verify_on_open)
        except CorruptionError as e:
            raise CorruptionError(f"{e}. {advice(directory)}") from e
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
        with self.maint_lock, self.flush_lock, self.commit_lock, self._lock:
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

    def read_state(self) -> tuple[ReadView, Manifest, int]:
        """(view, manifest, ingested_lsn) captured together: what one read needs."""
        with self._lock:
            return self._view, self._manifest, self._ingested

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

    def count(self, **deltas: int) -> None:
        """Add to the named metrics counters (e.g. ``count(flushes=1)``)."""
        with self._mlock:
            for name, n in deltas.items():
                setattr(self.metrics, name, getattr(self.metrics, name) + n)

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

    def oldest_frozen(self) -> FrozenMemtable | None:
        frozen = self._view.frozen
        return frozen[0] if frozen else None

    # -- publishing a committed manifest -------------------------------------------
    def install(self, manifest: Manifest, add: Sequence[Layer], remove: set[LayerName],
                drop_frozen: FrozenMemtable | None = None) -> list[Layer]:
        """Make a committed manifest what reads see: `add` joins the layer map, `remove`
        leaves it, `drop_frozen` (now in a layer) leaves the frozen memtables.
        Returns: the layers that left."""
        with self._lock:
            layers = self._view.layer_map.layers
            keep = [la for la in layers if la.name not in remove]
            gone = [la for la in layers if la.name in remove]
            keep_names = {la.name for la in keep}
            new = keep + [la for la in add if la.name not in keep_names]
            if add:
                ensure_fd_budget(len(new) + len(gone))
            frozen = tuple(f for f in self._view.frozen if f is not drop_frozen)
            self._view = ReadView(self._view.active, frozen, LayerMap(tuple(new)))
            self._manifest = manifest
            self._durable_changed.notify_all()
            return gone

    def wait_durable(self, lsn: int, timeout: float | None = None) -> bool:
        with self._lock:
            return self._durable_changed.wait_for(
                lambda: self._manifest.durable_lsn >= lsn or self._closed, timeout)

    def wake_waiters(self) -> None:
        """Wake every `wait_durable` caller (e.g. so it sees a worker failure)."""
        with self._lock:
            self._durable_changed.notify_all()
