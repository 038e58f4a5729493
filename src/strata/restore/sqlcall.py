"""The SQL form of restore: ``CALL strata.restore_table(...)`` and its siblings.

What it is: `parse_call` (a CallStmt from PostgreSQL's own grammar, via
pglast, to a `restore.plan.Request`, or None when it is not ours) and
`run_call` (the restore run for a session's role, its progress as notices,
its report as lines). The proxy recognises the statement and calls these;
nothing here knows the wire protocol.
Fed by: the proxy (the parsed statement, the session's role and database,
the daemon's own connection facts). Feeds: the proxy (notices, the report,
or a RestoreError with its SQLSTATE).
Owns: the procedures' signatures and the privilege rule:

- ``strata.restore_table(name text, at text, as_name text DEFAULT NULL,
  replace boolean DEFAULT false, db text DEFAULT <the session's database>)``;
  ``strata.restore_schema`` takes the same; ``strata.restore_database(name
  text, at text, as_name text DEFAULT NULL)``; arguments are constants,
  positional or named (``as_name => 'x'``);
- the restore acts as the session's role on both sides: pg_dump reads the
  past with ``--role`` (so the role's privileges at that point apply) and the
  present runs under ``SET ROLE`` (so creating, dropping and owning follow
  the role's rights now); the proxy only lets roles that may time travel
  call it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pglast import ast

from strata.errors import ConfigError
from strata.progress import Progress
from strata.restore.endpoint import Endpoint
from strata.restore.plan import Kind, Request

SCHEMA = "strata"
PROCEDURES = {"restore_table": Kind.TABLE, "restore_schema": Kind.SCHEMA,
              "restore_database": Kind.DATABASE}
PARAMS = ("name", "at", "as_name", "replace", "db")


def _constant(node: Any, proc: str) -> str | bool | None:
    if isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.A_Const):
        if node.isnull:
            return None
        v = node.val
        if isinstance(v, ast.String):
            return str(v.sval)
        if isinstance(v, ast.Boolean):
            return bool(v.boolval)
        if isinstance(v, ast.Integer):
            return str(v.ival)
    raise ConfigError(f"{SCHEMA}.{proc}: arguments must be constants")


def parse_call(stmt: Any, session_db: str) -> Request | None:
    """The restore a ``CALL strata.restore_*(...)`` asks for; None when `stmt`
    is another statement. Raises: ConfigError for wrong arguments."""
    if not isinstance(stmt, ast.CallStmt) or stmt.funccall is None:
        return None
    names = [getattr(n, "sval", "") for n in stmt.funccall.funcname or ()]
    if len(names) != 2 or names[0] != SCHEMA or names[1] not in PROCEDURES:
        return None
    proc, kind = names[1], PROCEDURES[names[1]]
    allowed = PARAMS[:3] if kind is Kind.DATABASE else PARAMS
    values: dict[str, str | bool | None] = {}
    named = False
    for i, arg in enumerate(stmt.funccall.args or ()):
        if isinstance(arg, ast.NamedArgExpr):
            key = str(arg.name)
            if key not in allowed:
                raise ConfigError(f"{SCHEMA}.{proc} has no parameter {key!r} "
                                  f"(it takes {', '.join(allowed)})")
            values[key] = _constant(arg.arg, proc)
            named = True
        else:
            if i >= len(allowed) or named:
                raise ConfigError(f"{SCHEMA}.{proc}({', '.join(allowed)}): too many or "
                                  "misplaced arguments")
            values[allowed[i]] = _constant(arg, proc)
    if not isinstance(values.get("name"), str) or not isinstance(values.get("at"), str):
        raise ConfigError(f"{SCHEMA}.{proc} needs a name and a point: "
                          f"CALL {SCHEMA}.{proc}('name', 'time or LSN')")
    as_name, replace, db = values.get("as_name"), values.get("replace"), values.get("db")
    return Request(kind, str(values["name"]), str(values["at"]),
                   str(db) if isinstance(db, str) else session_db,
                   str(as_name) if isinstance(as_name, str) else None, replace is True)


class NoticeProgress(Progress):
    """Progress as notices to the calling session (one per stage and table)."""

    def __init__(self, notice: Callable[[str], None]) -> None:
        self.notice = notice

    def stage(self, text: str) -> None:
        self.notice(f"strata restore: {text}")

    def note(self, text: str) -> None:
        self.notice(f"strata restore: {text}")


def run_call(req: Request, daemon: Endpoint, session_role: str,
             notice: Callable[[str], None]) -> list[str]:
    """Run `req` as `session_role` (connecting as the daemon's role, then
    acting as the session's) and return the report's lines.
    Raises: RestoreError / ConfigError (nothing changed)."""
    from strata.restore.restore import report, restore

    ep = dataclasses.replace(daemon, role=session_role, application="strata restore (SQL)")
    res = restore(req, ep, NoticeProgress(notice))
    return report(res).splitlines()


def run_sql(text: str, session_db: str, session_role: str, notice: Callable[[str], None],
            daemon: Endpoint) -> list[str]:
    """Parse one ``CALL strata.restore_*(...)`` statement and run it (the
    proxy's entry point: it recognises the statement, this does the rest).
    Raises: ConfigError (not such a call, wrong arguments), RestoreError."""
    import pglast

    try:
        stmts = pglast.parse_sql(text)
    except pglast.parser.ParseError as e:
        raise ConfigError(f"cannot parse {text!r}: {e}") from e
    req = parse_call(stmts[0].stmt, session_db) if len(stmts) == 1 else None
    if req is None:
        raise ConfigError(f"not a call of {SCHEMA}.restore_table, restore_schema or "
                          f"restore_database: {text!r}")
    return run_call(req, daemon, session_role, notice)


@dataclasses.dataclass(frozen=True)
class SqlRestorer:
    """What the daemon hands the proxy: runs a ``CALL strata.restore_*``
    statement's text for a session (its database and role). Connects back
    through the proxy (`port`, read when called: the proxy starts after this
    is made) as the daemon's own role, then acts as the session's role."""

    home: Any
    port: Callable[[], int]
    user: str
    passfile: str | None = None

    def __call__(self, text: str, session_db: str, session_role: str,
                 notice: Callable[[str], None]) -> list[str]:
        daemon = Endpoint("127.0.0.1", self.port(), self.user, self.home,
                          passfile=self.passfile)
        return run_sql(text, session_db, session_role, notice, daemon)
