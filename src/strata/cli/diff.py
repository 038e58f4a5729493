"""``strata diff --from T1 --to T2 [--table X] [--db D] [--json | --sql]``: what
changed between two points.

Rows added, removed and changed per table (by key, with the changed columns)
and the DDL in between. Only the heap pages that changed in between are read
(from the layer map), so the cost follows the changes, not the table sizes.
``--json`` for programs; ``--sql`` prints a script that turns the data at T2
back into the data at T1. Details: `strata.restore.diff`.
"""

from __future__ import annotations

import argparse
import sys

from strata.cli._common import add_home


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("diff", help="rows and DDL that changed between two points",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="first", required=True, metavar="T1",
                   help="the earlier point: a timestamptz literal or an LSN X/Y")
    p.add_argument("--to", dest="second", required=True, metavar="T2", help="the later point")
    p.add_argument("--table", metavar="X", help="only this table")
    p.add_argument("--db", default="postgres", help="the database (default postgres)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON output")
    fmt.add_argument("--sql", action="store_true",
                     help="a SQL script turning T2's data back into T1's")
    add_home(p)
    p.add_argument("--user", default=None, help="role (default: the primary's superuser)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from strata.cli._common import flush_through
    from strata.home import HomeLayout, resolve_home
    from strata.restore.changes import open_changes
    from strata.restore.diff import diff
    from strata.restore.diffout import render_json, render_sql, render_text
    from strata.restore.endpoint import Endpoint

    home = resolve_home(args.home)
    ep = Endpoint.of_home(home, args.user, "strata diff")
    changes = open_changes(HomeLayout(home).layers, flush_through(HomeLayout(home)))
    try:
        res = diff(ep, args.first, args.second, args.db, args.table, changes)
    finally:
        if changes is not None:
            changes.close()
    render = render_json if args.json else render_sql if args.sql else render_text
    sys.stdout.write(render(res))
    return 0
