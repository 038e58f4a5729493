"""The strata daemon: a PostgreSQL 18 primary, its WAL ingested into layers, the proxy.

What it is: what ``strata up`` runs. It prepares a *home* directory, starts
(or attaches to) a PostgreSQL 18 primary, imports history on the first run
(embedded: the primary page by page at a clean shutdown checkpoint, before
users connect; attach: a base backup made consistent, from its end LSN),
makes sure the physical slot ``strata`` exists, streams WAL from it
(`wal.receiver`), frames and decodes every record (`wal.reader`,
`wal.decoder`), ingests it into the page store and the time map
(`ingest.walingest`), and serves time travel through the proxy
(`proxy.server` + `history_service`). Feedback to the slot: write = the end
of the last record processed, flush = the store's ``durable_lsn``, so the
primary keeps every byte of WAL strata has not made durable in layers; a
crash of strata loses nothing: a restart re-streams from ``durable_lsn``.

Fed by: `cli/up.py` (options), the primary (WAL). Feeds: stdout (connection
strings, progress), the slot (feedback), the store, the proxy. Owns the home
layout:

``<home>/primary/data``     the embedded primary's data directory (initdb on first run),
                            its log in ``<home>/primary/data.log``, sockets in
                            ``<home>/primary/sock``.
``<home>/layers/``          the layer store (storage/FORMAT.md).
``<home>/timemap/``         the time map (timeline/FORMAT.md).
``<home>/instances/``       historical servers (caches: removed when stopped, and at start).
``<home>/history.json``     where history starts, written once (atomically) after the
                            import is durable; its absence means "import again". Fields
                            (format version 1): ``version``, ``system_id`` (the primary's
                            system identifier; another cluster is refused), ``start_lsn``,
                            ``start_time`` (ISO 8601), ``mode`` ("embedded" | "attach").
``<home>/receiver.json``    where streaming stopped; written atomically (tmp + fsync +
                            rename + fsync dir). Fields (format version 1):
                            ``version`` (1), ``slot``, ``system_id``, ``timeline``,
                            ``received_lsn`` (end of WAL received, "X/Y"),
                            ``flushed_lsn`` (the store's durable_lsn: the resume point and
                            the flush position reported to the slot), ``last_record_lsn``
                            (start of the last record processed, or null), ``updated_at``.
``<home>/state.json``       the running daemon, for ``strata psql`` / ``strata query`` /
                            ``strata status``: ``version`` (1), ``pid``, ``mode``,
                            ``primary_dsn`` (key=value, never a password), ``proxy_port``,
                            ``target_host`` / ``target_port`` (what ``strata psql`` connects
                            to: the proxy), ``target_user``, ``target_dbname``,
                            ``started_at``. Removed on a clean stop.
``<home>/status.json``      rewritten every progress interval: ``received_lsn``,
                            ``ingested_lsn``, ``durable_lsn``, ``server_wal_end``,
                            ``lag_bytes``, ``lag_seconds``, ``history_start_lsn`` /
                            ``history_start_time``, ``newest_lsn`` / ``newest_commit_time``,
                            ``layers`` (per level: count, bytes), ``instances``.
``<home>/lock``             flock'd while a daemon runs on this home.

Ordering that keeps "nothing lost": the import is flushed before history.json
is written; the time map is fsynced before the store's watermark advances
(`WalIngest.advance`); receiver.json records durable_lsn before the slot is
told it may release WAL up to it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from strata.bootstrap import cluster_state_of, import_datadir
from strata.errors import ConfigError, EndOfWal, WalSourceError
from strata.historical.source import DataDirSource
from strata.history_service import HistoryService
from strata.ingest.transam import TransamIngest
from strata.ingest.walingest import WalIngest
from strata.key import Key
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.proxy.server import ProxyConfig, ProxyThread
from strata.reconstruct.reconstruct import reconstruct_value
from strata.runtime.cluster import SUPERUSER, Cluster, free_port
from strata.timeline.timemap import TimeMap
from strata.wal.decoder import decode_record
from strata.wal.reader import WalReader
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
RECEIVER_STATE = "receiver.json"
DAEMON_STATE = "state.json"
HISTORY_STATE = "history.json"
STATUS_STATE = "status.json"
STATE_VERSION = 1
PRIMARY_CHECK_INTERVAL = 2.0  # seconds between checks that the embedded primary runs
ADVANCE_INTERVAL = 0.2  # seconds between publications of ingested WAL (each fsyncs the time map)
ADVANCE_BYTES = 8 << 20  # ... or after this much WAL
FALLBACK_ROOT_HOME = Path("/var/lib/strata")

# Settings of the embedded primary on top of runtime.cluster.PRIMARY_SETTINGS.
EMBEDDED_SETTINGS: dict[str, str] = {
    "wal_keep_size": "0",
    # The slot holds what strata still needs; never let a stuck strata fill the disk silently:
    # max_slot_wal_keep_size stays -1 (unlimited) so history is never lost (issue 5).
}


# -- home ----------------------------------------------------------------------------


def _reachable_by_others(path: Path) -> bool:
    """Every existing ancestor of `path` lets other users traverse it (o+x)."""
    for p in [path, *path.parents]:
        if p.exists():
            try:
                if not os.stat(p).st_mode & stat.S_IXOTH:
                    return False
            except OSError:
                return False
    return True


def resolve_home(home: str | os.PathLike[str] | None) -> Path:
    """--home, else $STRATA_HOME, else ~/.strata.

    As root the server runs as an unprivileged user that must reach the data
    directory: a defaulted home under a private directory (root's 0700 home)
    moves to /var/lib/strata; an explicit one raises ConfigError.
    """
    explicit = home is not None or bool(os.environ.get("STRATA_HOME"))
    path = Path(home if home is not None else os.environ.get("STRATA_HOME") or "~/.strata")
    path = path.expanduser().absolute()
    if os.geteuid() == 0 and not _reachable_by_others(path):
        if explicit:
            raise ConfigError(
                f"strata home {path} is inside a directory other users cannot traverse; "
                "PostgreSQL runs as an unprivileged user and must reach it: choose another "
                "--home (e.g. /var/lib/strata) or allow traversal (chmod o+x)"
            )
        log.info("home %s is not reachable by the server user; using %s", path,
                 FALLBACK_ROOT_HOME)
        path = FALLBACK_ROOT_HOME
    return path


def _atomic_write_json(path: Path, obj: dict[str, Any]) -> None:
    """tmp + fsync + rename + fsync dir: a crash leaves the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True, slots=True)
