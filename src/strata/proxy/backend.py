"""Server connections of a session: the asyncio side of `machine.ServerState`.

What it is: `Backend` (one connection to the primary or to a historical
server: its transport, its `ServerState`, its real cancel key, the proxy's
own queries on it), `connect_server` (TCP, or a unix socket when the host is
a directory: PostgreSQL's convention, the socket being
``<dir>/.s.PGSQL.<port>``), `open_trusted` (a session that needs no
password, on a historical server) and `RelayProtocol`, the protocol of every
proxy connection: it hands received bytes to a callback once the session
relays (to a StreamReader before, for startup and authentication) and
reports flow control both ways.
Fed by: `proxy.session` (opens backends, relays through them) and
`proxy.travel` (historical backends, internal queries).
Feeds: the client (relayed server bytes, written in the transport's data
callback: no task, no await per chunk) and the session (idle signals, the
replies of its own queries).
Owns: the connections. A server's bytes go to the client through
`ServerState.feed`; the server is paused while the client's write buffer is
over `HIGH_WATER` (see `proxy.session`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from strata.errors import InstanceError, ProtocolError
from strata.proxy import framing
from strata.proxy import messages as m
from strata.proxy.machine import EXP_SYNC, Expect, ServerState

log = logging.getLogger(__name__)

READ_SIZE = 1 << 18
HIGH_WATER = 1 << 20  # bytes queued to a peer before its source is paused
# Statement and portal name of the proxy's own queries.
INTERNAL_NAME = "__strata_internal__"


def socket_path(host: str, port: int) -> str | None:
    """The unix socket a (host, port) names, PostgreSQL's way, or None for TCP."""
    return f"{host.rstrip('/')}/.s.PGSQL.{port}" if host.startswith("/") else None


class RelayProtocol(asyncio.StreamReaderProtocol):
    """A stream protocol whose received bytes go to `on_data` once set (the
    relay), and to the StreamReader before (startup and authentication).
    `on_flow(True/False)` is told when the peer's write buffer goes over the
    high-water mark and back. Used for server and client connections alike."""

    def __init__(self, reader: asyncio.StreamReader,
                 client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                               Any] | None = None) -> None:
        super().__init__(reader, client_connected_cb)
        self.on_data: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self.on_flow: Callable[[bool], None] | None = None

    def data_received(self, data: bytes) -> None:
        if self.on_data is not None:
            self.on_data(data)
        else:
            super().data_received(data)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.on_flow is not None:
            self.on_flow(True)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.on_flow is not None:
            self.on_flow(False)

    def eof_received(self) -> bool | None:
        keep_open = super().eof_received()
        if self.on_data is not None:
            # Relaying, nobody reads the StreamReader: a peer that closed its side
            # is gone (PostgreSQL clients and servers never half-close). Closing
            # reports the loss (connection_lost), so the other side is closed too
            # instead of waiting forever (a client killed inside COPY FROM).
            return False
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        cb, self.on_lost = self.on_lost, None
        if cb is not None:
            cb()


def unreachable(host: str, port: int, e: BaseException) -> str:
    """What a client is told when `connect_server` failed with `e` (a unix socket is
    named by its port, not its directory)."""
    where = f"its unix socket (port {port})" if socket_path(host, port) else f"{host}:{port}"
    why = ("no answer within the connect timeout" if isinstance(e, TimeoutError)
           else getattr(e, "strerror", None) or str(e) or type(e).__name__)
    return f"the primary server is not reachable at {where}: {why}"


