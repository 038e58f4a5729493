"""The DDL log file (timemap/FORMAT.md, ``ddl.dat``): round trip, the
time map's durability rules, torn tails, old homes, the committed sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import CorruptionError
from strata.lsn import MAX_LSN_VALUE, Lsn
from strata.timemap.ddl import DdlChange, DdlEntry, DdlLog
from strata.timemap.timemap import EndKind, TimeMap, TxEnd
from tests.timemap.make_samples import sample_entries, sample_path


def _entry(start: int, *statements: str, note: str = "") -> DdlEntry:
    changes = tuple(DdlChange(s, s.split()[0], "TABLE", "public", "t", ("public.t",), "postgres")
                    for s in statements)
    return DdlEntry(Lsn(start), Lsn(start + 40), 1000 + start, start // 8, 5, "postgres",
                    changes, note)


def test_entries_round_trip(tmp_path: Path) -> None:
    log = DdlLog.open(tmp_path / "ddl.dat")
    entries = [_entry(100, "CREATE TABLE public.t"),
               _entry(200, "ALTER TABLE public.t ADD COLUMN \u00e9t\u00e9", "DROP TABLE public.t"),
               _entry(300, note="the transaction began before ingest (re)started")]
    for e in entries:
        log.append(e)
    log.close()
    again = DdlLog.open(tmp_path / "ddl.dat", readonly=True)
    assert list(again.entries()) == entries
    assert again.start_lsn == Lsn(0)


def test_append_ignores_duplicates(tmp_path: Path) -> None:
    log = DdlLog.open(tmp_path / "ddl.dat")
    log.append(_entry(100, "CREATE TABLE public.t"))
    log.append(_entry(200, "DROP TABLE public.t"))
    log.append(_entry(200, "DROP TABLE public.t"))  # re-ingested after a restart
    log.append(_entry(150, "CREATE TABLE public.u"))  # below the last
    assert [int(e.start_lsn) for e in log.entries()] == [100, 200]
    log.close()
    assert [int(e.start_lsn) for e in DdlLog.open(tmp_path / "ddl.dat").entries()] == [100, 200]


def test_reopen_drops_entries_above_durable_lsn(tmp_path: Path) -> None:
    log = DdlLog.open(tmp_path / "ddl.dat")
    for s in (100, 200, 300):
        log.append(_entry(s, "CREATE TABLE public.t"))
    log.close()
    log = DdlLog.open(tmp_path / "ddl.dat", durable_lsn=Lsn(250))  # 200 ends at 240
    assert [int(e.start_lsn) for e in log.entries()] == [100, 200]
    log.append(_entry(300, "DROP TABLE public.t"))
    log.close()
    got = list(DdlLog.open(tmp_path / "ddl.dat").entries())
    assert [e.changes[0].statement for e in got][-1] == "DROP TABLE public.t"


def test_torn_tail_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "ddl.dat"
    log = DdlLog.open(path)
    for s in (100, 200, 300):
        log.append(_entry(s, "CREATE TABLE public.t"))
    log.close()
    size = [path.stat().st_size]
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF  # inside the last payload: its CRC fails
    path.write_bytes(bytes(data) + b"\x10\x00")  # and half an entry header
    ro = DdlLog.open(path, readonly=True)
    assert [int(e.start_lsn) for e in ro.entries()] == [100, 200]
    assert path.read_bytes()[-2:] == b"\x10\x00"  # a reader writes nothing
    log = DdlLog.open(path)
    assert len(log) == 2
    log.close()
    assert path.stat().st_size < size[0]


def test_bad_magic_and_version_are_corruption(tmp_path: Path) -> None:
    path = tmp_path / "ddl.dat"
    path.write_bytes(b"NOTADDL\x00" + b"\x01\x00\x00\x00" + b"\x00" * 12)
    with pytest.raises(CorruptionError, match="bad magic"):
        DdlLog.open(path)
    path.write_bytes(b"STRTDDL\x00" + b"\x09\x00\x00\x00" + b"\x00" * 12)
    with pytest.raises(CorruptionError, match="unsupported DDL log version 9"):
        DdlLog.open(path, readonly=True)


def test_home_without_ddl_log(tmp_path: Path) -> None:
    """A home made before the DDL log: a reader sees nothing decoded; the next
    writer starts decoding at its durable LSN."""
    ro = DdlLog.open(tmp_path / "ddl.dat", readonly=True)
    assert ro.start_lsn == Lsn(MAX_LSN_VALUE) and len(ro) == 0
    assert not (tmp_path / "ddl.dat").exists()
    log = DdlLog.open(tmp_path / "ddl.dat", durable_lsn=Lsn(0x5000))
    log.close()
    assert DdlLog.open(tmp_path / "ddl.dat", readonly=True).start_lsn == Lsn(0x5000)
    # reopening later keeps the original start
    DdlLog.open(tmp_path / "ddl.dat", durable_lsn=Lsn(0x9000)).close()
    assert DdlLog.open(tmp_path / "ddl.dat", readonly=True).start_lsn == Lsn(0x5000)


def test_timemap_sync_and_close_cover_the_ddl_log(tmp_path: Path) -> None:
    tm = TimeMap.open(tmp_path)
    tm.append(TxEnd(Lsn(100), Lsn(140), 1100, 12, EndKind.COMMIT, 1))
    tm.ddl.append(_entry(100, "CREATE TABLE public.t"))
    tm.sync()
    ro = TimeMap.open(tmp_path, readonly=True)
    assert [e.start_lsn for e in ro.ddl.entries()] == [Lsn(100)]  # durable after sync
    tm.ddl.append(_entry(200, "DROP TABLE public.t"))
    tm.close()
    assert len(TimeMap.open(tmp_path, readonly=True).ddl) == 2


def test_sample_v1_is_read() -> None:
    log = DdlLog.open(sample_path(1), readonly=True)
    assert log.start_lsn == Lsn(0x1000028)
    assert list(log.entries()) == sample_entries()
    by = log.by_start_lsn()
    drop = by[Lsn(0x1B5F780)].changes[0]
    assert (drop.statement, drop.object_type, drop.name) == ("DROP DATABASE olddb", "DATABASE",
                                                             "olddb")
    assert by[Lsn(0x1BCE780)].changes[0].temp


def test_change_concerns_relation_by_name_or_qualified_name() -> None:
    c = DdlChange("CREATE INDEX public.i ON s.t", "CREATE", "INDEX", "public", "i",
                  ("public.i", "s.t"))
    assert c.concerns_relation("t") and c.concerns_relation("s.t") and c.concerns_relation("i")
    assert not c.concerns_relation("public.t") and not c.concerns_relation("x")