class ReceiverState:
    """``<home>/receiver.json`` (see the module docstring)."""

    slot: str
    system_id: int
    timeline: int | None
    received_lsn: Lsn
    flushed_lsn: Lsn
    last_record_lsn: Lsn | None
    updated_at: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(version=STATE_VERSION, received_lsn=str(self.received_lsn),
                 flushed_lsn=str(self.flushed_lsn), system_id=str(self.system_id),
                 last_record_lsn=str(self.last_record_lsn) if self.last_record_lsn else None,
                 updated_at=datetime.now(UTC).isoformat(timespec="seconds"))
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReceiverState:
        if d.get("version") != STATE_VERSION:
            raise ConfigError(f"receiver state version {d.get('version')!r} is not "
                              f"{STATE_VERSION}")
        last = d.get("last_record_lsn")
        return cls(str(d["slot"]), int(d["system_id"]),
                   int(d["timeline"]) if d.get("timeline") is not None else None,
                   Lsn.parse(d["received_lsn"]), Lsn.parse(d["flushed_lsn"]),
                   Lsn.parse(last) if last else None, str(d.get("updated_at", "")))


def load_receiver_state(home: Path) -> ReceiverState | None:
    path = home / RECEIVER_STATE
    if not path.exists():
        return None
    try:
        return ReceiverState.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is damaged ({e}); remove it to restart from the slot") from e


def save_receiver_state(home: Path, state: ReceiverState) -> None:
    _atomic_write_json(home / RECEIVER_STATE, state.to_json())


