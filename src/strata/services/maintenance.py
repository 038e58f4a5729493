"""The maintenance service: compaction, image layers and garbage collection,
in a process of their own so they never cost ingest or the proxy their CPU.

What it is: ``python -m strata.services.maintenance``, run by the supervisor
(`strata.daemon`): `storage.maintenance.run_maintenance` over the home's store
(its pacing policy is in storage/FORMAT.md, section 7b), with the retention
window of ``strata up --retention``: a time (``7d``, ``12h``, ``30m``,
``90s``), history older than which is collected, the horizon being the point
the time map resolves ``now - window`` to; or a size of WAL (``10GB``,
``500MB``), kept behind the durable LSN. History below the horizon is removed
only once image layers at the horizon hold what reads there need (`storage.gc`).
Fed by: the store's manifest, the time map. Feeds: the store (commits through
its manifest protocol).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from strata.errors import ConfigError
from strata.home import HomeLayout
from strata.home.files import load_history_info
from strata.lsn import Lsn
from strata.pg.timestamp import datetime_to_timestamptz
from strata.reconstruct.reconstruct import reconstruct_value
from strata.services.process import die_with_parent, run_service
from strata.storage.config import StorageConfig
from strata.storage.maintenance import Maintainer, open_maintainer
from strata.timemap.timemap import TimeMap

_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.I)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb)\s*$", re.I)
_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_BYTES = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}


@dataclass(frozen=True, slots=True)
class Retention:
    """How much history to keep: a time window or a size of WAL (one of them)."""

    seconds: float | None = None
    wal_bytes: int | None = None

    @classmethod
    def parse(cls, text: str) -> Retention:
        """``7d``, ``12h``, ``30m``, ``90s``, ``2w`` or ``10GB``, ``500MB``...

        Raises: ConfigError naming the text."""
        if m := _TIME.match(text):
            return cls(seconds=float(m.group(1)) * _SECONDS[m.group(2).lower()])
        if m := _SIZE.match(text):
            return cls(wal_bytes=int(float(m.group(1)) * _BYTES[m.group(2).lower()]))
        raise ConfigError(f"retention {text!r} is neither a time (7d, 12h, 30m, 90s) nor a "
                          "size (10GB, 500MB)")

    def __str__(self) -> str:
        return f"{self.seconds:g} s" if self.seconds is not None else f"{self.wal_bytes} bytes of WAL"


def time_horizon(timemap: TimeMap, start: Lsn, seconds: float,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
                 ) -> Callable[[], int | None]:
    """The horizon for a time window: the point `now - seconds` resolves to (the end
    of the last commit before the first commit later than it), never below `start`."""
    def horizon() -> int | None:
        timemap.refresh()
        cut = now() - dt.timedelta(seconds=seconds)
        res = timemap.resolve_time(datetime_to_timestamptz(cut), history_start=start,
                                   history_start_time=None)
        if res.next_commit is None:
            return None  # nothing is older than the window yet, or the map is behind
        return int(res.lsn) if res.lsn > start else None
    return horizon


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="strata-maintenance")
    p.add_argument("--home", required=True)
    p.add_argument("--retention", default=None)
    args = p.parse_args(argv)
    die_with_parent()
    layout = HomeLayout(Path(args.home))
    retention = Retention.parse(args.retention) if args.retention else None
    config = StorageConfig.from_env(
        retention_lsn_distance=retention.wal_bytes if retention else None)
    horizon = None
    timemap: TimeMap | None = None
    if retention is not None and retention.seconds is not None:
        info = load_history_info(layout.history_file)
        if info is None:
            raise ConfigError(f"{layout.root} has no history yet")
        timemap = TimeMap.open(layout.timemap, readonly=True)
        horizon = time_horizon(timemap, info.start_lsn, retention.seconds)
    maintainers: list[Maintainer] = []
    stopping = threading.Event()

    def run() -> None:
        m = open_maintainer(layout.layers, reconstruct_value, config, horizon)
        maintainers.append(m)
        try:
            if not stopping.is_set():
                m.run()
        finally:
            m.store.close()

    def stop() -> None:
        stopping.set()
        for m in maintainers:
            m.stop()

    code = run_service("maintenance", run, stop)
    if timemap is not None:
        timemap.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
