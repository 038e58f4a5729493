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
6. **A busy machine**: while other processes keep at least
   `maintenance_busy_host_share` (0.5) of all the machine's CPUs busy
   (`HostLoad`, from /proc/stat), the budget is `maintenance_busy_cpu_fraction`
   (0.15) instead, unless `l0_backlog` (12) L0 layers wait (then the pass runs
   at the full budget). A nice value does not protect a loaded primary: its
   backends sleep on commits, and whatever CPU maintenance takes meanwhile
   costs transactions. Work deferred this way is less work, not just later
   work: images fall due less often per WAL byte while maintenance lags, and
   compaction's cost per byte does not change.
7. **Priority**: the supervisor starts the process at nice `maintenance_nice`.
8. **Stop**: `stop()` (or the store's `request_stop`) is seen at the next
   checkpoint: every merge window (~16 MiB of entries), every key redo
   rebuilds for an image, before every
   commit and during every pacing sleep. The verb running then is abandoned:
   its temporary files are deleted and nothing is committed (layers are
   immutable and the manifest edit atomic), so a stop at any moment leaves
   the store as the last commit made it.
"""

from __future__ import annotations

import logging
import os
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
from strata.storage.naming import LayerName
from strata.storage.store import LayerStore, MaintenanceStopped, Role

log = logging.getLogger(__name__)

# a pause longer than this between two checkpoints starts a new budget window
IDLE_GAP_SECONDS = 1.0
# CPU owed below this is not worth a sleep (it is carried to the next checkpoint)
MIN_SLEEP_SECONDS = 0.001


class HostLoad:
    """How busy the rest of the machine is: the share of all its CPUs' time, over the
    last `interval` seconds or more, that went to other processes (`/proc/stat`'s busy
    ticks, steal included, less this process's own CPU time). Sampled at most once per
    `interval`; None where `/proc/stat` cannot be read (then never busy)."""

    def __init__(self, interval: float = 2.0, stat: Path = Path("/proc/stat")) -> None:
        self.interval = interval
        self.stat = stat
        self._hz = os.sysconf("SC_CLK_TCK")
        self._at = time.monotonic()
        self._prev = self._sample()
        self._share: float | None = None

    def _sample(self) -> tuple[int, int, float] | None:
        """(busy ticks, all ticks, own CPU-s) now, summed over the CPUs."""
        try:
            with self.stat.open() as f:
                ticks = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        if len(ticks) < 8:
            return None
        idle = ticks[3] + ticks[4]  # idle, iowait
        return sum(ticks) - idle, sum(ticks), time.process_time()

    def others_busy(self) -> float | None:
        now = time.monotonic()
        if now - self._at >= self.interval:
            cur = self._sample()
            if cur is not None and self._prev is not None and cur[1] > self._prev[1]:
                busy = cur[0] - self._prev[0] - (cur[2] - self._prev[2]) * self._hz
                self._share = min(1.0, max(0.0, busy / (cur[1] - self._prev[1])))
            self._at, self._prev = now, cur
        return self._share


class CpuBudget:
    """Paces one thread to `fraction` of a core per second of wall time (policy 5),
    or to `busy_fraction` while other processes use at least `busy_share` of the
    machine (`load`) and the work is not `urgent` (policy 6)."""

    def __init__(self, fraction: float, window: float = 1.0, busy_fraction: float | None = None,
                 busy_share: float = 1.0, load: HostLoad | None = None) -> None:
        self.fraction = fraction
        self.window = window
        self.busy_fraction = fraction if busy_fraction is None else min(busy_fraction, fraction)
        self.busy_share = busy_share
        self.load = load
        self.urgent = False  # set by the maintainer: a backlog past its bound
        self._t0 = self._last = time.monotonic()
        self._c0 = time.thread_time()

    def current(self) -> float:
        """The fraction of a core the thread may use now."""
        if self.urgent or self.load is None or self.busy_fraction >= self.fraction:
            return self.fraction
        share = self.load.others_busy()
        return self.busy_fraction if share is not None and share >= self.busy_share \
            else self.fraction

    def pace(self, stop: threading.Event) -> None:
        if self.fraction >= 1.0:
            return
        fraction = self.current()
        now, cpu = time.monotonic(), time.thread_time()
        if now - self._last > IDLE_GAP_SECONDS:  # idle since: a fresh window
            self._t0, self._c0 = now, cpu
        owed = (cpu - self._c0) / fraction - (now - self._t0)
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
        cfg = store.config
        self.budget = CpuBudget(cfg.maintenance_cpu_fraction,
                                busy_fraction=cfg.maintenance_busy_cpu_fraction,
                                busy_share=cfg.maintenance_busy_host_share, load=HostLoad())
        self.horizon = horizon
        self.gc_interval = gc_interval
        self._last_gc = float("-inf")

    def run_once(self) -> bool:
        """One pass of policies 2-4 over the store's current view. Returns: True if
        anything was committed. Raises: MaintenanceStopped, EditConflict."""
        s = self.store
        s.use_pacer(self.budget)
        self.budget.urgent = len(s.view().layer_map.l0()) >= s.config.l0_backlog
        did = _logged("compacted", s, lambda: compaction.compact_l0(s))
        did = _logged("imaged", s, lambda: images.create_image_layers(s)) or did
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


def _logged(verb: str, s: LayerStore, job: Callable[[], list[LayerName]]) -> bool:
    """Run one job; if it made layers, log (INFO) what: how many, their MiB, the
    job's CPU-s and wall seconds (pacing sleeps included). Returns: whether it made any."""
    t0, c0 = time.monotonic(), time.thread_time()
    made = job()
    if made:
        sizes = {la.name: la.entry.size for la in s.view().layer_map.layers}
        mib = sum(sizes.get(n, 0) for n in made) / 2**20
        log.info("maintenance %s: %d layers, %.1f MiB, %.2f CPU-s in %.1f s", verb, len(made),
                 mib, time.thread_time() - c0, time.monotonic() - t0)
    return bool(made)


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
