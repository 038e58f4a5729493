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
import re
import threading
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, Protocol

from strata import durable
from strata.errors import CorruptionError, StrataError
from strata.lsn import Lsn
from strata.storage.batch import ENTRY_OVERHEAD, EntryBatch, kind_and_data
from strata.storage.cache import BLOCKS, PageCache
from strata.storage.config import StorageConfig
from strata.storage.directory import (
    CommitLock,
    ensure_fd_budget,
    lock_directory,
    lock_maintainer,
    try_lock_maintainer,
)
from strata.storage.layerfile import open_layer
from strata.storage.layermap import Layer, LayerMap, ReadStats, ReadView, Redo
from strata.storage.manifest import (
    Manifest,
    commit_manifest,
    committed_generation,
    load_manifest,
)
from strata.storage.memtable import FrozenMemtable, Memtable
from strata.storage.metrics import StoreMetrics
from strata.storage.naming import MANIFEST_NAME, TMP_SUFFIX, LayerName, is_layer_filename
from strata.storage.values import Value

log = logging.getLogger(__name__)


class Role(StrEnum):
    """Who opened the store. Also the owner tag of temporary layer files."""

    WRITER = "w"  # ingest: puts, memtables, flush (and maintenance itself, in-process mode)
    MAINTAINER = "m"  # the maintenance process: compaction, images, gc
    READER = "r"  # any other process: reads a manifest snapshot, never writes


class MaintenanceStopped(Exception):
    """Raised at a checkpoint once a stop was requested: the verb abandons its work
    (temporary files removed, nothing committed). Not an error."""


class Pacer(Protocol):
    def pace(self, stop: threading.Event) -> None:
        """Sleep (interruptibly, on `stop`) as long as the CPU budget requires."""


def advice(directory: Path) -> str:
    """What to do about a damaged store (appended to every CorruptionError at open)."""
    home = directory.parent
    return (f"Reads from this store are refused. To proceed: run `strata verify --home {home}` "
            f"to list every damaged file; restore damaged layer files from a copy, or move "
            f"{directory} aside and re-import from the primary (ingest restarts from the slot).")


def open_named(directory: Path, manifest: Manifest, have: dict[LayerName, Layer],
               verify: bool = False) -> list[Layer]:
    """The layers `manifest` names, in its order: those in `have` (already open, same
    size) reused, the others opened and checked (header, footer, index; size and
    header agree with the manifest).

    Raises: CorruptionError (MissingLayerError for an absent file) naming the file
    and offset; nothing newly opened stays open."""
    out: list[Layer] = []
    opened: list[Layer] = []
    try:
        for le in manifest.layers:
            la = have.get(le.name)
            if la is not None and la.entry.size == le.size:
                out.append(la if la.entry == le else Layer(le, la.file))
                continue
            f = open_layer(directory / le.name.filename())
            if f.size != le.size or f.name != le.name:
                f.close()
                raise CorruptionError(f"layer file {f.path}: size {f.size} / header {f.name} "
                                      f"disagree with the manifest ({le.size}) at offset 0")
            la = Layer(le, f)
            opened.append(la)
            out.append(la)
            if verify:
                f.verify()
    except BaseException:
        for la in opened:
            la.file.close()
        raise
    return out


def load_snapshot(directory: Path, have: dict[LayerName, Layer], verify: bool = False,
                  attempts: int = 100) -> tuple[Manifest, list[Layer]]:
    """The newest committed manifest and its layers, opened, without any lock (a
    reader's snapshot, FORMAT.md invariant 15): a file retired by a commit between
    reading the manifest and opening it is missing; then the manifest has moved on,
    and the snapshot is taken again from the newer one.

    Raises: StrataError if there is no store; CorruptionError (with advice) if a
    layer is damaged or missing while the manifest stays the same."""
    for _ in range(attempts):
        m = _load(directory)
        if m is None:
            raise StrataError(f"no layer store in {directory} (no {MANIFEST_NAME})")
        try:
            return m, open_named(directory, m, have, verify)
        except CorruptionError as e:
            now = _load(directory)
            if now is None or now.generation == m.generation:
                raise CorruptionError(f"{e}. {advice(directory)}") from e
            log.debug("manifest moved from generation %d to %d while opening %s: retrying",
                      m.generation, now.generation, directory)
    raise StrataError(f"layer store {directory}: the manifest changed {attempts} times while "
                      "a snapshot was being opened")


