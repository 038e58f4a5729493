"""One client session of the proxy: the I/O driver of the protocol state machine.

What it is: `Session`, which owns a client connection, its live backend (to
the primary, open for the whole session), its `machine.ClientMachine` and its
`travel.Travel` (the historical backend while time travelling). The client's
bytes go through the machine in the transport's data callback, so relayed
messages reach the server with no task switch; an `Action` (a message the
proxy answers itself) pauses reading from the client and runs in a task, by
one tag -> handler table, in order, before the machine goes on.
Fed by: `proxy.server` (an accepted connection) and, through `proxy.travel`,
the rest of pgStrata.
Feeds: the client (relayed and synthesised messages) and the servers.
Owns: startup, the relay's flow control, and the session semantics below.

Semantics (decisions a user can rely on)
- Startup: SSLRequest is answered 'S' and TLS started when a certificate is
  configured, else 'N'; GSSENCRequest 'N'. The startup packet goes to the
  primary, and the authentication exchange is relayed untouched both ways
  (the proxy never sees or keeps a password, SASL included). The primary's
  NegotiateProtocolVersion is relayed; protocol 3.2 long cancel keys work.
  The client receives the proxy's own BackendKeyData; a CancelRequest with
  it is forwarded, with the real key, to the server that runs the session's
  query now (primary or historical; TCP or a unix socket).
- Every startup packet the proxy sends (to the primary and to historical
  servers) sets the placeholder settings ``strata.travel_time`` and
  ``strata.travel_lsn`` to '' and ``strata.travel_wait`` to its default
  (30s, or the client's own ``-c strata.travel_wait=...``), so SHOW,
  ``current_setting`` and RESET of them work on every server.
- ``options=-c strata.travel_time=...`` (or ``travel_lsn``) in the startup
  packet: removed before relaying, the client authenticates against the
  primary's ``postgres`` database (the requested one may have been dropped
  since), then the session starts in the past in the requested database.
  ``RESET`` then answers 55000 unless the requested database is
  ``postgres``: the present of another database is not reachable without the
  client authenticating again (the proxy holds no passwords). A failure
  resolving the option is a FATAL error, as a bad ``-c`` option would be.
- Historical servers are reached as the same user and database with no
  password: they must trust the proxy; the client has authenticated against
  the primary.
- SET of a travel setting: allowed outside transaction blocks only (25001
  inside; 25P02 in a failed block). ``SET LOCAL strata.travel_*`` and
  ``set_config()`` of a strata setting: 0A000. Privilege: superuser or
  member of ``strata_time_travel`` on the primary (checked with
  ``pg_has_role`` on the live connection) and `may_time_travel`; else 42501.
  The timestamp literal is parsed by the session's current server with
  PostgreSQL's own ``timestamptz`` input (the session's TimeZone and
  DateStyle); its errors (22007...) reach the client unchanged.
- A target that ingest has not covered yet is waited for, at most
  ``strata.travel_wait`` (a session setting; 0 fails at once with 55000),
  with a NOTICE about every second saying how far ingest is.
- Settings follow the session: on every switch the proxy reads the settings
  the session changed (``pg_settings`` with source ``session``, the role
  and ``strata.travel_wait``) from the server it leaves and applies them on
  the one it enters (after a ``RESET ALL`` there). Reading effective values
  instead of replaying SET statements keeps rolled-back SETs rolled back.
- Errors of the proxy's own statements leave the servers in the state
  PostgreSQL would: inside a transaction block or an extended-protocol batch
  the error is raised on the current server too (a ``DO`` block raising it,
  so PL/pgSQL must be present in the database), so the block is aborted and
  the batch skips to Sync; the client always gets ReadyForQuery with the
  right status and the session stays usable.
- Multi-statement simple queries containing strata statements run statement
  by statement (each in its own implicit transaction): execution stops at the
  first error, as PostgreSQL's would.
- Extended protocol: Parse/Bind/Describe/Execute/Close of a strata statement
  are answered by the proxy in order (it first waits until the server has
  answered everything sent before). A successful travel SET in the middle of
  a pipeline commits the work sent before it on the server it leaves.
  Statements prepared on one server are prepared again, transparently, on
  the server a Bind/Describe reaches.
- ``RESET ALL`` / ``DISCARD ALL`` run on the current server and, when
  travelling, return the session to the present (``DISCARD ALL`` is then run
  on the live connection too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

from strata.errors import ProtocolError
from strata.proxy import framing
from strata.proxy import messages as m
from strata.proxy import sqlstate as ss
from strata.proxy.backend import (
    HIGH_WATER,
    Backend,
    RelayProtocol,
    connect_server,
    leftover,
    read_message,
    unreachable,
)
from strata.proxy.cancel import CancelTarget, send_cancel
from strata.proxy.context import ProxyContext
from strata.proxy.machine import Action, ClientMachine, ServerState
from strata.proxy.options import extract_settings, join_options
from strata.proxy.statements import (
    DEFAULT_TRAVEL_WAIT,
    TRAVEL_LSN,
    TRAVEL_TIME,
    TRAVEL_WAIT,
    BadTravelValue,
    Kind,
    Statement,
    parse_duration,
)
from strata.proxy.travel import SHOW_COLUMNS, Travel, TravelFailure

log = logging.getLogger(__name__)


def _with_placeholders(options: str, wait: str) -> str:
    """A startup `options` value that also sets the strata placeholders."""
    ours = join_options(["-c", f"{TRAVEL_TIME}=", "-c", f"{TRAVEL_LSN}=",
                           "-c", f"{TRAVEL_WAIT}={wait}"])
    return f"{options} {ours}".strip()


class Session(CancelTarget):
    """A client connection and the backends serving it."""

    def __init__(self, ctx: ProxyContext, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.ctx = ctx
        self.cr = reader
        self.cw = writer
        self.client_framer = framing.Framer()  # startup and authentication only
        self.client_pending: deque[m.Message] = deque()
        self.live: Backend | None = None
        self.current: Backend | None = None
        self.travel = Travel(self)
        self.machine = ClientMachine(ServerState())  # bound to the live server in _begin
        self.user = ""
        self.dbname = ""
        self.live_dbname = ""
        self.hist_startup: m.StartupMessage | None = None
        self.key_pid: int | None = None
        self._closing = False
        self._starting = True  # client bytes wait in the machine until startup is done
        self._ended: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pauses: set[str] = set()
        self._write_client: Callable[[bytes], object] = writer.write
        self._to_server: Callable[[bytes], object] = writer.write  # set by route()
        self._actions: dict[str, Callable[[Action], Awaitable[bool]]] = {
            "Q": self._query, "P": self._parse, "B": self._bind, "D": self._describe,
            "E": self._execute, "C": self._close_message, "X": self._terminate,
        }

    # -- what Travel uses ----------------------------------------------------------------
    @property
    def current_backend(self) -> Backend:
        assert self.current is not None
        return self.current

    @property
    def live_backend(self) -> Backend:
        assert self.live is not None
        return self.live

    def route(self, be: Backend) -> None:
        """From now on the client talks to `be`."""
        self.current = be
        self.machine.switch(be.state)
        self._to_server = be.writer.transport.write

    def start_relay(self, be: Backend, first: bytes = b"") -> None:
        be.start_relay(self._write_client, first, lambda: self._server_lost(be),
                       self._server_flow)

    def forget_all_prepared(self) -> None:
        servers = [be.state for be in (self.live, self.travel.hist) if be is not None]
        self.machine.forget_all_prepared(*servers)

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        try:
            if await self._startup():
                await self._ended_future()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except ProtocolError as e:
            log.info("protocol error from client: %s", e)
            with contextlib.suppress(Exception):
                self.cw.write(m.encode_error(m.error_fields(ss.PROTOCOL_VIOLATION, str(e),
                                                            severity="FATAL")))
        except Exception:
            log.exception("proxy session failed")
        finally:
            await self._close()

    async def _close(self) -> None:
        self._closing = True
        if self.key_pid is not None:
            self.ctx.registry.unregister(self.key_pid)
        if self._task is not None:
            self._task.cancel()
        self.travel.closed()
        if self.live is not None:
            self.live.close()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            self.cw.close()
            await asyncio.wait_for(self.cw.wait_closed(), 5)

    async def cancel(self) -> None:
        be = self.current
        if be is not None and be.pid:
            await send_cancel(be.host, be.port, be.pid, be.secret)

    # -- startup -------------------------------------------------------------------------
    async def _startup(self) -> bool:
        sf = framing.StartupFramer()
        data = b""
        while True:
            pkt = sf.feed(data) if data else None
            if pkt is None:
                data = await self.cr.read(8192)
                if not data:
                    return False
                continue
            data = sf.rest
            sf = framing.StartupFramer()
            if isinstance(pkt, m.SSLRequest):
                if self.ctx.ssl_context is not None and not data:
                    self.cw.write(b"S")
                    await self.cw.drain()
                    await self.cw.start_tls(self.ctx.ssl_context)
                else:
                    self.cw.write(b"N")
                continue
            if isinstance(pkt, m.GSSENCRequest):
                self.cw.write(b"N")
                continue
            if isinstance(pkt, m.CancelRequest):
                target = self.ctx.registry.lookup(pkt.pid, pkt.secret)
                if target is not None:
                    await target.cancel()
                return False
            assert isinstance(pkt, m.StartupMessage)
            if data:
                self.client_pending.extend(self.client_framer.feed(data))
            return await self._begin(pkt)

    def _startup_travel(self, startup: m.StartupMessage) -> tuple[Statement | None, str, str]:
        """The strata settings of the startup options: (travel statement, the
        options left to relay, strata.travel_wait). Raises: BadTravelValue."""
        taken, rest = extract_settings(startup.get("options") or "", "strata.travel_")
        travel: Statement | None = None
        wait = taken.pop(TRAVEL_WAIT, DEFAULT_TRAVEL_WAIT)
        parse_duration(wait)
        for name, value in taken.items():
            if name == TRAVEL_TIME:
                travel = Statement(f"-c {name}", Kind.SET_TIME, value=value, name=name, tag="SET")
            elif name == TRAVEL_LSN:
                travel = Statement(f"-c {name}", Kind.SET_LSN, value=value, name=name, tag="SET")
            else:
                raise BadTravelValue(f'unrecognized configuration parameter "{name}"')
        if len(taken) > 1:
            raise BadTravelValue("give only one of strata.travel_time and strata.travel_lsn")
        return travel, rest, wait

    async def _begin(self, startup: m.StartupMessage) -> bool:
        self.user = startup.get("user") or ""
        self.dbname = startup.get("database") or self.user
        try:
            travel, rest, wait = self._startup_travel(startup)
        except BadTravelValue as e:
            return self._fatal(ss.INVALID_PARAMETER_VALUE, str(e))
        replication = startup.get("replication") not in (None, "false", "0", "off")
        if travel is not None and replication:
            return self._fatal(ss.FEATURE_NOT_SUPPORTED,
                               "time travel is not available on replication connections")
        options = rest if replication else _with_placeholders(rest, wait)
        self.live_dbname = "postgres" if travel is not None else self.dbname
        live_startup = startup.replace({"options": options or None, "database": self.live_dbname})
        self.hist_startup = startup.replace({"options": options or None, "database": self.dbname})
        try:
            reader, writer, server_protocol = await connect_server(
                self.ctx.primary_host, self.ctx.primary_port, self.ctx.connect_timeout)
        except (TimeoutError, OSError) as e:
            return self._fatal(ss.CANNOT_CONNECT_NOW, unreachable(
                self.ctx.primary_host, self.ctx.primary_port, e))
        live = Backend("live", self.ctx.primary_host, self.ctx.primary_port, reader, writer,
                       self.live_dbname, protocol=server_protocol)
        self.live = live
        self.machine = ClientMachine(live.state)
        writer.write(live_startup.encode())
        pending: deque[m.Message] = deque()
        protocol = await self._authenticate(live, startup.protocol, pending)
        if protocol is None:
            return False
        if self.hist_startup.protocol != protocol:
            self.hist_startup = m.StartupMessage(protocol, self.hist_startup.params)
        self._attach_client()
        self.route(live)
        self.start_relay(live, leftover(live.framer, pending))
        if travel is not None:
            try:
                await self.travel.go(travel, in_batch=False)
            except TravelFailure as f:
                f.fields["S"] = f.fields["V"] = "FATAL"
                self.cw.write(m.encode_error(f.fields))
                await self.cw.drain()
                return False
        self.cw.write(m.encode_ready_for_query(self.current_backend.status))
        self._starting = False
        self._client_input(b"")  # messages that came with or after the startup packet
        return True

    async def _authenticate(self, live: Backend, protocol: int,
                            pending: deque[m.Message]) -> int | None:
        """Relay the primary's startup answers and the client's authentication
        until ReadyForQuery. Returns the protocol version in use, None if the
        primary refused the session."""
        while True:
            msg = await read_message(live.reader, live.framer, pending)
            tag = msg.tag
            if tag == "R":
                self.cw.write(msg.encode())
                code, _ = m.parse_authentication(msg.body)
                if code in m.AUTH_NEEDS_RESPONSE:
                    reply = await read_message(self.cr, self.client_framer, self.client_pending)
                    live.writer.write(reply.encode())
            elif tag == "K":
                live.pid, live.secret = m.parse_backend_key_data(msg.body)
                # Our own key, as long as the protocol version allows.
                secret_len = 4 if protocol < m.PROTOCOL_3_2 else 32
                self.key_pid, secret = self.ctx.registry.register(self, secret_len)
                self.cw.write(m.encode_backend_key_data(self.key_pid, secret))
            elif tag == "v":
                minor, _ = m.parse_negotiate_protocol_version(msg.body)
                protocol = (3 << 16) | min(minor, protocol & 0xFFFF)
                self.cw.write(msg.encode())
            elif tag == "E":
                self.cw.write(msg.encode())
                await self.cw.drain()
                return None
            elif tag == "Z":
                live.state.status = m.parse_ready_for_query(msg.body)
                return protocol
            else:
                self.cw.write(msg.encode())

    def _fatal(self, code: str, message: str) -> bool:
        self.cw.write(m.encode_error(m.error_fields(code, message, severity="FATAL")))
        return False

    # -- the relay -------------------------------------------------------------------------
    def _attach_client(self) -> None:
        """Take the client's bytes in the transport callback from now on (also
        under TLS: the TLS transport calls the same protocol)."""
        proto = self.cw.transport.get_protocol()
        assert isinstance(proto, RelayProtocol)
        self._ended = asyncio.get_running_loop().create_future()
        transport = cast(asyncio.Transport, self.cw.transport)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self._write_client = transport.write
        proto.on_lost = self._end
        proto.on_data = self._client_input
        proto.on_flow = self._client_flow
        held = leftover(self.client_framer, self.client_pending)
        # and what the stream reader got since authentication read it last
        buffered = getattr(self.cr, "_buffer", None)
        if buffered:
            held += bytes(buffered)
            buffered.clear()
        if held:
            self.machine.hold(held)

    async def _ended_future(self) -> None:
        assert self._ended is not None
        await self._ended

    def _end(self, exc: BaseException | None = None) -> None:
        fut = self._ended
        if fut is not None and not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

    def _client_input(self, data: bytes) -> None:
        if self._task is not None or self._starting:  # they wait in the machine
            self.machine.hold(data)
            return
        try:
            out, action = self.machine.feed(data)
        except ProtocolError as e:
            self._end(e)
            return
        if out:
            self._to_server(out)
        if action is not None:
            self._pause_client("proxy")
            self._task = asyncio.get_running_loop().create_task(self._run_actions(action))

    async def _run_actions(self, action: Action | None) -> None:
        try:
            while action is not None:
                if not await self._actions[action.tag](action):
                    self._end()
                    return
                out, action = self.machine.feed(b"")
                if out:
                    self._to_server(out)
        except Exception as e:
            self._end(e)
            return
        finally:
            self._task = None
        self._resume_client("proxy")

    def _server_lost(self, be: Backend) -> None:
        if be is self.current and not self._closing:
            # The server ended the session (it sent its FATAL error already).
            with contextlib.suppress(Exception):
                self.cw.close()

    def _server_flow(self, paused: bool) -> None:
        """A server reads slower than the client sends (COPY FROM)."""
        if paused:
            self._pause_client("server")
        else:
            self._resume_client("server")

    def _client_flow(self, paused: bool) -> None:
        """The client reads slower than the servers send: pause them."""
        for be in (self.live, self.travel.hist):
            if be is not None:
                if paused:
                    be.pause_reading()
                else:
                    be.resume_reading()

    def _pause_client(self, reason: str) -> None:
        if not self._pauses:
            cast(asyncio.Transport, self.cw.transport).pause_reading()
        self._pauses.add(reason)

    def _resume_client(self, reason: str) -> None:
        self._pauses.discard(reason)
        if not self._pauses and not self.cw.transport.is_closing():
            cast(asyncio.Transport, self.cw.transport).resume_reading()

    # -- actions: the tag table -----------------------------------------------------------
    async def _query(self, a: Action) -> bool:
        be = self.current_backend
        if a.error is not None:
            await be.wait_idle()
            await self.travel.report_failure(
                m.error_fields(ss.INVALID_PARAMETER_VALUE, a.error), in_batch=False)
        else:
            self.machine.forget_unnamed()
            await self._simple(a.statements)
        self.cw.write(m.encode_ready_for_query(self.current_backend.status))
        return True

    async def _parse(self, a: Action) -> bool:
        assert a.statement is not None
        if await self._synthetic():
            self.machine.strata_stmts[a.name] = a.statement
            self.cw.write(m.PARSE_COMPLETE)
        return True

    async def _bind(self, a: Action) -> bool:
        assert a.statement is not None
        if await self._synthetic():
            self.machine.strata_portals[a.name] = a.statement
            self.cw.write(m.BIND_COMPLETE)
        return True

    async def _describe(self, a: Action) -> bool:
        assert a.statement is not None
        if await self._synthetic():
            if a.target == "S":
                self.cw.write(m.encode_parameter_description())
            cols = SHOW_COLUMNS.get(a.statement.kind)
            self.cw.write(m.encode_row_description(cols) if cols else m.NO_DATA)
        return True

    async def _execute(self, a: Action) -> bool:
        assert a.statement is not None
        if await self._synthetic():
            try:
                await self.travel.execute(a.statement, in_batch=True)
            except TravelFailure as f:
                await self.travel.report_failure(f.fields, in_batch=True, on_backend=f.on_backend)
        return True

    async def _close_message(self, a: Action) -> bool:
        ours = self.machine.strata_stmts if a.target == "S" else self.machine.strata_portals
        ours.pop(a.name, None)
        if await self._synthetic():
            self.cw.write(m.CLOSE_COMPLETE)
        return True

    async def _terminate(self, a: Action) -> bool:
        return False

    async def _synthetic(self) -> bool:
        """Before the proxy answers a message itself: wait until the server
        answered everything sent before. Returns False when the server is
        skipping to Sync (an earlier error): then the message is ignored too."""
        be = self.current_backend
        await be.wait_idle()
        return be.state.will_answer()

    # -- simple queries holding strata statements -------------------------------------------
    async def _simple(self, stmts: tuple[Statement, ...]) -> None:
        """A simple Query holding strata statements: statement by statement."""
        await self.current_backend.wait_idle()
        for st in stmts:
            try:
                if st.kind in (Kind.RELAY, Kind.RESET_ALL, Kind.DISCARD_ALL):
                    if not await self._relay_segment(st):
                        return
                else:
                    await self.travel.execute(st, in_batch=False)
            except TravelFailure as f:
                await self.travel.report_failure(f.fields, in_batch=False,
                                                 on_backend=f.on_backend)
                return

    async def _relay_segment(self, st: Statement) -> bool:
        """One statement relayed as it is (RESET ALL and DISCARD ALL also return
        the session to the present). Returns False if it failed."""
        _, errored = await self.current_backend.run_segment(st.text)
        if errored:
            return False
        if st.kind is Kind.DISCARD_ALL:
            self.forget_all_prepared()
        if st.kind is not Kind.RELAY and self.travel.state is not None:
            await self.travel.back(in_batch=False, discard=st.kind is Kind.DISCARD_ALL)
        return True
