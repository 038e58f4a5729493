"""Backend connections and cancel-key routing.

What it is: `Backend` (one server connection of a session: its stream, its
framer, the responses it still owes, its real cancel key) and `CancelRegistry`
(the proxy's own BackendKeyData -> the session, so a CancelRequest reaches the
server that currently runs that session's query).
Fed by: `proxy.session` (opens backends, pushes expectations as it forwards
client messages) and `proxy.server` (cancel requests).
Feeds: the client (relayed server messages) and the session (idle signals,
the replies of its own internal queries).
Owns: the response bookkeeping that lets the proxy know when a server has
answered everything sent so far (needed before the proxy answers a statement
itself, so responses reach the client in order), and the server -> client
relay, which runs in the transport's data callback (`RelayProtocol`): no
task switch per chunk, chunks of unchanged whole messages written as they
came, the server paused while the client's write buffer is over
`CLIENT_HIGH_WATER`.

Expected responses, per forwarded client message:
Parse -> '1', Bind -> '2', Describe -> ('t') 'T'|'n', Execute -> ... 'C'|'I'|'s',
Close -> '3', Sync/Query/FunctionCall -> ... 'Z'. An ErrorResponse in extended
mode ends the failing message and makes the server skip every message up to
the next Sync: those expectations are dropped at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from strata.errors import InstanceError, ProtocolError
from strata.proxy import messages as m
from strata.proxy.history import HistoryProvider

log = logging.getLogger(__name__)

# Expectation kinds (one character each, mirroring the client message tags).
EXP_PARSE = "P"
EXP_BIND = "B"
EXP_DESCRIBE = "D"
EXP_EXECUTE = "E"
EXP_CLOSE = "C"
EXP_SYNC = "S"  # Sync, simple Query and FunctionCall: all end with ReadyForQuery
SYNC_LIKE = frozenset("SQF")
READ_SIZE = 1 << 18
CLIENT_HIGH_WATER = 1 << 20  # bytes queued to a client before its server is paused
# Statement and portal name of the proxy's own queries.
INTERNAL_NAME = "__strata_internal__"


@dataclass(frozen=True, slots=True)
class InternalResult:
    """Outcome of a proxy-internal query: text rows, command tag, or the error."""

    rows: list[list[bytes | None]]
    tag: str | None
    error: dict[str, str] | None


@dataclass(slots=True, eq=False)
class Expect:
    """A response the server owes us.

    `swallow`: the message was injected by the proxy (re-preparing a statement
    on another server); its reply is not shown to the client.
    `hide_ready`: for a proxy-issued simple Query inside a multi-statement
    string: ReadyForQuery is not forwarded but reported through `done`.
    """

    kind: str
    swallow: bool = False
    hide_ready: bool = False
    errored: bool = False
    done: asyncio.Future[tuple[str, bool]] | None = None


class RelayProtocol(asyncio.StreamReaderProtocol):
    """A stream protocol whose received bytes go to `on_data` once set (the
    relay), and to the StreamReader before (startup and authentication).
    Used for server connections and for client connections alike."""

    def __init__(self, reader: asyncio.StreamReader,
                 client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                               Any] | None = None) -> None:
        super().__init__(reader, client_connected_cb)
        self.on_data: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[], None] | None = None

    def data_received(self, data: bytes) -> None:
        if self.on_data is not None:
            self.on_data(data)
        else:
            super().data_received(data)

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


async def connect_server(host: str, port: int, timeout: float
                         ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, RelayProtocol]:
    """Open a TCP connection to a server with a `RelayProtocol`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_SIZE, loop=loop)
    protocol = RelayProtocol(reader)
    transport, _ = await asyncio.wait_for(
        loop.create_connection(lambda: protocol, host, port), timeout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer, protocol


@dataclass(slots=True, eq=False)
class Backend:
    """One server connection of a session."""

    role: str  # "live" or "historical"
    host: str
    port: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    dbname: str
    framer: m.Framer = field(default_factory=m.Framer)
    pid: int = 0
    secret: bytes = b""
    status: str = "I"  # transaction status from the last ReadyForQuery
    params: dict[str, str] = field(default_factory=dict)
    expect: deque[Expect] = field(default_factory=deque)
    syncs_pending: int = 0
    # True after an extended-protocol error until the next ReadyForQuery: the
    # server ignores every message up to the next Sync.
    skipping: bool = False
    # statement name -> the Parse body this server has prepared under it
    prepared: dict[str, bytes] = field(default_factory=dict)
    # set while the proxy talks to this server itself; the forwarder then
    # queues every message here instead of relaying it
    internal: asyncio.Queue[m.Message] | None = None
    idle_waiters: list[asyncio.Future[None]] = field(default_factory=list)
    protocol: RelayProtocol | None = None
    _cw: asyncio.StreamWriter | None = None
    _paused: bool = False
    _resume_task: asyncio.Task[None] | None = None
    closed: bool = False
    unsynced: bool = False  # extended messages sent since the last Sync

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- expectations ------------------------------------------------------------------
    def will_answer(self) -> bool:
        """Whether a message forwarded now gets a response (False while the
        server skips to the next Sync and no Sync has been sent yet)."""
        return not (self.skipping and self.syncs_pending == 0)

    def push(self, exp: Expect) -> None:
        if exp.kind in SYNC_LIKE:
            self.syncs_pending += 1
            self.expect.append(exp)
        elif self.will_answer():
            self.expect.append(exp)

    def pop_front(self) -> Expect | None:
        if not self.expect:
            return None
        e = self.expect.popleft()
        if e.kind in SYNC_LIKE:
            self.syncs_pending -= 1
        return e

    def wake_if_idle(self) -> None:
        if not self.expect and self.idle_waiters:
            waiters, self.idle_waiters = self.idle_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def wait_idle(self) -> None:
        """Flush the server's output and wait until it answered everything sent."""
        if not self.expect:
            return
        if self.unsynced:
            self.writer.write(m.encode_flush())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.idle_waiters.append(fut)
        await fut

    def fail_waiters(self) -> None:
        for w in self.idle_waiters:
            if not w.done():
                w.set_exception(ConnectionError(f"{self.role} server {self.address} closed"))
        self.idle_waiters = []
        for e in self.expect:
            if e.done is not None and not e.done.done():
                e.done.set_exception(ConnectionError(f"{self.role} server {self.address} closed"))
        self.expect.clear()

    async def next_internal(self, timeout: float = 120.0) -> m.Message:
        assert self.internal is not None
        return await asyncio.wait_for(self.internal.get(), timeout)

    # -- relaying ------------------------------------------------------------------------
    def start_relay(self, cw: asyncio.StreamWriter, first: Sequence[m.Message],
                    on_lost: Callable[[], None]) -> None:
        """From now on relay this server's messages to the client writer `cw` as
        they arrive (in the transport's callback: no task, no await per
        message), keeping `expect` in step; while `internal` is set, queue them
        there instead. `on_lost` runs if the server closes the connection
        (not when the proxy closes it)."""
        assert self.protocol is not None
        self._cw = cw

        def lost() -> None:
            was_closed = self.closed
            self.closed = True
            self.fail_waiters()
            if not was_closed:
                on_lost()

        if first:
            self._deliver(list(first), b"")
        self.protocol.on_lost = lost
        self.protocol.on_data = self._on_data
        if self.writer.transport.is_closing():
            lost()

    def _on_data(self, data: bytes) -> None:
        try:
            self._deliver(self.framer.feed(data), data)
        except Exception:
            log.exception("relay from %s server %s failed", self.role, self.address)
            self.writer.transport.abort()

    def _deliver(self, msgs: list[m.Message], data: bytes) -> None:
        cw = self._cw
        assert cw is not None
        # The common case: the chunk held whole messages only and all of them
        # are relayed unchanged, so the chunk itself is written.
        verbatim = bool(data) and self.framer.exact
        out = bytearray()
        for i, msg in enumerate(msgs):
            keep = self._account(msg)
            if keep and not verbatim:
                out += msg.encode()
            elif not keep and verbatim:
                # first message not relayed: the ones before it are
                verbatim = False
                out += b"".join(x.encode() for x in msgs[:i])
            if self.internal is not None and not keep:
                if out:
                    cw.write(out)
                    out = bytearray()
                self.internal.put_nowait(msg)
        if verbatim:
            cw.write(data)
        elif out:
            cw.write(out)
        # after the write: whoever waits for idleness writes to the client next
        self.wake_if_idle()
        if not self._paused and cw.transport.get_write_buffer_size() > CLIENT_HIGH_WATER:
            # the client reads slower than the server sends: stop reading the server
            self._paused = True
            cast(asyncio.Transport, self.writer.transport).pause_reading()
            # keep a reference: the loop holds tasks only weakly
            self._resume_task = asyncio.get_running_loop().create_task(
                self._resume_after_drain(cw))

    async def _resume_after_drain(self, cw: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await cw.drain()
        self._paused = False
        if not self.closed:
            cast(asyncio.Transport, self.writer.transport).resume_reading()

    def _account(self, msg: m.Message) -> bool:
        """Book one server message against `expect`; True if it goes to the client."""
        if self.internal is not None:
            return False
        tag = msg.tag
        if tag == "D":  # the hot path: rows
            return True
        exp = self.expect[0] if self.expect else None
        if tag in "123":
            self.pop_front()
            if exp is not None and exp.swallow:
                return False
        elif tag in "Tn":
            if exp is not None and exp.kind == EXP_DESCRIBE:
                self.pop_front()
        elif tag in "CIs":
            if exp is not None and exp.kind == EXP_EXECUTE:
                self.pop_front()
        elif tag == "E":
            if exp is None or exp.kind in SYNC_LIKE:
                # inside a simple Query (or at Sync): no skipping follows
                if exp is not None:
                    exp.errored = True
            else:
                # extended protocol: the server now skips to the next Sync
                while self.expect and self.expect[0].kind not in SYNC_LIKE:
                    self.pop_front()
                self.skipping = True
        elif tag == "Z":
            exp = None
            while self.expect:
                e = self.pop_front()
                assert e is not None
                if e.kind in SYNC_LIKE:
                    exp = e
                    break
            self.status = m.parse_ready_for_query(msg.body)
            self.skipping = False
            if self.syncs_pending == 0:
                self.unsynced = False
            if exp is not None and exp.hide_ready:
                if exp.done is not None and not exp.done.done():
                    exp.done.set_result((self.status, exp.errored))
                return False
            if exp is not None and exp.swallow:
                return False
        elif tag == "S":
            k, v = m.parse_parameter_status(msg.body)
            self.params[k] = v
        return True

    # -- the proxy's own statements ---------------------------------------------------
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
        q: asyncio.Queue[m.Message] = asyncio.Queue()
        self.internal = q
        try:
            self.writer.write(b"".join((
                m.encode_close("S", INTERNAL_NAME),
                m.encode_parse(INTERNAL_NAME, sql),
                m.encode_bind(INTERNAL_NAME, INTERNAL_NAME, params),
                m.encode_execute(INTERNAL_NAME),
                m.encode_close("P", INTERNAL_NAME),
                m.encode_close("S", INTERNAL_NAME),
                m.encode_flush() if in_batch else m.encode_sync(),
            )))
            if in_batch:
                self.unsynced = True
            rows: list[list[bytes | None]] = []
            tag: str | None = None
            error: dict[str, str] | None = None
            closes = 0
            while True:
                msg = await self.next_internal()
                t = msg.tag
                if t == "D":
                    rows.append(m.parse_data_row(msg.body))
                elif t == "C":
                    tag = m.parse_command_complete(msg.body)
                elif t == "E":
                    error = m.parse_error_fields(msg.body)
                    if in_batch:
                        self.skipping = True
                        break
                elif t == "3":
                    closes += 1
                    if in_batch and closes == 3:  # Close, ..., Close portal, Close statement
                        break
                elif t == "Z":
                    self.status = m.parse_ready_for_query(msg.body)
                    break
                elif t == "S":
                    k, v = m.parse_parameter_status(msg.body)
                    self.params[k] = v
                elif t in "NA" and forward is not None:
                    forward(msg.encode())
            return InternalResult(rows, tag, error)
        finally:
            self.internal = None

    async def sync_internal(self) -> None:
        """End the batch the server is in (commits its implicit transaction)."""
        q: asyncio.Queue[m.Message] = asyncio.Queue()
        self.internal = q
        try:
            self.writer.write(m.encode_sync())
            while True:
                msg = await self.next_internal()
                if msg.tag == "Z":
                    self.status = m.parse_ready_for_query(msg.body)
                    self.skipping = False
                    self.unsynced = False
                    return
        finally:
            self.internal = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.write(m.encode_terminate())
            self.writer.close()


async def read_message(reader: asyncio.StreamReader, framer: m.Framer,
                       pending: deque[m.Message]) -> m.Message:
    """Next message from a stream, reading more only when `pending` is empty."""
    while not pending:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        pending.extend(framer.feed(data))
    return pending.popleft()


async def open_trusted(host: str, port: int, startup: m.StartupMessage, *, role: str,
                       timeout: float = 60.0) -> Backend:
    """Connect and start a session that needs no password (historical servers
    trust the proxy). Returns the backend idle, with its key and parameters.

    Raises: InstanceError if the server asks for a password or refuses.
    """
    reader, writer, protocol = await connect_server(host, port, timeout)
    be = Backend(role, host, port, reader, writer, startup.get("database") or "",
                 protocol=protocol)
    try:
        writer.write(startup.encode())
        pending: deque[m.Message] = deque()
        while True:
            msg = await asyncio.wait_for(read_message(reader, be.framer, pending), timeout)
            if msg.tag == "R":
                code, _ = m.parse_authentication(msg.body)
                if code != m.AUTH_OK:
                    raise InstanceError(
                        f"{role} server {host}:{port} asked for authentication (request {code}); "
                        "historical servers must trust connections from the proxy")
            elif msg.tag == "S":
                k, v = m.parse_parameter_status(msg.body)
                be.params[k] = v
            elif msg.tag == "K":
                be.pid, be.secret = m.parse_backend_key_data(msg.body)
            elif msg.tag == "E":
                f = m.parse_error_fields(msg.body)
                raise InstanceError(f"{role} server {host}:{port} refused the session: "
                                    f"{f.get('M', '?')} (SQLSTATE {f.get('C', '?')})")
            elif msg.tag == "Z":
                be.status = m.parse_ready_for_query(msg.body)
                if pending or be.framer.buffered:
                    raise ProtocolError(f"{role} server sent data after ReadyForQuery at startup")
                return be
            # 'v' NegotiateProtocolVersion and 'N' notices need no action here
    except BaseException:
        be.close()
        raise


async def send_cancel(host: str, port: int, pid: int, secret: bytes) -> None:
    """Deliver a CancelRequest to a server (fire and forget, as libpq does)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (TimeoutError, OSError):
        return
    try:
        writer.write(m.CancelRequest(pid, secret).encode())
        await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@dataclass(frozen=True, slots=True)
class ProxyContext:
    """What every session shares (built by `proxy.server.ProxyServer`)."""

    primary_host: str
    primary_port: int
    provider: HistoryProvider
    registry: CancelRegistry
    ssl_context: ssl.SSLContext | None = None
    connect_timeout: float = 60.0


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
