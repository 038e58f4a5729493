"""``strata query --at TIME|LSN [--db NAME] SQL``: one query in the past, for scripts.

Same semantics as ``SET strata.travel_time`` / ``SET strata.travel_lsn``
through the proxy (the session starts in the past through the startup option
``-c strata.travel_time=...``, so a database dropped since can be queried
too). Prints rows tab-separated (``--csv`` for CSV); errors go to stderr with
their SQLSTATE and exit 1.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys

from strata.errors import ConfigError

_LSN = re.compile(r"^\s*[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}\s*$")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("query", help="run one SQL statement as of a past time or LSN")
    p.add_argument("--home", help="strata home (default $STRATA_HOME or ~/.strata)")
    p.add_argument("--at", required=True, metavar="TIME|LSN",
                   help="a timestamptz literal (session TimeZone) or an LSN X/Y")
    p.add_argument("--db", default="postgres", help="database (default postgres)")
    p.add_argument("--user", default=None, help="role (default: the primary's superuser)")
    p.add_argument("--csv", action="store_true", help="CSV output with a header")
    p.add_argument("sql", help="the statement")
    p.set_defaults(func=run)


def _escape_option(value: str) -> str:
    # libpq options: backslash escapes spaces and backslashes
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def run(args: argparse.Namespace) -> int:
    import psycopg

    from strata.daemon import load_daemon_state, resolve_home

    home = resolve_home(args.home)
    state = load_daemon_state(home)
    if state is None or not state.get("proxy_port"):
        raise ConfigError(f"strata is not running on {home}: start it with `strata up`")
    setting = "strata.travel_lsn" if _LSN.match(args.at) else "strata.travel_time"
    options = f"-c {setting}={_escape_option(args.at.strip())}"
    user = args.user or state.get("target_user") or "postgres"
    params = {"host": "127.0.0.1", "port": int(state["proxy_port"]), "dbname": args.db,
              "user": user, "autocommit": True}
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
            rows = cur.fetchall()
            if args.csv:
                wr = csv.writer(sys.stdout)
                wr.writerow([c.name for c in cur.description])
                wr.writerows(rows)
            else:
                for row in rows:
                    print("\t".join("" if v is None else str(v) for v in row))
    except psycopg.Error as e:
        diag = getattr(e, "diag", None)
        code = getattr(diag, "sqlstate", None) or getattr(e, "sqlstate", None) or "?"
        print(f"strata: error: {str(e).strip()} (SQLSTATE {code})", file=sys.stderr)
        return 1
    return 0
