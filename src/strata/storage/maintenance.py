"""Maintenance: what the maintenance process runs (compaction, image creation,
gc), and the pacing policy that keeps it from costing ingest anything.

Fed by: the manifest the writer commits (new L0 layers, durable_lsn). Feeds:
L1 layers, image layers and a raised retention_lsn, committed through the
same protocol as the writer's flushes (commit.py). Owns: the policy below and
the `MAINT` lock's process (LayerStore opened as `Role.MAINTAINER`; only one
maintainer runs per store). The writer's in-process background worker
(PageStore with `maintenance=True`) runs the same `Maintainer.run_once`.

Policy (FORMAT.md section 7b), checked once per new manifest generation:

1. **Follow the writer**: re-read the manifest when it changes (polled every
   `maintenance_poll_seconds` while idle).
2. **Compaction** when at least `l0_compaction_trigger` L0 layers exist: all of
   them are merged into L1s in one job. Every L0 byte is merged once.
3. **Images** where a partition (an L1 key range, or the L0 span) has a key that
   may have more than `image_record_threshold` deltas above its newest image;
   or more than `image_delta_threshold` delta layers there whose bytes in the
   partition reach `image_bytes_ratio` times its newest image's (so images add
   at most 1/ratio of the delta bytes); or more than `image_layer_cap` delta
   layers there (layer headers and indexes only; section 7a). A partition is
   imaged at most once per such excess.
4. **gc** once the horizon (durable_lsn - `retention_lsn_distance`) has moved
   a quarter of the window past retention_lsn.
5. **CPU budget**: over every second of wall time, the maintenance thread uses
   at most `maintenance_cpu_fraction` of a core (its own CPU time, measured
   at every checkpoint; it sleeps off any excess). So a burst of writes turns
   into at most (its compaction + image CPU) / fraction of background wall
   time, and never takes more than that share of a core from ingest and the
   proxy meanwhile.
6. **Stop**: `stop()` (or the store's `request_stop`) is seen at the next
   checkpoint: every merge window (~4 MiB of entries), every key redo
   rebuilds for an image, before every
   commit and during every pacing sleep. The verb running then is abandoned:
   its temporary files are deleted and nothing is committed (layers are
   immutable and the manifest edit atomic), so a stop at any moment leaves
   the store as the last commit made it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from strata.storage import compaction, gc, images
from strata.storage.commit import EditConflict
from strata.storage.config import StorageConfig
from strata.storage.layermap import Redo
from strata.storage.store import LayerStore, MaintenanceStopped, Role

log = logging.getLogger(__name__)

# a pause longer than this between two checkpoints starts a new budget window
IDLE_GAP_SECONDS = 1.0
# CPU owed below this is not worth a sleep (it is carried to the next checkpoint)
MIN_SLEEP_SECONDS = 0.001


class CpuBudget:
    """Paces one thread to `fraction` of a core per second of wall time (policy 5)."""

    def __init__(self, fraction: float, window: float = 1.0) -> None:
        self.fraction = fraction
        self.window = window
        self._t0 = self._last = time.monotonic()
        self._c0 = time.thread_time()

    def pace(self, stop: threading.Event) -> None:
        if self.fraction >= 1.0:
            return
        now, cpu = time.monotonic(), time.thread_time()
        if now - self._last > IDLE_GAP_SECONDS:  # idle since: a fresh window
            self._t0, self._c0 = now, cpu
        owed = (cpu - self._c0) / self.fraction - (now - self._t0)
        if owed > MIN_SLEEP_SECONDS:
            stop.wait(owed)
            now = time.monotonic()
        if now - self._t0 >= self.window:
            self._t0, self._c0 = now, time.thread_time()
        self._last = now


class Maintainer:
    """Runs the policy (module docstring) over one open store."""

    def __init__(self, store: LayerStore, horizon: Callable[[], int | None] | None = None,
                 gc_interval: float = 60.0) -> None:
        """`horizon`: where retention should be now, as an LSN (e.g. the last commit
        older than a time window, which the caller finds in its time map); by
        default durable_lsn - `retention_lsn_distance`. With a `horizon`, gc runs
        at most every `gc_interval` s, once the horizon has passed retention_lsn."""
        self.store = store
        self.budget = CpuBudget(store.config.maintenance_cpu_fraction)
        self.horizon = horizon
        self.gc_interval = gc_interval
        self._last_gc = float("-inf")

    def run_once(self) -> bool:
        """One pass of policies 2-4 over the store's current view. Returns: True if
        anything was committed. Raises: MaintenanceStopped, EditConflict."""
        s = self.store
        s.use_pacer(self.budget)
        did = bool(compaction.compact_l0(s))
        did = bool(images.create_image_layers(s)) or did
        if self.horizon is not None:
            now = time.monotonic()
            if now - self._last_gc >= self.gc_interval:
                self._last_gc = now
                h = self.horizon()
                if h is not None and h > s.retention_lsn:
                    gc.gc(s, h)
                    did = True
            return did
        h = gc.horizon(s)
        dist = s.config.retention_lsn_distance
        # gc writes images at the horizon: run it once the horizon has moved a
        # quarter of the window, not after every flush
        if h is not None and dist is not None and h - s.retention_lsn >= max(1, dist // 4):
            gc.gc(s)
            did = True
        return did

    def run(self) -> None:
        """Follow the store and maintain it until `stop()`. Work in progress at the stop
        is abandoned (nothing committed)."""
        s = self.store
        stop = s.stop_event
        seen = -1
        while not stop.is_set():
            try:
                s.refresh()
                gen = s.manifest.generation
                if gen != seen:
                    if not self.run_once():
                        seen = gen
                    continue  # after work, look again at once (it may allow more)
            except MaintenanceStopped:
                break
            except EditConflict as e:  # the writer moved on meanwhile: look again
                log.info("maintenance: %s", e)
                continue
            stop.wait(s.config.maintenance_poll_seconds)
        log.info("maintenance of %s stopped", s.directory)

    def stop(self) -> None:
        self.store.request_stop()


def open_maintainer(directory: Path | str, redo: Redo, config: StorageConfig | None = None,
                    horizon: Callable[[], int | None] | None = None) -> Maintainer:
    """Open the store for maintenance (takes MAINT, never LOCK; cleans its own role's
    leftovers). Raises: StrataError if another maintainer runs or there is no store."""
    return Maintainer(LayerStore.open(directory, redo, config, role=Role.MAINTAINER), horizon)


def run_maintenance(directory: Path | str, redo: Redo, config: StorageConfig | None = None,
                    *, handle_signals: bool = True,
                    horizon: Callable[[], int | None] | None = None) -> None:
    """The maintenance process's body: open, maintain until SIGTERM/SIGINT (with
    `handle_signals`), close. Returns within one checkpoint of the signal."""
    m = open_maintainer(directory, redo, config, horizon)
    if handle_signals:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            # Event.set takes a lock the interrupted code may hold: set it elsewhere
            threading.Thread(target=m.stop, name="strata-maint-stop").start()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        m.run()
    finally:
        m.store.close()
