"""What the proxy needs from the rest of pgStrata to time travel.

What it is: the `HistoryProvider` protocol (implemented by
`strata.history_service.HistoryService`, over the time map, the page store
and the historical instance pool), the `ResolvedPoint` value it returns and
the `IngestProgress` it reports while a target waits for ingest.
Fed by: nothing here; an implementation is passed to `proxy.server`.
Feeds: `proxy.travel`, which calls the provider from a worker thread
(``asyncio.to_thread``) because `server_for` may materialise an instance and
take a long time, and a resolve may wait for ingest. Implementations must
therefore be thread-safe.
Owns: the contract below.

Contract
- `resolve_time(when, *, literal, timezone, wait, progress)`: `when` is the
  instant PostgreSQL's own ``timestamptz`` input produced from the client's
  literal on the session's server (its TimeZone and DateStyle), exact to the
  microsecond, as an aware UTC datetime. Returns the point
  ``recovery_target_time = when`` (inclusive) stops at. `literal` and
  `timezone` are for messages only.
  Raises: LsnOutOfRangeError (future, before history start, below retention)
  naming the nearest valid point in its message (and `.nearest`);
  IngestBehindError when ingest has not covered `when` within `wait`.
- `resolve_lsn(lsn, *, wait, progress)`: the state holding every record that
  ends at or before `lsn`. Raises: LsnOutOfRangeError past what the primary
  has written or before history; IngestBehindError when ingest has not
  reached `lsn` within `wait`.
- Waiting (both resolves): a target already covered by ingested history
  answers at once, without waiting (a time T is covered once a commit or
  abort later than T is ingested, or ingest has reached the primary's WAL
  position as of the request; an LSN once ingest has reached it). Otherwise
  the call waits at most `wait` seconds for ingest (0: it raises
  IngestBehindError at once, SQLSTATE 55000), and while it waits it calls
  `progress` (if given) from the waiting thread when the wait starts and
  about every `PROGRESS_INTERVAL` seconds after, with an `IngestProgress`.
  `progress` must be quick and thread-safe (the proxy hands it to its event
  loop).
- `server_for(point, dbname)`: ``(host, port)`` of a read-only historical
  server at ``point.lsn`` that accepts connections from the proxy for any
  role without a password (the proxy never holds passwords; the client
  authenticated against the primary already). `host` may be a socket
  directory (it starts with '/', PostgreSQL's convention: the server listens
  on ``<host>/.s.PGSQL.<port>``) or a TCP host. The proxy never shows either
  to a client. Raises: InstanceError when it cannot be started.
- `may_time_travel(user)`: an extra policy hook; the proxy also requires the
  role to be a superuser or a member of ``strata_time_travel`` on the primary.
- `commit_of_xid(xid)`: the point just after the commit of transaction `xid`
  (its commit record included) and its time, or None when history holds no
  commit of it (for messages: "the role exists from this point on").
- `release_server(point)` (optional): `server_for` may lease the server to
  the session; the proxy calls this once the session leaves it (another
  point, RESET, disconnect), so a pooled server is never stopped under a
  session that uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from strata.lsn import Lsn

PROGRESS_INTERVAL = 1.0  # seconds between two progress reports of a waiting resolve


@dataclass(frozen=True, slots=True)
class ResolvedPoint:
    """A point in history: the LSN and the last transaction commit it includes
    (None when no commit precedes it in the retained history)."""

    lsn: Lsn
    last_commit_xid: int | None = None
    last_commit_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class IngestProgress:
    """Where ingest stands while a resolve waits for it: ingest is at
    `ingested_lsn`, it must reach `target_lsn`, the primary is at
    `primary_lsn`; `eta` is the estimated seconds to go (None until a rate is
    known)."""

    ingested_lsn: Lsn
    target_lsn: Lsn
    primary_lsn: Lsn
    eta: float | None = None


Progress = Callable[[IngestProgress], None]


class HistoryProvider(Protocol):
    def resolve_time(self, when: datetime, *, literal: str, timezone: str, wait: float,
                     progress: Progress | None = None) -> ResolvedPoint: ...

    def resolve_lsn(self, lsn: Lsn, *, wait: float,
                    progress: Progress | None = None) -> ResolvedPoint: ...

    def server_for(self, point: ResolvedPoint, dbname: str) -> tuple[str, int]: ...

    def may_time_travel(self, user: str) -> bool: ...

    def commit_of_xid(self, xid: int) -> ResolvedPoint | None: ...
