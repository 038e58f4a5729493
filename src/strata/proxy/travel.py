"""Moving a session through time: the `Travel` object each session owns.

What it is: `Travel`, where a session is in time (a `TravelState` and the
historical backend, or the present) and the moves: run a strata statement,
go to a point, return to the present, report a failure leaving the servers
in the state PostgreSQL would be in; `TravelFailure`, the error a strata
statement ends with. The SQL it sends to servers for its own purposes is
in `proxy.travel_sql`.
Fed by: `proxy.session` (strata statements, with the session's servers).
Feeds: the servers (SQL texts), the history provider, and the client
(NOTICEs, ErrorResponses with SQLSTATEs from `proxy.sqlstate`).
Owns these rules:
- times a client sees (the target, the last commit, the nearest valid point)
  are formatted by the session's own server, in its TimeZone and DateStyle;
- ``current_setting('strata.travel_time'|'strata.travel_lsn')`` agrees with
  the first column of SHOW: the proxy's startup packets set both
  placeholders to '' and it sets them on every historical connection;
- a historical server's address never reaches the client (`proxy.scrub`);
- a refused historical session names the missing role or database and, when
  history knows it, the point from which it exists.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from strata.errors import StrataError
from strata.lsn import Lsn
from strata.progress import Laps
from strata.proxy import messages as m
from strata.proxy import sqlstate as ss
from strata.proxy.backend import Backend, InternalResult, StartupRefused, open_trusted
from strata.proxy.context import ProxyContext
from strata.proxy.history import IngestProgress, Progress, ResolvedPoint
from strata.proxy.scrub import Scrubber, scrub_paths
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
from strata.proxy.travel_sql import (
    APPLY_SQL,
    AUTHID_READABLE_SQL,
    CREATED_SQL,
    PRIVILEGE_SQL,
    SETTINGS_SQL,
    TIME_TEXT_SQL,
    TIMESTAMP_SQL,
    TRAVEL_ROLE,
    raise_sql,
)

log = logging.getLogger(__name__)

UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SHOW_COLUMNS = {
    Kind.SHOW_TIME: (m.Column(TRAVEL_TIME), m.Column("lsn")),
    Kind.SHOW_LSN: (m.Column(TRAVEL_LSN), m.Column("lsn")),
}


class TravelFailure(Exception):
    """A strata statement failed: `fields` is the ErrorResponse to send;
    `on_backend` means the current server produced it inside a batch and is
    already skipping to Sync."""

    def __init__(self, fields: Mapping[str, str], *, on_backend: bool = False) -> None:
        super().__init__(fields.get("M", ""))
        self.fields = dict(fields)
        self.on_backend = on_backend


def failure(code: str, message: str, *, hint: str | None = None,
            detail: str | None = None) -> TravelFailure:
    return TravelFailure(m.error_fields(code, message, hint=hint, detail=detail))


@dataclass(frozen=True, slots=True)
class TravelState:
    """Where a session is: which setting put it there, as displayed, and the point."""

    setting: str  # TRAVEL_TIME or TRAVEL_LSN
    display: str
    point: ResolvedPoint

    def where(self) -> str:
        if self.setting == TRAVEL_TIME:
            return f"{self.display} (LSN {self.point.lsn})"
        return f"LSN {self.point.lsn}"


def progress_text(p: IngestProgress) -> str:
    eta = f"~{p.eta:.0f} s to go" if p.eta is not None else "estimating the time to go"
    return (f"strata: waiting for ingest to reach LSN {p.target_lsn}: ingest at "
            f"{p.ingested_lsn}, the primary at {p.primary_lsn}, {eta}")


def _reason(exc: BaseException) -> str:
    """Why a connection failed, without the address the exception may name."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class SessionPort(Protocol):
    """What a `Travel` uses of the session that owns it (`proxy.session.Session`)."""

    ctx: ProxyContext
    cw: asyncio.StreamWriter
    user: str
    dbname: str
    live_dbname: str
    hist_startup: m.StartupMessage | None

    @property
    def current_backend(self) -> Backend: ...

    @property
    def live_backend(self) -> Backend: ...

    def route(self, be: Backend) -> None: ...

    def start_relay(self, be: Backend, first: bytes = b"") -> None: ...

    def forget_all_prepared(self) -> None: ...


