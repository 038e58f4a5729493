"""A PostgreSQL 18 cluster we run: initdb, start, stop, connect.

Servers listen on 127.0.0.1 on a port found free at run time and on a private
unix socket directory; they run as the server user (`osuser`). A server that
fails to start is reported with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strata.errors import InstanceError
from strata.runtime.osuser import (
    as_user_kwargs,
    give_to_server_user,
    make_private_dir,
    run_as_server,
    server_env,
)
from strata.runtime.pgbin import PgBinaries, find_pg_binaries

SUPERUSER = "postgres"
STRATA_CONF = "strata.conf"

# What every primary we start needs for strata to follow it.
PRIMARY_SETTINGS: dict[str, str] = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "max_prepared_transactions": "10",
    "listen_addresses": "'127.0.0.1'",
    "fsync": "on",
    "logging_collector": "off",
    "log_min_messages": "warning",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _conf_value(v: str | int | bool) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, int):
        return str(v)
    s = str(v)
    if s.startswith("'") or s.replace(".", "").replace("-", "").isalnum():
        return s
    return "'" + s.replace("'", "''") + "'"


@dataclass
class Cluster:
    """One data directory and the server running on it (if any)."""

    datadir: Path
    port: int = field(default_factory=free_port)
    socket_dir: Path | None = None
    bins: PgBinaries = field(default_factory=find_pg_binaries)
    logfile: Path | None = None
    passfile: Path | None = None  # a libpq password file for the superuser (when required)

    def __post_init__(self) -> None:
        self.datadir = Path(self.datadir)
        if self.socket_dir is None:
            self.socket_dir = self.datadir.parent / "sock"
        if self.logfile is None:
            self.logfile = self.datadir.parent / f"{self.datadir.name}.log"

    # -- lifecycle ---------------------------------------------------------------
    def initdb(self, *, settings: Mapping[str, Any] | None = None, checksums: bool = True,
               extra_args: tuple[str, ...] = ()) -> None:
        """Create the data directory (it must not exist or be empty)."""
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        give_to_server_user(self.datadir.parent, recursive=False, mode=0o755)
        make_private_dir(self.datadir)
        args: list[str | Path] = [self.bins.path("initdb"), "-D", self.datadir, "-U", SUPERUSER, "--auth=trust",
                "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"]
        if checksums:
            args.append("--data-checksums")
        else:
            args.append("--no-data-checksums")
        args.extend(extra_args)
        run_as_server(args)
        self.configure({**PRIMARY_SETTINGS, **(settings or {})})
        # local replication connections for strata and pg_basebackup
        hba = self.datadir / "pg_hba.conf"
        text = hba.read_text()
        if "strata: replication" not in text:
            with hba.open("a") as f:
                f.write("\n# strata: replication and loopback\n"
                        "local   replication     all                     trust\n"
                        "host    replication     all     127.0.0.1/32  trust\n")

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Write settings to strata.conf (included from postgresql.conf)."""
        conf = self.datadir / "postgresql.conf"
        main = conf.read_text()
        if f"include_if_exists = '{STRATA_CONF}'" not in main:
            with conf.open("a") as f:
                f.write(f"\ninclude_if_exists = '{STRATA_CONF}'\n")
        path = self.datadir / STRATA_CONF
        current: dict[str, str] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if "=" in line and not line.lstrip().startswith("#"):
                    k, v = line.split("=", 1)
                    current[k.strip()] = v.strip()
        for k, v in settings.items():
            current[k] = _conf_value(v)
        path.write_text("".join(f"{k} = {v}\n" for k, v in current.items()))
        give_to_server_user(path, recursive=False, mode=0o600)

    def start(self, *, timeout: float = 60, options: str = "",
              pid_file: Path | None = None) -> None:
        """Start the server and wait until it accepts connections, polling
        `pid_file` (default: the data directory's postmaster.pid; a lazy server
        passes its overlay's copy, the same file without a FUSE round trip per poll).

        Raises: InstanceError with the tail of the server log.
        """
        assert self.socket_dir is not None and self.logfile is not None
        if not self.socket_dir.exists():
            self.socket_dir.mkdir(parents=True)
        give_to_server_user(self.socket_dir, recursive=False, mode=0o755)
        if not self.logfile.exists():
            self.logfile.touch()
        give_to_server_user(self.logfile, recursive=False, mode=0o644)
        argv = [str(self.bins.path("postgres")), "-D", str(self.datadir), "-p", str(self.port),
                "-k", str(self.socket_dir), *shlex.split(options)]
        # What `pg_ctl start -w` does, without its 100 ms polling: the postmaster in a
        # session of its own, output appended to the log; ready once postmaster.pid
        # says so. A thread reaps it when it exits (no zombie looks alive to kill(0)).
        with self.logfile.open("ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=server_env(), cwd="/", start_new_session=True,
                                    **as_user_kwargs())
        reaper = threading.Thread(target=proc.wait, name=f"reap-postmaster-{proc.pid}",
                                  daemon=True)
        reaper.start()
        deadline = time.monotonic() + timeout
        pid_file = pid_file or self.datadir / "postmaster.pid"
        while not self._ready(proc.pid, pid_file):
            if not reaper.is_alive():
                raise InstanceError(
                    f"PostgreSQL in {self.datadir} failed to start (exit {proc.returncode}).\n"
                    f"Last lines of {self.logfile}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGQUIT)
                raise InstanceError(
                    f"PostgreSQL in {self.datadir} did not accept connections within "
                    f"{timeout:g} s.\nLast lines of {self.logfile}:\n{self.log_tail()}")
            time.sleep(0.005)

    @staticmethod
    def _ready(pid: int, pid_file: Path) -> bool:
        """postmaster.pid names `pid` and says it accepts connections (pg_ctl's test:
        status "ready", or "standby" for a standby that takes none)."""
        try:
            lines = pid_file.read_text().splitlines()
        except OSError:
            return False
        return (len(lines) > 7 and lines[0].strip() == str(pid)
                and lines[7].strip() in ("ready", "standby"))

    def stop(self, mode: str = "fast", *, timeout: float = 60) -> None:
        """Stop the server if it runs (no error if it does not)."""
        if not self.is_running():
            return
        run_as_server([self.bins.path("pg_ctl"), "-D", self.datadir, "-m", mode, "-w",
                       "-t", str(int(timeout)), "stop"], check=False, timeout=timeout + 30)
        if self.is_running() and mode != "immediate":
            self.stop("immediate", timeout=timeout)

    def kill9(self) -> None:
        """SIGKILL the postmaster (crash tests)."""
        pid = self.postmaster_pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            for _ in range(200):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def postmaster_pid(self) -> int | None:
        pidfile = self.datadir / "postmaster.pid"
        try:
            return int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def is_running(self) -> bool:
        pid = self.postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])  # type: ignore[union-attr]
        except OSError:
            return "(no log)"

    # -- connecting --------------------------------------------------------------
    def dsn(self, dbname: str = "postgres", *, user: str = SUPERUSER, socket: bool = False,
            **extra: str) -> str:
        """A libpq connection string: over loopback TCP, or with `socket` over the
        server's unix socket (cheaper per round trip: the proxy's relay to an
        embedded primary uses it)."""
        host = str(self.socket_dir) if socket else "127.0.0.1"
        parts = [f"host={host} port={self.port} dbname={dbname} user={user}"]
        if self.passfile is not None:
            parts.append(f"passfile={self.passfile}")
        parts += [f"{k}={v}" for k, v in extra.items()]
        return " ".join(parts)

    def connect(self, dbname: str = "postgres", *, autocommit: bool = True, **kw: Any) -> Any:
        import psycopg

        return psycopg.connect(self.dsn(dbname), autocommit=autocommit, **kw)

    def sql(self, query: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode and return its rows (if any)."""
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(query)  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description else []

    def psql(self, *args: str, dbname: str = "postgres", input: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the bundled psql (as the current user) against this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if self.passfile is not None:
            env["PGPASSFILE"] = str(self.passfile)
        return subprocess.run(
            [str(self.bins.path("psql")), "-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", SUPERUSER, "-d", dbname, *args],
            input=input, capture_output=True, text=True, check=check, env=env,
        )

    def wal_dir(self) -> Path:
        return self.datadir / "pg_wal"


