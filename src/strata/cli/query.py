"""``strata query --at TIME|LSN [--db NAME] SQL``: one query in the past, for scripts.

Same semantics as ``SET strata.travel_time`` / ``SET strata.travel_lsn``
through the proxy (the session starts in the past through the startup option
``-c strata.travel_time=...``, so a database dropped since can be queried
too). Prints the result the way psql does by default (aligned, with a
header and a row count: each value exactly as the server writes it);
``--csv`` and ``--json`` for programs. Errors go to stderr with their
SQLSTATE and exit 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from typing import Any

from strata.cli._common import add_home
from strata.errors import ConfigError
from strata.home import HomeLayout, resolve_home
from strata.home.files import load_daemon_state

_LSN = re.compile(r"^\s*[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}\s*$")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("query", help="run one SQL statement as of a past time or LSN")
    add_home(p)
    p.add_argument("--at", required=True, metavar="TIME|LSN",
                   help="a timestamptz literal (session TimeZone) or an LSN X/Y")
    p.add_argument("--db", default="postgres", help="database (default postgres)")
    p.add_argument("--user", default=None, help="role (default: the primary's superuser)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV output with a header")
    fmt.add_argument("--json", action="store_true",
                     help="a JSON array of objects, one per row")
    p.add_argument("sql", help="the statement")
    p.set_defaults(func=run)


def _escape_option(value: str) -> str:
    # libpq options: backslash escapes spaces and backslashes
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def run(args: argparse.Namespace) -> int:
    import psycopg

    home = resolve_home(args.home)
    state = load_daemon_state(HomeLayout(home).daemon_file)
    if state is None or not state.proxy_port:
        raise ConfigError(f"strata is not running on {home}: start it with `strata up`")
    setting = "strata.travel_lsn" if _LSN.match(args.at) else "strata.travel_time"
    options = f"-c {setting}={_escape_option(args.at.strip())}"
    user = args.user or state.target_user or "postgres"
    params = {"host": "127.0.0.1", "port": state.proxy_port, "dbname": args.db,
              "user": user, "autocommit": True}
    if state.passfile:
        params["passfile"] = state.passfile
    try:
        try:
            conn = psycopg.connect(**params)  # type: ignore[arg-type]
            travel = f"SET {setting} = '{args.at.strip().replace(chr(39), chr(39) * 2)}'"
        except psycopg.OperationalError as e:
            if "does not exist" not in str(e):
                raise
            # a database dropped since: start the session in the past instead
            conn = psycopg.connect(**params, options=options)  # type: ignore[arg-type]
            travel = ""
        with conn:
            if travel:
                conn.execute(travel)
            cur = conn.execute(args.sql)
            if cur.description is None:
                print(cur.statusmessage or "")
                return 0
            names = [c.name for c in cur.description]
            types = [c.type_code for c in cur.description]
            rows = _text_rows(cur)
            if args.csv:
                wr = csv.writer(sys.stdout)
                wr.writerow(names)
                wr.writerows([["" if v is None else v for v in r] for r in rows])
            elif args.json:
                json.dump([{n: _json_value(v, t) for n, v, t in zip(names, r, types, strict=True)}
                           for r in rows], sys.stdout, indent=2)
                sys.stdout.write("\n")
            else:
                sys.stdout.write(aligned(names, types, rows))
    except psycopg.Error as e:
        diag = getattr(e, "diag", None)
        code = getattr(diag, "sqlstate", None) or getattr(e, "sqlstate", None) or "?"
        print(f"strata: error: {str(e).strip()} (SQLSTATE {code})", file=sys.stderr)
        return 1
    return 0


# numeric types psql right-aligns (pg_type OIDs)
_NUMERIC_OIDS = {20, 21, 23, 26, 700, 701, 790, 1700}
_INT_OIDS = {20, 21, 23, 26}
_FLOAT_OIDS = {700, 701, 1700}
_BOOL_OID = 16
_JSON_OIDS = {114, 3802}


def _text_rows(cur: Any) -> list[list[str | None]]:
    """Every value as the server wrote it (text format), None for NULL."""
    res = cur.pgresult
    assert res is not None
    rows = []
    for i in range(res.ntuples):
        values = (res.get_value(i, j) for j in range(res.nfields))  # None: NULL
        rows.append([None if v is None else bytes(v).decode() for v in values])
    return rows


def aligned(names: list[str], types: list[int], rows: list[list[str | None]]) -> str:
    """psql's default aligned format: centred headers, a `-+-` rule, numbers
    right-aligned, and the row count."""
    cells = [["" if v is None else v for v in r] for r in rows]
    widths = [max([len(n), *(len(r[j]) for r in cells)]) for j, n in enumerate(names)]
    def centre(text: str, width: int) -> str:  # psql puts an odd space on the right
        left = (width - len(text)) // 2
        return " " * left + text + " " * (width - len(text) - left)

    out = [" " + " | ".join(centre(n, w) for n, w in zip(names, widths, strict=True)) + " ",
           "-" + "-+-".join("-" * w for w in widths) + "-"]
    for r in cells:
        parts = [v.rjust(w) if t in _NUMERIC_OIDS else v.ljust(w)
                 for v, w, t in zip(r, widths, types, strict=True)]
        out.append(" " + " | ".join(parts).rstrip())
    n = len(rows)
    out.append(f"({n} row{'' if n == 1 else 's'})")
    return "\n".join(out) + "\n\n"


def _json_value(v: str | None, oid: int) -> Any:
    if v is None:
        return None
    if oid in _INT_OIDS:
        return int(v)
    if oid in _FLOAT_OIDS and v not in ("NaN", "Infinity", "-Infinity"):
        return int(v) if v.lstrip("-").isdigit() else float(v)
    if oid == _BOOL_OID:
        return v == "t"
    if oid in _JSON_OIDS:
        return json.loads(v)
    return v
