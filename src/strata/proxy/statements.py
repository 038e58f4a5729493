"""Recognise the statements the proxy acts on, with PostgreSQL's own parser.

What it is: a cheap byte test (`maybe_ours`) and a classifier over SQL text
(a simple-Query string, possibly many statements, or the text of one Parse
message) built on pglast (libpg_query, the PostgreSQL 18 grammar), so
quoting, comments, case, ``=`` versus ``TO`` and dollar-quoted bodies are
understood exactly as the server would.
Fed by: `proxy.machine` (the bodies of Query and Parse messages).
Feeds: `proxy.machine` and `proxy.session`, which run `Statement` values of
a strata `Kind` themselves and relay everything else untouched.
Owns: which statements are "ours", and the settings' value syntax:

- ``SET [SESSION] strata.travel_time {=|TO} '<timestamptz>'`` -> SET_TIME
- ``SET [SESSION] strata.travel_lsn {=|TO} 'X/Y'``             -> SET_LSN
- ``RESET strata.travel_time|travel_lsn`` (tag RESET), ``SET ... TO DEFAULT``
  (tag SET, as PostgreSQL answers it) -> RESET_TRAVEL
- ``SET LOCAL strata.travel_*``  -> SET_LOCAL_TRAVEL: rejected by the session
  (0A000): a transaction-scoped switch of server cannot be honoured, and a
  time-travel SET is refused inside a transaction block anyway.
- ``set_config('strata.travel_time'|'strata.travel_lsn'|'strata.travel_wait', ...)``
  anywhere in a statement (the name a string constant) -> SET_CONFIG:
  rejected (0A000, use SET), so the server never holds a value that the
  proxy does not honour.
- ``RESET ALL`` -> RESET_ALL and ``DISCARD ALL`` -> DISCARD_ALL: relayed to
  the server *and* they return the session to the present.
- ``SHOW strata.travel_time|travel_lsn`` -> SHOW_TIME / SHOW_LSN.
- ``CALL strata.restore_table|restore_schema|restore_database(...)`` ->
  CALL_RESTORE: the proxy restores the object for the session's role
  (docs/restore.md says why a CALL); the arguments are read by
  `restore.sqlcall`, through the restorer the daemon gives the proxy.
- ``strata.travel_wait`` lives on the server as a placeholder setting (the
  proxy puts its default in every startup packet): SET, SET LOCAL, RESET and
  SHOW of it are relayed, once the value is checked here (a bad value is a
  `BadTravelValue`, like a bad travel SET).

Everything else is RELAY. Text the parser rejects is relayed untouched so the
server reports the syntax error itself.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import pglast
from pglast import ast
from pglast.enums import DiscardMode, VariableSetKind
from pglast.visitors import Visitor

TRAVEL_TIME = "strata.travel_time"
TRAVEL_LSN = "strata.travel_lsn"
TRAVEL_WAIT = "strata.travel_wait"
_TRAVEL_NAMES = (TRAVEL_TIME, TRAVEL_LSN)
_SETTINGS = (TRAVEL_TIME, TRAVEL_LSN, TRAVEL_WAIT)
DEFAULT_TRAVEL_WAIT = "30s"
RESTORE_PROCEDURES = ("restore_table", "restore_schema", "restore_database")



def maybe_ours(body: bytes) -> bool:
    """True when a Query/Parse body may hold a statement the proxy acts on.

    The cheap byte test: text without one of these words cannot hold a
    statement of ours (set_config of our settings names "strata"), and most
    traffic (pgbench, ORMs) never decodes or parses at all. (Lowercasing and
    three substring scans cost half of one case-insensitive regex search.)
    """
    low = body.lower()
    return b"strata" in low or b"reset" in low or b"discard" in low


class Kind(enum.Enum):
    RELAY = "relay"
    SET_TIME = "set_time"
    SET_LSN = "set_lsn"
    SET_LOCAL_TRAVEL = "set_local_travel"
    SET_CONFIG = "set_config"
    INVALID = "invalid"  # a Parse whose travel SET has an unusable value
    RESET_TRAVEL = "reset_travel"
    RESET_ALL = "reset_all"
    DISCARD_ALL = "discard_all"
    SHOW_TIME = "show_time"
    SHOW_LSN = "show_lsn"
    CALL_RESTORE = "call_restore"


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement: its text (sliced from the original) and what it is.

    `value` is the literal of a SET_TIME/SET_LSN (the message of an INVALID);
    `name` the strata setting concerned (or None); `tag` the command tag
    PostgreSQL would answer.
    """

    text: str
    kind: Kind
    value: str | None = None
    name: str | None = None
    tag: str = ""


class BadTravelValue(ValueError):
    """A SET of a strata setting whose value is unusable (a list, a bad duration)."""


def parse_duration(text: str) -> float:
    """Seconds in a ``strata.travel_wait`` value: a number with an optional
    unit as PostgreSQL's time settings take them (us, ms, s, min, h, d; no
    unit means seconds).

    Raises: BadTravelValue naming the value.
    """
    m = _DURATION.fullmatch(text)
    if m is None:
        raise BadTravelValue(
            f'invalid value for parameter "{TRAVEL_WAIT}": "{text}" '
            "(a duration such as 30s, 500ms or 2min; 0 fails at once)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s|min|h|d)?\s*")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def _literal(node: ast.Node) -> str:
    if isinstance(node, ast.A_Const) and not node.isnull:
        v = node.val
        if isinstance(v, ast.String):
            return str(v.sval)
        if isinstance(v, ast.Integer):
            return str(v.ival)
        if isinstance(v, ast.Float):
            return str(v.fval)
    raise BadTravelValue("the value must be a single string literal")


