"""What the proxy needs from the rest of pgStrata to time travel.

What it is: the `HistoryProvider` protocol (implemented later by the daemon,
over the time map, the page store and the historical instance pool) and the
`ResolvedPoint` value it returns.
Fed by: nothing here; an implementation is passed to `proxy.server.ProxyServer`.
Feeds: `proxy.session`, which calls the provider from a worker thread
(``asyncio.to_thread``) because `server_for` may materialise an instance and
take a long time. Implementations must therefore be thread-safe.
Owns: the contract below.

Contract
- `resolve_time(when, literal=..., timezone=...)`: `when` is the instant
  PostgreSQL's own ``timestamptz`` input produced from the client's literal on
  the session's server (its TimeZone and DateStyle), exact to the microsecond,
  as an aware UTC datetime. Returns the point ``recovery_target_time = when``
  (inclusive) would stop at. `literal` and `timezone` are for messages only.
  Raises: LsnOutOfRangeError (future, before history start, below retention)
  naming the nearest valid point in its message (and `.nearest`).
- `resolve_lsn(lsn)`: the state holding every record that ends at or before
  `lsn`. Raises: LsnOutOfRangeError past what is ingested or before history.
- `server_for(point, dbname)`: (host, port) of a read-only historical server at
  ``point.lsn`` that accepts connections from the proxy for any role without a
  password (``trust`` for the proxy's address: the proxy never holds
  passwords; the client authenticated against the primary already).
  Raises: InstanceError when it cannot be started.
- `may_time_travel(user)`: an extra policy hook; the proxy also requires the
  role to be a superuser or a member of ``strata_time_travel`` on the primary.
- `release_server(point)` (optional): `server_for` may lease the server to
  the session; the proxy calls this once the session leaves it (another
  point, RESET, disconnect), so a pooled server is never stopped under a
  session that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from strata.lsn import Lsn


@dataclass(frozen=True, slots=True)
class ResolvedPoint:
    """A point in history: the LSN and the last transaction commit it includes
    (None when no commit precedes it in the retained history)."""

    lsn: Lsn
    last_commit_xid: int | None = None
    last_commit_time: datetime | None = None


class HistoryProvider(Protocol):
    def resolve_time(self, when: datetime, *, literal: str, timezone: str) -> ResolvedPoint: ...

    def resolve_lsn(self, lsn: Lsn) -> ResolvedPoint: ...

    def server_for(self, point: ResolvedPoint, dbname: str) -> tuple[str, int]: ...

    def may_time_travel(self, user: str) -> bool: ...
