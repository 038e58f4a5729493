"""The native-PITR oracle helper: base backup + archived WAL -> paused at a target."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from strata.errors import InstanceError
from strata.historical.pitr import (
    RecoveryTarget,
    archive_now,
    archive_settings,
    base_backup,
    recover_to,
)
from strata.lsn import Lsn
from strata.runtime.osuser import make_private_dir
from tests.conftest import make_cluster, wait_clock_past

pytestmark = [pytest.mark.pg, pytest.mark.e2e]


def test_recovery_to_an_lsn_or_a_time_gives_exactly_the_committed_rows(scratch_dir: Path) -> None:
    archive = scratch_dir / "archive"
    primary = make_cluster(scratch_dir / "primary", **archive_settings(archive))
    servers = []
    try:
        primary.sql("CREATE TABLE t (id int, at timestamptz DEFAULT clock_timestamp())")
        backup = base_backup(primary, scratch_dir / "backup")
        lsns: list[Lsn] = []
        times: list[str] = []
        before_commit_2 = Lsn(0)
        for i in (1, 2, 3):
            with primary.connect(autocommit=False) as conn:
                conn.execute(f"INSERT INTO t (id) VALUES ({i})")
                if i == 2:  # where commit 2's record will start (or later)
                    before_commit_2 = Lsn.parse(
                        conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
                conn.commit()
            lsns.append(Lsn.parse(primary.sql("SELECT pg_current_wal_insert_lsn()")[0][0]))
            times.append(primary.sql("SELECT clock_timestamp()::text")[0][0])
            wait_clock_past(primary, times[-1])  # the next commit is stamped later
        archive_now(primary)

        # stops before the record starting at (or after) that LSN: commit 2 is not applied
        before = recover_to(backup, archive, scratch_dir / "r-before",
                            RecoveryTarget(lsn=before_commit_2))
        servers.append(before)
        assert before.sql("SELECT array_agg(id ORDER BY id) FROM t") == [([1],)]

        # stops before the first record at or after lsns[1]: rows 1 and 2 are in
        by_lsn = recover_to(backup, archive, scratch_dir / "r-lsn", RecoveryTarget(lsn=lsns[1]))
        servers.append(by_lsn)
        assert by_lsn.sql("SELECT array_agg(id ORDER BY id) FROM t") == [([1, 2],)]
        assert by_lsn.sql("SELECT pg_is_in_recovery()") == [(True,)]
        replayed = Lsn.parse(by_lsn.sql("SELECT pg_last_wal_replay_lsn()")[0][0])
        assert replayed <= lsns[1]

        # stops before the first commit later than times[0]: only row 1
        by_time = recover_to(backup, archive, scratch_dir / "r-time",
                             RecoveryTarget(time=times[0]))
        servers.append(by_time)
        assert by_time.sql("SELECT array_agg(id ORDER BY id) FROM t") == [([1],)]
    finally:
        for s in servers:
            s.stop("immediate")
        primary.stop("immediate")


def test_recovery_past_the_archive_end_fails_with_the_log_tail(scratch_dir: Path) -> None:
    archive = scratch_dir / "archive"
    primary = make_cluster(scratch_dir / "primary", **archive_settings(archive))
    try:
        backup = base_backup(primary, scratch_dir / "backup")
        archive_now(primary)
        end = Lsn.parse(primary.sql("SELECT pg_current_wal_insert_lsn()")[0][0])
    finally:
        primary.stop("immediate")
    make_private_dir(scratch_dir / "r")
    os.chmod(scratch_dir / "r", 0o755)
    with pytest.raises(InstanceError, match="recovery ended before configured recovery target"):
        recover_to(backup, archive, scratch_dir / "r", RecoveryTarget(lsn=end + (64 << 20)),
                   timeout=60)