async def connect_server(host: str, port: int, timeout: float
                         ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, RelayProtocol]:
    """Open a connection to a server (TCP, or its unix socket when `host` is a
    directory) with a `RelayProtocol`.
    Raises: OSError, TimeoutError."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_SIZE, loop=loop)
    protocol = RelayProtocol(reader)
    path = socket_path(host, port)
    if path is not None:
        connect = loop.create_unix_connection(lambda: protocol, path)
    else:
        connect = loop.create_connection(lambda: protocol, host, port)
    transport, _ = await asyncio.wait_for(connect, timeout)
    transport.set_write_buffer_limits(high=HIGH_WATER)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer, protocol


@dataclass(frozen=True, slots=True)
class InternalResult:
    """Outcome of a proxy-internal query: text rows, command tag, or the error."""

    rows: list[list[bytes | None]]
    tag: str | None
    error: dict[str, str] | None


class StartupRefused(InstanceError):
    """A historical server refused the session; `fields` is its ErrorResponse."""

    def __init__(self, message: str, fields: dict[str, str]) -> None:
        super().__init__(message)
        self.fields = fields


@dataclass(slots=True, eq=False)
class Backend:
    """One server connection of a session."""

    role: str  # "live" or "historical"
    host: str
    port: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    dbname: str
    state: ServerState = field(default_factory=ServerState)
    framer: framing.Framer = field(default_factory=framing.Framer)  # startup only
    pid: int = 0
    secret: bytes = b""
    protocol: RelayProtocol | None = None
    idle_waiters: list[asyncio.Future[None]] = field(default_factory=list)
    segments: list[asyncio.Future[tuple[str, bool]]] = field(default_factory=list)
    _internal: asyncio.Queue[m.Message] | None = None
    _client_write: Callable[[bytes], object] | None = None
    closed: bool = False

    @property
    def status(self) -> str:
        """Transaction status from the server's last ReadyForQuery."""
        return self.state.status

    def write(self, data: bytes) -> None:
        self.writer.transport.write(data)

    def pause_reading(self) -> None:
        if not self.closed:
            cast(asyncio.Transport, self.writer.transport).pause_reading()

    def resume_reading(self) -> None:
        if not self.closed and not self.writer.transport.is_closing():
            cast(asyncio.Transport, self.writer.transport).resume_reading()

    # -- relaying ------------------------------------------------------------------------
    def start_relay(self, client_write: Callable[[bytes], object], first: bytes,
                    on_lost: Callable[[], None], on_flow: Callable[[bool], None]) -> None:
        """From now on relay this server's bytes through `state` to
        `client_write` as they arrive (in the transport's callback). `first`:
        bytes read during startup that belong to the relay. `on_lost` runs if
        the server closes the connection (not when the proxy closes it);
        `on_flow(paused)` when this server's write buffer fills and drains."""
        assert self.protocol is not None
        self._client_write = client_write

        def lost() -> None:
            was_closed = self.closed
            self.closed = True
            self.fail_waiters()
            if not was_closed:
                on_lost()

        if first:
            self._on_data(first)
        self.protocol.on_lost = lost
        self.protocol.on_flow = on_flow
        self.protocol.on_data = self._on_data
        if self.writer.transport.is_closing():
            lost()

    def _on_data(self, data: bytes) -> None:
        try:
            out = self.state.feed(data)
        except Exception:
            log.exception("relay from the %s server failed", self.role)
            self.writer.transport.abort()
            return
        if out:
            assert self._client_write is not None
            self._client_write(out)
        # after the write: whoever waits for idleness writes to the client next
        if self.idle_waiters and self.state.idle:
            waiters, self.idle_waiters = self.idle_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def wait_idle(self) -> None:
        """Flush the server's output and wait until it answered everything sent."""
        if self.state.idle:
            return
        if self.state.unsynced:
            self.write(m.encode_flush())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.idle_waiters.append(fut)
        await fut

    def fail_waiters(self) -> None:
        err = ConnectionError(f"the {self.role} server closed the connection")
        waiters: list[asyncio.Future[Any]] = [*self.idle_waiters, *self.segments]
        for w in waiters:
            if not w.done():
                w.set_exception(err)
        self.idle_waiters, self.segments = [], []
        self.state.reset()

    # -- the proxy's own statements ---------------------------------------------------
    async def run_segment(self, text: str) -> tuple[str, bool]:
        """Run one statement of a split simple-Query string, relaying its results
        but not its ReadyForQuery. Returns (status, whether it failed)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[str, bool]] = loop.create_future()

        def done(status: str, errored: bool) -> None:
            if not fut.done():
                fut.set_result((status, errored))

        self.state.push(Expect(EXP_SYNC, hide_ready=True, done=done))
        self.segments.append(fut)  # failed if the server goes
        self.write(m.encode_query(text))
        try:
            return await fut
        finally:
            if fut in self.segments:
                self.segments.remove(fut)

    async def _next_internal(self, timeout: float = 120.0) -> m.Message:
        assert self._internal is not None
        return await asyncio.wait_for(self._internal.get(), timeout)

    def _begin_internal(self) -> None:
        q: asyncio.Queue[m.Message] = asyncio.Queue()
        self._internal = q
        self.state.internal = q.put_nowait

    def _end_internal(self) -> None:
        self._internal = None
        self.state.internal = None

    async def query_internal(self, sql: str, params: Sequence[str | None] = (), *,
                             in_batch: bool,
                             forward: Callable[[bytes], object] | None = None) -> InternalResult:
        """Run one statement for the proxy itself; its results never reach the client.

        Requires: the server answered everything sent so far (`wait_idle`).
        In a batch (`in_batch`) no Sync is sent, so the client's implicit
        transaction goes on, and an error leaves the server skipping to the
        client's Sync, exactly as the client's own error would. Notices and
        notifications are passed to `forward` (encoded) when given.
        Raises: ConnectionError, TimeoutError.
        """
        if self.closed:
            raise ConnectionError(f"the {self.role} server connection is closed")
        self._begin_internal()
        try:
            self.write(b"".join((
                m.encode_close("S", INTERNAL_NAME),
                m.encode_parse(INTERNAL_NAME, sql),
                m.encode_bind(INTERNAL_NAME, INTERNAL_NAME, params),
                m.encode_execute(INTERNAL_NAME),
                m.encode_close("P", INTERNAL_NAME),
                m.encode_close("S", INTERNAL_NAME),
                m.encode_flush() if in_batch else m.encode_sync(),
            )))
            if in_batch:
                self.state.unsynced = True
            return await self._collect(in_batch, forward)
        finally:
            self._end_internal()

    async def _collect(self, in_batch: bool,
                       forward: Callable[[bytes], object] | None) -> InternalResult:
        rows: list[list[bytes | None]] = []
        tag: str | None = None
        error: dict[str, str] | None = None
        closes = 0
        while True:
            msg = await self._next_internal()
            t = msg.tag
            if t == "D":
                rows.append(m.parse_data_row(msg.body))
            elif t == "C":
                tag = m.parse_command_complete(msg.body)
            elif t == "E":
                error = m.parse_error_fields(msg.body)
                if in_batch:
                    self.state.skipping = True
                    break
            elif t == "3":
                closes += 1
                if in_batch and closes == 3:  # Close, ..., Close portal, Close statement
                    break
            elif t == "Z":
                self.state.status = m.parse_ready_for_query(msg.body)
                break
            elif t in "NA" and forward is not None:
                forward(msg.encode())
        return InternalResult(rows, tag, error)

    async def sync_internal(self) -> None:
        """End the batch the server is in (commits its implicit transaction)."""
        self._begin_internal()
        try:
            self.write(m.encode_sync())
            while True:
                msg = await self._next_internal()
                if msg.tag == "Z":
                    st = self.state
                    st.status = m.parse_ready_for_query(msg.body)
                    st.skipping = False
                    st.unsynced = False
                    return
        finally:
            self._end_internal()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.write(m.encode_terminate())
            self.writer.close()


async def read_message(reader: asyncio.StreamReader, framer: framing.Framer,
                       pending: deque[m.Message]) -> m.Message:
    """Next message from a stream, reading more only when `pending` is empty."""
    while not pending:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        pending.extend(framer.feed(data))
    return pending.popleft()


def leftover(framer: framing.Framer, pending: deque[m.Message]) -> bytes:
    """What startup read past its last message, as raw bytes for the relay."""
    return b"".join(x.encode() for x in pending) + framer.take_buffered()


async def open_trusted(host: str, port: int, startup: m.StartupMessage, *, role: str,
                       timeout: float = 60.0,
                       scrub: Callable[[bytes], bytes] | None = None) -> Backend:
    """Connect and start a session that needs no password (historical servers
    trust the proxy). Returns the backend idle, with its key.

    Raises: StartupRefused with the server's error fields when it refuses the
    session; InstanceError if it asks for a password; OSError, TimeoutError.
    Messages never name the server's address.
    """
    reader, writer, protocol = await connect_server(host, port, timeout)
    be = Backend(role, host, port, reader, writer, startup.get("database") or "",
                 state=ServerState(scrub=scrub), protocol=protocol)
    try:
        writer.write(startup.encode())
        pending: deque[m.Message] = deque()
        while True:
            msg = await asyncio.wait_for(read_message(reader, be.framer, pending), timeout)
            if msg.tag == "R":
                code, _ = m.parse_authentication(msg.body)
                if code != m.AUTH_OK:
                    raise InstanceError(
                        f"the {role} server asked for authentication (request {code}); "
                        "historical servers must trust connections from the proxy")
            elif msg.tag == "K":
                be.pid, be.secret = m.parse_backend_key_data(msg.body)
            elif msg.tag == "E":
                f = m.parse_error_fields(msg.body)
                raise StartupRefused(f"the {role} server refused the session: "
                                     f"{f.get('M', '?')} (SQLSTATE {f.get('C', '?')})", f)
            elif msg.tag == "Z":
                be.state.status = m.parse_ready_for_query(msg.body)
                if pending or be.framer.buffered:
                    raise ProtocolError(f"the {role} server sent data after ReadyForQuery at startup")
                return be
            # 'S' ParameterStatus, 'v' NegotiateProtocolVersion, 'N': nothing to do
    except BaseException:
        be.close()
        raise