def load_daemon_state(home: Path) -> dict[str, Any] | None:
    """``<home>/state.json`` if a daemon wrote it and its process still lives."""
    path = home / DAEMON_STATE
    try:
        d: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(int(d["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError):
        return None
    except PermissionError:
        pass
    return d


def _safe_dsn(dsn: str) -> str:
    """The DSN as key=value without the password."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    d = {k: v for k, v in conninfo_to_dict(dsn).items() if k != "password" and v is not None}
    return make_conninfo("", **d)


# -- what is printed ---------------------------------------------------------------


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


def _human_bytes(n: int) -> str:
    v = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(v) < 1024 or unit == "GB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TB"


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


@dataclass(frozen=True, slots=True)
class HistoryInfo:
    """``<home>/history.json``: where history starts (format version 1)."""

    system_id: int
    start_lsn: Lsn
    start_time: datetime
    mode: str  # "embedded" | "attach"

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "system_id": str(self.system_id),
                "start_lsn": str(self.start_lsn), "start_time": self.start_time.isoformat(),
                "mode": self.mode}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HistoryInfo:
        if d.get("version") != STATE_VERSION:
            raise ConfigError(f"history.json version {d.get('version')!r} is not {STATE_VERSION}")
        return cls(int(d["system_id"]), Lsn.parse(d["start_lsn"]),
                   datetime.fromisoformat(d["start_time"]), str(d["mode"]))


def load_history_info(home: Path) -> HistoryInfo | None:
    path = home / HISTORY_STATE
    if not path.exists():
        return None
    try:
        return HistoryInfo.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is damaged ({e}); history cannot be located") from e


class Daemon:
    """One run of ``strata up``. `run()` blocks until `stop()` (any thread, or a
    signal handler) or a fatal error; it always stops what it started."""

    def __init__(self, opts: UpOptions, out: IO[str] | None = None) -> None:
        self.opts = opts
        self.home = opts.home
        self.out = out
        self._stop = threading.Event()
        self._receiver: WalReceiver | None = None
        self.cluster: Cluster | None = None
        self.dsn = ""
        self._lockfile: IO[bytes] | None = None
        self.records = 0
        self.bytes = 0
        self.processed = Lsn(0)
        self.store: PageStore | None = None
        self.timemap: TimeMap | None = None
        self.ingest: WalIngest | None = None
        self.history: HistoryService | None = None
        self.proxy: ProxyThread | None = None
        self.info: HistoryInfo | None = None
        self._primary_conn: Any = None
        self._caught_up_at = time.monotonic()
        self._primary_lock = threading.Lock()

    # -- control --------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        rx = self._receiver
        if rx is not None:
            rx.stop()

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGINT/SIGTERM -> stop(); returns a function restoring the old handlers."""
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

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
        if self.out is not None:
            print(text, file=self.out, flush=True)

    # -- run ------------------------------------------------------------------------
    def run(self) -> int:
        self._prepare_home()
        try:
            if self.opts.source is None:
                self._start_embedded()
            else:
                self.dsn = self.opts.source
                self._attach()
            if self._stop.is_set():
                return 0
            self._open_history()
            self._start_proxy()
            self._stream()
        finally:
            self._shutdown()
        return 0

    def _prepare_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chmod(self.home, 0o755)  # the server user traverses it to reach primary/
        lockf = (self.home / "lock").open("ab")
        try:
            fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            lockf.close()
            raise ConfigError(f"another strata is already running on {self.home}") from e
        self._lockfile = lockf

    def _start_embedded(self) -> None:
        datadir = self.home / "primary" / "data"
        port = self.opts.primary_port or free_port()
        c = Cluster(datadir=datadir, port=port)
        if not (datadir / "PG_VERSION").exists():
            if datadir.exists() and any(datadir.iterdir()):
                raise ConfigError(f"{datadir} exists but is not a PostgreSQL data directory")
            self.say(f"strata: creating the embedded PostgreSQL 18 primary in {datadir}")
            c.initdb(settings=EMBEDDED_SETTINGS)
        elif c.is_running():
            # Left running by a strata that was killed: restart it on our port.
            log.warning("primary in %s was still running (pid %s); restarting it", datadir,
                        c.postmaster_pid())
            c.stop("fast")
        self.cluster = c
        c.start()
        self.dsn = c.dsn()
        if load_history_info(self.home) is None:
            self._import_embedded(c)

    def _import_embedded(self, c: Cluster) -> None:
        """First run: history starts at a clean shutdown checkpoint, imported page
        by page before users connect. The slot exists first, so every record
        after that checkpoint stays on the primary until it is durable here."""
        ensure_physical_slot(self.dsn, SLOT_NAME)
        c.sql(_CREATE_TRAVEL_ROLE)
        c.stop("fast")
        self._reset_history_dirs()
        source = DataDirSource(c.datadir)
        self.say(f"strata: importing the primary at its shutdown checkpoint {source.lsn}")
        store, timemap = self._open_store_dirs()
        try:
            ingest = WalIngest(store, timemap, TransamIngest(cluster_state_of(source)),
                               start_lsn=source.lsn)
            import_datadir(source, ingest)
            store.flush()
            info = HistoryInfo(source.controlfile.system_identifier, source.lsn,
                               datetime.now(UTC), "embedded")
            _atomic_write_json(self.home / HISTORY_STATE, info.to_json())
        finally:
            store.close()
            timemap.close()
        c.start()

    def _attach(self) -> None:
        """Attach mode: history starts at the end of a base backup taken over the
        replication protocol, made consistent by one recovery of the copy."""
        from strata.runtime.basebackup import consistent_base_backup

        if load_history_info(self.home) is not None:
            return
        ensure_physical_slot(self.dsn, SLOT_NAME)
        with contextlib.suppress(Exception), psycopg_connect(self.dsn) as conn:
            conn.execute(_CREATE_TRAVEL_ROLE)
        self._reset_history_dirs()
        self.say(f"strata: taking a base backup of {describe_dsn(self.dsn)}")
        backup = consistent_base_backup(self.dsn, self.home / "import")
        source = DataDirSource(backup.datadir)
        store, timemap = self._open_store_dirs()
        try:
            ingest = WalIngest(store, timemap, TransamIngest(cluster_state_of(source)),
                               start_lsn=backup.end_lsn)
            import_datadir(source, ingest, lsn=backup.end_lsn)
            store.flush()
            info = HistoryInfo(source.controlfile.system_identifier, backup.end_lsn,
                               datetime.now(UTC), "attach")
            _atomic_write_json(self.home / HISTORY_STATE, info.to_json())
        finally:
            store.close()
            timemap.close()
            shutil.rmtree(self.home / "import", ignore_errors=True)

    def _reset_history_dirs(self) -> None:
        for d in ("layers", "timemap", "instances"):
            shutil.rmtree(self.home / d, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.home / RECEIVER_STATE).unlink()

    def _open_store_dirs(self) -> tuple[PageStore, TimeMap]:
        store = PageStore.open(self.home / "layers", reconstruct_value)
        timemap = TimeMap.open(self.home / "timemap", durable_lsn=store.durable_lsn)
        return store, timemap

    def _open_history(self) -> None:
        info = load_history_info(self.home)
        if info is None:
            raise ConfigError(f"{self.home} has no history yet (history.json missing)")
        self.info = info
        self._cleanup_instances()
        self.store, self.timemap = self._open_store_dirs()
        durable = Lsn(max(self.store.durable_lsn, info.start_lsn))
        state_bytes = self.store.get_page(Key.cluster(0), durable)
        if state_bytes is None:
            raise ConfigError(f"the store in {self.home / 'layers'} has no cluster values at "
                              f"{durable}: history is damaged")
        transam = TransamIngest(ClusterState.from_bytes(state_bytes))
        self.ingest = WalIngest(self.store, self.timemap, transam, start_lsn=durable)
        self.ingest.load_state(durable)
        self.history = HistoryService(
            self.store, self.timemap, history_start=info.start_lsn,
            history_start_time=info.start_time, instances_root=self.home / "instances",
            primary_lsn=self._primary_lsn, primary_now=self._primary_now,
            max_instances=self.opts.max_instances,
            idle_timeout=self.opts.instance_idle_timeout)
        self.history.pool.start_reaper()

    def _cleanup_instances(self) -> None:
        """Historical servers left by a strata that was killed: stop them and
        remove their directories (they are caches, rebuilt on demand)."""
        root = self.home / "instances"
        if not root.exists():
            return
        for pidfile in root.glob("*/data/postmaster.pid"):
            log.warning("stopping a historical server left running in %s", pidfile.parent)
            Cluster(datadir=pidfile.parent).stop("immediate")
        shutil.rmtree(root, ignore_errors=True)

    def _primary_query(self, sql: str) -> Any:
        with self._primary_lock:
            for attempt in (1, 2):
                try:
                    if self._primary_conn is None or self._primary_conn.closed:
                        self._primary_conn = psycopg_connect(self.dsn)
                    return self._primary_conn.execute(sql).fetchone()[0]
                except Exception:
                    self._primary_conn = None
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def _primary_lsn(self) -> Lsn:
        return Lsn.parse(str(self._primary_query("SELECT pg_current_wal_lsn()")))

    def _primary_now(self) -> datetime:
        return self._primary_query("SELECT clock_timestamp()")  # type: ignore[no-any-return]

    def _start_proxy(self) -> None:
        from psycopg.conninfo import conninfo_to_dict

        assert self.history is not None
        params = conninfo_to_dict(self.dsn)
        config = ProxyConfig(primary_host=str(params.get("host") or "127.0.0.1"),
                             primary_port=int(params.get("port") or 5432),
                             listen_port=self.opts.port or 0)
        self.proxy = ProxyThread(config, self.history).start()

    def _write_daemon_state(self) -> None:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(self.dsn)
        proxy_port = self.proxy.port if self.proxy is not None else None
        _atomic_write_json(self.home / DAEMON_STATE, {
            "version": STATE_VERSION,
            "pid": os.getpid(),
            "mode": "embedded" if self.cluster is not None else "attach",
            "primary_dsn": _safe_dsn(self.dsn),
            "proxy_port": proxy_port,
            "target_host": "127.0.0.1" if proxy_port else str(params.get("host") or "127.0.0.1"),
            "target_port": proxy_port or int(params.get("port") or 5432),
            "target_user": str(params.get("user") or SUPERUSER),
            "target_dbname": str(params.get("dbname") or "postgres"),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        })

    def proxy_dsn(self, dbname: str = "postgres") -> str:
        from psycopg.conninfo import conninfo_to_dict

        user = conninfo_to_dict(self.dsn).get("user") or SUPERUSER
        assert self.proxy is not None
        return f"host=127.0.0.1 port={self.proxy.port} dbname={dbname} user={user}"

    def _stream(self) -> None:
        assert self.store is not None and self.ingest is not None and self.info is not None
        slot, created = ensure_physical_slot(self.dsn, SLOT_NAME)
        if slot.restart_lsn is None:
            raise WalSourceError(f"replication slot {SLOT_NAME!r} has not reserved WAL; "
                                 "drop it or let strata create it")
        seg_size = parse_size_setting(server_setting(self.dsn, "wal_segment_size"))
        ident = identify_system(self.dsn)
        if ident.system_id != self.info.system_id:
            raise ConfigError(
                f"history in {self.home} belongs to another cluster (system identifier "
                f"{self.info.system_id}; {describe_dsn(self.dsn)} is {ident.system_id})")
        saved = load_receiver_state(self.home)
        # The resume point is what the store made durable: everything after it
        # (the memtable of a strata that crashed) is streamed again.
        start = Lsn(max(self.store.durable_lsn, self.info.start_lsn))
        timeline = saved.timeline if saved is not None else slot.restart_tli
        if created or start < (slot.restart_lsn or 0):
            raise WalSourceError(
                f"strata needs WAL from {start}, but slot {SLOT_NAME!r} starts at "
                f"{slot.restart_lsn}: the WAL in between is gone and history cannot continue")
        rx = WalReceiver(self.dsn, SLOT_NAME, start, timeline=timeline,
                         system_id=self.info.system_id, status_interval=self.opts.status_interval)
        self._receiver = rx
        if self._stop.is_set():
            rx.stop()
        self._write_daemon_state()
        self.say(f"strata: PostgreSQL 18 primary: {self._user_dsn()}")
        self.say(f"strata: time travel proxy: {self.proxy_dsn()}")
        self.say(f"strata: connect with `strata psql --home {self.home}` or "
                 f"psql \"{self.proxy_dsn()}\"")
        fuse = "available" if Path("/dev/fuse").exists() else "not available"
        self.say("strata: historical servers: materialize mode (every page written at X; "
                 f"/dev/fuse is {fuse}, the lazy FUSE mode is not built yet)")
        self.say(f"strata: history from {self.info.start_time.isoformat(timespec='seconds')} "
                 f"(LSN {self.info.start_lsn}); streaming WAL from slot {SLOT_NAME} at {start}"
                 + (" (resumed)" if saved is not None else ""))
        reader = WalReader(start, seg_size, prev_lsn=None)
        self.processed = start
        last_record: Lsn | None = None
        last_saved = last_flush = 0.0
        last_progress = last_check = time.monotonic()
        last_flush = last_progress
        progress_records, progress_bytes = 0, 0
        ingest = self.ingest
        ingest_published = start
        last_advance, pending_bytes = last_progress, 0
        self._caught_up_at = last_progress
        try:
            while not self._stop.is_set():
                chunk = rx.poll(0.5)
                if chunk is not None:
                    reader.feed(chunk.data)
                    self.bytes += len(chunk.data)
                    progress_bytes += len(chunk.data)
                    try:
                        for raw in reader:
                            rec = decode_record(raw.raw, raw.lsn, raw.end_lsn)
                            ingest.ingest(rec)
                            self.records += 1
                            progress_records += 1
                            if self.opts.verbose:
                                self.say(format_record(rec))
                            self.processed = raw.end_lsn
                            last_record = raw.lsn
                    except EndOfWal as e:
                        # Streamed WAL is flushed WAL: it must be valid to the end.
                        raise WalSourceError(f"invalid WAL in the stream: {e}") from e
                    pending_bytes += len(chunk.data)
                now = time.monotonic()
                # Publish in batches: each advance fsyncs the time map first
                # (timeline/FORMAT.md, invariant 2), so once per chunk would put
                # an fsync on every replication message.
                if self.processed > ingest_published and (
                        chunk is None or now - last_advance >= ADVANCE_INTERVAL
                        or pending_bytes >= ADVANCE_BYTES):
                    ingest.advance(self.processed)
                    ingest_published, last_advance, pending_bytes = self.processed, now, 0
                    rx.report(self.processed, self.store.durable_lsn)
                    if rx.server_wal_end <= self.processed:
                        self._caught_up_at = now
                if now - last_flush >= self.opts.flush_interval and \
                        self.store.durable_lsn < self.processed:
                    self.store.flush()
                    last_flush = now
                if now - last_saved >= 1.0:
                    self._save_and_confirm(rx, last_record)
                    last_saved = now
                if now - last_progress >= self.opts.progress_interval:
                    if progress_records or progress_bytes:
                        self._progress(rx, progress_records, now - last_progress)
                    last_progress, progress_records, progress_bytes = now, 0, 0
                    self._write_status(rx)
                if self.cluster is not None and now - last_check >= PRIMARY_CHECK_INTERVAL:
                    self._check_primary()
                    last_check = now
                if rx.finished:
                    break
        finally:
            try:
                if self.processed > ingest_published:
                    ingest.advance(self.processed)
                if self.processed > self.store.durable_lsn:
                    self.store.flush()
                self._save_and_confirm(rx, last_record)
            finally:
                rx.close()  # sends the last status update
            self.say(f"strata: stopped streaming at {self.processed} "
                     f"({self.records} records this run)")

    def _check_primary(self) -> None:
        """The embedded primary is ours to keep running: if its postmaster is gone
        (killed, OOM), start it again; the receiver reconnects by itself.

        Raises: InstanceError (with the server log's tail) when it will not start.
        """
        c = self.cluster
        if c is None or c.is_running() or self._stop.is_set():
            return
        self.say("strata: the embedded primary is not running; starting it again")
        log.warning("embedded primary in %s stopped unexpectedly; restarting", c.datadir)
        c.start()

    def _user_dsn(self) -> str:
        return _safe_dsn(self.dsn)

    def _lag(self, rx: WalReceiver) -> tuple[int, float]:
        """(bytes, seconds) that ingest is behind the primary's WAL right now.

        Bytes come from the primary's current position when it answers (the
        receiver's view, `server_wal_end`, can be seconds old); seconds are the
        time since ingest last stood at the primary's position."""
        try:
            head = self._primary_lsn()
        except Exception:
            head = rx.server_wal_end
        lag = max(0, head - self.processed)
        now = time.monotonic()
        if lag == 0:
            self._caught_up_at = now
        return lag, (0.0 if lag == 0 else now - self._caught_up_at)

    def _progress(self, rx: WalReceiver, records: int, seconds: float) -> None:
        lag, _ = self._lag(rx)
        durable = self.store.durable_lsn if self.store is not None else Lsn(0)
        self.say(f"ingest: {records / max(seconds, 1e-9):.0f} rec/s, {self.records} records, "
                 f"{_human_bytes(self.bytes)}, at {self.processed}, durable {durable}, "
                 f"lag {_human_bytes(lag)}")

    def _write_status(self, rx: WalReceiver) -> None:
        """``<home>/status.json`` for ``strata status`` (rewritten atomically)."""
        if self.store is None or self.history is None or self.info is None:
            return
        tm_last = self.timemap.last() if self.timemap is not None else None
        lag_bytes, lag_seconds = self._lag(rx)
        m = self.store.store.manifest
        layers: dict[str, dict[str, int]] = {}
        for entry in m.layers:
            d = layers.setdefault(entry.level.name, {"count": 0, "bytes": 0})
            d["count"] += 1
            d["bytes"] += entry.size
        _atomic_write_json(self.home / STATUS_STATE, {
            "version": STATE_VERSION,
            "updated_at": datetime.now(UTC).isoformat(),
            "received_lsn": str(rx.received_lsn),
            "ingested_lsn": str(self.store.ingested_lsn),
            "durable_lsn": str(self.store.durable_lsn),
            "server_wal_end": str(rx.server_wal_end),
            "lag_bytes": lag_bytes,
            "lag_seconds": round(lag_seconds, 3),
            "history_start_lsn": str(self.history.oldest_lsn),
            "history_start_time": (self.history.oldest_time() or self.info.start_time).isoformat(),
            "newest_lsn": str(self.store.ingested_lsn),
            "newest_commit_time": tm_last.time.isoformat() if tm_last else None,
            "layers": layers,
            "instances": [
                {"lsn": str(s.lsn), "port": s.port, "size_bytes": s.size_bytes,
                 "idle_seconds": round(s.idle_seconds, 1)} for s in self.history.pool.stats()],
        })

    def _save_and_confirm(self, rx: WalReceiver, last_record: Lsn | None) -> Lsn:
        """Record the durable position in receiver.json, then (only then) let the
        slot release the WAL before it. Returns that position."""
        durable = self.store.durable_lsn if self.store is not None else self.processed
        if rx.system_id is None:
            return durable  # never connected: nothing was processed, nothing to save
        save_receiver_state(self.home, ReceiverState(
            SLOT_NAME, rx.system_id, rx.timeline, rx.received_lsn, Lsn(durable), last_record))
        rx.report(self.processed, durable)
        return Lsn(durable)

    def _shutdown(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.home / DAEMON_STATE).unlink()
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self.history is not None:
            self.history.close()
            self.history = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.timemap is not None:
            self.timemap.close()
            self.timemap = None
        if self._primary_conn is not None:
            with contextlib.suppress(Exception):
                self._primary_conn.close()
        if self.cluster is not None:
            self.say("strata: stopping the primary")
            self.cluster.stop("fast")
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None

    def describe_source(self) -> str:
        return describe_dsn(self.dsn)


def psycopg_connect(dsn: str) -> Any:
    import psycopg

    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


_CREATE_TRAVEL_ROLE = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'strata_time_travel') THEN
    CREATE ROLE strata_time_travel NOLOGIN;
  END IF;
END $$
"""
