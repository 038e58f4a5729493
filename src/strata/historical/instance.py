"""A stock PostgreSQL 18 serving a materialized directory, read-only, as a hot standby.

Fed by a `MaterializedDir` (from `materialize`). Feeds the pool and the proxy
(a port on 127.0.0.1 and a private socket). Owns the instance root directory::

    <root>/data        the data directory (materialize wrote it)
    <root>/sock/       private unix socket directory (0700 socket)
    <root>/data.log    server log (its tail is in every InstanceError)

The recipe (wal-census.md section 5.3):
  1. `pg_resetwal -f` with the cluster values at X (-x/-e/-u/-m/-O/-o) and -l a WAL
     segment after X, so every page LSN (at most X) is in the server's past;
  2. one normal start and stop, socket only, autovacuum off: pg_resetwal always
     leaves wal_level=minimal in pg_control and a hot standby refuses that; during
     this start (`normal_cycle`) the indexes of unsupported access methods are
     marked invalid, if asked;
  3. standby.signal (no primary_conninfo, no restore_command) and start: the
     server reaches consistency at the shutdown checkpoint, accepts read-only
     connections (writes get SQLSTATE 25006) and never writes relation files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strata.errors import CorruptionError, InstanceError, RuntimeSetupError
from strata.historical.controlfile import parse_control
from strata.historical.materialize import (
    ChecksumPolicy,
    MaterializedDir,
    ProgressFn,
    materialize,
)
from strata.historical.source import ClusterView
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pg.xlogfile import segment_file_name
from strata.runtime.cluster import SUPERUSER, Cluster, free_port
from strata.runtime.osuser import give_to_server_user, run_as_server
from strata.runtime.pgbin import PgBinaries, find_pg_binaries
from strata.runtime.procfs import process_alive

if TYPE_CHECKING:
    from strata.historical.lazy import LazyMount

log = logging.getLogger(__name__)

# Databases tried (in order) to read the list of databases from: one of them
# exists in any cluster unless a user dropped both.
_BOOTSTRAP_DBS = ("postgres", "template1")


def wait_process_exit(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited; False when it still runs after `timeout` s."""
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def pg_resetwal_args(values: ClusterState) -> list[str]:
    """-x/-e (next xid and its epoch), -u, -m, -O, -o: `values` as pg_resetwal
    sets them (pg_resetwal's own checks apply)."""
    epoch, xid = values.next_full_xid >> 32, values.next_full_xid & 0xFFFFFFFF
    return ["-x", str(xid), "-e", str(epoch), "-u", str(values.oldest_xid),
            "-m", f"{values.next_multi},{values.oldest_multi}",
            "-O", str(values.next_multi_offset), "-o", str(values.next_oid)]


def reset_wal(datadir: Path, mat: MaterializedDir, *, bins: PgBinaries | None = None) -> None:
    """Run pg_resetwal with the values at X (step 1).

    Raises: InstanceError naming pg_resetwal's complaint.
    """
    bins = bins or find_pg_binaries()
    try:
        parse_control((datadir / "global" / "pg_control").read_bytes())
    except (OSError, CorruptionError) as e:
        # -f would guess every value; refuse instead of serving a guessed cluster
        raise InstanceError(f"{datadir}: no valid pg_control to reset: {e}") from e
    next_seg = segment_file_name(mat.timeline, int(mat.lsn) // mat.wal_segment_size + 1,
                                 mat.wal_segment_size)
    try:
        run_as_server([bins.path("pg_resetwal"), "-f", *pg_resetwal_args(mat.control),
                       "-l", next_seg, "-D", datadir])
    except RuntimeSetupError as e:
        raise InstanceError(f"pg_resetwal failed on {datadir}: {e}") from e


def _connect(cluster: Cluster, dbname: str, user: str) -> Any:
    import psycopg

    assert cluster.socket_dir is not None
    return psycopg.connect(host=str(cluster.socket_dir), port=cluster.port, dbname=dbname,
                           user=user, autocommit=True, connect_timeout=10)


def _databases(cluster: Cluster, user: str) -> list[str]:
    last: Exception | None = None
    for db in _BOOTSTRAP_DBS:
        try:
            with _connect(cluster, db, user) as conn:
                # datconnlimit -2: a database DROP DATABASE has marked invalid (in
                # place, before its commit): no connection is accepted there
                rows = conn.execute(
                    "SELECT datname FROM pg_database WHERE datallowconn "
                    "AND datconnlimit <> -2 ORDER BY oid").fetchall()
                return [r[0] for r in rows]
        except Exception as e:  # psycopg.OperationalError: database missing
            last = e
    raise InstanceError(f"cannot list the databases of {cluster.datadir}: {last}")


