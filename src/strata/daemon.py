"""The strata daemon: what ``strata up`` runs. A composition root.

It takes the home (`strata.home`), starts or attaches to the primary
(`runtime.primary`), imports history on the first run (`bootstrap.import_history`:
embedded, the primary at a clean shutdown checkpoint before users connect;
attach, a base backup made consistent), opens history (store, time map,
`WalIngest`, `HistoryService`), starts the proxy, and runs the ingest loop
(`ingest.pipeline`) until stopped. It always stops what it started. The home's
files and the ordering that keeps "nothing lost" are in home/FORMAT.md and
`ingest.pipeline`.

Fed by: `cli/up.py` (options), the primary (WAL). Feeds: stdout (connection
strings, progress), the home, the proxy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from strata.bootstrap import import_history
from strata.errors import ConfigError, WalSourceError
from strata.historical.modes import (
    HistoricalFactory,
    cleanup_instances,
    durable_through,
    make_factory,
)
from strata.historical.source import DataDirSource
from strata.history_service import HistoryService
from strata.home import HomeLayout, lock_home
from strata.home.files import (
    DaemonState,
    HistoryInfo,
    load_history_info,
    load_receiver_state,
    safe_dsn,
    write_json,
)
from strata.ingest.pipeline import IngestPipeline, PublishConfig
from strata.ingest.transam import TransamIngest
from strata.ingest.walingest import WalIngest
from strata.key import Key
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.proxy.server import ProxyConfig, ProxyThread
from strata.reconstruct.reconstruct import reconstruct_value
from strata.restore.leases import LeaseKeeper
from strata.restore.sqlcall import SqlRestorer
from strata.runtime.cluster import SUPERUSER, Cluster
from strata.runtime.primary import (
    PrimaryClient,
    PrimarySupervisor,
    ensure_travel_role,
    prepare_embedded,
)
from strata.status import LagClock, write_status
from strata.timeline.timemap import TimeMap
from strata.wal.receiver import WalReceiver
from strata.wal.record import DecodedRecord
from strata.wal.replication import (
    describe_dsn,
    ensure_physical_slot,
    identify_system,
    parse_size_setting,
    server_setting,
)
from strata.wal.rmgr import record_type_name, rmgr_name

log = logging.getLogger(__name__)

SLOT_NAME = "strata"
PRIMARY_CHECK_INTERVAL = 2.0  # seconds between checks that the embedded primary runs


@dataclass(frozen=True, slots=True)
class UpOptions:
    home: Path
    port: int | None = None  # the proxy's port on 127.0.0.1
    source: str | None = None
    verbose: int = 0
    progress_interval: float = 10.0
    status_interval: float = 10.0
    flush_interval: float = 30.0  # seconds between forced flushes of the memtable
    max_instances: int = 4
    instance_idle_timeout: float = 300.0
    primary_port: int | None = None
    historical: str = "auto"  # lazy | materialize | auto (historical.modes)


def format_record(rec: DecodedRecord) -> str:
    """One line per record in pg_waldump's shape (for ``strata up -v``)."""
    blocks = "".join(
        f", blkref #{b.block_id}: rel {b.rlocator} fork {b.fork} blk {b.blkno}"
        + (" FPW" if b.has_image else "")
        for b in rec.blocks
    )
    return (f"rmgr: {rmgr_name(rec.xl_rmid):<10} len (rec/tot): {rec.xl_tot_len - rec.fpi_len:>6}/"
            f"{rec.xl_tot_len:>6}, tx: {rec.xl_xid:>10}, lsn: {rec.lsn.padded()}, "
            f"prev {rec.xl_prev.padded()}, desc: {record_type_name(rec.xl_rmid, rec.xl_info)}"
            f"{blocks}")


def human_bytes(n: int) -> str:
    v = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(v) < 1024 or unit == "GB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TB"


