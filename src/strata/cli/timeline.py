"""``strata timeline``: list transaction ends (time, LSN, xid) to find the
moment before a mistake. Transactions that changed the catalog (DDL, drops)
are marked, since those are the usual mistakes."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from strata.cli._common import add_home
from strata.errors import ConfigError
from strata.home import resolve_home


def _when(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as e:
        raise ConfigError(f"invalid time {text!r}: use ISO 8601, e.g. 2026-11-24T10:00:00+00") from e
    return when if when.tzinfo else when.astimezone()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("timeline", help="list commits and aborts with their time and LSN")
    add_home(p)
    p.add_argument("--from", dest="start", type=_when, help="only from this time on")
    p.add_argument("--to", dest="end", type=_when, help="only up to this time")
    p.add_argument("--ddl", action="store_true", help="only catalog-changing transactions")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from strata.timeline.timemap import TimeMap

    home = resolve_home(args.home)
    tdir = home / "timemap"
    if not (tdir / "timemap.dat").exists():
        raise ConfigError(f"no time map in {home}: has `strata up` run with this --home?")
    tm = TimeMap.open(tdir, readonly=True)
    try:
        out = sys.stdout
        if not args.json:
            out.write(f"{'time (UTC)':32} {'LSN':>12} {'xid':>10}  kind\n")
        for e in tm.entries(args.start, args.end):
            if args.ddl and not e.catalog_change:
                continue
            kind = e.kind.name.lower().replace("_", " ") + (" (DDL)" if e.catalog_change else "")
            if args.json:
                out.write(json.dumps({"time": e.time.isoformat(), "lsn": str(e.start_lsn),
                                      "end_lsn": str(e.end_lsn), "xid": e.xid,
                                      "kind": e.kind.name.lower(),
                                      "ddl": e.catalog_change}) + "\n")
            else:
                out.write(f"{e.time.isoformat():32} {e.start_lsn!s:>12} {e.xid:>10}  {kind}\n")
    finally:
        tm.close()
    return 0
