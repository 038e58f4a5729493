"""What `strata status` shows, written by the daemon and read by the CLI.

What it is: `write_status` (the ingest service's ``status.json``: positions,
lag, the history window, layers; home/FORMAT.md) and
`collect` (the same view for `strata status`, from that file when strata runs,
from the store's manifest and ``history.json`` when it does not). One place
builds each field, so both always agree. Fed by: the daemon's ingest loop
and the store's manifest. Feeds: ``<home>/status.json`` and `strata status`.
"""

from __future__ import annotations

import struct
import time
from datetime import UTC, datetime
from typing import Any

from strata.errors import ConfigError
from strata.home import HomeLayout
from strata.home.files import (
    load_daemon_state,
    load_history_info,
    load_proxy_state,
    load_status,
    write_json,
)
from strata.key import KeyKind
from strata.lsn import Lsn
from strata.storage.manifest import layer_summary, load_manifest
from strata.storage.tools import bytes_by_key_prefix


class LagClock:
    """Lag in seconds: the time since ingest last stood at the primary's position."""

    def __init__(self) -> None:
        self.caught_up_at = time.monotonic()

    def seconds(self, lag_bytes: int) -> float:
        now = time.monotonic()
        if lag_bytes <= 0:
            self.caught_up_at = now
            return 0.0
        return now - self.caught_up_at


def write_status(layout: HomeLayout, *, received: Lsn, ingested: Lsn, durable: Lsn,
                 server_wal_end: Lsn, lag_bytes: int, lag_seconds: float, oldest_lsn: Lsn,
                 oldest_time: datetime | None, newest_commit_time: datetime | None,
                 layers: dict[str, dict[str, int]]) -> None:
    """Rewrite ``status.json`` atomically (LSNs as X/Y, times ISO 8601)."""
    write_json(layout.status_file, {
        "version": 1,
        "updated_at": datetime.now(UTC).isoformat(),
        "received_lsn": str(received),
        "ingested_lsn": str(ingested),
        "durable_lsn": str(durable),
        "server_wal_end": str(server_wal_end),
        "lag_bytes": lag_bytes,
        "lag_seconds": round(lag_seconds, 3),
        "history_start_lsn": str(oldest_lsn),
        "history_start_time": oldest_time.isoformat() if oldest_time else None,
        "newest_lsn": str(ingested),
        "newest_commit_time": newest_commit_time.isoformat() if newest_commit_time else None,
        "layers": layers,
    })


def collect(layout: HomeLayout) -> dict[str, Any]:
    """The status of the strata in `layout`, running or not.

    Raises: ConfigError when no history was ever made there."""
    info = load_history_info(layout.history_file)
    if info is None:
        raise ConfigError(f"no history in {layout.root}: has `strata up` run with this --home?")
    running = load_daemon_state(layout.daemon_file)
    status = load_status(layout.status_file) if running is not None else {}
    proxy = load_proxy_state(layout.proxy_file) if running is not None else None
    manifest = load_manifest(layout.layers)
    durable = str(Lsn(manifest.durable_lsn)) if manifest is not None else None
    return {
        "running": running is not None,
        "pid": running.pid if running else None,
        "proxy_port": running.proxy_port if running else None,
        "history_start_lsn": status.get("history_start_lsn", str(info.start_lsn)),
        "history_start_time": status.get("history_start_time") or info.start_time.isoformat(),
        "newest_lsn": status.get("newest_lsn", durable),
        "newest_commit_time": status.get("newest_commit_time"),
        "received_lsn": status.get("received_lsn"),
        "ingested_lsn": status.get("ingested_lsn"),
        "durable_lsn": status.get("durable_lsn", durable),
        "lag_bytes": status.get("lag_bytes"),
        "lag_seconds": status.get("lag_seconds"),
        "layers": layer_summary(manifest) if manifest is not None else {},
        "instances": proxy.instances if proxy is not None else [],
        "historical": proxy.historical if proxy is not None else None,
        "updated_at": status.get("updated_at"),
    }


def history_bytes(layout: HomeLayout, top: int = 20) -> dict[str, Any]:
    """Bytes of history in the store per database and per relation (the `top`
    largest), from the layers' block indexes (`storage.tools.bytes_by_key_prefix`,
    exact to a block). Names come from the running primary where it answers
    (relations dropped since, or a stopped strata, show their numbers)."""
    by_rel: dict[tuple[int, int, int], int] = {}
    other = 0
    for prefix, n in bytes_by_key_prefix(layout.layers, 13).items():
        kind, spc, db, rel = struct.unpack(">BIII", prefix.ljust(13, b"\0"))
        if kind == KeyKind.REL_BLOCK:
            by_rel[(spc, db, rel)] = by_rel.get((spc, db, rel), 0) + n
        else:
            other += n
    by_db: dict[int, int] = {}
    for (_, db, _), n in by_rel.items():
        by_db[db] = by_db.get(db, 0) + n
    largest = sorted(by_rel.items(), key=lambda kv: -kv[1])[:top]
    names = _names(layout, {db for (_, db, _), _ in largest})
    return {
        "databases": [{"db": db, "name": names.get((db, 0), "global" if db == 0 else None),
                       "bytes": n} for db, n in sorted(by_db.items(), key=lambda kv: -kv[1])],
        "relations": [{"db": db, "relfilenode": rel, "name": names.get((db, rel)), "bytes": n}
                      for (_, db, rel), n in largest],
        "other_bytes": other,
    }


def _names(layout: HomeLayout, dbs: set[int]) -> dict[tuple[int, int], str]:
    """(db, 0) -> database name and (db, relfilenode) -> relation name, asked of the
    running primary; {} when strata is not running or the primary does not answer."""
    state = load_daemon_state(layout.daemon_file)
    if state is None:
        return {}
    import psycopg

    dsn = state.primary_dsn  # names its password file, never a password
    out: dict[tuple[int, int], str] = {}
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            dbnames = {int(oid): str(name) for oid, name in conn.execute(
                "SELECT oid, datname FROM pg_database WHERE datallowconn")}
        for oid, name in dbnames.items():
            out[(oid, 0)] = name
            if oid not in dbs:
                continue
            with psycopg.connect(dsn, dbname=name, autocommit=True,
                                 connect_timeout=5) as conn:
                for node, rel in conn.execute(
                        "SELECT pg_relation_filenode(oid), oid::regclass::text FROM pg_class "
                        "WHERE pg_relation_filenode(oid) IS NOT NULL"):
                    out[(oid, int(node))] = str(rel)
    except psycopg.Error:
        pass
    return out
