"""`strata timeline` on hand-made homes: the DDL log joined with the time map,
homes from before the DDL log, filters, local times with offsets."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.cli.main import main
from strata.lsn import Lsn
from strata.pg.timestamp import timestamptz_to_datetime
from strata.timemap.ddl import DdlChange, DdlEntry, DdlLog
from strata.timemap.timemap import FLAG_CATALOG_CHANGE, EndKind, TimeMap, TxEnd

T0 = 850_000_000_000_000  # a TimestampTz in 2026


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC unless a test says otherwise."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _home(scratch_dir: Path, *, ddl_log: bool = True) -> Path:
    tdir = scratch_dir / "timemap"
    tm = TimeMap.open(tdir)
    ends = [(0x100, 700, FLAG_CATALOG_CHANGE), (0x200, 701, 0), (0x300, 702, FLAG_CATALOG_CHANGE),
            (0x400, 703, FLAG_CATALOG_CHANGE)]
    for i, (lsn, xid, flags) in enumerate(ends):
        tm.append(TxEnd(Lsn(lsn), Lsn(lsn + 0x40), T0 + i * 1_000_000, xid, EndKind.COMMIT, flags))
    tm.ddl.append(DdlEntry(Lsn(0x300), Lsn(0x340), T0 + 2_000_000, 702, 5, "postgres", (
        DdlChange("DROP TABLE public.demo", "DROP", "TABLE", "public", "demo", ("public.demo",),
                  "postgres"),)))
    # 0x400 (ANALYZE: flagged, nothing decoded) has no DDL entry
    tm.close()
    if not ddl_log:
        (tdir / "ddl.dat").unlink()
    return scratch_dir


def _out(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> list[str]:
    capsys.readouterr()
    assert main(["timeline", "--home", str(home), *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_ddl_joins_the_log_and_skips_flagged_non_ddl(scratch_dir: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    home = _home(scratch_dir)
    lines = _out(capsys, home, "--ddl")
    assert len(lines) == 2  # the log starts at 0: flagged 0x100 and 0x400 are not DDL
    when, lsn, xid, db, role, change = lines[1].split(maxsplit=5)
    assert (lsn, xid, db, role, change) == ("0/300", "702", "postgres", "postgres",
                                            "DROP TABLE public.demo")
    assert when.endswith("+00:00") and "T" in when  # ISO 8601 with the offset (TZ=UTC here)
    plain = _out(capsys, home)
    assert [line.endswith("(DDL)") for line in plain[1:]] == [False, False, True, False]


def test_home_without_ddl_log_lists_flagged_commits_as_not_decoded(
        scratch_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = _home(scratch_dir, ddl_log=False)
    lines = _out(capsys, home, "--ddl")
    assert [line.split()[2] for line in lines[1:]] == ["700", "702", "703"]
    assert all("older strata" in line for line in lines[1:])
    objs = [json.loads(line) for line in _out(capsys, home, "--ddl", "--json")]
    assert [o["xid"] for o in objs] == [700, 702, 703] and objs[0]["changes"] == []
    assert objs[0]["database"] is None and "older strata" in objs[0]["note"]
    assert _out(capsys, home, "--table", "demo")[1:] == []  # nothing known to filter on


def test_filters_and_time_window(scratch_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = _home(scratch_dir)
    assert len(_out(capsys, home, "--table", "public.demo")) == 2
    assert len(_out(capsys, home, "--table", "other")) == 1
    assert len(_out(capsys, home, "--db", "postgres")) == 2
    assert len(_out(capsys, home, "--db", "olddb")) == 1
    late = timestamptz_to_datetime(T0 + 2_500_000).isoformat()
    assert len(_out(capsys, home, "--ddl", "--to", late)) == 2
    assert len(_out(capsys, home, "--ddl", "--from", late)) == 1


def test_times_follow_the_local_time_zone(scratch_dir: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    home = _home(scratch_dir)
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    assert _out(capsys, home, "--ddl")[1].split()[0].endswith("+05:30")


def test_missing_time_map_is_a_clear_error(scratch_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["timeline", "--home", str(scratch_dir), "--ddl"]) == 1
    assert "no time map in" in capsys.readouterr().err


def test_flagged_commits_before_the_log_start_are_not_decoded(
        scratch_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A home upgraded at LSN 0x250: flagged commits before it are listed as
    not decoded, those after it only if the log has them."""
    home = _home(scratch_dir, ddl_log=False)
    DdlLog.open(home / "timemap" / "ddl.dat", durable_lsn=Lsn(0x250)).close()
    lines = _out(capsys, home, "--ddl")
    assert [line.split()[2] for line in lines[1:]] == ["700"]
    assert "before the DDL log starts (LSN 0/250)" in lines[1]
