"""HistoryService's rules for where T and X land, with a stand-in store (the
resolution itself is recovery_target_time's rule, tested in tests/timemap and
against native PITR in tests/e2e/test_pitr_oracle.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from strata.errors import IngestBehindError, LsnOutOfRangeError
from strata.history_service import HistoryService
from strata.lsn import Lsn
from strata.pg.timestamp import datetime_to_timestamptz
from strata.proxy.history import IngestProgress
from strata.proxy.sqlstate import sqlstate_for
from strata.timemap.timemap import EndKind, TimeMap, TxEnd

T0 = dt.datetime(2026, 11, 24, 10, 0, tzinfo=dt.UTC)


class FakeStore:
    def __init__(self, ingested: int) -> None:
        self.ingested_lsn = Lsn(ingested)
        self.retention_lsn = Lsn(0)


def _no_servers(lsn: Lsn, root: Path) -> Any:
    raise AssertionError("these tests resolve points; they start no server")


def _service(tmp_path: Path, *, ingested: int, primary: int) -> HistoryService:
    tm = TimeMap(None)
    for i, start in enumerate((1000, 2000, 3000)):
        tm.append(TxEnd(Lsn(start), Lsn(start + 40),
                        datetime_to_timestamptz(T0 + dt.timedelta(seconds=10 * i)), 700 + i,
                        EndKind.COMMIT))
    return HistoryService(FakeStore(ingested), tm, history_start=Lsn(500),  # type: ignore[arg-type]
                          history_start_time=T0 - dt.timedelta(minutes=1),
                          instances_root=tmp_path / "inst", primary_lsn=lambda: Lsn(primary),
                          primary_now=lambda: T0 + dt.timedelta(hours=1), catchup_timeout=0.05,
                          factory=_no_servers)


def test_time_before_a_later_commit_resolves_even_while_ingest_lags(tmp_path: Path) -> None:
    svc = _service(tmp_path, ingested=3500, primary=9000)
    p = svc.resolve_time(T0 + dt.timedelta(seconds=5))
    assert p.lsn == Lsn(1040) and p.last_commit_xid == 700


def test_time_after_every_ingested_commit_waits_for_ingest_then_refuses(tmp_path: Path) -> None:
    svc = _service(tmp_path, ingested=3500, primary=9000)
    with pytest.raises(IngestBehindError, match="ingest is at LSN 0/DAC") as ei:
        svc.resolve_time(T0 + dt.timedelta(seconds=25))
    assert sqlstate_for(ei.value) == "55000"
    caught_up = _service(tmp_path, ingested=9000, primary=9000)
    p = caught_up.resolve_time(T0 + dt.timedelta(seconds=25))
    assert p.lsn == Lsn(3040) and p.last_commit_xid == 702


def test_future_and_before_history_are_refused_naming_the_nearest_point(tmp_path: Path) -> None:
    svc = _service(tmp_path, ingested=9000, primary=9000)
    with pytest.raises(LsnOutOfRangeError, match="in the future") as ei:
        svc.resolve_time(T0 + dt.timedelta(hours=2))
    assert sqlstate_for(ei.value) == "22023"
    with pytest.raises(LsnOutOfRangeError, match="before history starts"):
        svc.resolve_time(T0 - dt.timedelta(hours=1))
    with pytest.raises(LsnOutOfRangeError, match="before history starts"):
        svc.resolve_lsn(Lsn(100))
    with pytest.raises(LsnOutOfRangeError, match="past the newest point"):
        _service(tmp_path, ingested=9000, primary=9000).resolve_lsn(Lsn(99999))


def test_a_covered_time_answers_at_once_without_waiting(tmp_path: Path) -> None:
    svc = _service(tmp_path, ingested=3500, primary=9000)
    reports: list[IngestProgress] = []
    p = svc.resolve_time(T0 + dt.timedelta(seconds=5), wait=0, progress=reports.append)
    assert p.lsn == Lsn(1040) and reports == []  # a commit later than T is ingested


def test_an_uncovered_target_with_no_wait_fails_at_once(tmp_path: Path) -> None:
    svc = _service(tmp_path, ingested=3500, primary=9000)
    reports: list[IngestProgress] = []
    with pytest.raises(IngestBehindError) as ei:
        svc.resolve_time(T0 + dt.timedelta(seconds=25), wait=0, progress=reports.append)
    assert sqlstate_for(ei.value) == "55000"
    with pytest.raises(IngestBehindError, match="not ingested yet") as ei:
        svc.resolve_lsn(Lsn(5000), wait=0, progress=reports.append)
    assert sqlstate_for(ei.value) == "55000" and reports == []
    assert svc.resolve_lsn(Lsn(3000), wait=0).lsn == Lsn(3000)  # ingested: no wait


def test_waiting_reports_progress_until_ingest_covers_the_target(tmp_path: Path) -> None:
    svc = _service(tmp_path, ingested=3500, primary=9000)
    reports: list[IngestProgress] = []

    def ingest_catches_up(p: IngestProgress) -> None:
        reports.append(p)
        svc.store.ingested_lsn = Lsn(9000)  # type: ignore[misc]

    p = svc.resolve_time(T0 + dt.timedelta(seconds=25), wait=600, progress=ingest_catches_up)
    assert p.lsn == Lsn(3040) and p.last_commit_xid == 702
    assert reports == [IngestProgress(Lsn(3500), Lsn(9000), Lsn(9000), None)]
    svc.store.ingested_lsn = Lsn(3500)  # type: ignore[misc]
    reports.clear()
    assert svc.resolve_lsn(Lsn(6000), wait=600, progress=ingest_catches_up).lsn == Lsn(6000)
    assert reports == [IngestProgress(Lsn(3500), Lsn(6000), Lsn(9000), None)]


def test_commit_of_xid_is_the_point_after_its_commit(tmp_path: Path) -> None:
    svc = _service(tmp_path, ingested=9000, primary=9000)
    p = svc.commit_of_xid(701)
    assert p is not None and (p.lsn, p.last_commit_xid) == (Lsn(2040), 701)
    assert p.last_commit_time == T0 + dt.timedelta(seconds=10)
    assert svc.commit_of_xid(999) is None


def test_index_ams_marked_invalid_are_exactly_those_without_redo() -> None:
    """Historical servers mark invalid only the indexes of AMs whose rmgr has no
    redo, and materialization serves empty pages only for those rmgrs; every
    other index AM's rmgr has redo."""
    from strata.historical.modes import UNSUPPORTED_INDEX_AMS
    from strata.historical.store_view import NO_REDO_YET_RMGRS
    from strata.reconstruct.redo import registered_rmgrs
    from strata.wal.rmgr import RM_BRIN_ID, RM_GIN_ID, RM_GIST_ID, RM_HASH_ID, RM_SPGIST_ID

    am_rmgrs = {"hash": (RM_HASH_ID, "Hash"), "gin": (RM_GIN_ID, "Gin"),
                "gist": (RM_GIST_ID, "Gist"), "spgist": (RM_SPGIST_ID, "SPGist"),
                "brin": (RM_BRIN_ID, "BRIN")}
    assert {am_rmgrs[am][1] for am in UNSUPPORTED_INDEX_AMS} == NO_REDO_YET_RMGRS
    for am, (rmid, _name) in am_rmgrs.items():
        assert (rmid in registered_rmgrs()) == (am not in UNSUPPORTED_INDEX_AMS), am


def test_times_in_errors_are_in_the_sessions_time_zone(tmp_path: Path) -> None:
    svc = _service(tmp_path, ingested=9000, primary=9000)
    with pytest.raises(LsnOutOfRangeError) as ei:
        svc.resolve_time(T0 + dt.timedelta(hours=2), timezone="Europe/Paris")
    assert "2026-11-24 12:00:00+01:00" in str(ei.value)  # now, as the session sees it
    with pytest.raises(LsnOutOfRangeError) as ei:
        svc.resolve_time(T0 - dt.timedelta(hours=1), timezone="America/New_York")
    assert "2026-11-24 04:59:00-05:00" in str(ei.value)  # the oldest point
