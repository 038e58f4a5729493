"""``strata status``: where ingest is and what history one can travel to.

Reads what `strata.status.collect` gathers: ``<home>/status.json``
(rewritten by the running daemon every progress interval) and the layer
manifest. Shows received / ingested / durable LSN
and lag (bytes, seconds), layers per level with bytes, the history window
(oldest and newest point, as time and LSN) and the running historical
instances with their LSN, size and idle time.
"""

from __future__ import annotations

import argparse
import json
import sys

from strata.cli._common import add_home, layout
from strata.status import collect, history_bytes


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="ingest position, lag, layers, history window, instances")
    add_home(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--bytes", action="store_true",
                   help="also the bytes of history per database and per relation")
    p.set_defaults(func=run)


def _bytes(n: int) -> str:
    v = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if v < 1024 or unit == "TB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TB"


def run(args: argparse.Namespace) -> int:
    lay = layout(args)
    st = collect(lay)
    if args.bytes:
        st["history_bytes"] = history_bytes(lay)
    if args.json:
        json.dump(st, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    w = sys.stdout.write
    if st["running"]:
        w(f"strata:   running (pid {st['pid']}), proxy on 127.0.0.1:{st['proxy_port']}\n")
    else:
        w("strata:   not running\n")
    w(f"history:  from {st['history_start_time']} (LSN {st['history_start_lsn']})\n")
    w(f"          to   {st['newest_commit_time'] or '?'} (LSN {st['newest_lsn']})\n")
    if st["running"]:
        lag = st["lag_bytes"]
        w(f"WAL:      received {st['received_lsn']}, ingested {st['ingested_lsn']}, "
          f"durable {st['durable_lsn']}\n")
        w(f"lag:      {_bytes(lag) if lag is not None else '?'}, "
          f"{st['lag_seconds'] if st['lag_seconds'] is not None else '?'} s\n")
    else:
        w(f"WAL:      durable {st['durable_lsn']}\n")
    for level, d in sorted(st["layers"].items()):
        w(f"layers:   {level:<6} {d['count']:>5} files, {_bytes(d['bytes'])}\n")
    if st.get("historical"):
        w(f"past:     historical servers {st['historical']}\n")
    for inst in st["instances"]:
        w(f"instance: LSN {inst['lsn']} on port {inst['port']}, {_bytes(inst['size_bytes'])}, "
          f"idle {inst['idle_seconds']} s\n")
    hb = st.get("history_bytes")
    if hb is not None:
        for d in hb["databases"]:
            w(f"database: {d['name'] or 'oid ' + str(d['db'])}: {_bytes(d['bytes'])} of history\n")
        for r in hb["relations"]:
            name = r["name"] or f"relfilenode {r['relfilenode']} (dropped?)"
            w(f"relation: {name} (db {r['db']}): {_bytes(r['bytes'])}\n")
        w(f"other:    {_bytes(hb['other_bytes'])} (transaction status, control values, sizes)\n")
    return 0
