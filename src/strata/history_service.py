"""`HistoryService`: the proxy's `HistoryProvider` over the time map, the page
store and the pool of historical instances.

What it is: the answer to "where is T / X, and which server shows it".
Fed by: the time map and page store (written by ingest), the primary (its
current WAL position, so "now" is known). Feeds: the proxy (and `strata
query`). Owns: the instance pool's factory (materialise from the store at X,
then start a read-only server) and the rules below.

Rules
- A time T resolves to the end of the last commit/abort before the first
  commit/abort later than T, in WAL order (`TimeMap.resolve_time`; the
  transactions visible are exactly those ``recovery_target_time = T``
  shows). When the time map already holds a commit later than T, that answer
  is final and given at once, even while ingest lags. Otherwise a commit at or
  before T could still be in WAL not ingested yet: the service waits for
  ingest to reach the primary's WAL position as of the request (or a commit
  later than T to appear), at most the caller's `wait` (default
  `catchup_timeout`) and reporting progress (proxy.history's contract), then
  answers, or refuses (55000) if it did not get there.
- T later than the primary's clock: error (the future is not history yet).
- T before history starts, or below the retention horizon: error naming the
  oldest point one can travel to.
- An LSN X: the state holding every record ending at or before X. X must lie
  in [history start, ingested]; X above the ingested position is waited for
  (as above; 55000 when the wait is over) when the primary has already
  written it, else refused naming the newest point.
- Thread-safe: called from proxy worker threads.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from strata.errors import IngestBehindError, LsnOutOfRangeError
from strata.historical.pool import InstanceFactory, InstancePool
from strata.lsn import Lsn
from strata.pg.timestamp import datetime_to_timestamptz
from strata.proxy.history import PROGRESS_INTERVAL, IngestProgress, Progress, ResolvedPoint
from strata.timemap.timemap import TimeMap, TimeResolution

log = logging.getLogger(__name__)


class Watermarks(Protocol):
    """Where history stands: the writer's `PageStore` in one process, or the
    proxy service's view of the ingest service (`services.proxy`)."""

    @property
    def ingested_lsn(self) -> Lsn: ...

    @property
    def retention_lsn(self) -> Lsn: ...