def normal_cycle(datadir: Path, *, am_names: Sequence[str] = (), user: str = SUPERUSER,
                 bins: PgBinaries | None = None, timeout: float = 60) -> int:
    """Start once as a normal server (socket only, autovacuum off) and stop (step 2).

    While it runs, indexes whose access method is in `am_names` are marked
    invalid in every database that allows connections.
    Returns: the number of indexes marked invalid.
    Raises: InstanceError with the log tail.
    """
    c = Cluster(datadir=datadir, bins=bins or find_pg_binaries())
    opts = "-c listen_addresses='' -c autovacuum=off"
    if am_names:
        opts += " -c allow_system_table_mods=on"
    c.start(options=opts, timeout=timeout)
    marked = 0
    try:
        if am_names:
            for db in _databases(c, user):
                with _connect(c, db, user) as conn:
                    cur = conn.execute(
                        "UPDATE pg_catalog.pg_index SET indisvalid = false "
                        "WHERE indisvalid AND indexrelid IN (SELECT c.oid FROM pg_catalog.pg_class c "
                        "JOIN pg_catalog.pg_am a ON a.oid = c.relam WHERE a.amname = ANY(%s))",
                        (list(am_names),))
                    marked += cur.rowcount
    finally:
        c.stop("fast", timeout=timeout)
    if c.is_running():
        raise InstanceError(f"the normal start of {datadir} did not stop.\n{c.log_tail()}")
    return marked