def _load(directory: Path) -> Manifest | None:
    try:
        return load_manifest(directory)
    except CorruptionError as e:
        raise CorruptionError(f"{e}. {advice(directory)}") from e


class LayerStore:
    """See module docstring. Create with `LayerStore.open`."""

    def __init__(self, directory: Path, redo: Redo, config: StorageConfig, role: Role,
                 manifest: Manifest, layers: list[Layer]) -> None:
        self.directory = directory
        self.redo = redo
        self.config = config
        self.role = role
        self._manifest = manifest
        self._lock = threading.Lock()
        self.maint_lock = threading.RLock()  # compaction / image creation / gc, one at a time
        self.flush_lock = threading.Lock()  # flushes, one at a time (never waits for maint_lock)
        self._durable_changed = threading.Condition(self._lock)
        self._view = ReadView(Memtable(), (), LayerMap(tuple(layers)))
        self._ingested = manifest.durable_lsn
        self._frozen_end = manifest.durable_lsn  # inclusive end of the newest frozen range
        self.cache = PageCache(config.cache_pages)
        BLOCKS.resize(config.block_cache_bytes)  # the process's decoded-block cache
        self.metrics = StoreMetrics()
        self.last_put = time.monotonic()  # of the latest put (the writer's thread sets it)
        self._mlock = threading.Lock()
        self._closed = False
        self._held: list[BinaryIO] = []  # role locks, released by close
        self.commit_lock: CommitLock | None = None
        self.runs_maintenance = False
        self._stop = threading.Event()
        self._local = threading.local()
        # Test hook: called at every maintenance checkpoint (see `checkpoint`).
        self.checkpoint_hook: Callable[[], None] | None = None

    # -- open / recovery -----------------------------------------------------------
    @classmethod
    def open(cls, directory: Path | str, redo: Redo, config: StorageConfig | None = None, *,
             role: Role = Role.WRITER, maintenance: bool = True) -> LayerStore:
        """Open the store in `directory` as `role`.

        WRITER takes `LOCK` (and `MAINT` with `maintenance`: it then runs compaction,
        images and gc itself), creates the store if there is none; MAINTAINER takes
        `MAINT`; both load the last committed manifest and, under the commit lock,
        delete leftovers of interrupted work (FORMAT.md section 6). READER takes no
        lock and writes nothing: a snapshot of the newest manifest (`refresh` moves it).

        Raises: StrataError if the role's lock is held or there is no store (maintainer,
        reader); CorruptionError (naming file and offset, with advice) if the manifest or
        a layer it references is damaged or missing; nothing is deleted in that case.
        """
        directory = Path(directory)
        config = config or StorageConfig.from_env()
        if role is Role.READER:
            manifest, layers = load_snapshot(directory, {}, config.verify_on_open)
            return cls(directory, redo, config, role, manifest, layers)
        held: list[BinaryIO] = []
        try:
            if role is Role.WRITER:
                directory.mkdir(parents=True, exist_ok=True)
                held.append(lock_directory(directory))
            elif not (directory / MANIFEST_NAME).exists():
                raise StrataError(f"no layer store in {directory} (no {MANIFEST_NAME})")
            if role is Role.MAINTAINER or maintenance:
                held.append(lock_maintainer(directory))
            store = cls._open_locked(directory, redo, config, role,
                                     role is Role.MAINTAINER or maintenance)
        except BaseException:
            for f in held:
                f.close()
            raise
        store._held = held
        store.runs_maintenance = role is Role.MAINTAINER or maintenance
        return store

    @classmethod
    def _open_locked(cls, directory: Path, redo: Redo, config: StorageConfig,
                     role: Role, maint_held: bool) -> LayerStore:
        lock = CommitLock(directory)
        try:
            with lock.held():
                manifest = _load(directory)
                if manifest is None:
                    if role is not Role.WRITER:
                        raise StrataError(f"no layer store in {directory} (no {MANIFEST_NAME})")
                    manifest = Manifest().edit()
                    commit_manifest(directory, manifest)
                ensure_fd_budget(len(manifest.layers))
                try:
                    layers = open_named(directory, manifest, {}, config.verify_on_open)
                except CorruptionError as e:
                    raise CorruptionError(f"{e}. {advice(directory)}") from e
                remove_leftovers(directory, manifest, role.value, maint_held)
        except BaseException:
            lock.close()
            raise
        store = cls(directory, redo, config, role, manifest, layers)
        store.commit_lock = lock
        return store

    def close(self) -> None:
        self._stop.set()
        with self.maint_lock, self.flush_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            for la in self._view.layer_map.layers:
                la.file.close()
            if self.commit_lock is not None:
                self.commit_lock.close()
            for f in self._held:
                f.close()  # releases the flock

    # -- stop requests and pacing (maintenance verbs) ------------------------------
    def request_stop(self) -> None:
        """Make every running and later maintenance verb abandon its work at its next
        checkpoint (`MaintenanceStopped`)."""
        self._stop.set()

    @property
    def stop_event(self) -> threading.Event:
        return self._stop

    def use_pacer(self, pacer: Pacer | None) -> None:
        """Pace the maintenance verbs run on the calling thread (None: unpaced)."""
        self._local.pacer = pacer

    def checkpoint(self) -> None:
        """Called by maintenance verbs between bounded units of work (a block of a
        merge, a key of an image layer): waits as the calling thread's CPU budget asks,
        and raises MaintenanceStopped once a stop was requested."""
        if self.checkpoint_hook is not None:
            self.checkpoint_hook()
        if self._stop.is_set():
            raise MaintenanceStopped(f"maintenance of {self.directory} stopped")
        pacer: Pacer | None = getattr(self._local, "pacer", None)
        if pacer is not None:
            pacer.pace(self._stop)
            if self._stop.is_set():
                raise MaintenanceStopped(f"maintenance of {self.directory} stopped")

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
    def _require_writer(self) -> None:
        if self.role is not Role.WRITER:
            raise StrataError(f"layer store {self.directory} is open as {self.role.name.lower()}: "
                              "only the writer puts, advances and flushes")

    def put(self, key: bytes, lsn: int, value: Value) -> None:
        """Requires: lsn > ingested_lsn (ingest restarts from durable_lsn after a crash)."""
        if lsn <= self._ingested:
            raise ValueError(f"put at {Lsn(lsn)} at or below ingested_lsn {self.ingested_lsn}")
        kind, data = kind_and_data(value)
        if key[0] == 0xFF:  # reserved: above every real key, used as a range end
            raise ValueError(f"key kind 0xFF is reserved, cannot store {key.hex()}")
        if self.role is not Role.WRITER:
            self._require_writer()
        with self._lock:  # freeze() may swap the memtable from another thread
            self._view.active.put_raw(key, lsn, kind, data)
        self.last_put = time.monotonic()
        m = self.metrics  # only the writer's thread changes these two: no lock
        m.entries_put += 1
        m.bytes_put += ENTRY_OVERHEAD + len(data)

    def put_batch(self, batch: EntryBatch) -> None:
        """Requires: the batch contract (batch.py). Raises: ValueError naming the first
        offending row (nothing is put)."""
        self._require_writer()
        batch.check(self._ingested)
        with self._lock:
            self._view.active.put_batch(batch)
        self.last_put = time.monotonic()
        m = self.metrics
        m.entries_put += len(batch)
        m.bytes_put += batch.nbytes()

    def note_get(self, stats: ReadStats | None) -> None:
        """One GetPage: a cache hit (None) or a read with these costs."""
        with self._mlock:
            m = self.metrics
            m.gets += 1
            if stats is None:
                m.cache_hits += 1
            else:
                m.cache_misses += 1
                m.layers_visited += stats.layers_visited
                m.deltas_applied += stats.deltas_applied
                m.redo_calls += stats.redo_calls

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
        self._require_writer()
        if lsn < self._ingested:
            raise ValueError(f"advance to {Lsn(lsn)} below ingested_lsn {self.ingested_lsn}")
        active = self._view.active
        if active.max_lsn > lsn:
            raise ValueError(f"advance to {Lsn(lsn)} below a put at {Lsn(active.max_lsn)}")
        self._ingested = lsn
        if active.size_bytes >= self.config.memtable_bytes:
            return self.freeze(awaited=False)
        return None

    def freeze(self, *, awaited: bool = True) -> FrozenMemtable | None:
        """Seal the active memtable as (last frozen end, ingested_lsn]; None if nothing new.
        `awaited` (FrozenMemtable): false when `advance` seals a full one."""
        self._require_writer()
        with self._lock:
            old = self._view.active
            if self._ingested <= self._frozen_end and len(old) == 0:
                return None
            # puts above ingested_lsn (a record not yet advanced past) stay active
            fm, rest = old.freeze(self._frozen_end + 1, self._ingested + 1, awaited=awaited)
            self._frozen_end = self._ingested
            self._view = ReadView(rest, (*self._view.frozen, fm), self._view.layer_map)
            return fm

    def frozen_count(self) -> int:
        return len(self._view.frozen)

    def oldest_frozen(self) -> FrozenMemtable | None:
        frozen = self._view.frozen
        return frozen[0] if frozen else None

    # -- following the manifest ----------------------------------------------------
    def open_layers(self, manifest: Manifest, new: Sequence[Layer] = ()) -> list[Layer]:
        """The layers `manifest` names: those this store has open (or `new`) reused,
        the others opened. Requires: the commit lock is held (so none is retired
        meanwhile). Raises: CorruptionError."""
        have = {la.name: la for la in self.view().layer_map.layers}
        have.update((la.name, la) for la in new)
        return open_named(self.directory, manifest, have)

    def install(self, manifest: Manifest, layers: list[Layer],
                drop_frozen: FrozenMemtable | None = None) -> None:
        """Make `manifest` (committed) and its open `layers` what reads see;
        `drop_frozen` (now in a layer) leaves the frozen memtables."""
        with self._lock:
            ensure_fd_budget(len(layers) + len(self._view.layer_map.layers))
            frozen = tuple(f for f in self._view.frozen if f is not drop_frozen)
            self._view = ReadView(self._view.active, frozen, LayerMap(tuple(layers)))
            self._manifest = manifest
            # another role's store has no memtable: what is durable is all it has
            self._ingested = max(self._ingested, manifest.durable_lsn)
            self._durable_changed.notify_all()

    def refresh(self) -> bool:
        """Follow the newest committed manifest (edits of the other role, or of the
        writer for a reader). Returns: True if it moved."""
        if committed_generation(self.directory) == self._manifest.generation:
            return False  # the header alone: an idle poll decodes no layer entry
        if self.commit_lock is None:  # a reader: no lock, retry on a retired file
            m = _load(self.directory)
            if m is None or m.generation == self._manifest.generation:
                return False
            have = {la.name: la for la in self.view().layer_map.layers}
            m, layers = load_snapshot(self.directory, have)
            self.install(m, layers)
            return True
        with self.commit_lock.held():
            m = _load(self.directory)
            if m is None or m.generation == self._manifest.generation:
                return False
            self.install(m, self.open_layers(m))
            return True

    def wait_durable(self, lsn: int, timeout: float | None = None) -> bool:
        with self._lock:
            return self._durable_changed.wait_for(
                lambda: self._manifest.durable_lsn >= lsn or self._closed, timeout)

    def wake_waiters(self) -> None:
        """Wake every `wait_durable` caller (e.g. so it sees a worker failure)."""
        with self._lock:
            self._durable_changed.notify_all()


