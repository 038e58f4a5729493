"""TimestampTz conversions (strata.pg.timestamp): the one place they live."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from strata.pg.timestamp import (
    DT_NOBEGIN,
    DT_NOEND,
    POSTGRES_EPOCH_UNIX_SECONDS,
    datetime_to_timestamptz,
    timestamptz_now,
    timestamptz_to_datetime,
)


def test_round_trip_at_microsecond_precision_and_the_epoch() -> None:
    when = dt.datetime(2026, 11, 24, 16, 24, 51, 733203, tzinfo=dt.UTC)
    assert timestamptz_to_datetime(datetime_to_timestamptz(when)) == when
    assert datetime_to_timestamptz(dt.datetime(2000, 1, 1, tzinfo=dt.UTC)) == 0
    assert timestamptz_to_datetime(0) == dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    assert timestamptz_to_datetime(-1) == dt.datetime(1999, 12, 31, 23, 59, 59, 999999,
                                                      tzinfo=dt.UTC)


def test_other_time_zones_name_the_same_instant() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    assert datetime_to_timestamptz(dt.datetime(2000, 1, 1, 1, tzinfo=paris)) == 0


def test_infinities_map_to_the_ends_of_datetime() -> None:
    assert timestamptz_to_datetime(DT_NOEND) == dt.datetime.max.replace(tzinfo=dt.UTC)
    assert timestamptz_to_datetime(DT_NOBEGIN) == dt.datetime.min.replace(tzinfo=dt.UTC)


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        datetime_to_timestamptz(dt.datetime(2026, 1, 1))


def test_now_is_unix_time_moved_to_the_2000_epoch() -> None:
    before = time.time_ns() // 1000
    now = timestamptz_now()
    after = time.time_ns() // 1000
    assert POSTGRES_EPOCH_UNIX_SECONDS == 946_684_800
    assert before <= now + POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000 <= after
