"""Writes the sample DDL log of the current format version,
tests/data/timemap/ddl-v<VERSION>.dat (the entries below, a fixed history).

Run once per format version: `python -m tests.timemap.make_samples`. The
files are committed; test_ddl_log.py reads every version's, so a reader
change that breaks old files fails. Never regenerate an older version's file.
"""

from __future__ import annotations

from pathlib import Path

from strata.lsn import Lsn
from strata.timemap.ddl import VERSION, DdlChange, DdlEntry, DdlLog

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "timemap"


def sample_path(version: int) -> Path:
    return SAMPLES / f"ddl-v{version}.dat"


def sample_entries() -> list[DdlEntry]:
    return [
        DdlEntry(Lsn(0x1728778), Lsn(0x1728EB0), 848_000_000_000_000, 752, 5, "postgres", (
            DdlChange("CREATE TABLE public.demo", "CREATE", "TABLE", "public", "demo",
                      ("public.demo",), "postgres"),
            DdlChange("CREATE INDEX public.demo_pkey ON public.demo", "CREATE", "INDEX", "public",
                      "demo_pkey", ("public.demo_pkey", "public.demo"), "postgres"),
        )),
        DdlEntry(Lsn(0x1729098), Lsn(0x1729120), 848_000_001_000_000, 753, 5, "postgres", (
            DdlChange("ALTER TABLE public.demo ADD COLUMN email", "ALTER", "TABLE", "public",
                      "demo", ("public.demo",), "postgres"),
        )),
        DdlEntry(Lsn(0x1B5F780), Lsn(0x1B5F7E8), 848_000_002_000_000, 769, 5, "postgres", (
            DdlChange("DROP DATABASE olddb", "DROP", "DATABASE", "", "olddb", (), "postgres"),
        )),
        DdlEntry(Lsn(0x1BCE780), Lsn(0x1BCE800), 848_000_003_000_000, 775, 5, "postgres", (
            DdlChange("CREATE TABLE pg_temp_3.scratch", "CREATE", "TABLE", "pg_temp_3",
                      "scratch", ("pg_temp_3.scratch",), "postgres", temp=True),
        ), note="the transaction began before ingest (re)started at 0/1BCD5D0"),
    ]


def main() -> None:
    path = sample_path(VERSION)
    SAMPLES.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    log = DdlLog.open(path, durable_lsn=Lsn(0x1000028))
    for e in sample_entries():
        log.append(e)
    log.close()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
