"""``strata history TABLE --where 'id = 42' [--from T1] [--to T2] [--db D] [--json]``:
every version of the matching rows, with the commit (xid, time, LSN) that
produced it and the one that ended it.

Reads only the heap pages that changed between the points (each at the LSNs
of its changes). --from defaults to the start of history, --to to now.
Details: `strata.restore.history`.
"""

from __future__ import annotations

import argparse
import json
import sys

from strata.cli._common import add_home
from strata.restore.history import Commit, HistoryResult


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("history", help="every version of some rows between two points",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", help="the table ([schema.]name)")
    p.add_argument("--where", required=True, metavar="CONDITION",
                   help="which rows, as a SQL condition on the table's columns")
    p.add_argument("--from", dest="first", default=None, metavar="T1",
                   help="the earlier point (default: the start of history)")
    p.add_argument("--to", dest="second", default="now", metavar="T2",
                   help="the later point (default: now)")
    p.add_argument("--db", default="postgres", help="the database (default postgres)")
    p.add_argument("--json", action="store_true", help="JSON output")
    add_home(p)
    p.add_argument("--user", default=None, help="role (default: the primary's superuser)")
    p.set_defaults(func=run)


def _commit(c: Commit | None) -> dict[str, object] | None:
    if c is None:
        return None
    return {"xid": c.xid, "top_xid": c.top_xid, "lsn": str(c.lsn) if c.lsn else None,
            "time": c.time.isoformat() if c.time else None}


def render_json(res: HistoryResult) -> str:
    return json.dumps({
        "table": res.table.display, "where": res.where, "pages_read": res.pages_read,
        "from": {"lsn": str(res.first.lsn), "description": str(res.first)},
        "to": {"lsn": str(res.second.lsn), "description": str(res.second)},
        "versions": [{"ctid": list(v.ctid), "xmin": v.xmin, "created": _commit(v.created),
                      "ended": _commit(v.ended), "notes": v.notes,
                      "row": dict(zip(res.columns, v.values, strict=True))}
                     for v in res.versions],
        "notes": res.notes}, indent=2) + "\n"


def render_text(res: HistoryResult) -> str:
    out = [f"history of {res.table.display} where {res.where}", f"  from {res.first}",
           f"  to   {res.second}", f"  ({res.pages_read} changed page version(s) read)"]
    if not res.versions:
        out.append("no version matches")
    for n, v in enumerate(res.versions, 1):
        made = str(v.created) if v.created else "before the first point"
        out.append(f"version {n}: made by {made}")
        out.append("  " + ", ".join(f"{c}={x}" for c, x in zip(res.columns, v.values,
                                                               strict=True)))
        out += [f"  note: {x}" for x in v.notes]
        if v.ended is not None:
            out.append(f"  ended by {v.ended}")
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    from strata.cli._common import flush_through
    from strata.home import HomeLayout, resolve_home
    from strata.home.files import load_history_info
    from strata.restore.changes import open_changes
    from strata.restore.endpoint import Endpoint
    from strata.restore.history import history

    home = resolve_home(args.home)
    layout = HomeLayout(home)
    ep = Endpoint.of_home(home, args.user, "strata history")
    first = args.first
    if first is None:
        info = load_history_info(layout.history_file)
        first = str(info.start_lsn) if info is not None else "0/0"
    pages = open_changes(layout.layers, flush_through(layout))
    try:
        res = history(ep, args.table, args.where, first, args.second, args.db, pages)
    finally:
        if pages is not None:
            pages.close()
    sys.stdout.write(render_json(res) if args.json else render_text(res))
    return 0
