"""What every session of one proxy shares.

What it is: `ProxyContext` (where the primary is, the history provider, the
cancel-key registry, the TLS context, the connect timeout, the restorer).
Fed by: `proxy.server`, which builds one per server.
Feeds: `proxy.session` and `proxy.travel`.
Owns: nothing; a value.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass

from strata.proxy.cancel import CancelRegistry
from strata.proxy.history import HistoryProvider


@dataclass(frozen=True, slots=True)
class ProxyContext:
    """What every session shares (built by `proxy.server.ProxyServer`)."""

    primary_host: str
    primary_port: int
    provider: HistoryProvider
    registry: CancelRegistry
    ssl_context: ssl.SSLContext | None = None
    connect_timeout: float = 60.0
    # restorer(statement text, database, session role, notice) -> report lines:
    # runs CALL strata.restore_* (the daemon gives restore.sqlcall.SqlRestorer)
    restorer: Callable[[str, str, str, Callable[[str], None]], list[str]] | None = None
