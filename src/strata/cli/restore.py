"""``strata restore (--table NAME | --schema NAME | --database NAME) --at TIME|LSN
[--db DB] [--as NEW_NAME] [--replace]``: bring an object back as it was.

Recreates the object in the live primary as it was at the point: rows (TOAST
included), columns, defaults, constraints, indexes, sequences at their value
there, identity and generated columns, comments, ownership and grants where
the role still exists. It works for an object dropped since, next to one that
exists (``--as``), over it (``--replace``, in the same transaction), and for a
whole dropped database. Progress goes to stderr (a bar on a terminal); the
report (what came back, what could not and why) to stdout. Any failure
rolls everything back. Details: `strata.restore.restore`.
"""

from __future__ import annotations

import argparse
import sys

from strata.cli._common import add_home
from strata.progress import make_progress
from strata.restore.plan import Kind, Request
from strata.restore.restore import report


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("restore", help="restore a table, schema or database as it was at a point",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", metavar="NAME", help="a table ([schema.]name)")
    what.add_argument("--schema", metavar="NAME", help="a whole schema")
    what.add_argument("--database", metavar="NAME", help="a whole database (e.g. dropped)")
    p.add_argument("--at", required=True, metavar="TIME|LSN",
                   help="a timestamptz literal (session TimeZone) or an LSN X/Y")
    p.add_argument("--db", default=None, help="database of the table or schema (default postgres)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--as", dest="as_name", metavar="NEW_NAME",
                     help="restore under this name, next to the live object")
    how.add_argument("--replace", action="store_true",
                     help="drop the live object and restore it, in one transaction")
    add_home(p)
    p.add_argument("--user", default=None, help="role (default: the primary's superuser)")
    p.set_defaults(func=run)


def request_of(args: argparse.Namespace) -> Request:
    from strata.errors import ConfigError

    if args.database is not None:
        if args.db is not None:
            raise ConfigError("--db does not apply to --database")
        kind, name = Kind.DATABASE, args.database
    elif args.schema is not None:
        kind, name = Kind.SCHEMA, args.schema
    else:
        kind, name = Kind.TABLE, args.table
    return Request(kind, name, args.at, args.db or "postgres", args.as_name, args.replace)


def run(args: argparse.Namespace) -> int:
    from strata.home import resolve_home
    from strata.restore.endpoint import Endpoint
    from strata.restore.restore import restore

    req = request_of(args)
    ep = Endpoint.of_home(resolve_home(args.home), args.user, "strata restore")
    res = restore(req, ep, make_progress(sys.stderr, "restore"))
    print(report(res))
    return 0