class Travel:
    """A session's place in time (owned by `proxy.session.Session`)."""

    def __init__(self, session: SessionPort) -> None:
        self.s = session
        self.state: TravelState | None = None
        self.hist: Backend | None = None
        self._kinds: dict[Kind, Callable[[Statement, bool], Awaitable[None]]] = {
            Kind.SET_TIME: self._set, Kind.SET_LSN: self._set,
            Kind.RESET_TRAVEL: self._reset, Kind.SHOW_TIME: self._show, Kind.SHOW_LSN: self._show,
            Kind.RESET_ALL: self._reset_all, Kind.DISCARD_ALL: self._reset_all,
            Kind.SET_LOCAL_TRAVEL: self._refuse, Kind.SET_CONFIG: self._refuse,
            Kind.INVALID: self._refuse, Kind.CALL_RESTORE: self._call_restore,
        }

    # -- strata statements ---------------------------------------------------------------
    async def execute(self, st: Statement, *, in_batch: bool) -> None:
        """Run one strata statement and write its result to the client.
        Raises: TravelFailure."""
        await self._kinds[st.kind](st, in_batch)

    async def _refuse(self, st: Statement, in_batch: bool) -> None:
        if st.kind is Kind.INVALID:
            raise failure(ss.INVALID_PARAMETER_VALUE, st.value or "invalid value")
        if st.kind is Kind.SET_CONFIG:
            raise failure(ss.FEATURE_NOT_SUPPORTED, f"set_config() cannot change {st.name}",
                          hint=f"use SET {st.name} = '...' (and RESET {st.name})")
        raise failure(ss.FEATURE_NOT_SUPPORTED, f"SET LOCAL {st.name} is not supported",
                      hint=f"use SET {st.name} (session scope) outside a transaction block")

    async def _call_restore(self, st: Statement, in_batch: bool) -> None:
        """CALL strata.restore_*(...): the object comes back for the session's
        role, in transactions of its own (so not inside the session's
        transaction block); progress and the report arrive as notices."""
        s = self.s
        restorer = s.ctx.restorer
        if restorer is None:
            raise failure(ss.FEATURE_NOT_SUPPORTED, f"{st.name} needs the strata daemon")
        if s.current_backend.status in ("T", "E"):
            raise failure(ss.ACTIVE_SQL_TRANSACTION,
                          f"{st.name} cannot run inside a transaction block",
                          hint="it runs transactions of its own: COMMIT or ROLLBACK first")
        await self._check_privilege(st, in_batch, what=f"call {st.name}")
        loop = asyncio.get_running_loop()

        def notice(text: str) -> None:
            loop.call_soon_threadsafe(self.notice, text)

        try:
            lines = await asyncio.to_thread(restorer, st.text, s.dbname, s.user, notice)
        except StrataError as e:
            raise TravelFailure(m.error_fields(ss.sqlstate_for(e), scrub_paths(str(e)))) from e
        await asyncio.sleep(0)  # the notices the thread scheduled go first
        self.notice("\n".join(lines))
        s.cw.write(m.encode_command_complete(st.tag))

    async def _set(self, st: Statement, in_batch: bool) -> None:
        await self.go(st, in_batch=in_batch)
        self.s.cw.write(m.encode_command_complete(st.tag))

    async def _reset(self, st: Statement, in_batch: bool) -> None:
        self.check_no_block(self.s.current_backend, st)
        if self.state is not None:
            await self.back(in_batch=in_batch, discard=False)
        self.s.cw.write(m.encode_command_complete(st.tag))

    async def _show(self, st: Statement, in_batch: bool) -> None:
        cw = self.s.cw
        if not in_batch:
            cw.write(m.encode_row_description(SHOW_COLUMNS[st.kind]))
        cw.write(m.encode_data_row(self.show_values(st.kind)))
        cw.write(m.encode_command_complete("SHOW"))

    async def _reset_all(self, st: Statement, in_batch: bool) -> None:
        cur = self.s.current_backend
        res = await self.internal(cur, st.text, in_batch=in_batch)
        if res.error is not None:
            raise TravelFailure(res.error, on_backend=True)
        if st.kind is Kind.DISCARD_ALL:
            self.s.forget_all_prepared()
        if self.state is not None:
            await self.back(in_batch=in_batch, discard=st.kind is Kind.DISCARD_ALL)
        self.s.cw.write(m.encode_command_complete(res.tag or st.tag))

    def show_values(self, kind: Kind) -> list[str | None]:
        """SHOW's row; its first column is what ``current_setting`` reads."""
        t = self.state
        if t is None:
            return ["", None]
        wanted = TRAVEL_TIME if kind is Kind.SHOW_TIME else TRAVEL_LSN
        return [t.display if t.setting == wanted else "", str(t.point.lsn)]

    @staticmethod
    def check_no_block(cur: Backend, st: Statement) -> None:
        if cur.status == "T":
            raise failure(ss.ACTIVE_SQL_TRANSACTION,
                          f"{st.name or TRAVEL_TIME} cannot be changed inside a transaction block",
                          hint="COMMIT or ROLLBACK first")
        if cur.status == "E":
            raise failure(ss.IN_FAILED_SQL_TRANSACTION,
                          "current transaction is aborted, commands ignored until end of "
                          "transaction block")

    # -- going to a point -----------------------------------------------------------------
    async def go(self, st: Statement, *, in_batch: bool) -> None:
        """Move the session to the point `st` (SET_TIME/SET_LSN) names."""
        s = self.s
        cur = s.current_backend
        assert st.value is not None
        laps = Laps()
        self.check_no_block(cur, st)
        await self._check_privilege(st, in_batch)
        laps("privilege")
        provider = s.ctx.provider
        lsn: Lsn | None = None
        if st.kind is Kind.SET_TIME:
            when, display, tz = await self._timestamp(cur, st.value, in_batch)
        else:
            try:
                lsn = Lsn.parse(st.value.strip())
            except ValueError:
                raise failure(ss.INVALID_TEXT_REPRESENTATION,
                              f'invalid input syntax for type pg_lsn: "{st.value}"') from None
            display = str(lsn)
        settings = await self._read_settings(cur, in_batch=in_batch)
        laps("settings")
        wait = self._wait(settings)
        if lsn is None:
            state = await self._resolve_time(when, st.value, tz, display, wait, (cur, in_batch))
        else:
            state = await self._resolve_lsn(lsn, wait, (cur, in_batch))
        point = state.point
        laps("resolve")
        host, port = await self._provider(f"no historical server at LSN {point.lsn}",
                                          provider.server_for, point, s.dbname)
        laps("server")
        # server_for leased that server to this session: released when the
        # session leaves it (switch, RESET, disconnect), so the pool never stops
        # a server a session is using
        try:
            new = await self._open(host, port, state, in_batch)
            try:
                settings[TRAVEL_TIME] = display if lsn is None else ""
                settings[TRAVEL_LSN] = display if lsn is not None else ""
                committed = await self._apply_settings(new, settings, reset=False,
                                                       time=point.last_commit_time)
            except TravelFailure:
                new.close()
                raise
        except BaseException:
            self.release(point)
            raise
        await self._leave(cur, in_batch)
        if self.state is not None:
            self.release(self.state.point)
        self.hist, self.state = new, state
        s.route(new)
        self.notice(self._arrived(state, committed))
        laps("connect")
        log.info("travelled to %s (LSN %s): %s", display, point.lsn, laps)

    async def _resolve_time(self, when: datetime, literal: str, tz: str, display: str,
                            wait: float, fmt: tuple[Backend, bool]) -> TravelState:
        point = await self._provider(
            f'cannot travel to "{display}"', self.s.ctx.provider.resolve_time, when,
            literal=literal, timezone=tz, wait=wait, progress=self._progress(), fmt=fmt)
        return TravelState(TRAVEL_TIME, display, point)

    async def _resolve_lsn(self, lsn: Lsn, wait: float, fmt: tuple[Backend, bool]) -> TravelState:
        point = await self._provider(f"cannot travel to LSN {lsn}", self.s.ctx.provider.resolve_lsn,
                                     lsn, wait=wait, progress=self._progress(), fmt=fmt)
        return TravelState(TRAVEL_LSN, display=str(lsn), point=point)

    async def _check_privilege(self, st: Statement, in_batch: bool, *,
                               what: str | None = None) -> None:
        """Superuser or member of strata_time_travel, on the primary whatever
        server the session is on now; then the provider's policy."""
        s = self.s
        live = s.live_backend
        live_in_batch = in_batch and live is s.current_backend
        priv = await self.internal(live, PRIVILEGE_SQL, in_batch=live_in_batch)
        if priv.error is not None:
            raise TravelFailure(priv.error, on_backend=live_in_batch)
        allowed = bool(priv.rows) and priv.rows[0][0] == b"t"
        if allowed:
            allowed = bool(await self._provider("time travel policy",
                                                s.ctx.provider.may_time_travel, s.user))
        if not allowed:
            raise failure(ss.INSUFFICIENT_PRIVILEGE,
                          f"permission denied to {what or f'set {st.name}'}",
                          detail=f'Role "{s.user}" may not time travel.',
                          hint=f'time travel is allowed to superusers and members of role '
                               f'"{TRAVEL_ROLE}"')

    async def _timestamp(self, cur: Backend, literal: str,
                         in_batch: bool) -> tuple[datetime, str, str]:
        """The literal read by the session's server: (instant, display, TimeZone)."""
        res = await self.internal(cur, TIMESTAMP_SQL, (literal,), in_batch=in_batch)
        if res.error is not None:
            raise TravelFailure(res.error, on_backend=in_batch)
        micros, display, tz = (v.decode() if v is not None else None for v in res.rows[0])
        if micros is None:
            raise failure(ss.INVALID_DATETIME_FORMAT,
                          f'time travel target "{literal}" is not a finite point in time')
        return (UNIX_EPOCH + timedelta(microseconds=int(micros)), display or literal,
                tz or "UTC")

    @staticmethod
    def _wait(settings: Mapping[str, str]) -> float:
        try:
            return parse_duration(settings.get(TRAVEL_WAIT) or DEFAULT_TRAVEL_WAIT)
        except BadTravelValue as e:
            raise failure(ss.INVALID_PARAMETER_VALUE, str(e)) from None

    def _progress(self) -> Progress:
        """The provider's progress callback: a NOTICE, written by the event loop."""
        loop = asyncio.get_running_loop()

        def report(p: IngestProgress) -> None:
            loop.call_soon_threadsafe(self.notice, progress_text(p))

        return report

    async def _open(self, host: str, port: int, state: TravelState, in_batch: bool) -> Backend:
        """A session on the historical server, relaying (its errors scrubbed)."""
        s = self.s
        scrubber = Scrubber(host, port)
        assert s.hist_startup is not None
        try:
            new = await open_trusted(host, port, s.hist_startup, role="historical",
                                     timeout=s.ctx.connect_timeout, scrub=scrubber.body)
        except StartupRefused as e:
            raise await self._refused(e.fields, state, scrubber, in_batch) from e
        except (TimeoutError, StrataError, OSError) as e:
            log.warning("cannot connect to the historical server at %s:%s: %s", host, port, e)
            raise TravelFailure(m.error_fields(
                ss.sqlstate_for(e), "cannot connect to the historical server at "
                f"{state.where()}: {scrub_paths(scrubber.text(_reason(e)))}")) from e
        s.start_relay(new)
        return new

    async def _refused(self, fields: Mapping[str, str], state: TravelState, scrubber: Scrubber,
                       in_batch: bool) -> TravelFailure:
        """A historical server refused the session: say what did not exist then."""
        s = self.s
        code, message = fields.get("C"), fields.get("M", "")
        what, name = None, ""
        if code == ss.INVALID_AUTHORIZATION_SPECIFICATION and "does not exist" in message:
            what, name = "role", s.user
        elif code == ss.INVALID_CATALOG_NAME:
            what, name = "database", s.dbname
        if what is None:
            f = scrubber.fields(fields)
            f["M"] = f"the historical server at {state.where()} refused the session: {f.get('M', '')}"
            return TravelFailure(f)
        hint = f"travel to a point after the {what} was created"
        since = await self._created(what, name, in_batch)
        if since is not None:
            lsn, when = since
            hint = f'{what} "{name}" exists from LSN {lsn} on' + (f" (committed at {when})"
                                                                   if when else "")
        return failure(ss.INVALID_PARAMETER_VALUE,
                       f'{what} "{name}" did not exist at {state.where()}', hint=hint)

    async def _created(self, what: str, name: str, in_batch: bool) -> tuple[Lsn, str | None] | None:
        """The point from which role/database `name` exists as it is now (the
        commit of its catalog row's xmin on the primary), if history knows it
        and the session may read that row."""
        s = self.s
        live = s.live_backend
        lib = in_batch and live is s.current_backend
        try:
            if what == "role":
                res = await self.internal(live, AUTHID_READABLE_SQL, in_batch=lib)
                if res.error is not None or not res.rows or res.rows[0][0] != b"t":
                    return None
            res = await self.internal(live, CREATED_SQL[what], (name,), in_batch=lib)
            if res.error is not None or not res.rows or res.rows[0][0] is None:
                return None
            point = await self._provider("the commit of a transaction",
                                         s.ctx.provider.commit_of_xid, int(res.rows[0][0]))
        except TravelFailure:
            return None
        if point is None:
            return None
        when = await self.time_text(live, point.last_commit_time, in_batch=lib)
        return point.lsn, when

    async def _provider(self, what: str, fn: Callable[..., Any], *args: Any,
                        fmt: tuple[Backend, bool] | None = None, **kw: Any) -> Any:
        """Call the history provider in a worker thread; its failures become a
        TravelFailure (paths hidden; a nearest time formatted on `fmt`'s server)."""
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except Exception as e:
            if not isinstance(e, StrataError | OSError):
                log.exception("history provider failed (%s)", what)
            hint = None
            nearest = getattr(e, "nearest", None)
            if isinstance(nearest, datetime) and fmt is not None:
                nearest = await self.time_text(fmt[0], nearest, in_batch=fmt[1]) or nearest
            if nearest is not None:
                hint = f"the nearest valid point is {nearest}"
            msg = scrub_paths(str(e) or type(e).__name__)
            raise TravelFailure(m.error_fields(ss.sqlstate_for(e), f"{what}: {msg}",
                                               hint=hint)) from e

    def release(self, point: ResolvedPoint) -> None:
        """Tell the provider this session no longer uses the server at `point`
        (providers without leases need not implement `release_server`)."""
        release = getattr(self.s.ctx.provider, "release_server", None)
        if release is not None:
            try:
                release(point)
            except Exception:
                log.exception("releasing the historical server at %s failed", point.lsn)

    def notice(self, text: str) -> None:
        self.s.cw.write(m.encode_notice(m.error_fields(ss.SUCCESSFUL_COMPLETION, text,
                                                       severity="NOTICE")))

    @staticmethod
    def _arrived(state: TravelState, committed: str | None) -> str:
        p = state.point
        text = f"strata: session is now at LSN {p.lsn}"
        if state.setting == TRAVEL_TIME:
            text += f" ({state.display})"
        if p.last_commit_xid is not None:
            text += f"; last commit included: xid {p.last_commit_xid}"
            if committed:
                text += f" at {committed}"
        else:
            text += "; no commit in history before this point"
        return text

    # -- leaving a server ------------------------------------------------------------------
    async def _leave(self, old: Backend, in_batch: bool) -> None:
        """The session moves off `old`: a historical server is dropped, the live
        one ends the batch it is in (its work so far is committed)."""
        if old is self.s.live_backend:
            if in_batch and old.state.unsynced:
                await old.sync_internal()
        else:
            old.close()

    async def back(self, *, in_batch: bool, discard: bool) -> None:
        """Return the session to the present (the live server)."""
        s = self.s
        cur, live = s.current_backend, s.live_backend
        if s.live_dbname != s.dbname:
            raise failure(ss.OBJECT_NOT_IN_PREREQUISITE_STATE,
                          f'this session started in the past of database "{s.dbname}" and '
                          "cannot return to its present",
                          hint="reconnect without the strata.travel_time/travel_lsn option")
        settings = await self._read_settings(cur, in_batch=in_batch)
        await self._apply_settings(live, settings, reset=True)
        if discard:
            res = await self.internal(live, "DISCARD ALL", in_batch=False)
            if res.error is not None:
                raise TravelFailure(res.error)
        cur.close()
        if self.state is not None:
            self.release(self.state.point)
        self.hist, self.state = None, None
        s.route(live)
        self.notice("strata: session is back in the present")

    def closed(self) -> None:
        """The session ended: give the historical server back."""
        if self.hist is not None:
            self.hist.close()
        if self.state is not None:
            self.release(self.state.point)
        self.hist = self.state = None

    # -- settings -------------------------------------------------------------------------
    async def _read_settings(self, be: Backend, *, in_batch: bool) -> dict[str, str]:
        res = await self.internal(be, SETTINGS_SQL, in_batch=in_batch)
        if res.error is not None:
            raise TravelFailure(res.error, on_backend=in_batch)
        return {(r[0] or b"").decode(): (r[1] or b"").decode() for r in res.rows}

    async def _apply_settings(self, be: Backend, settings: dict[str, str], *, reset: bool,
                              time: datetime | None = None) -> str | None:
        """Apply `settings` on `be` (after RESET ALL when `reset`); returns
        `time` as `be` displays it."""
        if reset:
            res = await self.internal(be, "RESET ALL", in_batch=False)
            if res.error is not None:
                raise TravelFailure(res.error)
        if not settings and time is None:
            return None
        res = await self.internal(be, APPLY_SQL, (json.dumps(settings), _iso(time)),
                                  in_batch=False)
        if res.error is not None:
            f = dict(res.error)
            f["M"] = f"cannot carry the session's settings to the {be.role} server: {f.get('M', '')}"
            raise TravelFailure(f)
        shown = res.rows[0][1] if res.rows else None
        return shown.decode() if shown is not None else None

    async def time_text(self, be: Backend, when: datetime | None, *, in_batch: bool) -> str | None:
        """`when` as the session shows times (its TimeZone and DateStyle on `be`)."""
        if when is None:
            return None
        res = await self.internal(be, TIME_TEXT_SQL, (_iso(when),), in_batch=in_batch)
        if res.error is not None or not res.rows or res.rows[0][0] is None:
            return None
        return res.rows[0][0].decode()

    # -- failures and internal queries -------------------------------------------------------
    async def report_failure(self, fields: Mapping[str, str], *, in_batch: bool,
                             on_backend: bool = False) -> None:
        """Report a failed strata statement and leave the current server in the
        state PostgreSQL would be in after that error."""
        cur = self.s.current_backend
        if not on_backend and not cur.closed and (in_batch or cur.status == "T"):
            await self.internal(cur, raise_sql(fields), in_batch=in_batch)
        self.s.cw.write(m.encode_error(fields))

    async def internal(self, be: Backend, sql: str, params: Sequence[str | None] = (), *,
                       in_batch: bool) -> InternalResult:
        """`Backend.query_internal`, with its failures as `TravelFailure`; notices and
        notifications of the current server still reach the client."""
        if be.closed:
            raise failure(ss.CONNECTION_FAILURE, f"the {be.role} server connection is closed")
        try:
            return await be.query_internal(
                sql, params, in_batch=in_batch,
                forward=self.s.cw.write if be is self.s.current_backend else None)
        except (ConnectionError, TimeoutError) as e:
            raise failure(ss.CONNECTION_FAILURE,
                          f"the {be.role} server did not answer: {_reason(e)}") from e


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.isoformat()
