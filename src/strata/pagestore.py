"""PageStore: the facade the rest of pgStrata uses to store and read versions.

Fed by: ingest (`put`, `put_batch`, `advance`), the daemon (`flush`,
`wait_durable` to report the slot's flush position). Feeds: reconstruct /
historical (`get_page`, `scan`, `keys`) and the CLI. Owns: the background
workers: one flushes frozen memtables, so ingest never waits for a flush
(except for backpressure when `max_frozen_memtables` are already waiting);
with `maintenance=True` a second one runs compaction, image creation and gc
(`storage.maintenance.Maintainer`) in this process.

Process model: the writer (ingest) opens `PageStore.open(..., maintenance=False)`
and only flushes; a maintenance process runs `storage.maintenance.run_maintenance`
on the same directory; any other process reads through
`PageStore.open_readonly` (a `StoreReader`: a manifest snapshot, `refresh()` to
move it). Tools and tests keep everything in one process (`maintenance=True`).

Thread safety: one writer (put/put_batch/advance/delete_range) and any number
of readers. After a crash, `open` returns to the last committed manifest;
ingest restarts from `durable_lsn` (the memtable has no log of its own).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from strata.errors import StrataError
from strata.key import Key, KeyRange
from strata.lsn import Lsn
from strata.storage import compaction, flush, gc, images, reads
from strata.storage.batch import EntryBatch, key_array
from strata.storage.config import StorageConfig
from strata.storage.layermap import Redo
from strata.storage.maintenance import Maintainer
from strata.storage.manifest import layer_summary
from strata.storage.metrics import StoreMetrics
from strata.storage.naming import LayerName
from strata.storage.store import LayerStore, MaintenanceStopped, Role
from strata.storage.values import Value, ValueKind

log = logging.getLogger(__name__)


class PageReader(Protocol):
    """What readers of versions need (PageStore and StoreReader both are one)."""

    def get_page(self, key: Key, lsn: int) -> bytes | None: ...

    def scan(self, key_range: KeyRange, lsn: int) -> Iterator[tuple[Key, bytes]]: ...

    def scan_pages(self, start: Key, count: int, lsn: int, width: int,
                   out: bytearray | memoryview | None = None) -> bytearray | memoryview: ...

    def keys(self, key_range: KeyRange, lsn: int) -> Iterator[Key]: ...


class _Facade:
    """Watermarks, reads and inspection shared by the writer's and a reader's facade."""

    _store: LayerStore

    @property
    def durable_lsn(self) -> Lsn:
        return self._store.durable_lsn

    @property
    def retention_lsn(self) -> Lsn:
        return self._store.retention_lsn

    @property
    def config(self) -> StorageConfig:
        return self._store.config

    @property
    def store(self) -> LayerStore:
        """The engine (for tools and tests)."""
        return self._store

    def metrics(self) -> StoreMetrics:
        return self._store.metrics.snapshot()

    def layer_summary(self) -> dict[str, dict[str, int]]:
        """Live layers per level name (L0, L1, IMAGE): {"count": n, "bytes": b}."""
        return layer_summary(self._store.manifest)

    def clear_cache(self) -> None:
        """Drop every cached page (benchmarks and tests measure cold reads)."""
        self._store.cache.clear()

    def get_page(self, key: Key, lsn: int) -> bytes | None:
        """GetPage@LSN: the value of `key` at `lsn` (None: the key has no value there,
        never written or dropped). Raises: LsnOutOfRangeError below retention_lsn."""
        return reads.get(self._store, key, lsn)

    def scan(self, key_range: KeyRange, lsn: int) -> Iterator[tuple[Key, bytes]]:
        """Every (key, value) present at `lsn` in `key_range`, in key order, streamed."""
        return reads.scan(self._store, key_range, lsn)

    def scan_pages(self, start: Key, count: int, lsn: int, width: int,
                   out: bytearray | memoryview | None = None) -> bytearray | memoryview:
        """The values at `lsn` of `start` and the `count - 1` keys after it that differ
        only in `blk` (a fork's blocks [start.blk, start.blk + count)), `width` bytes
        each, laid out by block, zeros for a block with no value (`scan.scan_dense`);
        into `out` (`count * width` bytes, overwritten) when given, else a new buffer.
        Raises: ValueError if a value is not `width` bytes, or `out` is not
        `count * width` bytes."""
        return reads.scan_dense(self._store, start, count, lsn, width, out)

    def changed_keys(self, key_range: KeyRange, after: int, upto: int
                     ) -> Iterator[tuple[bytes, list[int]]]:
        """Keys of `key_range` with entries in (after, upto], with their LSNs
        (storage/changes.py): what changed in between, from the layer map."""
        return reads.changed(self._store, key_range, after, upto)

    def keys(self, key_range: KeyRange, lsn: int) -> Iterator[Key]:
        return reads.keys(self._store, key_range, lsn)


class StoreReader(_Facade):
    """A read-only open of a store another process writes (`PageStore.open_readonly`).

    Reads see the manifest snapshot taken at open or at the last `refresh()`:
    any LSN in [retention_lsn, durable_lsn] of that snapshot (above durable_lsn
    only what was durable then). Takes no lock and writes nothing; the files of
    its snapshot stay readable while the writer flushes and the maintenance
    process compacts and collects garbage (FORMAT.md invariant 15)."""

    def __init__(self, store: LayerStore) -> None:
        self._store = store

    def refresh(self) -> bool:
        """Move to the newest committed manifest. Returns: True if it changed."""
        return self._store.refresh()

    @property
    def generation(self) -> int:
        return self._store.manifest.generation

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PageStore(_Facade):
    """See module docstring. Create with `PageStore.open`."""

    # s a background worker sleeps before it looks for work nobody woke it for;
    # every producer wakes it (`_kick`): this is a safety net, not the schedule
    WORKER_POLL = 1.0

    def __init__(self, store: LayerStore, background: bool) -> None:
        self._store = store
        self._cv = threading.Condition()
        self._stop = False
        self._error: BaseException | None = None
        self._work_pending = False
        self._thread: threading.Thread | None = None
        self._maint_thread: threading.Thread | None = None
        self._maint_pending = False
        self._maint_busy = False
        self._flush_busy = False
        if background:
            # Two workers: flushes never queue behind a long compaction (only the short
            # manifest commit is shared), so ingest's backpressure tracks flush speed.
            self._thread = threading.Thread(target=self._flush_loop, name="strata-flush",
                                            daemon=True)
            if store.runs_maintenance and store.config.background_maintenance:
                self._maint_thread = threading.Thread(target=self._maint_loop,
                                                      name="strata-compaction", daemon=True)
                self._maint_thread.start()
            self._thread.start()

    @classmethod
    def open(cls, directory: Path | str, redo: Redo, config: StorageConfig | None = None,
             *, background: bool = True, maintenance: bool = True) -> PageStore:
        """Open (recovering) the store in `directory` as its one writer.

        `maintenance`: this process also runs compaction, image creation and gc (in its
        background worker, or when called); False when a maintenance process does.

        Raises: StrataError if another writer (or, with `maintenance`, another
        maintainer) has it; CorruptionError naming the damaged file and offset, and
        how to proceed.
        """
        return cls(LayerStore.open(directory, redo, config, maintenance=maintenance),
                   background)

    @staticmethod
    def open_readonly(directory: Path | str, redo: Redo,
                      config: StorageConfig | None = None) -> StoreReader:
        """Open a store another process writes, for reads only (see StoreReader).

        Raises: StrataError if there is no store; CorruptionError if a layer of the
        newest manifest is damaged."""
        return StoreReader(LayerStore.open(directory, redo, config, role=Role.READER))

    # -- watermarks ----------------------------------------------------------------
    @property
    def ingested_lsn(self) -> Lsn:
        return self._store.ingested_lsn

    def refresh(self) -> bool:
        """Follow manifest edits of the maintenance process now (each flush does it too).
        Returns: True if the manifest moved."""
        return self._store.refresh()

    # -- writes --------------------------------------------------------------------
    def _check_worker(self) -> None:
        if self._error is not None:
            raise StrataError(f"storage worker failed (the store stops accepting writes): {self._error}") from self._error

    def put(self, key: Key, lsn: int, value: Value) -> None:
        """Store `value` for `key` at `lsn` (a record's END lsn).

        Requires: lsn > ingested_lsn. Raises: ValueError otherwise.
        """
        self._check_worker()
        self._store.put(key.to_bytes(), lsn, value)

    def put_batch(self, batch: EntryBatch) -> None:
        """Store every entry of `batch` (see storage/batch.py for the contract: keys,
        LSNs non-decreasing and above ingested_lsn, kinds, offsets into one value
        buffer; the last of several puts at one (key, lsn) wins).

        Raises: ValueError naming the first offending row (nothing is put)."""
        self._check_worker()
        self._store.put_batch(batch)

    def delete_range(self, key_range: KeyRange, lsn: int) -> int:
        """Record that every key in `key_range` present just before `lsn` stops existing
        at `lsn` (relation dropped): puts a tombstone per present key.
        Returns: the number of tombstones put."""
        if lsn - 1 < self.retention_lsn:
            return 0
        keys = [k.to_bytes() for k in reads.keys(self._store, key_range, lsn - 1)]
        if keys:
            n = len(keys)
            self._store.put_batch(EntryBatch.from_offsets(
                key_array(keys), np.full(n, lsn, dtype=np.int64),
                np.full(n, ValueKind.TOMBSTONE, dtype=np.uint8), np.zeros(n + 1, np.int64), b""))
        return len(keys)

    def advance(self, ingested_lsn: int) -> None:
        """Everything up to `ingested_lsn` has been put. May freeze the memtable (flushed
        in the background); blocks only while max_frozen_memtables wait for flush."""
        self._check_worker()
        fm = self._store.advance(ingested_lsn)
        if fm is not None:
            self._kick()
            self._backpressure()

    def _backpressure(self) -> None:
        limit = self._store.config.max_frozen_memtables
        while self._store.frozen_count() > limit:
            self._check_worker()
            if self._thread is None:
                flush.flush_one(self._store)
            else:
                self._store.wait_durable(self._store.durable_lsn + 1, timeout=0.05)

    def flush(self, up_to: int | None = None) -> Lsn:
        """Make everything put up to `up_to` (default ingested_lsn) durable; returns
        durable_lsn. Requires: up_to <= ingested_lsn."""
        self._check_worker()
        target = self.ingested_lsn if up_to is None else Lsn(up_to)
        if target > self.ingested_lsn:
            raise ValueError(f"flush up to {target} beyond ingested_lsn {self.ingested_lsn}")
        if self.durable_lsn < target:
            self._store.freeze()
            if self._thread is None:
                flush.flush_frozen(self._store)
            else:
                self._kick()
                self.wait_durable(target)
        return self.durable_lsn

    def wait_durable(self, lsn: int, timeout: float | None = None) -> bool:
        """Block until durable_lsn >= lsn (True) or timeout (False)."""
        deadline_left = timeout
        while True:
            self._check_worker()
            step = 0.1 if deadline_left is None else min(0.1, deadline_left)
            if self._store.wait_durable(lsn, step):
                self._check_worker()
                return self.durable_lsn >= lsn
            if deadline_left is not None:
                deadline_left -= step
                if deadline_left <= 0:
                    return False

    def flush_soon(self) -> None:
        """Seal the active memtable and have the background worker write it out now,
        without waiting (without a worker: flush it here). The ingest pipeline's idle
        flush and its stop (which then waits, bounded: `IngestPipeline.finish`) use it;
        the worker is woken, never left to notice on its 1 s poll."""
        self._check_worker()
        if self.durable_lsn < self.ingested_lsn:
            self._store.freeze()
            if self._thread is None:
                flush.flush_frozen(self._store)
            else:
                self._kick()

    # -- maintenance (run on the caller's thread, serialised with the worker) -------
    def _maintainer(self) -> LayerStore:
        if not self._store.runs_maintenance:
            raise StrataError(f"layer store {self._store.directory} was opened without "
                              "maintenance: compaction, images and gc run in the maintenance "
                              "process")
        return self._store

    def compact(self, force: bool = True, progress: Callable[[int, int], None] | None = None
                ) -> list[LayerName]:
        """Merge the L0 layers into L1 (`progress(done, total)`: entries merged)."""
        return compaction.compact_l0(self._maintainer(), force=force, progress=progress)

    def create_image_layers(self, lsn: int | None = None, threshold: int | None = None,
                            record_threshold: int | None = None,
                            progress: Callable[[int, int], None] | None = None
                            ) -> list[LayerName]:
        """Image layers where chains are long (`progress(done, total)`: key ranges)."""
        return images.create_image_layers(self._maintainer(), lsn, threshold,
                                          record_threshold=record_threshold, progress=progress)

    def set_retention_lsn(self, lsn: int) -> list[LayerName]:
        """Raise the retention horizon to `lsn` (e.g. from a time window through the
        time map) and collect garbage below it."""
        return gc.gc(self._maintainer(), lsn)

    def gc(self) -> list[LayerName]:
        return gc.gc(self._maintainer())

    # -- worker --------------------------------------------------------------------
    def _kick(self) -> None:
        with self._cv:
            self._work_pending = True
            self._cv.notify_all()

    def _fail(self, e: BaseException) -> None:
        log.exception("storage worker failed")
        self._error = e
        self._store.wake_waiters()

    def _flush_loop(self) -> None:
        s = self._store
        try:
            while True:
                with self._cv:
                    self._cv.wait_for(lambda: self._work_pending or self._stop, timeout=self.WORKER_POLL)
                    if self._stop and s.frozen_count() == 0:
                        return
                    self._work_pending = False
                    self._flush_busy = True
                try:
                    flushed = s.frozen_count() > 0
                    flush.flush_frozen(s)
                finally:
                    with self._cv:
                        self._flush_busy = False
                        if flushed and self._maint_thread is not None:
                            self._maint_pending = True
                        self._cv.notify_all()
        except BaseException as e:  # surfaced to the writer on its next call
            self._fail(e)

    def _maint_loop(self) -> None:
        maintainer = Maintainer(self._store)
        try:
            while True:
                with self._cv:
                    self._cv.wait_for(lambda: self._maint_pending or self._stop, timeout=self.WORKER_POLL)
                    if self._stop:
                        return
                    if not self._maint_pending:
                        continue
                    self._maint_pending = False
                    self._maint_busy = True
                try:
                    maintainer.run_once()
                finally:
                    with self._cv:
                        self._maint_busy = False
                        self._cv.notify_all()
        except MaintenanceStopped:
            return  # close() asked: the job in progress is abandoned
        except BaseException as e:
            self._fail(e)

    def wait_maintenance(self, timeout: float | None = None) -> bool:
        """Block until the background worker has no flush, compaction, image or gc work
        left (True) or the timeout passes (False). For tools, benchmarks and tests."""
        if self._thread is None:
            return True
        with self._cv:
            return self._cv.wait_for(
                lambda: self._error is not None or (
                    not self._work_pending and not self._flush_busy and not self._maint_pending
                    and not self._maint_busy
                    and self._store.frozen_count() == 0), timeout)

    def close(self, flush: bool = False) -> None:
        """Stop the worker (after flushing frozen memtables) and close files. With
        `flush`, first make everything ingested durable. Unflushed memtable data is
        dropped: ingest re-puts it from durable_lsn."""
        if flush and self._error is None:
            self.flush()
        self._store.request_stop()  # maintenance in progress is abandoned, not awaited
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for t in (self._thread, self._maint_thread):
            if t is not None:
                t.join()
        self._store.close()

    def __enter__(self) -> PageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
