"""Where the past and the present are reached: the running daemon's proxy.

What it is: `Endpoint` (the proxy's address and the role to connect as, from
``<home>/state.json``), `Point` (one LSN in history with a description) and
`resolve_point`, plus the connection strings every restore-family command
uses: the present is the primary through the proxy; the past is the proxy
with the startup option ``-c strata.travel_lsn=X``, which also reaches a
database dropped since (the proxy authenticates against ``postgres``).
Fed by: the CLI (home, --at, --db, --user). Feeds: restore, diff, history,
attach-past. Owns: the rule that a command resolves ``--at`` once, to an LSN,
and then uses only that LSN, so pg_dump, its own queries and any later
connection all see the same state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strata.errors import ConfigError, RestoreError
from strata.lsn import Lsn

if TYPE_CHECKING:
    from strata.timemap.timemap import TimeMap

_LSN = re.compile(r"^\s*[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}\s*$")
_NOTICE = re.compile(r"session is now at (.*)$")


def is_lsn(text: str) -> bool:
    return _LSN.match(text) is not None


def libpq_option(value: str) -> str:
    """A value inside libpq's ``options``: backslash escapes spaces and backslashes."""
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def pg_error(e: BaseException) -> str:
    """A psycopg error as one line with its SQLSTATE."""
    diag = getattr(e, "diag", None)
    code = getattr(diag, "sqlstate", None) or getattr(e, "sqlstate", None)
    text = (getattr(diag, "message_primary", None) or str(e)).strip()
    return f"{text} (SQLSTATE {code})" if code else text


@dataclass(frozen=True, slots=True)
class Point:
    """A point in history: `lsn`, and how the proxy described it."""

    lsn: Lsn
    description: str

    def __str__(self) -> str:
        return self.description or f"LSN {self.lsn}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The running strata's proxy on 127.0.0.1 and the role to use."""

    host: str
    port: int
    user: str
    home: Path
    application: str = "strata"  # application_name of every session (pg_stat_activity)
    passfile: str | None = None  # the embedded primary's password file (home/FORMAT.md)
    role: str | None = None  # act as this role (SET ROLE) after connecting as `user`

    @classmethod
    def of_home(cls, home: Path, user: str | None = None,
                application: str = "strata") -> Endpoint:
        from strata.home import HomeLayout
        from strata.home.files import load_daemon_state

        state = load_daemon_state(HomeLayout(home).daemon_file)
        if state is None or not state.proxy_port:
            raise ConfigError(f"strata is not running on {home}: start it with `strata up`")
        return cls("127.0.0.1", int(state.proxy_port), user or state.target_user or "postgres",
                   home, application, state.passfile)

    def timemap(self) -> TimeMap:
        """The daemon's time map, opened read-only (the caller closes it)."""
        from strata.home import HomeLayout
        from strata.timemap.timemap import TimeMap

        tdir = HomeLayout(self.home).timemap
        if not (tdir / "timemap.dat").exists():
            raise ConfigError(f"no time map in {self.home}: has `strata up` run with this --home?")
        return TimeMap.open(tdir, readonly=True)

    def params(self, dbname: str, *, at: Lsn | str | None = None) -> dict[str, Any]:
        """Connection parameters for `dbname` in the present (`at` None) or at a
        point (an LSN, or a time literal: only `resolve_point` passes one)."""
        p: dict[str, Any] = {"host": self.host, "port": self.port, "dbname": dbname,
                             "user": self.user, "application_name": self.application}
        if self.passfile:
            p["passfile"] = self.passfile
        if at is not None:
            setting = "strata.travel_lsn" if isinstance(at, Lsn) or is_lsn(str(at)) \
                else "strata.travel_time"
            p["options"] = f"-c {setting}={libpq_option(str(at).strip())}"
        return p

    def conninfo(self, dbname: str, *, at: Lsn | None = None) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo("", **self.params(dbname, at=at))

    def connect(self, dbname: str, *, at: Lsn | None = None, autocommit: bool = True) -> Any:
        """A psycopg connection (through the proxy).

        Raises: RestoreError naming the database and point when it fails."""
        import psycopg

        try:
            conn = psycopg.connect(**self.params(dbname, at=at), autocommit=autocommit)
        except psycopg.Error as e:
            where = f" at LSN {at}" if at is not None else ""
            raise RestoreError(f"cannot connect to database {dbname}{where}: {pg_error(e)}") \
                from e
        if self.role is not None:
            try:
                conn.execute("SELECT pg_catalog.set_config('role', %s, false)", (self.role,))
                if not autocommit:
                    conn.commit()  # the role stays for the session, not one transaction
            except psycopg.Error as e:
                conn.close()
                raise RestoreError(f"cannot act as role {self.role}: {pg_error(e)}") from e
        return conn


def resolve_point(ep: Endpoint, at: str, dbname: str) -> Point:
    """`at` (a timestamptz literal, read in the session's TimeZone, or an LSN
    X/Y) resolved once by the proxy, exactly as ``SET strata.travel_*`` does.

    Raises: ConfigError with the proxy's message (future, before history,
    unparsable) or RestoreError when `dbname` cannot be reached there.
    """
    import psycopg

    notices: list[str] = []
    try:
        conn = psycopg.connect(**ep.params(dbname, at=at.strip()), autocommit=True)
    except psycopg.Error as e:
        msg = pg_error(e)
        if "does not exist" in msg:
            raise RestoreError(f"database {dbname} did not exist at {at}: {msg}") from e
        raise ConfigError(f"cannot travel to {at}: {msg}") from e
    with conn:
        row = conn.execute("SHOW strata.travel_lsn").fetchone()
        assert row is not None
        lsn = Lsn.parse(str(row[1]))
        # the startup's notice came before a handler could be added: travelling to
        # the same LSN again says what the point holds
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute(f"SET strata.travel_lsn = '{lsn}'")
    desc = ""
    for n in notices:
        m = _NOTICE.search(n)
        if m is not None:
            desc = m.group(1)
    return Point(lsn, desc or f"LSN {lsn}")