def _classify_set(node: ast.VariableSetStmt, text: str) -> Statement:
    name = (node.name or "").lower()
    if node.kind == VariableSetKind.VAR_RESET_ALL:
        return Statement(text, Kind.RESET_ALL, tag="RESET")
    if name == TRAVEL_WAIT:
        if node.kind == VariableSetKind.VAR_SET_VALUE:
            args = node.args or ()
            if len(args) != 1:
                raise BadTravelValue(f"SET {name} takes exactly one value")
            parse_duration(_literal(args[0]))
        return Statement(text, Kind.RELAY)
    if name not in _TRAVEL_NAMES:
        return Statement(text, Kind.RELAY)
    if node.is_local:
        return Statement(text, Kind.SET_LOCAL_TRAVEL, name=name, tag="SET")
    if node.kind == VariableSetKind.VAR_RESET:
        return Statement(text, Kind.RESET_TRAVEL, name=name, tag="RESET")
    if node.kind == VariableSetKind.VAR_SET_DEFAULT:
        return Statement(text, Kind.RESET_TRAVEL, name=name, tag="SET")
    if node.kind == VariableSetKind.VAR_SET_VALUE:
        args = node.args or ()
        if len(args) != 1:
            raise BadTravelValue(f"SET {name} takes exactly one value")
        value = _literal(args[0])
        kind = Kind.SET_TIME if name == TRAVEL_TIME else Kind.SET_LSN
        return Statement(text, kind, value=value, name=name, tag="SET")
    raise BadTravelValue(f"this form of SET is not supported for {name}")


class _SetConfigFinder(Visitor):  # type: ignore[misc]
    """Finds ``set_config('<strata setting>', ...)`` calls in a statement."""

    def __init__(self) -> None:
        super().__init__()
        self.found: str | None = None

    def visit_FuncCall(self, parent: object, node: ast.FuncCall) -> None:
        names = [getattr(n, "sval", "") for n in node.funcname or ()]
        if names and names[-1].lower() == "set_config" and node.args:
            first = node.args[0]
            if isinstance(first, ast.A_Const) and isinstance(first.val, ast.String):
                setting = str(first.val.sval).lower()
                if setting in _SETTINGS:
                    self.found = setting


def _set_config_of_ours(node: ast.Node, text: str) -> str | None:
    if "set_config" not in text.lower():
        return None
    finder = _SetConfigFinder()
    finder(node)
    return finder.found


def _classify(node: ast.Node, text: str) -> Statement:
    if isinstance(node, ast.VariableSetStmt):
        return _classify_set(node, text)
    if isinstance(node, ast.DiscardStmt):
        if node.target == DiscardMode.DISCARD_ALL:
            return Statement(text, Kind.DISCARD_ALL, tag="DISCARD ALL")
    elif isinstance(node, ast.VariableShowStmt):
        name = (node.name or "").lower()
        if name == TRAVEL_TIME:
            return Statement(text, Kind.SHOW_TIME, name=name, tag="SHOW")
        if name == TRAVEL_LSN:
            return Statement(text, Kind.SHOW_LSN, name=name, tag="SHOW")
    elif isinstance(node, ast.CallStmt) and node.funccall is not None:
        names = [getattr(n, "sval", "") for n in node.funccall.funcname or ()]
        if len(names) == 2 and names[0] == "strata" and names[1] in RESTORE_PROCEDURES:
            return Statement(text, Kind.CALL_RESTORE, name=f"strata.{names[1]}", tag="CALL")
    setting = _set_config_of_ours(node, text)
    if setting is not None:
        return Statement(text, Kind.SET_CONFIG, name=setting)
    return Statement(text, Kind.RELAY)


def split_statements(sql: str) -> list[Statement] | None:
    """Classify every statement of `sql`.

    Returns: None when `sql` holds nothing the proxy acts on (relay the text
    untouched, as one message); else the statements in order, each with its
    own text sliced at the parser's statement boundaries.
    Raises: BadTravelValue when a strata SET has an unusable value.
    """
    try:
        raw = pglast.parse_sql(sql)
    except (pglast.parser.ParseError, UnicodeError):
        return None
    out: list[Statement] = []
    ours = False
    for rs in raw:
        # pglast reports statement locations in characters of `sql` (it maps
        # libpg_query's byte offsets back); a zero length means "to the end".
        start = rs.stmt_location or 0
        end = start + rs.stmt_len if rs.stmt_len else len(sql)
        text = sql[start:end].strip()
        if rs.stmt is None:
            continue
        st = _classify(rs.stmt, text)
        ours = ours or st.kind is not Kind.RELAY
        out.append(st)
    return out if ours else None


def classify_single(sql: str) -> Statement | None:
    """For a Parse message: the strata statement it holds, or None to relay.

    A Parse may carry one statement only (the server rejects more), so a
    multi-statement text is left to the server to reject.
    Raises: BadTravelValue when a strata SET has an unusable value.
    """
    stmts = split_statements(sql)
    if stmts is None or len(stmts) != 1:
        return None
    return stmts[0]