@dataclass
class HistoricalInstance:
    """One read-only server at `lsn`; `root` holds data, socket and log."""

    root: Path
    lsn: Lsn
    cluster: Cluster
    invalid_index_ams: tuple[str, ...] = ()
    indexes_marked_invalid: int = 0
    started_at: float = field(default_factory=time.monotonic)
    startup_seconds: float = 0.0
    mode: str = "materialize"
    mount: LazyMount | None = None  # lazy mode: the file system serving `datadir`
    socket_only: bool = False  # no TCP listener: reachable through `socket_dir` only
    pid: int | None = None  # the postmaster (known even when its data directory is gone)

    def __post_init__(self) -> None:
        if self.pid is None:
            self.pid = self.cluster.postmaster_pid()

    @property
    def port(self) -> int:
        return self.cluster.port

    @property
    def socket_dir(self) -> Path:
        assert self.cluster.socket_dir is not None
        return self.cluster.socket_dir

    @property
    def datadir(self) -> Path:
        return self.cluster.datadir

    @property
    def host(self) -> str:
        """Where to connect: the socket directory, or 127.0.0.1 when TCP is on."""
        return str(self.socket_dir) if self.socket_only else "127.0.0.1"

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"host={self.host} port={self.port} dbname={dbname} user={user}"

    def connect(self, dbname: str = "postgres", *, autocommit: bool = True, **kw: Any) -> Any:
        import psycopg

        return psycopg.connect(self.dsn(dbname), autocommit=autocommit, **kw)

    def sql(self, query: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(query)
            return list(cur.fetchall()) if cur.description else []

    def is_running(self) -> bool:
        return self.cluster.is_running()

    def healthy(self) -> bool:
        """The server runs and (lazy) its file system too."""
        return (self.mount is None or self.mount.alive()) and self.cluster.is_running()

    def size_bytes(self) -> int:
        """Disk the point uses: its data directory, or (lazy) its overlay."""
        total = 0
        base = self.mount.overlay if self.mount is not None else self.datadir
        for p in base.rglob("*"):
            with contextlib.suppress(OSError):
                if p.is_file() and not p.is_symlink():
                    total += p.stat().st_blocks * 512  # allocated: holes cost nothing
        return total

    def stop(self, *, timeout: float = 30) -> None:
        """Stop the server and wait until its postmaster process has exited."""
        pid = self.cluster.postmaster_pid()
        self.cluster.stop("fast")
        if pid is not None and not wait_process_exit(pid, timeout):
            raise InstanceError(f"the server on {self.datadir} (pid {pid}) did not exit")

    def remove(self) -> None:
        """Stop the server, unmount its lazy file system, delete the instance root."""
        pid = self.cluster.postmaster_pid() or self.pid
        try:
            self.stop()
        except InstanceError:
            log.exception("stopping the historical server at %s", self.lsn)
        finally:
            if self.cluster.is_running():
                self.cluster.stop("immediate")
            if pid is not None and process_alive(pid):
                # its data directory is gone (a dead lazy file system): pg_ctl cannot
                # reach it; immediate shutdown by signal, then SIGKILL
                for sig in (signal.SIGQUIT, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                    if wait_process_exit(pid, 10):
                        break
            if self.mount is not None:
                self.mount.unmount()
            shutil.rmtree(self.root, ignore_errors=True)


def prepare(mat: MaterializedDir, *, invalid_index_ams: Sequence[str] = (),
            user: str = SUPERUSER, bins: PgBinaries | None = None, timeout: float = 60) -> int:
    """Steps 1 and 2: pg_resetwal at X, one normal start/stop (marking indexes of
    `invalid_index_ams` invalid), then standby.signal.

    Returns: the number of indexes marked invalid.
    Raises: InstanceError (with the log tail when the server was involved).
    """
    datadir = mat.datadir
    if (datadir / "postmaster.pid").exists():
        raise InstanceError(f"{datadir} has a postmaster.pid: is a server running on it?")
    reset_wal(datadir, mat, bins=bins)
    marked = normal_cycle(datadir, am_names=invalid_index_ams, user=user, bins=bins,
                          timeout=timeout)
    signal = datadir / "standby.signal"
    signal.write_text("")
    give_to_server_user(signal, recursive=False, mode=0o600)
    return marked


def launch(datadir: Path, *, port: int | None = None, bins: PgBinaries | None = None,
           timeout: float = 60, socket_only: bool = False,
           pid_file: Path | None = None) -> Cluster:
    """Step 3: start the prepared directory as a hot standby on 127.0.0.1:`port`
    and a private socket directory (0700, owned by the server user); with
    `socket_only`, on the socket directory alone (no TCP listener).

    `pid_file`: where readiness is polled (`Cluster.start`).

    Raises: InstanceError with the log tail (the server is not left running).
    """
    if not (datadir / "standby.signal").exists():
        raise InstanceError(f"{datadir} is not prepared (no standby.signal): run prepare first")
    bins = bins or find_pg_binaries()
    options = "-c listen_addresses=''" if socket_only else ""
    for attempt in range(1 if port else 3):
        cluster = Cluster(datadir=datadir, port=port or free_port(), bins=bins)
        try:
            cluster.start(timeout=timeout, options=options, pid_file=pid_file)
            break
        except InstanceError as e:
            cluster.stop("immediate")
            # another process took the free port between free_port() and bind: retry
            if "could not bind" not in str(e) or attempt == 2 or port:
                raise
    assert cluster.socket_dir is not None
    give_to_server_user(cluster.socket_dir, recursive=False, mode=0o700)
    return cluster


def start_instance(mat: MaterializedDir, *, root: Path | None = None,
                   invalid_index_ams: Sequence[str] = (), port: int | None = None,
                   user: str = SUPERUSER, bins: PgBinaries | None = None,
                   timeout: float = 60) -> HistoricalInstance:
    """Turn a materialized directory into a running read-only server (steps 1-3).

    Requires: `mat.datadir` is `<root>/data` (root defaults to its parent).
    Raises: InstanceError with the log tail when any step fails (the server is
    stopped; the directory is left for inspection).
    """
    t0 = time.perf_counter()
    bins = bins or find_pg_binaries()
    root = Path(root) if root is not None else mat.datadir.parent
    marked = prepare(mat, invalid_index_ams=invalid_index_ams, user=user, bins=bins,
                     timeout=timeout)
    cluster = launch(mat.datadir, port=port, bins=bins, timeout=timeout)
    inst = HistoricalInstance(root=root, lsn=mat.lsn, cluster=cluster,
                              invalid_index_ams=tuple(invalid_index_ams),
                              indexes_marked_invalid=marked)
    inst.startup_seconds = time.perf_counter() - t0
    return inst


def materialize_and_start(source: ClusterView, root: Path, *,
                          invalid_index_ams: Sequence[str] = (),
                          checksums: ChecksumPolicy | str = ChecksumPolicy.COMPUTE,
                          progress: ProgressFn | None = None, port: int | None = None,
                          user: str = SUPERUSER, bins: PgBinaries | None = None,
                          timeout: float = 60) -> HistoricalInstance:
    """Write `source` under `root/data` and start it: the usual pool factory body.

    Raises: CorruptionError from materialize, InstanceError from the start (the
    directory is left for inspection; the pool removes it).
    """
    mat = materialize(source, Path(root) / "data", checksums=checksums, progress=progress)
    return start_instance(mat, root=Path(root), invalid_index_ams=invalid_index_ams, port=port,
                          user=user, bins=bins, timeout=timeout)
