"""``strata status``: where ingest is and what history one can travel to.

Reads ``<home>/status.json`` (rewritten by the running daemon every progress
interval) and the layer manifest. Shows received / ingested / durable LSN
and lag (bytes, seconds), layers per level with bytes, the history window
(oldest and newest point, as time and LSN) and the running historical
instances with their LSN, size and idle time.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from strata.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="ingest position, lag, layers, history window, instances")
    p.add_argument("--home", help="strata home (default $STRATA_HOME or ~/.strata)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=run)


def _bytes(n: int) -> str:
    v = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if v < 1024 or unit == "TB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TB"


def collect(home: Any) -> dict[str, Any]:
    from strata.daemon import STATUS_STATE, load_daemon_state, load_history_info
    from strata.storage.manifest import load_manifest

    info = load_history_info(home)
    if info is None:
        raise ConfigError(f"no history in {home}: has `strata up` run with this --home?")
    running = load_daemon_state(home)
    status: dict[str, Any] = {}
    path = home / STATUS_STATE
    if running is not None and path.exists():
        status = json.loads(path.read_text())
    manifest = load_manifest(home / "layers")
    layers: dict[str, dict[str, int]] = {}
    if manifest is not None:
        for e in manifest.layers:
            d = layers.setdefault(e.level.name, {"count": 0, "bytes": 0})
            d["count"] += 1
            d["bytes"] += e.size
    return {
        "running": running is not None,
        "pid": running.get("pid") if running else None,
        "proxy_port": running.get("proxy_port") if running else None,
        "history_start_lsn": status.get("history_start_lsn", str(info.start_lsn)),
        "history_start_time": status.get("history_start_time", info.start_time.isoformat()),
        "newest_lsn": status.get("newest_lsn",
                                 str(manifest.durable_lsn) if manifest else None),
        "newest_commit_time": status.get("newest_commit_time"),
        "received_lsn": status.get("received_lsn"),
        "ingested_lsn": status.get("ingested_lsn"),
        "durable_lsn": status.get("durable_lsn",
                                  str(manifest.durable_lsn) if manifest else None),
        "lag_bytes": status.get("lag_bytes"),
        "lag_seconds": status.get("lag_seconds"),
        "layers": layers,
        "instances": status.get("instances", []),
        "updated_at": status.get("updated_at"),
    }


def run(args: argparse.Namespace) -> int:
    from strata.daemon import resolve_home

    st = collect(resolve_home(args.home))
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
    for inst in st["instances"]:
        w(f"instance: LSN {inst['lsn']} on port {inst['port']}, {_bytes(inst['size_bytes'])}, "
          f"idle {inst['idle_seconds']} s\n")
    return 0
