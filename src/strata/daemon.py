"""The strata daemon: what ``strata up`` runs. A composition root and supervisor.

It takes the home (`strata.home`), starts or attaches to the primary
(`runtime.primary`), imports history on the first run
(`bootstrap.import_history`), then runs one process per kind of work
(DESIGN.md, "Process model") and supervises them:

- ``ingest`` (`services.ingest`): the one writer of the store and time map;
- ``maintenance`` (`services.maintenance`): compaction, images, gc;
- ``proxy`` (`services.proxy`): client sessions, the history service and the
  historical servers (each of which reads the store in its own processes).

A child that dies is started again (its state is on disk: ingest resumes from
the store's durable LSN, the slot holds the rest); one that keeps dying
stops everything with a message naming it. SIGINT, SIGTERM and SIGHUP stop
the children in order (proxy, maintenance, ingest), then the embedded primary;
unfinished background work is abandoned (layers are immutable and the
manifest atomic). The home's files and the ordering that keeps "nothing lost"
are in home/FORMAT.md.

Fed by: `cli/up.py` (options). Feeds: stdout (connection strings), the home.
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
from strata.errors import ConfigError, StrataError
from strata.historical.source import DataDirSource
from strata.home import HomeLayout, lock_home
from strata.home.files import DaemonState, load_history_info, load_proxy_state, safe_dsn, write_json
from strata.ingest.pipeline import FLUSH_INTERVAL
from strata.runtime.cluster import SUPERUSER, Cluster
from strata.runtime.primary import PrimarySupervisor, ensure_travel_role, prepare_embedded
from strata.services.control import ControlClient, ControlError
from strata.services.process import ServiceOutput, ServiceProcess
from strata.storage.config import StorageConfig
from strata.wal.replication import describe_dsn, ensure_physical_slot, identify_system

log = logging.getLogger(__name__)

SLOT_NAME = "strata"
PRIMARY_CHECK_INTERVAL = 2.0  # s between checks that the embedded primary runs
RESTART_WINDOW = 60.0  # a child that dies more than MAX_RESTARTS times in this window ...
MAX_RESTARTS = 3  # ... stops everything
STOP_GRACE = 1.5  # s a child gets to stop after SIGTERM before it is killed


@dataclass(frozen=True, slots=True)
class UpOptions:
    home: Path
    port: int | None = None  # the proxy's port on 127.0.0.1 (0: any free port)
    source: str | None = None
    verbose: int = 0
    progress_interval: float = 10.0
    status_interval: float = 10.0
    flush_interval: float = FLUSH_INTERVAL
    max_instances: int = 4
    instance_idle_timeout: float = 300.0
    primary_port: int | None = None
    historical: str = "auto"  # lazy | materialize | auto
    retention: str | None = None  # e.g. "7d" or "10GB"


class Daemon:
    """One run of ``strata up``: `run()` blocks until `stop()` (any thread, or a
    signal handler) or a fatal error, and always stops what it started."""

    def __init__(self, opts: UpOptions, out: IO[str] | None = None) -> None:
        self.opts = opts
        self.layout = HomeLayout(opts.home)
        self.out = ServiceOutput(out)
        self._stop = threading.Event()
        self.cluster: Cluster | None = None
        self.primary_supervisor: PrimarySupervisor | None = None
        self.dsn = ""
        # what the proxy relays to: the embedded primary's unix socket (a relay over it
        # costs less per round trip than over loopback TCP), else the DSN given
        self.relay_dsn = ""
        self.services: dict[str, ServiceProcess] = {}
        self.failure: str | None = None
        self._lockfile: IO[bytes] | None = None

    # -- control --------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

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
        self.out.say(text)

    # -- run ------------------------------------------------------------------------
    def run(self) -> int:
        """0 after a requested stop; 1 when a child kept failing (`failure` says why)."""
        self._lockfile = lock_home(self.layout)
        try:
            if self.opts.source is None:
                self._start_embedded()
            else:
                self.dsn = self.opts.source
                self._attach()
            if self._stop.is_set():
                return 0
            self._start_services()
            self._supervise()
        finally:
            self._shutdown()
        if self.failure is not None:
            self.say(f"strata: {self.failure}")
            return 1
        return 0

    def _start_embedded(self) -> None:
        c, _ = prepare_embedded(self.layout.primary_data, self.opts.primary_port, self.say)
        self.cluster = c
        self.primary_supervisor = PrimarySupervisor(c, self.say)
        c.start()
        self.dsn, self.relay_dsn = c.dsn(), c.dsn(socket=True)
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

    # -- services -------------------------------------------------------------------
    def _service_args(self) -> dict[str, list[str]]:
        o, home = self.opts, str(self.layout.root)
        return {
            "ingest": ["--home", home, "--dsn", self.dsn, "--flush-interval",
                       str(o.flush_interval), "--progress-interval", str(o.progress_interval),
                       "--status-interval", str(o.status_interval), "--verbose", str(o.verbose)],
            "maintenance": ["--home", home, *(["--retention", o.retention] if o.retention else [])],
            "proxy": ["--home", home, "--dsn", self.relay_dsn or self.dsn, "--port", str(o.port or 0),
                      "--max-instances", str(o.max_instances), "--idle-timeout",
                      str(o.instance_idle_timeout), "--historical", o.historical],
        }

    def _check_same_cluster(self) -> None:
        """History belongs to one cluster: another one is refused before anything runs."""
        info = load_history_info(self.layout.history_file)
        if info is None:
            raise ConfigError(f"{self.layout.root} has no history yet (history.json missing)")
        ident = identify_system(self.dsn)
        if ident.system_id != info.system_id:
            raise ConfigError(
                f"history in {self.layout.root} belongs to another cluster (system identifier "
                f"{info.system_id}; {describe_dsn(self.dsn)} is {ident.system_id})")

    def _start_services(self) -> None:
        self._check_same_cluster()
        self.layout.run.mkdir(parents=True, exist_ok=True)
        args = self._service_args()
        # background work yields the CPU to everything else (storage/FORMAT.md 7b, 6)
        nice = {"maintenance": StorageConfig.from_env().maintenance_nice}
        for name in ("ingest", "maintenance", "proxy"):
            self.services[name] = ServiceProcess(name, args[name], nice.get(name, 0))
        self._start("ingest")
        self._wait_ready("ingest", lambda: self._ingest_answers())
        if self._stop.is_set():
            return
        self._start("maintenance")
        self._start("proxy")
        self._wait_ready("proxy", lambda: load_proxy_state(self.layout.proxy_file) is not None)
        if self._stop.is_set():
            return
        # a proxy started again listens where clients already connect
        proxy = load_proxy_state(self.layout.proxy_file)
        assert proxy is not None
        argv = self.services["proxy"].argv
        argv[argv.index("--port") + 1] = str(proxy.port)
        self._write_daemon_state()
        self.say(f"strata: PostgreSQL 18 primary: {safe_dsn(self.dsn)}")
        self.say(f"strata: time travel proxy: {self.proxy_dsn()}")
        self.say(f"strata: connect with `strata psql --home {self.layout.root}` or "
                 f"psql \"{self.proxy_dsn()}\"")

    def _start(self, name: str) -> None:
        if name == "proxy":
            self.layout.proxy_file.unlink(missing_ok=True)
        self.services[name].start()

    def _ingest_answers(self) -> bool:
        try:
            ControlClient(self.layout.ingest_socket).request("status", timeout=2)
            return True
        except ControlError:
            return False

    def _wait_ready(self, name: str, ready: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        svc = self.services[name]
        while not ready():
            code = svc.exited()
            if code is not None:
                raise StrataError(f"the {name} service ended while starting (exit status {code})")
            if time.monotonic() > deadline or self._stop.wait(0.05):
                if self._stop.is_set():
                    return
                raise StrataError(f"the {name} service did not start within {timeout:.0f} s")

    def _supervise(self) -> None:
        next_check = time.monotonic()
        while not self._stop.wait(0.2):
            for name, svc in self.services.items():
                code = svc.exited()
                if code is None:
                    continue
                if svc.restarts_within(RESTART_WINDOW) >= MAX_RESTARTS:
                    self.failure = (f"the {name} service keeps failing (exit status {code}, "
                                    f"{MAX_RESTARTS} restarts in {RESTART_WINDOW:.0f} s); "
                                    "stopping everything (its log lines are above)")
                    self._stop.set()
                    break
                self._start(name)
                self.say(f"strata: the {name} service ended (exit status {code}); "
                         "starting it again")
            if self.primary_supervisor is not None and time.monotonic() >= next_check:
                next_check = time.monotonic() + PRIMARY_CHECK_INTERVAL
                self.primary_supervisor.check()

    # -- what the user is told --------------------------------------------------------
    def proxy_dsn(self, dbname: str = "postgres") -> str:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(self.dsn)
        user = params.get("user") or SUPERUSER
        state = load_proxy_state(self.layout.proxy_file)
        port = state.port if state is not None else 0
        passfile = f" passfile={params['passfile']}" if params.get("passfile") else ""
        return f"host=127.0.0.1 port={port} dbname={dbname} user={user}{passfile}"

    def _write_daemon_state(self) -> None:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(self.dsn)
        proxy = load_proxy_state(self.layout.proxy_file)
        write_json(self.layout.daemon_file, DaemonState(
            pid=os.getpid(), mode="embedded" if self.cluster is not None else "attach",
            primary_dsn=safe_dsn(self.dsn), proxy_port=proxy.port if proxy else None,
            target_host="127.0.0.1", target_port=proxy.port if proxy else 0,
            target_user=str(params.get("user") or SUPERUSER),
            target_dbname=str(params.get("dbname") or "postgres"),
            passfile=str(params["passfile"]) if params.get("passfile") else None,
            started_at=datetime.now(UTC).isoformat(timespec="seconds")).to_json())

    # -- stop -----------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Stop everything started, in order; one step failing never skips the next
        (the primary is always stopped, the lock always released)."""
        # the children and the embedded primary stop at the same time: neither
        # needs the other to stop (what ingest has not made durable, the slot keeps)
        primary = None
        if self.cluster is not None:
            primary = threading.Thread(target=self._stop_primary, name="stop-primary")
            primary.start()
        steps: list[tuple[str, Callable[[], None] | None]] = [
            ("state file", lambda: self.layout.daemon_file.unlink(missing_ok=True)),
            ("services", self._stop_services if self.services else None),
            ("primary", primary.join if primary is not None else None),
            ("lock", self._lockfile.close if self._lockfile is not None else None),
        ]
        self._lockfile = None
        for what, step in steps:
            if step is None:
                continue
            try:
                step()
            except Exception:
                log.exception("stopping the %s failed", what)

    def _stop_services(self) -> None:
        """SIGTERM to every child at once (each stops in order of its own), then
        wait; one that has not ended after STOP_GRACE is killed."""
        for name in ("proxy", "maintenance", "ingest"):
            if name in self.services:
                self.services[name].terminate()
        deadline = time.monotonic() + STOP_GRACE
        for name in ("proxy", "maintenance", "ingest"):
            svc = self.services.get(name)
            if svc is not None and not svc.wait(max(0.1, deadline - time.monotonic())):
                log.warning("the %s service did not stop in time: killed", name)
                if name == "proxy":
                    from strata.historical.modes import cleanup_instances

                    # its historical servers and lazy file systems (each with its
                    # readahead helpers) would outlive it until the next start
                    left = cleanup_instances(self.layout.instances)
                    if left:
                        log.warning("stopped %d historical server(s) the proxy left", len(left))
        if "proxy" in self.services:
            from strata.historical.instance import wait_process_exit
            from strata.historical.lazy import kill_spares

            # the proxy is gone either way: a spare file system of its still running
            # (CI 2026-12-05 saw one after a proxy that stopped in time) would
            # outlive strata, as nothing else ends it
            for pid in kill_spares(self.layout.instances):
                wait_process_exit(pid, 5)

    def _stop_primary(self) -> None:
        assert self.cluster is not None
        self.say("strata: stopping the primary")
        try:
            self.cluster.stop("fast")
        except Exception:
            log.exception("stopping the primary failed")
