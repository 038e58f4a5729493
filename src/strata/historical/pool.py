"""Running historical instances, pooled by LSN.

Fed by a factory ``(lsn, root) -> HistoricalInstance`` (materialize + start;
the daemon binds it to the page store). Feeds the proxy (`lease`) and
`strata status` (`stats`). Owns the instance roots under its `root`
directory: an instance that leaves the pool is stopped and its directory removed.

Invariants:
  1. at most one instance per LSN, also when threads ask for the same LSN at
     once (the first creates it, the others wait for it);
  2. at most `max_running` instances in the pool: creating one more first
     evicts the least recently used instance that no lease holds; if every
     instance is leased, InstanceError (the caller may retry). An evicted
     instance leaves the pool at once and is stopped by one background thread
     (a server stop and an unmount take 0.3-0.5 s under load, which a SET to a
     new point used to wait for): until that thread has caught up, the evicted
     servers still run beside the pool's (one per eviction still pending), and
     `wait_disposed` waits for the stops;
  3. an instance unused for `idle_timeout` seconds and not leased is stopped and
     removed by `reap_idle` (called by the reaper thread, or by hand);
  4. `stop_all` leaves no server process and no instance directory (it waits
     for the background stops too);
  5. an instance whose server or lazy file system died is replaced by a new
     one on the next `acquire` of its LSN (the dead one is removed).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from strata.errors import InstanceError
from strata.historical.instance import HistoricalInstance
from strata.lsn import Lsn

log = logging.getLogger(__name__)

InstanceFactory = Callable[[Lsn, Path], HistoricalInstance]
"""factory(lsn, root): build and start an instance whose files live under `root`."""


@dataclass(frozen=True, slots=True)
class InstanceStats:
    lsn: Lsn
    port: int
    datadir: Path
    size_bytes: int
    idle_seconds: float
    leases: int
    startup_seconds: float


@dataclass(eq=False)
class _Entry:
    lsn: Lsn
    root: Path
    ready: threading.Event = field(default_factory=threading.Event)
    instance: HistoricalInstance | None = None
    error: BaseException | None = None
    leases: int = 0
    last_used: float = 0.0


class InstancePool:
    """Thread-safe get-or-create of instances by LSN, with LRU and idle eviction."""

    def __init__(self, root: Path, factory: InstanceFactory, *, max_running: int = 4,
                 idle_timeout: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        if max_running < 1:
            raise ValueError("max_running must be at least 1")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.factory = factory
        self.max_running = max_running
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Lsn, _Entry] = {}
        self._seq = itertools.count()
        self._reaper: threading.Thread | None = None
        self._stop_reaper = threading.Event()
        self._disposer: ThreadPoolExecutor | None = None
        self._disposals: list[Future[None]] = []

    # -- getting instances ---------------------------------------------------------
    def get(self, lsn: Lsn | int) -> HistoricalInstance:
        """The running instance at `lsn`, created if needed (no lease is kept)."""
        inst = self.acquire(lsn)
        self.release(lsn)
        return inst

    @contextlib.contextmanager
    def lease(self, lsn: Lsn | int) -> Iterator[HistoricalInstance]:
        """Hold the instance at `lsn` (it is not evicted while leased)."""
        inst = self.acquire(lsn)
        try:
            yield inst
        finally:
            self.release(lsn)

    def acquire(self, lsn: Lsn | int) -> HistoricalInstance:
        """Get or create the instance at `lsn` and take a lease on it.

        Raises: InstanceError when it cannot be created or the pool is full of
        leased instances.
        """
        lsn = Lsn(lsn)
        victims: list[_Entry] = []
        with self._lock:
            entry = self._entries.get(lsn)
            if entry is not None and entry.instance is not None and not entry.instance.healthy():
                # its server or its lazy file system died (kill -9, OOM): a new one
                log.warning("the historical instance at %s is gone; starting a new one", lsn)
                del self._entries[lsn]
                victims.append(entry)
                entry = None
            creator = entry is None
            if entry is None:
                victims += self._make_room_locked()
                entry = _Entry(lsn=lsn, root=self.root / f"{int(lsn):016X}-{next(self._seq)}")
                self._entries[lsn] = entry
            entry.leases += 1
            entry.last_used = self.clock()
        self._dispose_later(victims)
        if creator:
            try:
                entry.instance = self.factory(lsn, entry.root)
            except BaseException as e:
                entry.error = e
                with self._lock:
                    self._entries.pop(lsn, None)
                shutil.rmtree(entry.root, ignore_errors=True)
                entry.ready.set()
                raise
            entry.ready.set()
        else:
            entry.ready.wait()
        if entry.instance is None:
            with self._lock:
                entry.leases -= 1
            raise InstanceError(f"creating the instance at {lsn} failed: {entry.error}")
        return entry.instance

    def release(self, lsn: Lsn | int) -> None:
        with self._lock:
            entry = self._entries.get(Lsn(lsn))
            if entry is not None and entry.leases > 0:
                entry.leases -= 1
                entry.last_used = self.clock()

    def _make_room_locked(self) -> list[_Entry]:
        victims: list[_Entry] = []
        live = list(self._entries.values())
        while len(live) - len(victims) >= self.max_running:
            idle = [e for e in live if e.leases == 0 and e.ready.is_set() and e not in victims]
            if not idle:
                raise InstanceError(
                    f"all {self.max_running} historical instances are in use; "
                    "try again when a session ends (or raise the pool limit)")
            victim = min(idle, key=lambda e: e.last_used)
            victims.append(victim)
            del self._entries[victim.lsn]
        return victims

    def _dispose_later(self, victims: list[_Entry]) -> None:
        """Stop `victims` on the disposal thread (they are out of the pool already)."""
        if not victims:
            return
        with self._lock:
            if self._disposer is None:
                self._disposer = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="strata-instance-dispose")
            self._disposals += [self._disposer.submit(self._dispose, v) for v in victims]

    def wait_disposed(self) -> None:
        """Wait until every instance that left the pool is stopped and removed."""
        with self._lock:
            pending, self._disposals = self._disposals, []
        for f in pending:
            f.result()

    def _dispose(self, entry: _Entry) -> None:
        """Stop and remove; never raises (a failure is logged: callers are holding
        other instances' waiters or are the reaper)."""
        log.info("stopping historical instance at %s", entry.lsn)
        try:
            if entry.instance is not None:
                entry.instance.remove()
        except Exception:
            log.exception("stopping the historical instance at %s failed", entry.lsn)
        finally:
            shutil.rmtree(entry.root, ignore_errors=True)

    # -- eviction ------------------------------------------------------------------
    def reap_idle(self) -> list[Lsn]:
        """Stop and remove instances idle longer than `idle_timeout`; returns their LSNs."""
        now = self.clock()
        with self._lock:
            victims = [e for e in self._entries.values()
                       if e.leases == 0 and e.ready.is_set()
                       and now - e.last_used >= self.idle_timeout]
            for v in victims:
                del self._entries[v.lsn]
        for v in victims:
            self._dispose(v)
        return [v.lsn for v in victims]

    def start_reaper(self, interval: float = 5.0) -> None:
        """Run `reap_idle` every `interval` seconds in a daemon thread until `stop_all`."""
        if self._reaper is not None:
            return
        self._stop_reaper.clear()

        def loop() -> None:
            while not self._stop_reaper.wait(interval):
                try:
                    self.reap_idle()
                except Exception:  # keep reaping; the error is logged
                    log.exception("reaping idle historical instances failed")

        self._reaper = threading.Thread(target=loop, name="strata-instance-reaper", daemon=True)
        self._reaper.start()

    def stop_all(self) -> None:
        """Stop the reaper, every instance, and remove their directories."""
        self._stop_reaper.set()
        if self._reaper is not None:
            self._reaper.join(timeout=30)
            self._reaper = None
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for e in entries:
            e.ready.wait(timeout=300)
            self._dispose(e)
        self.wait_disposed()

    # -- reporting -----------------------------------------------------------------
    def stats(self) -> list[InstanceStats]:
        """One row per running instance (for `strata status`), oldest LSN first."""
        now = self.clock()
        with self._lock:
            entries = [e for e in self._entries.values() if e.instance is not None]
        out = []
        for e in sorted(entries, key=lambda e: e.lsn):
            inst = e.instance
            assert inst is not None
            out.append(InstanceStats(
                lsn=e.lsn, port=inst.port, datadir=inst.datadir, size_bytes=inst.size_bytes(),
                idle_seconds=0.0 if e.leases else max(0.0, now - e.last_used), leases=e.leases,
                startup_seconds=inst.startup_seconds))
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, lsn: object) -> bool:
        with self._lock:
            return isinstance(lsn, int) and Lsn(lsn) in self._entries
