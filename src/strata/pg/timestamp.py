"""PostgreSQL's ``TimestampTz``: int64 microseconds since 2000-01-01 00:00 UTC
(src/include/datatype/timestamp.h, src/backend/utils/adt/timestamp.c).

What it is: the one conversion between TimestampTz and Python's aware
`datetime` (and Unix time), with PostgreSQL's ``-infinity`` / ``infinity``.
Fed by: WAL record parsers (commit, abort, prepare, restore point times), the
time map and the history service (times to resolve), the replication
receiver (its status messages carry "now"). Feeds: them. Pure, no I/O.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # POSTGRES_EPOCH_JDATE
POSTGRES_EPOCH_UNIX_SECONDS = 946_684_800  # 2000-01-01 00:00 UTC in Unix time
DT_NOBEGIN = -(1 << 63)  # -infinity
DT_NOEND = (1 << 63) - 1  # infinity


def timestamptz_to_datetime(ts: int) -> datetime:
    """TimestampTz -> aware datetime (UTC). ``-infinity`` / ``infinity`` map to
    `datetime.min` / `datetime.max` (UTC)."""
    if ts == DT_NOBEGIN:
        return datetime.min.replace(tzinfo=UTC)
    if ts == DT_NOEND:
        return datetime.max.replace(tzinfo=UTC)
    return POSTGRES_EPOCH + timedelta(microseconds=ts)


def datetime_to_timestamptz(when: datetime) -> int:
    """Aware datetime -> TimestampTz (exact to the microsecond).

    Raises: ValueError for a naive datetime: without a time zone it names no
    instant (it could be anyone's wall clock)."""
    if when.tzinfo is None:
        raise ValueError(f"{when.isoformat()} has no time zone: it names no point in time")
    delta = when - POSTGRES_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def timestamptz_now() -> int:
    """Now as a TimestampTz (GetCurrentTimestamp)."""
    return time.time_ns() // 1000 - POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000
