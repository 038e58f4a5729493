"""Native point-in-time recovery: the oracle that historical instances must match.

Fed by a primary we run in tests and benchmarks (a `Cluster` with WAL
archiving: `archive_settings`). Feeds end-to-end tests and benchmarks: a
server recovered from a base backup plus archived WAL, paused at a target
LSN or time, hot standby, connectable. Owns the directories it is given.

Semantics (PostgreSQL's own, xlogrecovery.c recoveryStopsBefore/After):
  * `recovery_target_lsn = X` with `recovery_target_inclusive = off` stops
    before the first record whose start is at or after X: the state holds every
    record that starts before X (for a record boundary X, every record that
    ends at or before X) - the same state as `SET strata.travel_lsn = X`;
  * `recovery_target_time = T` (inclusive) stops before the first commit or
    abort record whose timestamp is later than T.
WAL comes from an archive directory through `restore_command` (cp): archived
segments are complete and immutable, unlike copies of a live pg_wal.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from strata.errors import InstanceError
from strata.lsn import Lsn
from strata.runtime.cluster import SUPERUSER, Cluster
from strata.runtime.osuser import give_to_server_user, make_private_dir, run_as_server


def archive_settings(archive_dir: Path) -> dict[str, str]:
    """Settings for a primary whose completed WAL segments are copied to `archive_dir`
    (created here, owned by the server user; set them before the first start)."""
    make_private_dir(archive_dir)
    return {"archive_mode": "on",
            "archive_command": f"'test ! -f {archive_dir}/%f && cp %p {archive_dir}/%f'",
            "archive_timeout": "0"}


def archive_now(primary: Cluster, *, timeout: float = 60) -> str:
    """Switch to a new WAL segment and wait until the finished one is archived.

    Returns: the name of the last archived segment.
    Raises: InstanceError when archiving does not catch up in `timeout`.
    """
    # pg_switch_wal does nothing on a segment with no record in it: write one first
    primary.sql("SELECT pg_logical_emit_message(false, 'strata', 'archive_now')")
    name = primary.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = primary.sql("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver")[0]
        if row[0] is not None and row[0][:24] >= name:
            return str(row[0])
        time.sleep(0.05)
    raise InstanceError(f"WAL segment {name} was not archived within {timeout:.0f} s "
                        f"(pg_stat_archiver: {row}).\n{primary.log_tail()}")


def base_backup(primary: Cluster, dest: Path, *, timeout: float = 300) -> Path:
    """pg_basebackup of `primary` into `dest` (plain format, WAL streamed, fast
    checkpoint), run as the server user. Returns `dest`."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise InstanceError(f"base backup target {dest} is not empty")
    make_private_dir(dest)
    run_as_server([primary.bins.path("pg_basebackup"), "-h", "127.0.0.1", "-p",
                   str(primary.port), "-U", SUPERUSER, "-D", dest, "-X", "stream", "-c", "fast",
                   "--no-sync"], timeout=timeout)
    return dest


@dataclass(frozen=True, slots=True)
class RecoveryTarget:
    """Exactly one of `lsn` and `time` (a timestamptz literal)."""

    lsn: Lsn | None = None
    time: str | None = None

    def __post_init__(self) -> None:
        if (self.lsn is None) == (self.time is None):
            raise ValueError("a recovery target is exactly one of an LSN and a time")

    def settings(self) -> dict[str, str]:
        if self.lsn is not None:
            return {"recovery_target_lsn": f"'{self.lsn}'", "recovery_target_inclusive": "off"}
        assert self.time is not None
        return {"recovery_target_time": "'" + self.time.replace("'", "''") + "'",
                "recovery_target_inclusive": "on"}


def recover_to(backup: Path, archive_dir: Path, workdir: Path, target: RecoveryTarget, *,
               timeout: float = 120) -> Cluster:
    """Restore `backup` into `workdir/data`, replay archived WAL to `target`, pause there.

    Returns: a running hot standby, paused at the target (the caller stops it).
    Raises: InstanceError with the log tail when recovery fails or the target is
    not reached in `timeout` (e.g. the archive ends before it).
    """
    workdir = Path(workdir)
    make_private_dir(workdir)
    give_to_server_user(workdir, recursive=False, mode=0o755)
    datadir = workdir / "data"
    shutil.copytree(backup, datadir, symlinks=True)
    for stale in ("postmaster.pid", "standby.signal", "postmaster.opts"):
        (datadir / stale).unlink(missing_ok=True)
    (datadir / "recovery.signal").write_text("")
    give_to_server_user(datadir, recursive=True, mode=0o700)
    c = Cluster(datadir=datadir)
    c.configure({
        "restore_command": f"'cp {archive_dir}/%f %p'",
        "recovery_target_action": "pause",
        "hot_standby": "on",
        "archive_mode": "off",
        "autovacuum": "off",
        "io_method": "sync",
        **target.settings(),
    })
    try:
        c.start(timeout=timeout)
        wait_paused(c, timeout=timeout)
    except BaseException:
        c.stop("immediate")
        raise
    return c


def wait_paused(c: Cluster, *, timeout: float = 120) -> Lsn:
    """Wait until recovery is paused at its target; returns the replay LSN."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not c.is_running():
            raise InstanceError(f"recovery of {c.datadir} stopped before its target.\n"
                                f"{c.log_tail()}")
        try:
            state, lsn = c.sql("SELECT pg_get_wal_replay_pause_state(), "
                               "pg_last_wal_replay_lsn()")[0]
        except Exception:  # still starting: connection refused
            time.sleep(0.05)
            continue
        if state == "paused":
            return Lsn.parse(str(lsn))
        time.sleep(0.05)
    raise InstanceError(f"recovery of {c.datadir} did not pause at its target within "
                        f"{timeout:.0f} s.\n{c.log_tail()}")
