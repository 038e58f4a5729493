"""Cancel keys: the proxy's own BackendKeyData, and cancel requests to servers.

What it is: `CancelRegistry` (the proxy's BackendKeyData values -> the
sessions they belong to) and `send_cancel` (a CancelRequest to a server, by
TCP or on its unix socket).
Fed by: `proxy.session` (registers each session; forwards a client's
CancelRequest to the server that runs the session's query now).
Feeds: the servers.
Owns: the key space of the proxy's cancel keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from strata.proxy import messages as m
from strata.proxy.backend import socket_path


class CancelTarget:
    """Anything a cancel key leads to (a session)."""

    async def cancel(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class CancelRegistry:
    """The proxy's BackendKeyData values -> sessions.

    Invariant: keys are unique while registered; a key is removed when its
    session ends, so a stale cancel request is ignored, as PostgreSQL does.
    """

    def __init__(self) -> None:
        self._by_pid: dict[int, tuple[bytes, CancelTarget]] = {}

    def register(self, target: CancelTarget, secret_len: int) -> tuple[int, bytes]:
        while True:
            pid = secrets.randbits(31) | 1
            if pid not in self._by_pid:
                break
        secret = secrets.token_bytes(secret_len)
        self._by_pid[pid] = (secret, target)
        return pid, secret

    def unregister(self, pid: int) -> None:
        self._by_pid.pop(pid, None)

    def lookup(self, pid: int, secret: bytes) -> CancelTarget | None:
        entry = self._by_pid.get(pid)
        if entry is None or not secrets.compare_digest(entry[0], secret):
            return None
        return entry[1]


async def send_cancel(host: str, port: int, pid: int, secret: bytes) -> None:
    """Deliver a CancelRequest to a server (fire and forget, as libpq does);
    `host` may be a socket directory."""
    path = socket_path(host, port)
    try:
        if path is not None:
            connect = asyncio.open_unix_connection(path)
        else:
            connect = asyncio.open_connection(host, port)
        _, writer = await asyncio.wait_for(connect, 10)
    except (TimeoutError, OSError):
        return
    try:
        writer.write(m.CancelRequest(pid, secret).encode())
        await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
