"""``strata attach-past --at TIME|LSN --schema NAME [--db DB] [--from-schema S]``:
the past inside live queries.

Creates, in database DB, schema NAME holding one foreign table (postgres_fdw)
per table of schema S (default public) as it was at the point, so the past
can be joined with the present or copied back with ordinary SQL. The
historical server stays up while the attachment exists (a lease the daemon
honours); ``strata detach-past --schema NAME`` ends it. Only roles that may
time travel may attach and read it. Details: `strata.restore.attach`.
"""

from __future__ import annotations

import argparse

from strata.cli._common import add_home


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("attach-past", help="attach a past schema as foreign tables in a live "
                       "database", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--at", required=True, metavar="TIME|LSN",
                   help="a timestamptz literal (session TimeZone) or an LSN X/Y")
    p.add_argument("--schema", required=True, metavar="NAME",
                   help="the new local schema (e.g. past_20261201)")
    p.add_argument("--db", default="postgres", help="the database (default postgres)")
    p.add_argument("--from-schema", default="public", metavar="S",
                   help="the schema of the past to attach (default public)")
    add_home(p)
    p.add_argument("--user", default=None, help="role (default: the primary's superuser)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from strata.home import resolve_home
    from strata.restore.attach import attach_past
    from strata.restore.endpoint import Endpoint

    ep = Endpoint.of_home(resolve_home(args.home), args.user, "strata attach-past")
    a = attach_past(ep, args.at, args.schema, args.db, args.from_schema)
    print(f"attached schema {args.from_schema} of {a.database} as it was at {a.point} as "
          f"schema {a.schema} ({a.tables} foreign tables, server {a.server}); "
          f"detach with `strata detach-past --schema {a.schema} --db {a.database}`")
    return 0
