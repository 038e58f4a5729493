"""Recognise the statements the proxy acts on, with PostgreSQL's own parser.

What it is: a classifier over SQL text (a simple-Query string, possibly many
statements, or the text of one Parse message) built on pglast (libpg_query,
the PostgreSQL 18 grammar), so quoting, comments, case, ``=`` versus ``TO``
and dollar-quoted bodies are understood exactly as the server would.
Fed by: `proxy.session` (query texts from the client).
Feeds: `proxy.session`, which runs `Statement` values of a strata `Kind`
itself and relays everything else untouched.
Owns: which statements are "ours":

- ``SET [SESSION] strata.travel_time {=|TO} '<timestamptz>'`` -> SET_TIME
- ``SET [SESSION] strata.travel_lsn {=|TO} 'X/Y'``             -> SET_LSN
- ``RESET strata.travel_time|travel_lsn``, ``SET ... TO DEFAULT`` -> RESET_TRAVEL
- ``SET LOCAL strata.travel_*``  -> SET_LOCAL_TRAVEL: rejected by the session
  (0A000): a transaction-scoped switch of server cannot be honoured, and a
  time-travel SET is refused inside a transaction block anyway.
- ``RESET ALL`` -> RESET_ALL and ``DISCARD ALL`` -> DISCARD_ALL: relayed to
  the server *and* they return the session to the present.
- ``SHOW strata.travel_time|travel_lsn`` -> SHOW_TIME / SHOW_LSN.

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

TRAVEL_TIME = "strata.travel_time"
TRAVEL_LSN = "strata.travel_lsn"
_TRAVEL_NAMES = (TRAVEL_TIME, TRAVEL_LSN)

# Cheap prefilter: text without one of these words cannot hold a statement of
# ours, and most traffic (pgbench, ORMs) never parses at all.
_MAYBE_OURS = re.compile(r"strata|reset|discard", re.IGNORECASE)


class Kind(enum.Enum):
    RELAY = "relay"
    SET_TIME = "set_time"
    SET_LSN = "set_lsn"
    SET_LOCAL_TRAVEL = "set_local_travel"
    RESET_TRAVEL = "reset_travel"
    RESET_ALL = "reset_all"
    DISCARD_ALL = "discard_all"
    SHOW_TIME = "show_time"
    SHOW_LSN = "show_lsn"

    @property
    def handled_by_proxy(self) -> bool:
        """True when the statement is executed by the proxy (never relayed as is)."""
        return self not in (Kind.RELAY,)


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement: its text (sliced from the original) and what it is.

    `value` is the literal of a SET_TIME/SET_LSN; `name` the strata setting
    concerned (or None).
    """

    text: str
    kind: Kind
    value: str | None = None
    name: str | None = None

    @property
    def command_tag(self) -> str:
        return {
            Kind.SET_TIME: "SET", Kind.SET_LSN: "SET", Kind.SET_LOCAL_TRAVEL: "SET",
            Kind.RESET_TRAVEL: "RESET", Kind.RESET_ALL: "RESET", Kind.DISCARD_ALL: "DISCARD ALL",
            Kind.SHOW_TIME: "SHOW", Kind.SHOW_LSN: "SHOW",
        }.get(self.kind, "")


class BadTravelValue(ValueError):
    """A SET of a travel setting whose value is not one literal (e.g. a list)."""


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


def _classify(node: ast.Node, text: str) -> Statement:
    if isinstance(node, ast.VariableSetStmt):
        name = (node.name or "").lower()
        if node.kind == VariableSetKind.VAR_RESET_ALL:
            return Statement(text, Kind.RESET_ALL)
        if name in _TRAVEL_NAMES:
            if node.is_local:
                return Statement(text, Kind.SET_LOCAL_TRAVEL, name=name)
            if node.kind in (VariableSetKind.VAR_RESET, VariableSetKind.VAR_SET_DEFAULT):
                return Statement(text, Kind.RESET_TRAVEL, name=name)
            if node.kind == VariableSetKind.VAR_SET_VALUE:
                args = node.args or ()
                if len(args) != 1:
                    raise BadTravelValue(f"SET {name} takes exactly one value")
                value = _literal(args[0])
                kind = Kind.SET_TIME if name == TRAVEL_TIME else Kind.SET_LSN
                return Statement(text, kind, value=value, name=name)
            raise BadTravelValue(f"this form of SET is not supported for {name}")
    elif isinstance(node, ast.DiscardStmt):
        if node.target == DiscardMode.DISCARD_ALL:
            return Statement(text, Kind.DISCARD_ALL)
    elif isinstance(node, ast.VariableShowStmt):
        name = (node.name or "").lower()
        if name == TRAVEL_TIME:
            return Statement(text, Kind.SHOW_TIME, name=name)
        if name == TRAVEL_LSN:
            return Statement(text, Kind.SHOW_LSN, name=name)
    return Statement(text, Kind.RELAY)


def split_statements(sql: str) -> list[Statement] | None:
    """Classify every statement of `sql`.

    Returns: None when `sql` holds nothing the proxy acts on (relay the text
    untouched, as one message); else the statements in order, each with its
    own text sliced at the parser's statement boundaries.
    Raises: BadTravelValue when a travel SET has an unusable value.
    """
    if _MAYBE_OURS.search(sql) is None:
        return None
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
    """
    stmts = split_statements(sql)
    if stmts is None or len(stmts) != 1:
        return None
    return stmts[0]
