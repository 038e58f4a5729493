"""One client session of the proxy: the protocol state machine.

What it is: `Session`, which owns a client connection, its live backend (to
the primary, open for the whole session) and, while time travelling, one
historical backend; it relays messages between them and executes the strata
statements itself.
Fed by: `proxy.server` (an accepted connection) and, through
`proxy.history.HistoryProvider`, the rest of pgStrata.
Feeds: the client (relayed and synthesised messages) and the servers.
Owns: the session semantics below, and the client -> server direction: once
the client is authenticated its bytes are handled in the transport callback
(`_attach_client`: relayed messages go out with no task switch); a message the
proxy must act on pauses reading and is handled by a task, in order. TLS
sessions use an ordinary read loop.

Semantics (decisions a user can rely on)
- Startup: SSLRequest is answered 'S' and TLS started when a certificate is
  configured, else 'N'; GSSENCRequest 'N'. The startup packet goes to the
  primary, and the authentication exchange is relayed untouched both ways
  (the proxy never sees or keeps a password, SASL included). The primary's
  NegotiateProtocolVersion is relayed; protocol 3.2 long cancel keys work.
  The client receives the proxy's own BackendKeyData; a CancelRequest with
  it is forwarded, with the real key, to the server that runs the session's
  query now (primary or historical).
- ``options=-c strata.travel_time=...`` (or ``travel_lsn``) in the startup
  packet: removed before relaying, the client authenticates against the
  primary's ``postgres`` database (the requested one may have been dropped
  since), then the session starts in the past in the requested database.
  ``RESET`` then answers 55000 unless the requested database is
  ``postgres``: the present of another database is not reachable without the
  client authenticating again (the proxy holds no passwords). A failure
  resolving the option is a FATAL error, as a bad ``-c`` option would be.
- Historical servers are reached as the same user and database with no
  password: they must trust the proxy (``trust`` in their pg_hba for the
  proxy's address); the client has authenticated against the primary.
- SET of a travel setting: allowed outside transaction blocks only (25001
  inside; 25P02 in a failed block). ``SET LOCAL strata.*``: 0A000. Privilege:
  superuser or member of ``strata_time_travel`` on the primary (checked with
  ``pg_has_role`` on the live connection) and `may_time_travel`; else 42501.
  The timestamp literal is parsed by the session's current server with
  PostgreSQL's own ``timestamptz`` input (the session's TimeZone and
  DateStyle); its errors (22007...) reach the client unchanged.
- Settings follow the session: on every switch the proxy reads the settings
  the session changed (``pg_settings`` with source ``session``, and the role)
  from the server it leaves and applies them on the one it enters (after a
  ``RESET ALL`` there). Reading effective values instead of replaying SET
  statements keeps rolled-back SETs rolled back.
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
from collections.abc import Sequence
from typing import cast

from strata.errors import ProtocolError
from strata.proxy import messages as m
from strata.proxy import sqlstate as ss
from strata.proxy.routing import (
    CLIENT_HIGH_WATER,
    EXP_BIND,
    EXP_CLOSE,
    EXP_DESCRIBE,
    EXP_EXECUTE,
    EXP_PARSE,
    EXP_SYNC,
    READ_SIZE,
    Backend,
    CancelTarget,
    Expect,
    ProxyContext,
    RelayProtocol,
    connect_server,
    read_message,
    send_cancel,
)
from strata.proxy.statements import (
    TRAVEL_LSN,
    TRAVEL_TIME,
    BadTravelValue,
    Kind,
    Statement,
    classify_single,
    split_statements,
)
from strata.proxy.travel import (
    SHOW_COLUMNS,
    TravelFailure,
    Travelling,
    TravelState,
    failure,
)

log = logging.getLogger(__name__)


class Session(Travelling, CancelTarget):
    """A client connection and the backends serving it."""

    def __init__(self, ctx: ProxyContext, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.ctx = ctx
        self.cr = reader
        self.cw = writer
        self.client_framer = m.Framer()
        self.client_pending: deque[m.Message] = deque()
        self.live: Backend | None = None
        self.hist: Backend | None = None
        self.current: Backend | None = None
        self.travel: TravelState | None = None
        self.user = ""
        self.dbname = ""
        self.live_dbname = ""
        self.hist_startup: m.StartupMessage | None = None
        self.strata_stmts: dict[str, Statement] = {}
        self.strata_portals: dict[str, Statement] = {}
        self.prepared: dict[str, bytes] = {}
        self.key_pid: int | None = None
        self._closing = False
        # callback-driven client input (see _attach_client)
        self._ended: asyncio.Future[None] | None = None
        self._backlog: deque[m.Message] = deque()
        self._slow_task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._pauses: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        try:
            if await self._startup():
                await self._client_loop()
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
        if self._slow_task is not None:
            self._slow_task.cancel()
        for be in (self.hist, self.live):
            if be is not None:
                be.close()
        if self.travel is not None:
            self.release_point(self.travel.point)
            self.travel = None
        with contextlib.suppress(Exception, asyncio.CancelledError):
            self.cw.close()
            await asyncio.wait_for(self.cw.wait_closed(), 5)

    async def cancel(self) -> None:
        be = self.current
        if be is not None and be.pid:
            await send_cancel(be.host, be.port, be.pid, be.secret)

    # -- startup -------------------------------------------------------------------------
    async def _startup(self) -> bool:
        sf = m.StartupFramer()
        data = b""
        while True:
            pkt = sf.feed(data) if data else None
            if pkt is None:
                data = await self.cr.read(8192)
                if not data:
                    return False
                continue
            data = sf.rest
            sf = m.StartupFramer()
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

    async def _begin(self, startup: m.StartupMessage) -> bool:
        self.user = startup.get("user") or ""
        self.dbname = startup.get("database") or self.user
        options = startup.get("options") or ""
        taken, rest = m.extract_settings(options, "strata.travel_")
        travel: Statement | None = None
        for name, value in taken.items():
            if name == TRAVEL_TIME:
                travel = Statement(f"-c {name}", Kind.SET_TIME, value=value, name=name)
            elif name == TRAVEL_LSN:
                travel = Statement(f"-c {name}", Kind.SET_LSN, value=value, name=name)
            else:
                return self._fatal(ss.INVALID_PARAMETER_VALUE,
                                   f'unrecognized configuration parameter "{name}"')
        if len(taken) > 1:
            return self._fatal(ss.INVALID_PARAMETER_VALUE,
                               "give only one of strata.travel_time and strata.travel_lsn")
        if travel is not None and startup.get("replication") not in (None, "false", "0", "off"):
            return self._fatal(ss.FEATURE_NOT_SUPPORTED,
                               "time travel is not available on replication connections")
        self.live_dbname = "postgres" if travel is not None else self.dbname
        live_startup = startup.replace({"options": rest or None, "database": self.live_dbname})
        self.hist_startup = startup.replace({"options": rest or None, "database": self.dbname})

        try:
            reader, writer, server_protocol = await connect_server(
                self.ctx.primary_host, self.ctx.primary_port, self.ctx.connect_timeout)
        except (TimeoutError, OSError) as e:
            return self._fatal(ss.CANNOT_CONNECT_NOW, f"the primary server is not reachable: {e}")
        live = Backend("live", self.ctx.primary_host, self.ctx.primary_port, reader, writer,
                       self.live_dbname, protocol=server_protocol)
        self.live = live
        writer.write(live_startup.encode())
        protocol = startup.protocol
        pending: deque[m.Message] = deque()
        while True:
            msg = await read_message(reader, live.framer, pending)
            tag = msg.tag
            if tag == "R":
                self.cw.write(msg.encode())
                code, _ = m.parse_authentication(msg.body)
                if code in m.AUTH_NEEDS_RESPONSE:
                    reply = await self._client_message()
                    writer.write(reply.encode())
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
            elif tag == "S":
                k, v = m.parse_parameter_status(msg.body)
                live.params[k] = v
                self.cw.write(msg.encode())
            elif tag == "E":
                self.cw.write(msg.encode())
                await self.cw.drain()
                return False
            elif tag == "Z":
                live.status = m.parse_ready_for_query(msg.body)
                break
            else:
                self.cw.write(msg.encode())
        if self.hist_startup.protocol != protocol:
            self.hist_startup = m.StartupMessage(protocol, self.hist_startup.params)
        # Messages that arrived with the ReadyForQuery (none in practice).
        self.current = live
        self._start_pump(live, pending)
        if travel is not None:
            try:
                await self._travel(travel, in_batch=False)
            except TravelFailure as f:
                f.fields["S"] = f.fields["V"] = "FATAL"
                self.cw.write(m.encode_error(f.fields))
                await self.cw.drain()
                return False
        self.cw.write(m.encode_ready_for_query(self.current.status))
        self._attach_client()
        await self.cw.drain()
        return True

    def _fatal(self, code: str, message: str) -> bool:
        self.cw.write(m.encode_error(m.error_fields(code, message, severity="FATAL")))
        return False

    async def _client_message(self) -> m.Message:
        return await read_message(self.cr, self.client_framer, self.client_pending)

    # -- server -> client ------------------------------------------------------------------
    def _start_pump(self, be: Backend, pending: Sequence[m.Message] = ()) -> None:
        be.start_relay(self.cw, pending, lambda: self._server_lost(be))

    def _server_lost(self, be: Backend) -> None:
        if be is self.current and not self._closing:
            # The server ended the session (it sent its FATAL error already).
            with contextlib.suppress(Exception):
                self.cw.close()

    # -- client -> server ------------------------------------------------------------------
    async def _client_loop(self) -> None:
        if self._ended is not None:
            await self._ended  # callback-driven: see _attach_client
            return
        # TLS sessions: an ordinary read loop
        buf = bytearray()
        while True:
            if self.client_pending:
                msgs = list(self.client_pending)
                self.client_pending.clear()
            else:
                data = await self.cr.read(READ_SIZE)
                if not data:
                    return
                msgs = self.client_framer.feed(data)
            for msg in msgs:
                if not await self._on_client(msg, buf):
                    self._flush(buf)
                    return
            self._flush(buf)
            be = self.current
            assert be is not None
            if be.closed:
                return
            await be.writer.drain()

    def _attach_client(self) -> None:
        """Take the client's bytes in the transport callback from now on: relayed
        messages go to the server with no task switch; a message that needs the
        proxy itself pauses reading and is handled by a task, in order.
        Requires: called with no await since ReadyForQuery was written."""
        proto = self.cw.transport.get_protocol()
        if not isinstance(proto, RelayProtocol) or self.cw.get_extra_info("sslcontext"):
            return
        self._ended = asyncio.get_running_loop().create_future()
        proto.on_lost = self._end
        proto.on_data = self._client_data
        if self.client_pending:
            msgs = list(self.client_pending)
            self.client_pending.clear()
            self._consume(msgs)

    def _end(self, exc: BaseException | None = None) -> None:
        fut = self._ended
        if fut is not None and not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

    def _client_data(self, data: bytes) -> None:
        try:
            msgs = self.client_framer.feed(data)
        except ProtocolError as e:
            self._end(e)
            return
        if self._slow_task is not None:
            self._backlog.extend(msgs)
        else:
            self._consume(msgs)

    def _consume(self, msgs: list[m.Message]) -> None:
        buf = bytearray()
        for i, msg in enumerate(msgs):
            try:
                relayed = self._relay_now(msg, buf)
            except Exception as e:
                self._end(e)
                return
            if not relayed:
                self._flush(buf)
                self._backlog.extend(msgs[i:])
                self._pause_client("proxy")
                self._slow_task = asyncio.get_running_loop().create_task(self._slow())
                return
        self._flush(buf)
        be = self.current
        assert be is not None
        if be.writer.transport.get_write_buffer_size() > CLIENT_HIGH_WATER:
            # the server reads slower than the client sends (COPY FROM)
            self._pause_client("server")
            self._drain_task = asyncio.get_running_loop().create_task(self._unpause_after(be))

    async def _slow(self) -> None:
        buf = bytearray()
        try:
            while self._backlog:
                if not await self._on_client(self._backlog.popleft(), buf):
                    self._flush(buf)
                    self._end()
                    return
            self._flush(buf)
        except Exception as e:
            self._end(e)
            return
        finally:
            self._slow_task = None
        self._resume_client("proxy")

    async def _unpause_after(self, be: Backend) -> None:
        with contextlib.suppress(Exception):
            await be.writer.drain()
        self._resume_client("server")

    def _pause_client(self, reason: str) -> None:
        if not self._pauses:
            cast(asyncio.Transport, self.cw.transport).pause_reading()
        self._pauses.add(reason)

    def _resume_client(self, reason: str) -> None:
        self._pauses.discard(reason)
        if not self._pauses and not self.cw.transport.is_closing():
            cast(asyncio.Transport, self.cw.transport).resume_reading()

    def _flush(self, buf: bytearray) -> None:
        if buf:
            assert self.current is not None
            self.current.writer.write(bytes(buf))
            buf.clear()

    def _relay_now(self, msg: m.Message, buf: bytearray) -> bool:
        """The common case, without any await: a message that is only relayed
        (with its bookkeeping) is appended to `buf`. Returns False, having done
        nothing, when the message needs `_on_client` (strata statements,
        Terminate)."""
        be = self.current
        assert be is not None
        tag = msg.tag
        if tag == "Q":
            try:
                if split_statements(m.parse_query(msg.body)) is not None:
                    return False
            except BadTravelValue:
                return False
            # a simple Query destroys the unnamed statement and portal
            self._forget_unnamed(be)
            be.push(Expect(EXP_SYNC))
        elif tag == "P":
            pm = m.parse_parse(msg.body)
            try:
                if classify_single(pm.query) is not None:
                    return False
            except BadTravelValue:
                return False
            self.strata_stmts.pop(pm.name, None)
            self.prepared[pm.name] = msg.body
            be.prepared[pm.name] = msg.body
            be.unsynced = True
            be.push(Expect(EXP_PARSE))
        elif tag == "B":
            portal, stmt = m.parse_bind_names(msg.body)
            if stmt in self.strata_stmts:
                return False
            self.strata_portals.pop(portal, None)
            self._ensure_prepared(be, stmt, buf)
            be.unsynced = True
            be.push(Expect(EXP_BIND))
        elif tag == "E":
            if self.strata_portals and m.parse_execute(msg.body)[0] in self.strata_portals:
                return False
            be.unsynced = True
            be.push(Expect(EXP_EXECUTE))
        elif tag == "D":
            kind, name = m.parse_describe(msg.body)
            if name in (self.strata_stmts if kind == "S" else self.strata_portals):
                return False
            if kind == "S":
                self._ensure_prepared(be, name, buf)
            be.unsynced = True
            be.push(Expect(EXP_DESCRIBE))
        elif tag == "C":
            kind, name = m.parse_describe(msg.body)
            if name in (self.strata_stmts if kind == "S" else self.strata_portals):
                return False
            if kind == "S":
                self.prepared.pop(name, None)
                be.prepared.pop(name, None)
            be.unsynced = True
            be.push(Expect(EXP_CLOSE))
        elif tag in "SF":  # Sync, FunctionCall: answered up to ReadyForQuery
            be.push(Expect(EXP_SYNC))
        elif tag == "X":
            return False
        # Flush, CopyData/CopyDone/CopyFail and the rest: no response owed
        buf += msg.encode()
        return True

    async def _on_client(self, msg: m.Message, buf: bytearray) -> bool:
        """Handle one client message; False ends the session."""
        if self._relay_now(msg, buf):
            return True
        be = self.current
        assert be is not None
        tag = msg.tag
        if tag == "Q":
            self._flush(buf)
            try:
                stmts = split_statements(m.parse_query(msg.body))
            except BadTravelValue as e:
                await be.wait_idle()
                await self._report_failure(m.error_fields(ss.INVALID_PARAMETER_VALUE, str(e)),
                                           in_batch=False)
                self.cw.write(m.encode_ready_for_query(be.status))
                return True
            assert stmts is not None
            self._forget_unnamed(be)
            await self._simple(stmts)
            return True
        if tag == "P":
            pm = m.parse_parse(msg.body)
            st: Statement | None
            try:
                st = classify_single(pm.query)
            except BadTravelValue as e:
                st = Statement(pm.query, Kind.SET_LOCAL_TRAVEL, value=str(e))
            assert st is not None
            if await self._synthetic(buf):
                self.strata_stmts[pm.name] = st
                self.cw.write(m.PARSE_COMPLETE)
            return True
        if tag == "B":
            portal, stmt = m.parse_bind_names(msg.body)
            st = self.strata_stmts[stmt]
            if await self._synthetic(buf):
                self.strata_portals[portal] = st
                self.cw.write(m.BIND_COMPLETE)
            return True
        if tag == "D":
            kind, name = m.parse_describe(msg.body)
            st = (self.strata_stmts if kind == "S" else self.strata_portals)[name]
            if await self._synthetic(buf):
                if kind == "S":
                    self.cw.write(m.encode_parameter_description())
                cols = SHOW_COLUMNS.get(st.kind)
                self.cw.write(m.encode_row_description(cols) if cols else m.NO_DATA)
            return True
        if tag == "E":
            st = self.strata_portals[m.parse_execute(msg.body)[0]]
            if await self._synthetic(buf):
                await self._extended(st)
            return True
        if tag == "C":
            kind, name = m.parse_describe(msg.body)
            del (self.strata_stmts if kind == "S" else self.strata_portals)[name]
            if await self._synthetic(buf):
                self.cw.write(m.CLOSE_COMPLETE)
            return True
        assert tag == "X"
        self._flush(buf)
        return False

    def _forget_unnamed(self, be: Backend) -> None:
        be.prepared.pop("", None)
        self.prepared.pop("", None)
        self.strata_stmts.pop("", None)
        self.strata_portals.pop("", None)

    def _ensure_prepared(self, be: Backend, name: str, buf: bytearray) -> None:
        """Prepare statement `name` on `be` if the client prepared it on another
        server (or differently); the server's replies are swallowed."""
        want = self.prepared.get(name)
        if want is None or be.prepared.get(name) == want:
            return
        if name and name in be.prepared:
            be.push(Expect(EXP_CLOSE, swallow=True))
            buf += m.encode_close("S", name)
        be.push(Expect(EXP_PARSE, swallow=True))
        buf += m.Message("P", want).encode()
        be.prepared[name] = want
        be.unsynced = True

    async def _synthetic(self, buf: bytearray) -> bool:
        """Before the proxy answers a message itself: send what is buffered, wait
        until the server answered all of it. Returns False when the server is
        skipping to Sync (an earlier error): then the message is ignored too."""
        self._flush(buf)
        be = self.current
        assert be is not None
        await be.wait_idle()
        return be.will_answer()

    # -- strata statements ---------------------------------------------------------------
    async def _simple(self, stmts: list[Statement]) -> None:
        """A simple Query holding strata statements: statement by statement."""
        be = self.current
        assert be is not None
        await be.wait_idle()
        for st in stmts:
            if st.kind in (Kind.RELAY, Kind.RESET_ALL, Kind.DISCARD_ALL):
                if not await self._relay_segment(st.text):
                    break
                if st.kind is Kind.DISCARD_ALL:
                    self._forget_all_prepared()
                if st.kind is not Kind.RELAY and self.travel is not None:
                    try:
                        await self._return_to_present(in_batch=False,
                                                      discard=st.kind is Kind.DISCARD_ALL)
                    except TravelFailure as f:
                        await self._report_failure(f.fields, in_batch=False, on_backend=f.on_backend)
                        break
                continue
            try:
                await self._execute(st, in_batch=False)
            except TravelFailure as f:
                await self._report_failure(f.fields, in_batch=False, on_backend=f.on_backend)
                break
        assert self.current is not None
        self.cw.write(m.encode_ready_for_query(self.current.status))

    async def _relay_segment(self, text: str) -> bool:
        """Run one statement of a split string on the current server, relaying its
        results but not its ReadyForQuery. Returns False if it failed."""
        be = self.current
        assert be is not None
        fut: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        be.push(Expect(EXP_SYNC, hide_ready=True, done=fut))
        be.writer.write(m.encode_query(text))
        _, errored = await fut
        return not errored

    async def _extended(self, st: Statement) -> None:
        """Execute of a strata portal."""
        try:
            await self._execute(st, in_batch=True)
        except TravelFailure as f:
            await self._report_failure(f.fields, in_batch=True, on_backend=f.on_backend)

    async def _execute(self, st: Statement, *, in_batch: bool) -> None:
        kind = st.kind
        cur = self.current
        assert cur is not None
        if kind is Kind.SET_LOCAL_TRAVEL:
            if st.value and st.name is None:  # a Parse whose value was unusable
                raise failure(ss.INVALID_PARAMETER_VALUE, st.value)
            raise failure(ss.FEATURE_NOT_SUPPORTED, f"SET LOCAL {st.name} is not supported",
                        hint=f"use SET {st.name} (session scope) outside a transaction block")
        if kind in (Kind.SET_TIME, Kind.SET_LSN):
            await self._travel(st, in_batch=in_batch)
            self.cw.write(m.encode_command_complete("SET"))
        elif kind is Kind.RESET_TRAVEL:
            self._check_no_block(cur, st)
            if self.travel is not None:
                await self._return_to_present(in_batch=in_batch, discard=False)
            self.cw.write(m.encode_command_complete("RESET"))
        elif kind in SHOW_COLUMNS:
            if not in_batch:
                self.cw.write(m.encode_row_description(SHOW_COLUMNS[kind]))
            self.cw.write(m.encode_data_row(self._show_values(kind)))
            self.cw.write(m.encode_command_complete("SHOW"))
        elif kind in (Kind.RESET_ALL, Kind.DISCARD_ALL):
            res = await self._internal(cur, st.text, in_batch=in_batch)
            if res.error is not None:
                raise TravelFailure(res.error, on_backend=True)
            if kind is Kind.DISCARD_ALL:
                self._forget_all_prepared()
            if self.travel is not None:
                await self._return_to_present(in_batch=in_batch, discard=kind is Kind.DISCARD_ALL)
            self.cw.write(m.encode_command_complete(res.tag or st.command_tag))
        else:  # pragma: no cover - every Kind is handled above
            raise failure(ss.INTERNAL_ERROR, f"unhandled statement kind {kind}")

    def _show_values(self, kind: Kind) -> list[str | None]:
        t = self.travel
        if t is None:
            return ["", None]
        wanted = TRAVEL_TIME if kind is Kind.SHOW_TIME else TRAVEL_LSN
        return [t.display if t.setting == wanted else "", str(t.point.lsn)]

    def _forget_all_prepared(self) -> None:
        self.prepared.clear()
        self.strata_stmts.clear()
        self.strata_portals.clear()
        for be in (self.live, self.hist):
            if be is not None:
                be.prepared.clear()
