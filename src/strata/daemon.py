"""The strata daemon (first version): a PostgreSQL 18 primary, its WAL stream, decoded.

What it is: what ``strata up`` runs. It prepares a *home* directory, starts
(or attaches to) a PostgreSQL 18 primary, makes sure the physical slot
``strata`` exists, streams WAL from it (`wal.receiver`), frames and decodes
every record (`wal.reader`, `wal.decoder`) and reports progress. Feedback to
the slot is the end of the last record processed: today "processed" means
decoded; when ingest and the layer store are wired in it becomes the store's
``durable_lsn`` (the one line that calls `WalReceiver.report`).

Fed by: `cli/up.py` (options), the primary (WAL). Feeds: stdout (connection
string, progress), the slot (feedback), files in home. Owns the home layout:

``<home>/primary/data``     the embedded primary's data directory (initdb on first run),
                            its log in ``<home>/primary/data.log``, sockets in
                            ``<home>/primary/sock``.
``<home>/receiver.json``    where streaming stopped; written atomically (tmp + fsync +
                            rename + fsync dir). Fields (format version 1):
                            ``version`` (1), ``slot``, ``system_id``, ``timeline``,
                            ``received_lsn`` (end of WAL received, "X/Y"),
                            ``flushed_lsn`` (end of the last record processed = the
                            start of the next one; the resume point and the flush
                            position reported to the slot), ``last_record_lsn`` (start
                            of that record, so the xl_prev chain is checked across
                            restarts, or null), ``updated_at`` (ISO 8601 UTC).
``<home>/state.json``       the running daemon, for ``strata psql`` / ``strata status``:
                            ``version`` (1), ``pid``, ``mode`` ("embedded" | "attach"),
                            ``primary_dsn`` (key=value, never a password),
                            ``target_host`` / ``target_port`` (what ``strata psql``
                            connects to: the primary today, the proxy later),
                            ``started_at``. Removed on a clean stop.
``<home>/lock``             flock'd while a daemon runs on this home.

Resuming: a second start on the same home streams from ``flushed_lsn`` (if the
cluster's system identifier still matches), else from the slot's restart_lsn.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from strata.errors import ConfigError, EndOfWal, WalSourceError
from strata.lsn import Lsn
from strata.runtime.cluster import SUPERUSER, Cluster, free_port
from strata.wal.decoder import decode_record
from strata.wal.reader import WalReader
from strata.wal.receiver import (
    WalReceiver,
    describe_dsn,
    ensure_physical_slot,
    identify_system,
    parse_size_setting,
    server_setting,
)
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import record_type_name, rmgr_name

log = logging.getLogger(__name__)

SLOT_NAME = "strata"
RECEIVER_STATE = "receiver.json"
DAEMON_STATE = "state.json"
STATE_VERSION = 1
PRIMARY_CHECK_INTERVAL = 2.0  # seconds between checks that the embedded primary runs
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
    port: int | None = None
    source: str | None = None
    verbose: int = 0
    progress_interval: float = 10.0
    status_interval: float = 10.0


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
            if self._stop.is_set():
                return 0
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
        port = self.opts.port or free_port()
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

    def _write_daemon_state(self) -> None:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(self.dsn)
        _atomic_write_json(self.home / DAEMON_STATE, {
            "version": STATE_VERSION,
            "pid": os.getpid(),
            "mode": "embedded" if self.cluster is not None else "attach",
            "primary_dsn": _safe_dsn(self.dsn),
            "target_host": str(params.get("host") or "127.0.0.1"),
            "target_port": int(params.get("port") or 5432),
            "target_user": str(params.get("user") or SUPERUSER),
            "target_dbname": str(params.get("dbname") or "postgres"),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        })

    def _stream(self) -> None:
        slot, created = ensure_physical_slot(self.dsn, SLOT_NAME)
        if created:
            log.info("created physical replication slot %s at %s", SLOT_NAME, slot.restart_lsn)
        if slot.restart_lsn is None:
            raise WalSourceError(f"replication slot {SLOT_NAME!r} has not reserved WAL; "
                                 "drop it or let strata create it")
        seg_size = parse_size_setting(server_setting(self.dsn, "wal_segment_size"))
        saved = load_receiver_state(self.home)
        start, prev, timeline, system_id = slot.restart_lsn, None, slot.restart_tli, None
        if saved is not None and saved.slot == SLOT_NAME:
            ident = identify_system(self.dsn)
            if ident.system_id != saved.system_id:
                raise ConfigError(
                    f"{self.home / RECEIVER_STATE} was written for another cluster (system "
                    f"identifier {saved.system_id}; {describe_dsn(self.dsn)} is "
                    f"{ident.system_id}); remove it to stream from the slot instead"
                )
            start, prev, timeline = saved.flushed_lsn, saved.last_record_lsn, saved.timeline
            system_id = saved.system_id
            if created or saved.flushed_lsn < slot.restart_lsn:
                log.warning("resuming at %s, but the slot starts at %s: WAL may be missing",
                            saved.flushed_lsn, slot.restart_lsn)
        rx = WalReceiver(self.dsn, SLOT_NAME, start, timeline=timeline, system_id=system_id,
                         status_interval=self.opts.status_interval)
        self._receiver = rx
        if self._stop.is_set():
            rx.stop()
        self._write_daemon_state()
        self.say(f"strata: PostgreSQL 18 primary: {self._user_dsn()}")
        self.say(f"strata: connect with `strata psql --home {self.home}` or "
                 f"psql \"{self._user_dsn()}\"")
        self.say(f"strata: streaming WAL from slot {SLOT_NAME} at {start}"
                 + (" (resumed)" if saved is not None else ""))
        reader = WalReader(start, seg_size, prev_lsn=prev)
        self.processed = start
        # Feedback. write = what has been processed; flush = what is durable, and today
        # that is the resume point saved in receiver.json (a restart re-streams from it,
        # so the slot must keep everything after it). With the layer store, flush
        # becomes the store's durable_lsn.
        durable = start
        last_record: Lsn | None = prev
        last_saved = 0.0
        last_progress = last_check = time.monotonic()
        progress_records, progress_bytes = 0, 0
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
                            self.records += 1
                            progress_records += 1
                            if self.opts.verbose:
                                self.say(format_record(rec))
                            self.processed = raw.end_lsn
                            last_record = raw.lsn
                    except EndOfWal as e:
                        # Streamed WAL is flushed WAL: it must be valid to the end.
                        raise WalSourceError(f"invalid WAL in the stream: {e}") from e
                    rx.report(self.processed, durable)
                now = time.monotonic()
                if now - last_saved >= 1.0 and durable != self.processed:
                    durable = self._save_and_confirm(rx, last_record)
                    last_saved = now
                if now - last_progress >= self.opts.progress_interval:
                    if progress_records or progress_bytes:
                        self._progress(rx, progress_records, now - last_progress)
                    last_progress, progress_records, progress_bytes = now, 0, 0
                if self.cluster is not None and now - last_check >= PRIMARY_CHECK_INTERVAL:
                    self._check_primary()
                    last_check = now
                if rx.finished:
                    break
        finally:
            try:
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

    def _progress(self, rx: WalReceiver, records: int, seconds: float) -> None:
        lag = max(0, rx.server_wal_end - self.processed)
        self.say(f"ingest: {records / max(seconds, 1e-9):.0f} rec/s, {self.records} records, "
                 f"{_human_bytes(self.bytes)}, at {self.processed}, lag {_human_bytes(lag)}")

    def _save_and_confirm(self, rx: WalReceiver, last_record: Lsn | None) -> Lsn:
        """Make `processed` durable in receiver.json, then (only then) let the slot
        release the WAL before it. Returns the new durable position."""
        processed = self.processed
        if rx.system_id is None:
            return processed  # never connected: nothing was processed, nothing to save
        save_receiver_state(self.home, ReceiverState(
            SLOT_NAME, rx.system_id, rx.timeline, rx.received_lsn, processed, last_record))
        rx.report(processed, processed)
        return processed

    def _shutdown(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.home / DAEMON_STATE).unlink()
        if self.cluster is not None:
            self.say("strata: stopping the primary")
            self.cluster.stop("fast")
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None

    def describe_source(self) -> str:
        return describe_dsn(self.dsn)