class Daemon:
    """One run of ``strata up``. `run()` blocks until `stop()` (any thread, or a
    signal handler) or a fatal error; it always stops what it started."""

    def __init__(self, opts: UpOptions, out: IO[str] | None = None) -> None:
        self.opts = opts
        self.layout = HomeLayout(opts.home)
        self.out = out
        self._stop = threading.Event()
        self._receiver: WalReceiver | None = None
        self.cluster: Cluster | None = None
        self.supervisor: PrimarySupervisor | None = None
        self.primary: PrimaryClient | None = None
        self.dsn = ""
        self._lockfile: IO[bytes] | None = None
        self.store: PageStore | None = None
        self.timemap: TimeMap | None = None
        self.history: HistoryService | None = None
        self.factory: HistoricalFactory | None = None
        self.proxy: ProxyThread | None = None
        self.leases: LeaseKeeper | None = None
        self.info: HistoryInfo | None = None
        self.pipeline: IngestPipeline | None = None
        self._lag = LagClock()

    @property
    def processed(self) -> Lsn:
        """End of the last record ingested in this run (0 before streaming starts)."""
        return self.pipeline.processed if self.pipeline is not None else Lsn(0)

    @property
    def records(self) -> int:
        return self.pipeline.stats.records if self.pipeline is not None else 0

    # -- control --------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        rx = self._receiver
        if rx is not None:
            rx.stop()

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGINT/SIGTERM/SIGHUP -> stop(): Ctrl-C, kill, and a closed terminal all
        stop everything cleanly. Returns a function restoring the old handlers."""
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

        def handler(signum: int, frame: object) -> None:
            log.info("signal %d: stopping", signum)
            self.stop()

        for s in old:
            signal.signal(s, handler)

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)
        return restore

    def say(self, text: str) -> None:
        """A line for the user. A closed stdout (the reader of a pipe went away, as
        `tee` does on Ctrl-C) must never stop a shutdown: it silences the output
        instead (and stdout is pointed at /dev/null so nothing else trips on it)."""
        if self.out is None:
            return
        try:
            print(text, file=self.out, flush=True)
        except (BrokenPipeError, OSError, ValueError):
            self.out = None
            _silence_stdout()

    # -- run ------------------------------------------------------------------------
    def run(self) -> int:
        self._lockfile = lock_home(self.layout)
        try:
            if self.opts.source is None:
                self._start_embedded()
            else:
                self.dsn = self.opts.source
                self._attach()
            if self._stop.is_set():
                return 0
            self.primary = PrimaryClient(self.dsn)
            self._open_history()
            self._start_proxy()
            self._stream()
        finally:
            self._shutdown()
        return 0

    def _start_embedded(self) -> None:
        c, _ = prepare_embedded(self.layout.primary_data, self.opts.primary_port, self.say)
        self.cluster = c
        self.supervisor = PrimarySupervisor(c, self.say)
        c.start()
        self.dsn = c.dsn()
        if load_history_info(self.layout.history_file) is None:
            # The slot exists first, so every record after the checkpoint we
            # import at stays on the primary until it is durable here.
            ensure_physical_slot(self.dsn, SLOT_NAME)
            ensure_travel_role(self.dsn)
            c.stop("fast")
            source = DataDirSource(c.datadir)
            self.say(f"strata: importing the primary at its shutdown checkpoint {source.lsn}")
            import_history(self.layout, source, mode="embedded")
            c.start()

    def _attach(self) -> None:
        """Attach mode: history starts at the end of a base backup taken over the
        replication protocol, made consistent by one recovery of the copy."""
        from strata.runtime.basebackup import consistent_base_backup

        if load_history_info(self.layout.history_file) is not None:
            return
        ensure_physical_slot(self.dsn, SLOT_NAME)
        with contextlib.suppress(Exception):
            ensure_travel_role(self.dsn)
        self.say(f"strata: taking a base backup of {describe_dsn(self.dsn)}")
        try:
            backup = consistent_base_backup(self.dsn, self.layout.import_dir)
            import_history(self.layout, DataDirSource(backup.datadir), mode="attach",
                           lsn=backup.end_lsn)
        finally:
            shutil.rmtree(self.layout.import_dir, ignore_errors=True)

    def _open_history(self) -> None:
        info = load_history_info(self.layout.history_file)
        if info is None:
            raise ConfigError(f"{self.layout.root} has no history yet (history.json missing)")
        self.info = info
        cleanup_instances(self.layout.instances)  # what a killed strata left
        self.store = PageStore.open(self.layout.layers, reconstruct_value)
        self.timemap = TimeMap.open(self.layout.timemap, durable_lsn=self.store.durable_lsn)
        primary = self.primary
        assert primary is not None
        self.factory = make_factory(self.store, self.layout.layers, mode=self.opts.historical,
                                    instances_root=self.layout.instances,
                                    ensure_durable=durable_through(self.store))
        self.history = HistoryService(
            self.store, self.timemap, history_start=info.start_lsn,
            history_start_time=info.start_time, instances_root=self.layout.instances,
            primary_lsn=primary.wal_lsn, primary_now=primary.now,
            max_instances=self.opts.max_instances,
            idle_timeout=self.opts.instance_idle_timeout, factory=self.factory)
        self.history.pool.start_reaper()
        # the pasts attached to live databases keep their historical servers (restore/leases.py)
        self.leases = LeaseKeeper(self.layout.leases, self.history.pool.acquire,
                                  self.history.pool.release).start()

    def _ingest_at(self, durable: Lsn) -> WalIngest:
        """The ingest writer resuming at `durable`, with its state read from the store."""
        assert self.store is not None and self.timemap is not None
        state = self.store.get_page(Key.cluster(0), durable)
        if state is None:
            raise ConfigError(f"the store in {self.layout.layers} has no cluster values at "
                              f"{durable}: history is damaged")
        ingest = WalIngest(self.store, self.timemap, TransamIngest(ClusterState.from_bytes(state)),
                           start_lsn=durable)
        ingest.load_state(durable)
        return ingest

    def _start_proxy(self) -> None:
        from psycopg.conninfo import conninfo_to_dict

        assert self.history is not None
        params = conninfo_to_dict(self.dsn)
        restorer = SqlRestorer(self.layout.root, lambda: self.proxy.port if self.proxy else 0,
                               str(params.get("user") or SUPERUSER),
                               str(params["passfile"]) if params.get("passfile") else None)
        config = ProxyConfig(primary_host=str(params.get("host") or "127.0.0.1"),
                             primary_port=int(params.get("port") or 5432),
                             listen_port=self.opts.port or 0, restorer=restorer)
        self.proxy = ProxyThread(config, self.history).start()

    def _write_daemon_state(self) -> None:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(self.dsn)
        proxy_port = self.proxy.port if self.proxy is not None else None
        write_json(self.layout.daemon_file, DaemonState(
            pid=os.getpid(), mode="embedded" if self.cluster is not None else "attach",
            primary_dsn=safe_dsn(self.dsn), proxy_port=proxy_port,
            target_host="127.0.0.1" if proxy_port else str(params.get("host") or "127.0.0.1"),
            target_port=proxy_port or int(params.get("port") or 5432),
            target_user=str(params.get("user") or SUPERUSER),
            target_dbname=str(params.get("dbname") or "postgres"),
            passfile=str(params["passfile"]) if params.get("passfile") else None,
            started_at=datetime.now(UTC).isoformat(timespec="seconds")).to_json())

    def proxy_dsn(self, dbname: str = "postgres") -> str:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(self.dsn)
        user = params.get("user") or SUPERUSER
        assert self.proxy is not None
        passfile = f" passfile={params['passfile']}" if params.get("passfile") else ""
        return f"host=127.0.0.1 port={self.proxy.port} dbname={dbname} user={user}{passfile}"

    # -- the ingest loop -------------------------------------------------------------
    def _open_stream(self) -> tuple[WalReceiver, Lsn, int, bool]:
        """The receiver at the resume point: (receiver, start, segment size, resumed)."""
        assert self.store is not None and self.info is not None
        slot, created = ensure_physical_slot(self.dsn, SLOT_NAME)
        if slot.restart_lsn is None:
            raise WalSourceError(f"replication slot {SLOT_NAME!r} has not reserved WAL; "
                                 "drop it or let strata create it")
        seg_size = parse_size_setting(server_setting(self.dsn, "wal_segment_size"))
        ident = identify_system(self.dsn)
        if ident.system_id != self.info.system_id:
            raise ConfigError(
                f"history in {self.layout.root} belongs to another cluster (system identifier "
                f"{self.info.system_id}; {describe_dsn(self.dsn)} is {ident.system_id})")
        saved = load_receiver_state(self.layout.receiver_file)
        # The resume point is what the store made durable: everything after it
        # (the memtable of a strata that crashed) is streamed again.
        start = Lsn(max(self.store.durable_lsn, self.info.start_lsn))
        if created or start < (slot.restart_lsn or 0):
            raise WalSourceError(
                f"strata needs WAL from {start}, but slot {SLOT_NAME!r} starts at "
                f"{slot.restart_lsn}: the WAL in between is gone and history cannot continue")
        timeline = saved.timeline if saved is not None else slot.restart_tli
        rx = WalReceiver(self.dsn, SLOT_NAME, start, timeline=timeline,
                         system_id=self.info.system_id, status_interval=self.opts.status_interval)
        return rx, start, seg_size, saved is not None

    def _stream(self) -> None:
        assert self.info is not None
        rx, start, seg_size, resumed = self._open_stream()
        self._receiver = rx
        if self._stop.is_set():
            rx.stop()
        self._write_daemon_state()
        self.say(f"strata: PostgreSQL 18 primary: {safe_dsn(self.dsn)}")
        self.say(f"strata: time travel proxy: {self.proxy_dsn()}")
        self.say(f"strata: connect with `strata psql --home {self.layout.root}` or "
                 f"psql \"{self.proxy_dsn()}\"")
        assert self.factory is not None
        self.say(f"strata: historical servers: {self.factory.reason}")
        self.say(f"strata: history from {self.info.start_time.isoformat(timespec='seconds')} "
                 f"(LSN {self.info.start_lsn}); streaming WAL from slot {SLOT_NAME} at {start}"
                 + (" (resumed)" if resumed else ""))
        self.pipeline = IngestPipeline(
            rx, self._ingest_at(start), start=start, segment_size=seg_size, slot=SLOT_NAME,
            receiver_file=self.layout.receiver_file,
            config=PublishConfig(flush_interval=self.opts.flush_interval),
            on_record=(lambda r: self.say(format_record(r))) if self.opts.verbose else None,
            periodic=self._periodic)
        self._next_progress = self._next_check = time.monotonic()
        self._next_progress += self.opts.progress_interval
        self._progress_mark = (0, 0, time.monotonic())
        try:
            self.pipeline.run(self._stop)
        finally:
            rx.close()  # sends the last status update
            self.say(f"strata: stopped streaming at {self.pipeline.processed} "
                     f"({self.pipeline.stats.records} records this run)")

    def _periodic(self) -> None:
        """Every second from the ingest loop: progress line and status file every
        progress interval, a check of the embedded primary every 2 s."""
        now = time.monotonic()
        if now >= self._next_progress:
            self._next_progress = now + self.opts.progress_interval
            self._report_progress(now)
        if self.supervisor is not None and now >= self._next_check and not self._stop.is_set():
            self._next_check = now + PRIMARY_CHECK_INTERVAL
            self.supervisor.check()

    def _lag_bytes(self) -> int:
        """How far ingest is behind the primary's WAL right now (the primary's own
        position when it answers; the receiver's view can be seconds old)."""
        assert self.pipeline is not None and self._receiver is not None
        try:
            assert self.primary is not None
            head = self.primary.wal_lsn()
        except Exception:
            head = self._receiver.server_wal_end
        return max(0, head - self.pipeline.processed)

    def _report_progress(self, now: float) -> None:
        p, rx, store, history = self.pipeline, self._receiver, self.store, self.history
        assert p is not None and rx is not None and store is not None and history is not None
        records0, bytes0, t0 = self._progress_mark
        records, nbytes = p.stats.records - records0, p.stats.bytes - bytes0
        self._progress_mark = (p.stats.records, p.stats.bytes, now)
        lag = self._lag_bytes()
        if records or nbytes:
            self.say(f"ingest: {records / max(now - t0, 1e-9):.0f} rec/s, {p.stats.records} "
                     f"records, {human_bytes(p.stats.bytes)}, at {p.processed}, durable "
                     f"{store.durable_lsn}, lag {human_bytes(lag)}")
        tm_last = self.timemap.last() if self.timemap is not None else None
        write_status(
            self.layout, received=rx.received_lsn, ingested=store.ingested_lsn,
            durable=store.durable_lsn, server_wal_end=rx.server_wal_end, lag_bytes=lag,
            lag_seconds=self._lag.seconds(lag), oldest_lsn=history.oldest_lsn,
            oldest_time=history.oldest_time() or (self.info.start_time if self.info else None),
            newest_commit_time=tm_last.time if tm_last else None,
            layers=store.layer_summary(),
            instances=[{"lsn": str(s.lsn), "port": s.port, "size_bytes": s.size_bytes,
                        "idle_seconds": round(s.idle_seconds, 1)} for s in history.pool.stats()],
            historical=self.factory.reason if self.factory is not None else "")

    def _shutdown(self) -> None:
        """Stop everything started, in order; one step failing never skips the
        next (the primary is always stopped, the lock always released)."""
        steps: list[tuple[str, Callable[[], None] | None]] = [
            ("state file", lambda: self.layout.daemon_file.unlink(missing_ok=True)),
            ("proxy", self.proxy.stop if self.proxy is not None else None),
            ("leases", self.leases.stop if self.leases is not None else None),
            ("historical servers", self.history.close if self.history is not None else None),
            ("historical factory", self.factory.close if self.factory is not None else None),
            ("store", self.store.close if self.store is not None else None),
            ("time map", self.timemap.close if self.timemap is not None else None),
            ("primary connection", self.primary.close if self.primary is not None else None),
            ("primary", self._stop_primary if self.cluster is not None else None),
            ("lock", self._lockfile.close if self._lockfile is not None else None),
        ]
        self.proxy = self.history = self.store = self.timemap = self.factory = None
        self.leases = None
        self._lockfile = None
        for what, step in steps:
            if step is None:
                continue
            try:
                step()
            except Exception:
                log.exception("stopping the %s failed", what)

    def _stop_primary(self) -> None:
        assert self.cluster is not None
        self.say("strata: stopping the primary")
        self.cluster.stop("fast")


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null (after EPIPE): later writes and the interpreter's
    final flush then succeed quietly."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