def remove_leftovers(directory: Path, manifest: Manifest, owner: str, maint_held: bool) -> int:
    """Recovery (FORMAT.md section 6), under the commit lock: delete `MANIFEST.tmp`,
    every layer-named file `manifest` does not name (a rename happens only inside a
    commit, so no live process has one), and the temporary layer files of `owner`'s
    role and of any role whose lock is free (the writer also deletes older unowned
    ones). Temporary files of a role whose process is alive stay. `maint_held`: the
    caller holds MAINT. Returns: files removed."""
    live = manifest.names()
    maint = None if maint_held else try_lock_maintainer(directory)
    owners = {owner}
    if maint_held or maint is not None:
        owners.add(Role.MAINTAINER.value)
    removed = 0
    try:
        for fn in os.listdir(directory):
            if fn.endswith(TMP_SUFFIX):
                m = _TMP_OWNER.match(fn)
                tag = m["owner"] if m is not None else Role.WRITER.value
                if fn != MANIFEST_NAME + TMP_SUFFIX and tag not in owners:
                    continue
            elif not is_layer_filename(fn) or fn in live:
                continue
            durable.fs().unlink(directory / fn)
            removed += 1
    finally:
        if maint is not None:
            maint.close()
    if removed:
        durable.fs().fsync_dir(directory)
        log.info("recovery removed %d leftover files in %s", removed, directory)
    return removed


# layer-<owner>-<pid>-<n>.tmp (layerwriter.tmp_layer_name); older writers used
# layer-<pid>-<thread>-<id>.tmp, which counts as the writer's.
_TMP_OWNER = re.compile(r"^layer-(?P<owner>[a-z])-\d+-\d+\.tmp$")
