"""What the proxy runs and reports to move a session through time.

What it is: the SQL the proxy sends to servers for its own purposes
(privilege check, timestamp input, carrying session settings, raising an
error on a server), the `TravelState` of a session, `TravelFailure`, the
error a strata statement ends with, and `Travelling`, the session methods
that switch servers (travel, return to the present, report a failure
leaving the servers in PostgreSQL's state).
Fed by: `proxy.session`.
Feeds: the servers (SQL texts) and the client (ErrorResponse fields, with
SQLSTATEs from `proxy.sqlstate`).
Owns: the texts below; every query is schema-qualified so a session's
search_path cannot redirect it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from strata.errors import StrataError
from strata.lsn import Lsn
from strata.proxy import messages as m
from strata.proxy import sqlstate as ss
from strata.proxy.history import ResolvedPoint
from strata.proxy.routing import Backend, InternalResult, ProxyContext, open_trusted
from strata.proxy.statements import TRAVEL_LSN, TRAVEL_TIME, Kind, Statement

log = logging.getLogger(__name__)

TRAVEL_ROLE = "strata_time_travel"
PG_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

PRIVILEGE_SQL = (
    "SELECT r.rolsuper OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles t "
    f"WHERE t.rolname = '{TRAVEL_ROLE}' AND pg_catalog.pg_has_role(r.oid, t.oid, 'MEMBER')) "
    "FROM pg_catalog.pg_roles r WHERE r.rolname = session_user"
)
# Exact microseconds since the Unix epoch (extract returns numeric: no float
# rounding), the value as the session displays it, and the session TimeZone.
TIMESTAMP_SQL = (
    "SELECT CASE WHEN pg_catalog.isfinite(t) "
    "THEN (extract(epoch FROM t) * 1000000)::int8 END, t::text, "
    "pg_catalog.current_setting('TimeZone') FROM (SELECT $1::text::timestamptz AS t) s"
)
NOT_CARRIED = ("default_transaction_read_only", "transaction_read_only",
                "transaction_isolation", "transaction_deferrable", "in_hot_standby")
SETTINGS_SQL = (
    "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' AND name NOT IN ("
    + ", ".join(f"'{n}'" for n in NOT_CARRIED) + ") "
    "UNION ALL SELECT 'role', pg_catalog.current_setting('role') "
    "WHERE pg_catalog.current_setting('role') <> 'none'"
)
APPLY_SQL = ("SELECT count(pg_catalog.set_config(key, value, false)) "
              "FROM pg_catalog.json_each_text($1::text::json)")

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


def raise_sql(fields: Mapping[str, str]) -> str:
    """A DO block raising `fields` on a server (hex-encoded: no quoting issues)."""
    def lit(s: str) -> str:
        return f"convert_from(decode('{s.encode('utf-8', 'surrogateescape').hex()}', 'hex'), 'UTF8')"
    opts = [f"ERRCODE = '{fields.get('C', ss.INTERNAL_ERROR)}'", f"MESSAGE = {lit(fields.get('M', ''))}"]
    if fields.get("D"):
        opts.append(f"DETAIL = {lit(fields['D'])}")
    if fields.get("H"):
        opts.append(f"HINT = {lit(fields['H'])}")
    return f"DO $strata$BEGIN RAISE EXCEPTION USING {', '.join(opts)}; END$strata$"


def exc_fields(exc: BaseException, what: str) -> dict[str, str]:
    hint = None
    nearest = getattr(exc, "nearest", None)
    if nearest is not None:
        hint = f"the nearest valid point is {nearest}"
    msg = str(exc) or type(exc).__name__
    return m.error_fields(ss.sqlstate_for(exc), f"{what}: {msg}", hint=hint)


class Travelling:
    """The part of a session that moves it between servers (mixed into
    `proxy.session.Session`, which owns the attributes declared here)."""

    ctx: ProxyContext
    cw: asyncio.StreamWriter
    live: Backend | None
    hist: Backend | None
    current: Backend | None
    travel: TravelState | None
    user: str
    dbname: str
    live_dbname: str
    hist_startup: m.StartupMessage | None

    def _start_pump(self, be: Backend, pending: Sequence[m.Message] = ()) -> None:
        raise NotImplementedError

    @staticmethod
    def _check_no_block(cur: Backend, st: Statement) -> None:
        if cur.status == "T":
            raise failure(ss.ACTIVE_SQL_TRANSACTION,
                        f"{st.name or 'strata.travel_time'} cannot be changed inside a transaction block",
                        hint="COMMIT or ROLLBACK first")
        if cur.status == "E":
            raise failure(ss.IN_FAILED_SQL_TRANSACTION,
                        "current transaction is aborted, commands ignored until end of transaction block")

    async def _provider(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except StrataError as e:
            raise TravelFailure(exc_fields(e, what)) from e
        except OSError as e:
            raise TravelFailure(exc_fields(e, what)) from e
        except Exception as e:
            log.exception("history provider failed (%s)", what)
            raise TravelFailure(exc_fields(e, what)) from e

    async def _travel(self, st: Statement, *, in_batch: bool) -> None:
        cur = self.current
        live = self.live
        assert cur is not None and live is not None and st.value is not None
        self._check_no_block(cur, st)
        # privilege: on the primary, whatever server the session is on now
        live_in_batch = in_batch and live is cur
        priv = await self._internal(live, PRIVILEGE_SQL, in_batch=live_in_batch)
        if priv.error is not None:
            raise TravelFailure(priv.error, on_backend=live_in_batch)
        allowed = bool(priv.rows) and priv.rows[0][0] == b"t"
        if allowed:
            allowed = bool(await self._provider("time travel policy",
                                                self.ctx.provider.may_time_travel, self.user))
        if not allowed:
            raise failure(ss.INSUFFICIENT_PRIVILEGE, f"permission denied to set {st.name}",
                        detail=f'Role "{self.user}" may not time travel.',
                        hint=f'time travel is allowed to superusers and members of role "{TRAVEL_ROLE}"')
        provider = self.ctx.provider
        if st.kind is Kind.SET_TIME:
            res = await self._internal(cur, TIMESTAMP_SQL, (st.value,), in_batch=in_batch)
            if res.error is not None:
                raise TravelFailure(res.error, on_backend=in_batch)
            micros, display, tz = (v.decode() if v is not None else None for v in res.rows[0])
            if micros is None:
                raise failure(ss.INVALID_DATETIME_FORMAT,
                            f'time travel target "{st.value}" is not a finite point in time')
            when = PG_EPOCH + timedelta(microseconds=int(micros))
            point: ResolvedPoint = await self._provider(
                f'cannot travel to "{display}"', provider.resolve_time, when,
                literal=st.value, timezone=tz or "UTC")
            state = TravelState(TRAVEL_TIME, display or st.value, point)
        else:
            try:
                lsn = Lsn.parse(st.value.strip())
            except ValueError:
                raise failure(ss.INVALID_TEXT_REPRESENTATION,
                            f'invalid input syntax for type pg_lsn: "{st.value}"') from None
            point = await self._provider(f"cannot travel to LSN {lsn}", provider.resolve_lsn, lsn)
            state = TravelState(TRAVEL_LSN, str(lsn), point)
        host, port = await self._provider(f"no historical server at LSN {point.lsn}",
                                          provider.server_for, point, self.dbname)
        # server_for leased that server to this session: released when the
        # session leaves it (switch, RESET, disconnect), so the pool never stops
        # a server a session is using
        assert self.hist_startup is not None
        try:
            try:
                new = await open_trusted(host, port, self.hist_startup, role="historical",
                                         timeout=self.ctx.connect_timeout)
            except (TimeoutError, StrataError, OSError) as e:
                raise TravelFailure(exc_fields(e, f"cannot connect to the historical server at {host}:{port}")) from e
            self._start_pump(new)
            try:
                settings = await self._read_settings(cur, in_batch=in_batch)
                await self._apply_settings(new, settings, reset=False)
            except TravelFailure:
                new.close()
                raise
        except BaseException:
            self.release_point(point)
            raise
        await self._leave(cur, in_batch)
        if self.travel is not None:
            self.release_point(self.travel.point)
        self.hist, self.current, self.travel = new, new, state
        self.cw.write(m.encode_notice(m.error_fields(ss.SUCCESSFUL_COMPLETION,
                                                     self._where(state), severity="NOTICE")))

    def release_point(self, point: ResolvedPoint) -> None:
        """Tell the provider this session no longer uses the server at `point`
        (providers without leases need not implement `release_server`)."""
        release = getattr(self.ctx.provider, "release_server", None)
        if release is not None:
            try:
                release(point)
            except Exception:
                log.exception("releasing the historical server at %s failed", point.lsn)

    def _where(self, state: TravelState) -> str:
        p = state.point
        text = f"strata: session is now at LSN {p.lsn}"
        if state.setting == TRAVEL_TIME:
            text += f" ({state.display})"
        if p.last_commit_xid is not None:
            when = f" at {p.last_commit_time.isoformat(sep=' ')}" if p.last_commit_time else ""
            text += f"; last commit included: xid {p.last_commit_xid}{when}"
        else:
            text += "; no commit in history before this point"
        return text

    async def _leave(self, old: Backend, in_batch: bool) -> None:
        """The session moves off `old`: a historical server is dropped, the live
        one ends the batch it is in (its work so far is committed)."""
        if old is self.live:
            if in_batch and old.unsynced:
                await old.sync_internal()
        else:
            old.close()

    async def _return_to_present(self, *, in_batch: bool, discard: bool) -> None:
        cur, live = self.current, self.live
        assert cur is not None and live is not None
        if self.live_dbname != self.dbname:
            raise failure(ss.OBJECT_NOT_IN_PREREQUISITE_STATE,
                        f'this session started in the past of database "{self.dbname}" and '
                        "cannot return to its present",
                        hint="reconnect without the strata.travel_time/travel_lsn option")
        settings = await self._read_settings(cur, in_batch=in_batch)
        await self._apply_settings(live, settings, reset=True)
        if discard:
            res = await self._internal(live, "DISCARD ALL", in_batch=False)
            if res.error is not None:
                raise TravelFailure(res.error)
        cur.close()
        if self.travel is not None:
            self.release_point(self.travel.point)
        self.hist, self.current, self.travel = None, live, None
        self.cw.write(m.encode_notice(m.error_fields(
            ss.SUCCESSFUL_COMPLETION, "strata: session is back in the present", severity="NOTICE")))

    async def _read_settings(self, be: Backend, *, in_batch: bool) -> dict[str, str]:
        res = await self._internal(be, SETTINGS_SQL, in_batch=in_batch)
        if res.error is not None:
            raise TravelFailure(res.error, on_backend=in_batch)
        return {(r[0] or b"").decode(): (r[1] or b"").decode() for r in res.rows}

    async def _apply_settings(self, be: Backend, settings: dict[str, str], *, reset: bool) -> None:
        if reset:
            res = await self._internal(be, "RESET ALL", in_batch=False)
            if res.error is not None:
                raise TravelFailure(res.error)
        if settings:
            res = await self._internal(be, APPLY_SQL, (json.dumps(settings),), in_batch=False)
            if res.error is not None:
                f = dict(res.error)
                f["M"] = f"cannot carry the session's settings to the {be.role} server: {f.get('M', '')}"
                raise TravelFailure(f)

    async def _report_failure(self, fields: Mapping[str, str], *, in_batch: bool,
                    on_backend: bool = False) -> None:
        """Report a failed strata statement and leave the current server in the
        state PostgreSQL would be in after that error."""
        cur = self.current
        assert cur is not None
        if not on_backend and not cur.closed and (in_batch or cur.status == "T"):
            await self._internal(cur, raise_sql(fields), in_batch=in_batch)
        self.cw.write(m.encode_error(fields))

    # -- internal queries ------------------------------------------------------------------
    async def _internal(self, be: Backend, sql: str, params: Sequence[str | None] = (), *,
                        in_batch: bool) -> InternalResult:
        """`Backend.query_internal`, with its failures as `TravelFailure`; notices and
        notifications of the current server still reach the client."""
        if be.closed:
            raise failure(ss.CONNECTION_FAILURE, f"the {be.role} server connection is closed")
        try:
            return await be.query_internal(sql, params, in_batch=in_batch,
                                           forward=self.cw.write if be is self.current else None)
        except (ConnectionError, TimeoutError) as e:
            raise failure(ss.CONNECTION_FAILURE,
                        f"the {be.role} server {be.address} did not answer: {e}") from e
