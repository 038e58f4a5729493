"""`strata up --retention`: the window parses, and a time window becomes the LSN
the time map resolves `now - window` to."""

from __future__ import annotations

import datetime as dt

import pytest

from strata.errors import ConfigError
from strata.lsn import Lsn
from strata.pg.timestamp import datetime_to_timestamptz
from strata.services.maintenance import Retention, time_horizon
from strata.timemap.timemap import EndKind, TimeMap, TxEnd

T0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)


def test_retention_is_a_time_or_a_size() -> None:
    assert Retention.parse("7d") == Retention(seconds=7 * 86400)
    assert Retention.parse("12h").seconds == 43200
    assert Retention.parse("30m").seconds == 1800
    assert Retention.parse("1.5w").seconds == 1.5 * 604800
    assert Retention.parse("10GB") == Retention(wal_bytes=10 << 30)
    assert Retention.parse("500 mb").wal_bytes == 500 << 20
    for bad in ("7", "seven days", "-1d", "10 parsecs"):
        with pytest.raises(ConfigError, match="neither a time"):
            Retention.parse(bad)


def test_a_time_window_resolves_to_the_last_commit_before_it() -> None:
    tm = TimeMap(None)
    for i, start in enumerate((1000, 2000, 3000, 4000)):  # commits at T0 + 0, 1, 2, 3 h
        tm.append(TxEnd(Lsn(start), Lsn(start + 40),
                        datetime_to_timestamptz(T0 + dt.timedelta(hours=i)), 700 + i,
                        EndKind.COMMIT))
    now = T0 + dt.timedelta(hours=3, minutes=30)
    horizon = time_horizon(tm, Lsn(500), 2 * 3600, now=lambda: now)
    assert horizon() == 2040  # 01:30 -> the end of the commit at 01:00
    assert time_horizon(tm, Lsn(500), 5 * 3600, now=lambda: now)() is None  # all in window
    assert time_horizon(tm, Lsn(500), 60, now=lambda: now)() is None  # no later commit yet
