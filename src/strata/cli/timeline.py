"""``strata timeline``: list transaction ends (time, LSN, xid) to find the
moment before a mistake.

``--ddl`` lists what catalog-changing transactions did, one line per change
("CREATE TABLE public.demo", "ALTER TABLE public.demo ADD COLUMN email",
"DROP DATABASE olddb") with the database, the owner role, the xid and the
commit LSN. The moment just before the change is the end of the previous
transaction end (``before_lsn`` in ``--json``; any time before the line's
time resolves there too): ``SET strata.travel_lsn`` to it shows the state
before, without the transaction's non-transactional WAL (DROP DATABASE's
invalid marker). ``--db`` and ``--table`` filter it (and imply it);
temporary objects are hidden unless ``--temp``. VACUUM and ANALYZE never
appear: their catalog updates are statistics, not DDL.

Reads the time map and the DDL log (`strata.timemap`) read-only, beside a
running daemon. Times print as ISO 8601 with the offset of the local time
zone (the ``TZ`` environment variable).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Iterator
from typing import TextIO

from strata.cli._common import add_home
from strata.errors import ConfigError
from strata.home import HomeLayout, resolve_home
from strata.home.files import load_history_info
from strata.lsn import Lsn
from strata.pg.timestamp import timestamptz_to_datetime
from strata.timemap.ddl import DdlChange, DdlEntry
from strata.timemap.timemap import TimeMap, TxEnd


def _when(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as e:
        raise ConfigError(f"invalid time {text!r}: use ISO 8601, e.g. 2026-11-24T10:00:00+00") from e
    return when if when.tzinfo else when.astimezone()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("timeline", help="list commits and aborts with their time and LSN",
                       description="List transaction ends; with --ddl, what each "
                       "catalog-changing transaction did, with its commit LSN (--json "
                       "also gives before_lsn: travel there to see the moment before).")
    add_home(p)
    p.add_argument("--from", dest="start", type=_when, help="only from this time on")
    p.add_argument("--to", dest="end", type=_when, help="only up to this time")
    p.add_argument("--ddl", action="store_true",
                   help="only catalog changes (DDL), one line per change")
    p.add_argument("--db", metavar="NAME", help="only DDL run in this database (or "
                   "creating, dropping or altering it); implies --ddl")
    p.add_argument("--table", metavar="NAME", help="only DDL on this relation (name or "
                   "schema.name); implies --ddl")
    p.add_argument("--temp", action="store_true", help="also temporary objects (with --ddl)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def _local(ts: int) -> str:
    return timestamptz_to_datetime(ts).astimezone().isoformat()


def run(args: argparse.Namespace) -> int:
    home = resolve_home(args.home)
    layout = HomeLayout(home)
    tdir = layout.timemap
    if not (tdir / "timemap.dat").exists():
        raise ConfigError(f"no time map in {home}: has `strata up` run with this --home?")
    tm = TimeMap.open(tdir, readonly=True)
    try:
        if args.ddl or args.db or args.table:
            info = load_history_info(layout.history_file)
            _ddl(tm, args, sys.stdout, info.start_lsn if info is not None else None)
        else:
            _all(tm, args, sys.stdout)
    finally:
        tm.close()
    return 0


def _all(tm: TimeMap, args: argparse.Namespace, out: TextIO) -> None:
    ddl = tm.ddl.by_start_lsn()
    if not args.json:
        out.write(f"{'time':32} {'LSN':>12} {'xid':>10}  kind\n")
    for e in tm.entries(args.start, args.end):
        d = ddl.get(e.start_lsn)
        is_ddl = (any(not c.temp for c in d.changes) if d is not None
                  else e.catalog_change and e.start_lsn < tm.ddl.start_lsn)
        kind = e.kind.name.lower().replace("_", " ")
        if args.json:
            out.write(json.dumps({"time": _local(e.timestamp), "lsn": str(e.start_lsn),
                                  "end_lsn": str(e.end_lsn), "xid": e.xid,
                                  "kind": e.kind.name.lower(), "ddl": is_ddl}) + "\n")
        else:
            out.write(f"{_local(e.timestamp):32} {e.start_lsn!s:>12} {e.xid:>10}  {kind}"
                      f"{' (DDL)' if is_ddl else ''}\n")


def _keep(change: DdlChange, entry: DdlEntry, args: argparse.Namespace) -> bool:
    if change.temp and not args.temp:
        return False
    if args.db and entry.database != args.db and not (
            change.object_type == "DATABASE" and change.name == args.db):
        return False
    return not args.table or change.concerns_relation(args.table)


def _selected(tm: TimeMap, args: argparse.Namespace
              ) -> Iterator[tuple[TxEnd, DdlEntry | None, list[DdlChange]]]:
    """Transaction ends with the changes to print (legacy: flagged, not decoded)."""
    ddl = tm.ddl.by_start_lsn()
    for e in tm.entries(args.start, args.end):
        d = ddl.get(e.start_lsn)
        if d is None:
            # before the DDL log starts (a home from an older strata): only the flag is known
            if e.catalog_change and e.start_lsn < tm.ddl.start_lsn and not (args.db or args.table):
                yield e, None, []
            continue
        changes = [c for c in d.changes if _keep(c, d, args)]
        if changes or (d.note and not args.table and (not args.db or d.database == args.db)):
            yield e, d, changes


def _ddl(tm: TimeMap, args: argparse.Namespace, out: TextIO, history_start: Lsn | None
         ) -> None:
    if not args.json:
        out.write(f"{'time':32} {'LSN':>12} {'xid':>10}  {'database':16} {'role':12} change\n")
    for e, d, changes in _selected(tm, args):
        when = _local(e.timestamp)
        if args.json:
            prev = tm.last_at_or_before(e.start_lsn)
            before = prev.end_lsn if prev is not None else history_start
            obj: dict[str, object] = {
                "time": when, "lsn": str(e.start_lsn), "end_lsn": str(e.end_lsn), "xid": e.xid,
                "kind": e.kind.name.lower(), "database": d.database if d else None,
                "before_lsn": str(before) if before is not None else None,
                "changes": [c.to_json() for c in changes]}
            if d is None or d.note:
                obj["note"] = d.note if d else _legacy_note(tm.ddl.start_lsn)
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
            continue
        db = d.database if d else "?"
        lines = [(c.role, c.statement) for c in changes]
        if d is None or d.note:
            lines.append(("", f"(catalog change not fully decoded: "
                              f"{d.note if d else _legacy_note(tm.ddl.start_lsn)})"))
        for role, text in lines:
            out.write(f"{when:32} {e.start_lsn!s:>12} {e.xid:>10}  {db:16} {role or '-':12} "
                      f"{text}\n")


def _legacy_note(start: Lsn) -> str:
    if start == Lsn(0xFFFFFFFFFFFFFFFF):
        return "this home has no DDL log (made by an older strata)"
    return f"before the DDL log starts (LSN {start})"