class HistoryService:
    def __init__(self, store: Watermarks, timemap: TimeMap, *, history_start: Lsn,
                 history_start_time: dt.datetime | None, instances_root: Path,
                 primary_lsn: Callable[[], Lsn], factory: InstanceFactory,
                 primary_now: Callable[[], dt.datetime] | None = None,
                 max_instances: int = 4, idle_timeout: float = 300.0,
                 catchup_timeout: float = 30.0) -> None:
        self.store = store
        self.timemap = timemap
        self.history_start = Lsn(history_start)
        self.history_start_time = history_start_time
        self.primary_lsn = primary_lsn
        self.primary_now = primary_now or (lambda: dt.datetime.now(dt.UTC))
        self.catchup_timeout = catchup_timeout
        # `factory`: `historical.modes.make_factory(...)` (lazy / materialize / auto)
        self.pool = InstancePool(instances_root, factory,
                                 max_running=max_instances, idle_timeout=idle_timeout)

    # -- the window -------------------------------------------------------------------
    @property
    def oldest_lsn(self) -> Lsn:
        return Lsn(max(self.history_start, self.store.retention_lsn))

    def oldest_time(self) -> dt.datetime | None:
        """The earliest time one can travel to: history's start (the import), or
        the last commit at the retention horizon once GC has moved it."""
        if self.oldest_lsn > self.history_start:
            at = self.timemap.last_at_or_before(self.oldest_lsn)
            if at is not None:
                return at.time
        return self.history_start_time

    def _wait_ingested(self, covered: Callable[[Lsn], bool], target: Lsn, wait: float,
                       progress: Progress | None) -> Lsn:
        """Wait at most `wait` s until `covered(ingested)`, reporting progress
        towards `target` every PROGRESS_INTERVAL; returns the ingested LSN."""
        start = time.monotonic()
        first = self.store.ingested_lsn
        next_report = start
        while True:
            ingested = self.store.ingested_lsn
            now = time.monotonic()
            if covered(ingested) or now >= start + wait:
                return ingested
            if progress is not None and now >= next_report:
                rate = (ingested - first) / (now - start) if ingested > first else 0.0
                eta = (target - ingested) / rate if rate > 0 else None
                progress(IngestProgress(ingested, target, self.primary_lsn(), eta))
                next_report = now + PROGRESS_INTERVAL
            time.sleep(min(0.02, start + wait - now))

    def _point(self, lsn: Lsn) -> ResolvedPoint:
        last = self.timemap.last_at_or_before(lsn)
        return ResolvedPoint(lsn, last.xid if last else None, last.time if last else None)

    # -- HistoryProvider ----------------------------------------------------------------
    def resolve_time(self, when: dt.datetime, *, literal: str = "", timezone: str = "UTC",
                     wait: float | None = None, progress: Progress | None = None
                     ) -> ResolvedPoint:
        def local(t: dt.datetime) -> str:
            """A time as the session sees it (its TimeZone), not in UTC."""
            try:
                return t.astimezone(ZoneInfo(timezone)).isoformat(sep=" ")
            except (ZoneInfoNotFoundError, ValueError):
                return t.isoformat(sep=" ")

        shown = literal or local(when)
        wait = self.catchup_timeout if wait is None else wait
        now = self.primary_now()
        if when > now:
            raise LsnOutOfRangeError(
                f"time {shown} is in the future: the newest point is now ({local(now)})",
                nearest=now)
        oldest = self.oldest_time()
        ts = datetime_to_timestamptz(when)
        start_ts = datetime_to_timestamptz(oldest) if oldest is not None else None

        def resolve() -> TimeResolution:
            try:
                self.timemap.refresh()  # a reader beside the ingest process: follow it
                return self.timemap.resolve_time(ts, history_start=self.oldest_lsn,
                                                 history_start_time=start_ts)
            except LsnOutOfRangeError as e:
                raise LsnOutOfRangeError(
                    f"time {shown} is before history starts: the oldest point is "
                    f"{local(oldest) if oldest else '?'} (LSN {self.oldest_lsn})",
                    nearest=oldest) from e

        res = resolve()
        if res.next_commit is None:
            # every commit at or before `when` is in WAL the primary has written by now
            target = self.primary_lsn()
            ingested = self._wait_ingested(
                lambda i: i >= target or resolve().next_commit is not None, target, wait,
                progress)
            res = resolve()
            if res.next_commit is None and ingested < target:
                raise IngestBehindError(
                    f"cannot resolve time {shown} yet: ingest is at LSN {ingested}, the "
                    f"primary at {target} ({target - ingested} bytes behind after waiting "
                    f"{wait:g} s); try again", nearest=ingested)
        return self._point(Lsn(max(res.lsn, self.oldest_lsn)))

    def resolve_lsn(self, lsn: Lsn, *, wait: float | None = None,
                    progress: Progress | None = None) -> ResolvedPoint:
        lsn = Lsn(lsn)
        wait = self.catchup_timeout if wait is None else wait
        if lsn < self.oldest_lsn:
            raise LsnOutOfRangeError(
                f"LSN {lsn} is before history starts: the oldest point is LSN {self.oldest_lsn}",
                nearest=self.oldest_lsn)
        ingested = self.store.ingested_lsn
        if lsn > ingested:
            if lsn > self.primary_lsn():
                raise LsnOutOfRangeError(
                    f"LSN {lsn} is past the newest point in history (LSN {ingested})",
                    nearest=ingested)
            ingested = self._wait_ingested(lambda i: i >= lsn, lsn, wait, progress)
            if lsn > ingested:
                raise IngestBehindError(
                    f"LSN {lsn} is not ingested yet: ingest is at LSN {ingested} "
                    f"({lsn - ingested} bytes behind after waiting {wait:g} s); try again",
                    nearest=ingested)
        return self._point(lsn)

    def commit_of_xid(self, xid: int) -> ResolvedPoint | None:
        """The point just after the last commit of `xid` in history (xids wrap:
        the newest one is the transaction that exists now), or None."""
        self.timemap.refresh()
        found = self.timemap.last_commit_of_xid(xid)
        return None if found is None else ResolvedPoint(found.end_lsn, found.xid, found.time)

    def server_for(self, point: ResolvedPoint, dbname: str) -> tuple[str, int]:
        """A running server at the point, leased to the caller until
        `release_server` (the pool never evicts a leased server)."""
        inst = self.pool.acquire(point.lsn)
        return inst.host, inst.port

    def release_server(self, point: ResolvedPoint) -> None:
        self.pool.release(point.lsn)

    def may_time_travel(self, user: str) -> bool:
        return True

    def close(self) -> None:
        self.pool.stop_all()

