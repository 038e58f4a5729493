"""The primary strata follows: the embedded one it runs, or one it attaches to.

What it is: `prepare_embedded` (initdb on first use, a primary left running
by a killed strata restarted on our port), `PrimarySupervisor` (keeps the
embedded primary running: a postmaster that died is started again),
`PrimaryClient` (a small, reconnecting SQL connection for the primary's WAL
position and clock) and `ensure_travel_role`. Fed by: the home layout and
options. Feeds: the daemon and its services. Owns: the embedded primary's
data directory settings (`EMBEDDED_SETTINGS`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from strata.errors import ConfigError
from strata.lsn import Lsn
from strata.runtime.cluster import SUPERUSER, Cluster, free_port

log = logging.getLogger(__name__)

# Settings of the embedded primary on top of runtime.cluster.PRIMARY_SETTINGS.
EMBEDDED_SETTINGS: dict[str, str] = {
    "wal_keep_size": "0",
    # The slot holds what strata still needs; max_slot_wal_keep_size stays -1
    # (unlimited) so history is never lost.
}

TRAVEL_ROLE = "strata_time_travel"
_CREATE_TRAVEL_ROLE = f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{TRAVEL_ROLE}') THEN
    CREATE ROLE {TRAVEL_ROLE} NOLOGIN;
  END IF;
END $$
"""


HBA_MARK = "# strata: secured"
_SECURE_HBA = f"""{HBA_MARK}: every connection needs a password (see the home's primary/pgpass)
local   all             all                     scram-sha-256
local   replication     all                     scram-sha-256
host    all             all     127.0.0.1/32    scram-sha-256
host    replication     all     127.0.0.1/32    scram-sha-256
"""


def passfile_path(datadir: Path) -> Path:
    """Where the embedded primary's superuser password is kept (libpq passfile format)."""
    return datadir.parent / "pgpass"


def secure_embedded(c: Cluster, say: Any = lambda text: None) -> Path:
    """Make the embedded primary require a password for every connection (issue:
    anyone on the machine was a superuser): a generated superuser password in
    ``<home>/primary/pgpass`` (mode 0600, libpq's passfile format, used by
    strata, `strata psql` and any libpq client given ``passfile=``), and a
    pg_hba.conf with scram-sha-256 everywhere. Idempotent; a primary from an
    earlier version is secured on its next start. Sets `c.passfile`.

    Requires: the server is stopped. The password is set while the server
    listens on its private socket only, so there is no moment when TCP
    connections are trusted.
    """
    passfile = passfile_path(c.datadir)
    hba = c.datadir / "pg_hba.conf"
    if passfile.exists() and hba.read_text().startswith(HBA_MARK):
        c.passfile = passfile
        return passfile
    password = secrets.token_hex(24)  # hex: nothing to escape in a passfile
    c.start(options="-c listen_addresses=''")
    try:
        import psycopg

        assert c.socket_dir is not None
        with psycopg.connect(host=str(c.socket_dir), port=c.port, dbname="postgres",
                             user=SUPERUSER, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                psycopg.sql.Identifier(SUPERUSER), psycopg.sql.Literal(password)))
    finally:
        c.stop("fast")
    fd = os.open(passfile.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"*:*:*:{SUPERUSER}:{password}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(passfile.with_suffix(".tmp"), passfile)
    hba.write_text(_SECURE_HBA)
    c.passfile = passfile
    say(f"strata: the primary's superuser password is in {passfile} (libpq passfile; "
        "strata's commands use it)")
    return passfile


def prepare_embedded(datadir: Path, port: int | None,
                     say: Any = lambda text: None) -> tuple[Cluster, bool]:
    """The embedded primary's cluster, created on first use (not started).

    Returns: (cluster, created). A primary left running by a strata that was
    killed is stopped, to be started again on our port.
    Raises: ConfigError when `datadir` holds something that is not PostgreSQL.
    """
    c = Cluster(datadir=datadir, port=port or free_port())
    created = False
    if not (datadir / "PG_VERSION").exists():
        if datadir.exists() and any(datadir.iterdir()):
            raise ConfigError(f"{datadir} exists but is not a PostgreSQL data directory")
        say(f"strata: creating the embedded PostgreSQL 18 primary in {datadir}")
        c.initdb(settings=EMBEDDED_SETTINGS)
        created = True
    elif c.is_running():
        log.warning("primary in %s was still running (pid %s); restarting it", datadir,
                    c.postmaster_pid())
        c.stop("fast")
    secure_embedded(c, say)
    return c, created


class PrimarySupervisor:
    """Keeps the embedded primary running: `check()` starts it again when its
    postmaster is gone (killed, OOM); the WAL receiver reconnects by itself.

    Raises (from check): InstanceError with the server log's tail when it will
    not start."""

    def __init__(self, cluster: Cluster, say: Any = lambda text: None) -> None:
        self.cluster = cluster
        self.say = say
        self.restarts = 0

    def check(self) -> None:
        c = self.cluster
        if c.is_running():
            return
        self.say("strata: the embedded primary is not running; starting it again")
        log.warning("embedded primary in %s stopped unexpectedly; restarting", c.datadir)
        c.start()
        self.restarts += 1


class PrimaryClient:
    """A lazily (re)connected SQL session on the primary, thread-safe."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: Any = None
        self._lock = threading.Lock()

    def value(self, sql: str) -> Any:
        """The first column of the first row of `sql`; one reconnect on failure."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = connect(self.dsn)
                    return self._conn.execute(sql).fetchone()[0]
                except Exception:
                    self._conn = None
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def wal_lsn(self) -> Lsn:
        return Lsn.parse(str(self.value("SELECT pg_current_wal_lsn()")))

    def now(self) -> datetime:
        return self.value("SELECT clock_timestamp()")  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


def connect(dsn: str) -> Any:
    import psycopg

    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


def ensure_travel_role(dsn: str) -> None:
    """The role whose members may time travel (created when missing)."""
    with connect(dsn) as conn:
        conn.execute(_CREATE_TRAVEL_ROLE)
