"""The proxy's listening socket: asyncio server on 127.0.0.1:PORT.

What it is: `ProxyServer` (accepts clients, one `Session` each) and
`ProxyThread` (the same server on an event loop of its own thread, for
tests, benchmarks and synchronous callers such as the CLI).
Fed by: configuration (`ProxyConfig`) and a `HistoryProvider`.
Feeds: `proxy.session`.
Owns: the listening socket, the TLS context (when a certificate and key are
configured; else SSLRequest is answered 'N') and the cancel-key registry
shared by all sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from strata.proxy.history import HistoryProvider
from strata.proxy.routing import READ_SIZE, CancelRegistry, RelayProtocol
from strata.proxy.session import ProxyContext, Session


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Where the proxy listens and where the primary is."""

    primary_host: str
    primary_port: int
    listen_host: str = "127.0.0.1"
    listen_port: int = 0  # 0: any free port (see ProxyServer.port)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    connect_timeout: float = 60.0


class ProxyServer:
    """Accepts client connections and runs a `Session` for each."""

    def __init__(self, config: ProxyConfig, provider: HistoryProvider) -> None:
        self.config = config
        self.registry = CancelRegistry()
        ssl_ctx: ssl.SSLContext | None = None
        if config.tls_cert is not None:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(str(config.tls_cert),
                                    str(config.tls_key) if config.tls_key else None)
        self.ctx = ProxyContext(config.primary_host, config.primary_port, provider,
                                self.registry, ssl_ctx, config.connect_timeout)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> RelayProtocol:
            # asyncio.start_server, but with a protocol whose bytes the session
            # can take over once the client is authenticated
            return RelayProtocol(asyncio.StreamReader(limit=READ_SIZE, loop=loop), self._accept)

        self._server = await loop.create_server(
            factory, self.config.listen_host, self.config.listen_port, reuse_address=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                import socket

                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await Session(self.ctx, reader, writer).run()
        except asyncio.CancelledError:
            # the server is closing; end quietly (asyncio would log a cancelled
            # connection task as an error)
            pass
        finally:
            self._sessions.discard(task)

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._sessions):
            t.cancel()
        if self._sessions:
            await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)


class ProxyThread:
    """A `ProxyServer` running on its own event loop in a daemon thread.

    Use as a context manager; `port` is valid once entered.
    """

    def __init__(self, config: ProxyConfig, provider: HistoryProvider) -> None:
        self.server = ProxyServer(config, provider)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="strata-proxy", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as e:
            self._error = e
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.server.close())
        self.loop.close()

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> ProxyThread:
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
