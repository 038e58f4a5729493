"""The proxy's listening socket and how to run it.

What it is: `ProxyServer` (accepts clients, one `Session` each), `serve` (a
blocking entry that runs the server on an event loop of its own until told
to stop: the main of a proxy process) and `ProxyThread` (`serve` in a thread
of the calling process, for tests, benchmarks and synchronous callers).
Fed by: configuration (`ProxyConfig`) and a `HistoryProvider`.
Feeds: `proxy.session`.
Owns: the listening socket, the TLS context (when a certificate and key are
configured; else SSLRequest is answered 'N'), the cancel-key registry shared
by all sessions, and the choice of event loop: uvloop when installed (it
halves the proxy's CPU per relayed transaction: see bench/bench_proxy.py),
else asyncio's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from strata.proxy.backend import READ_SIZE, RelayProtocol
from strata.proxy.cancel import CancelRegistry
from strata.proxy.context import ProxyContext
from strata.proxy.history import HistoryProvider
from strata.proxy.session import Session

EVENT_LOOPS = ("auto", "uvloop", "asyncio")


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Where the proxy listens and where the primary is (`primary_host` may be
    a socket directory)."""

    primary_host: str
    primary_port: int
    listen_host: str = "127.0.0.1"
    listen_port: int = 0  # 0: any free port (see ProxyServer.port)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    connect_timeout: float = 60.0
    event_loop: str = "auto"  # one of EVENT_LOOPS
    restorer: Callable[[str, str, str, Callable[[str], None]], list[str]] | None = None


class StopEvent(Protocol):
    """threading.Event or multiprocessing.Event."""

    def wait(self, timeout: float | None = None) -> bool: ...

    def set(self) -> None: ...

    def is_set(self) -> bool: ...


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """An event loop of the kind asked for ("auto": uvloop when installed)."""
    if kind not in EVENT_LOOPS:
        raise ValueError(f"unknown event loop {kind!r} (one of {', '.join(EVENT_LOOPS)})")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


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
                                self.registry, ssl_ctx, config.connect_timeout, config.restorer)
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
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await Session(self.ctx, reader, writer).run()
        except asyncio.CancelledError:
            # the server is closing; end quietly (asyncio would log a cancelled
            # connection task as an error)
            pass
        finally:
            self._sessions.discard(task)

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


def serve(config: ProxyConfig, provider: HistoryProvider, *,
          ready: Callable[[int], None] | None = None, stop: StopEvent | None = None) -> None:
    """Run the proxy on an event loop of its own until `stop` is set (or, in
    the main thread, SIGTERM/SIGINT arrives); then close every session and
    return. `ready(port)` is called once it listens.

    Raises: OSError when it cannot listen (before `ready`).
    """
    loop = new_event_loop(config.event_loop)
    try:
        loop.run_until_complete(_serve(config, provider, ready, stop))
    finally:
        loop.close()


async def _serve(config: ProxyConfig, provider: HistoryProvider,
                 ready: Callable[[int], None] | None, stop: StopEvent | None) -> None:
    server = ProxyServer(config, provider)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
    if stop is not None:
        def wait_for_stop() -> None:
            stop.wait()
            with contextlib.suppress(RuntimeError):  # the loop is gone already
                loop.call_soon_threadsafe(stopping.set)

        threading.Thread(target=wait_for_stop, name="strata-proxy-stop", daemon=True).start()
    if ready is not None:
        ready(server.port)
    try:
        await stopping.wait()
    finally:
        await server.close()
        if stop is not None:
            stop.set()  # lets the waiting thread end


class ProxyThread:
    """`serve` in a daemon thread of this process.

    Use as a context manager; `port` is valid once entered, and `loop` is the
    proxy's event loop.
    """

    def __init__(self, config: ProxyConfig, provider: HistoryProvider) -> None:
        self.config = config
        self.provider = provider
        self.loop: asyncio.AbstractEventLoop | None = None
        self._port: int | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="strata-proxy", daemon=True)

    def _run(self) -> None:
        try:
            serve(self.config, self.provider, ready=self._on_ready, stop=self._stop)
        except BaseException as e:
            self._error = e
        finally:
            self._ready.set()

    def _on_ready(self, port: int) -> None:
        self._port = port
        self.loop = asyncio.get_running_loop()
        self._ready.set()

    @property
    def port(self) -> int:
        assert self._port is not None, "proxy not started"
        return self._port

    def start(self) -> ProxyThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

