"""Lease files and the keeper that holds historical servers for them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from strata.lsn import Lsn
from strata.restore.attach import password_for, server_name
from strata.restore.leases import (
    Lease,
    LeaseKeeper,
    lease_path,
    read_leases,
    remove_lease,
    write_lease,
)

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "restore" / "lease-v1.json"


def test_the_version_1_sample_reads(tmp_path: Path) -> None:
    shutil.copy(SAMPLE, tmp_path / "postgres%2Fpast_20261201.json")
    (lease,) = read_leases(tmp_path)
    assert lease == Lease(Lsn.parse("0/1A2B3C4"), "postgres", "past_20261201",
                          "strata_past_past_20261201",
                          "LSN 0/1A2B3C4, last commit xid 812 at "
                          "2026-12-01T09:59:58.123456+00:00", "2026-12-01T10:00:00+00:00")
    assert lease_path(tmp_path, "postgres", "past_20261201").name == \
        "postgres%2Fpast_20261201.json"


def test_write_read_remove_round_trip_and_odd_names(tmp_path: Path) -> None:
    lease = Lease(Lsn(0x1234), 'my/"db"', "a b.c", "strata_past_a b.c")
    path = write_lease(tmp_path / "leases", lease)
    assert path.parent == tmp_path / "leases" and "/" not in path.name
    (back,) = read_leases(tmp_path / "leases")
    assert (back.lsn, back.database, back.schema, back.server) == \
        (lease.lsn, lease.database, lease.schema, lease.server)
    assert remove_lease(tmp_path / "leases", 'my/"db"', "a b.c")
    assert not remove_lease(tmp_path / "leases", 'my/"db"', "a b.c")
    assert read_leases(tmp_path / "leases") == []


def test_damaged_or_future_leases_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{not json")
    (tmp_path / "b.json").write_text(json.dumps({"version": 2, "lsn": "0/1"}))
    write_lease(tmp_path, Lease(Lsn(16), "d", "s", "srv"))
    assert [x.lsn for x in read_leases(tmp_path)] == [Lsn(16)]


def test_the_keeper_holds_one_lease_per_lsn_until_no_file_names_it(tmp_path: Path) -> None:
    calls: list[tuple[str, int]] = []
    failing = {Lsn(300)}

    def acquire(lsn: Lsn) -> None:
        calls.append(("acquire", int(lsn)))
        if lsn in failing:
            raise RuntimeError("cannot start")

    keeper = LeaseKeeper(tmp_path, acquire, lambda lsn: calls.append(("release", int(lsn))))
    write_lease(tmp_path, Lease(Lsn(100), "d", "s1", "x"))
    write_lease(tmp_path, Lease(Lsn(100), "d", "s2", "x"))
    write_lease(tmp_path, Lease(Lsn(300), "d", "s3", "x"))
    keeper.sync()
    assert calls == [("acquire", 100), ("acquire", 300)] and keeper.held == {Lsn(100)}
    failing.clear()
    keeper.sync()  # the failed one is retried, the held one is not acquired again
    assert calls[2:] == [("acquire", 300)] and keeper.held == {Lsn(100), Lsn(300)}
    remove_lease(tmp_path, "d", "s1")
    keeper.sync()
    assert calls[3:] == []  # s2 still names 100
    remove_lease(tmp_path, "d", "s2")
    keeper.sync()
    assert calls[3:] == [("release", 100)]
    keeper.stop()
    assert calls[4:] == [("release", 300)] and keeper.held == set()


def test_server_names_fit_postgresql_identifiers() -> None:
    assert server_name("past") == "strata_past_past"
    assert len(server_name("x" * 100).encode()) == 63


def test_password_for_reads_libpq_password_files(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    pf = tmp_path / "pgpass"
    pf.write_text("# comment\nhost:5432:db:alice:a\\:b\\\\c\n*:*:*:postgres:secret\n")
    assert password_for(str(pf), "alice") == "a:b\\c"
    assert password_for(str(pf), "postgres") == "secret"
    assert password_for(str(pf), "bob") is None
    assert password_for(None, "postgres") is None
    monkeypatch.setenv("PGPASSWORD", "from-env")
    assert password_for(str(pf), "postgres") == "from-env"
