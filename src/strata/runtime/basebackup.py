"""A base backup of a running primary, made consistent, for attach mode.

`consistent_base_backup(dsn, workdir)`: ``pg_basebackup -X stream`` (over the
replication protocol, run as the server user) into ``<workdir>/data``, then
one start and clean stop of that copy: the start replays the WAL streamed
with the backup (crash recovery from its backup_label) and the stop leaves a
cleanly shut-down directory that `historical.source.DataDirSource` can read.
The copy then holds the primary's state as of the backup's end LSN (read from
its ``backup_manifest``); history is consistent from there.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from strata.errors import InstanceError, RuntimeSetupError
from strata.lsn import Lsn
from strata.runtime.cluster import Cluster, free_port
from strata.runtime.osuser import give_to_server_user, run_as_server
from strata.runtime.pgbin import find_pg_binaries


@dataclass(frozen=True, slots=True)
class BaseBackup:
    datadir: Path
    start_lsn: Lsn
    end_lsn: Lsn
    timeline: int


def read_manifest_range(datadir: Path) -> tuple[Lsn, Lsn, int]:
    """(start, end, timeline) of the WAL a backup needs, from its backup_manifest."""
    path = datadir / "backup_manifest"
    try:
        ranges = json.loads(path.read_text())["WAL-Ranges"]
    except (OSError, ValueError, KeyError) as e:
        raise RuntimeSetupError(f"cannot read the WAL range of the backup from {path}: {e}") from e
    start = min(Lsn.parse(r["Start-LSN"]) for r in ranges)
    last = max(ranges, key=lambda r: Lsn.parse(r["End-LSN"]))
    return start, Lsn.parse(last["End-LSN"]), int(last["Timeline"])


def consistent_base_backup(dsn: str, workdir: Path, *, timeout: float = 600) -> BaseBackup:
    """Take a base backup of `dsn` and make it a cleanly stopped data directory.

    Raises: RuntimeSetupError when pg_basebackup fails; InstanceError when the
    copy does not recover.
    """
    bins = find_pg_binaries()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    give_to_server_user(workdir, recursive=False, mode=0o755)
    datadir = workdir / "data"
    run_as_server([bins.path("pg_basebackup"), "-d", dsn, "-D", datadir, "-X", "stream",
                   "-c", "fast", "--no-password"], timeout=timeout)
    start, end, tli = read_manifest_range(datadir)
    for name in ("standby.signal", "recovery.signal"):
        (datadir / name).unlink(missing_ok=True)
    copy = Cluster(datadir=datadir, port=free_port(), bins=bins)
    try:
        copy.start(options="-c archive_mode=off -c hot_standby=off -c autovacuum=off",
                   timeout=timeout)
    except InstanceError:
        copy.stop("immediate")
        raise
    copy.stop("fast")
    return BaseBackup(datadir, start, end, tli)
