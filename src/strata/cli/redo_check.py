"""`strata redo-check`: run the wal_consistency_checking oracle over WAL.

What it is: the command-line face of `strata.reconstruct.check`. Reads WAL
segment files from `--path DIR` (a pg_wal directory or a copy), or from the
data directory of a running server given by `--source DSN` (the server must
be on this machine and its pg_wal readable by us), replays every record in
[--start, --end) through our redo, and prints per rmgr/record type: records,
blocks checked, matches, mismatches, and the first mismatch with a hex diff
of the masked pages.

`--strict` compares more than PostgreSQL does: the visibility-map bits of
the heap blocks a record touches, and the t_infomask bits that heap_mask
hides although WAL determines them (lock bits, IS_MULTI, UPDATED).

The `upstream` column counts blocks that differ from the server's image only
where PostgreSQL's own redo differs from its primary (GiST's F_TUPLES_DELETED
after Gist/DELETE: PostgreSQL's standby fails its own check there); they are
neither matches nor mismatches, and do not change the exit status.

`--chain` keeps our own redo result as each block's base from one apply-image
to the next (as GetPage@LSN chains deltas) instead of re-basing every record on
the server's previous image, so errors that surface only later are caught.

Exit status: 0 when there is no mismatch, no redo error and no unsupported
record outside `--allow-unsupported` (default: none; every rmgr that changes
relation pages has redo); 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from strata.errors import ConfigError, WalSourceError
from strata.lsn import Lsn

DEFAULT_ALLOWED_UNSUPPORTED: tuple[str, ...] = ()


def _wal_dir_from_source(dsn: str) -> tuple[Path, Lsn]:
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('data_directory'), "
                               "pg_current_wal_flush_lsn()::text").fetchone()
    except psycopg.Error as e:
        raise WalSourceError(f"cannot query {dsn!r}: {e}") from e
    assert row is not None
    wal = Path(row[0]) / "pg_wal"
    if not wal.is_dir():
        raise WalSourceError(f"{wal} (pg_wal of the server at {dsn!r}) is not readable here")
    return wal, Lsn.parse(row[1])


def run(args: argparse.Namespace) -> int:
    from strata.reconstruct.check import ConsistencyChecker
    from strata.wal.segments import iter_records

    start = Lsn.parse(args.start) if args.start else None
    end = Lsn.parse(args.end) if args.end else None
    if args.path:
        wal_dir = Path(args.path)
        if not wal_dir.is_dir():
            raise ConfigError(f"--path {wal_dir}: not a directory")
    else:
        wal_dir, flush = _wal_dir_from_source(args.source)
        end = end if end is not None else flush
    allowed = {s.strip() for s in args.allow_unsupported.split(",") if s.strip()}
    checker = ConsistencyChecker(strict_vm=args.strict, strict_heap=args.strict,
                                 chain=args.chain)
    checker.run(iter_records(wal_dir, start, end))
    rep = checker.report
    print(f"WAL {wal_dir}  records {rep.records} "
          f"({rep.consistency_records} with XLR_CHECK_CONSISTENCY)  "
          f"range {rep.start} .. {rep.end}")
    print(rep.format_table())
    bad = False
    if rep.first_mismatch is not None:
        print()
        print(rep.first_mismatch.describe())
        bad = True
    if rep.first_error is not None:
        print()
        print(rep.first_error.describe())
        bad = True
    unsupported = rep.unsupported_types()
    if unsupported:
        print()
        for rm, rt in sorted(unsupported):
            tag = "allowed" if rm in allowed else "NOT ALLOWED"
            print(f"UNSUPPORTED: {rm}/{rt}: {rep.stats[(rm, rt)].unsupported} records ({tag})")
        if any(rm not in allowed for rm, _t in unsupported):
            bad = True
    if rep.consistency_records == 0:
        print("warning: no record carried XLR_CHECK_CONSISTENCY "
              "(was wal_consistency_checking set?)", file=sys.stderr)
    return 1 if bad else 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "redo-check", help="check our redo against wal_consistency_checking images",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--path", help="directory of WAL segment files")
    src.add_argument("--source", help="DSN of a local running server (reads its pg_wal)")
    p.add_argument("--start", help="first LSN (records starting at or after it)")
    p.add_argument("--end", help="end LSN (records starting before it)")
    p.add_argument("--allow-unsupported", default=",".join(DEFAULT_ALLOWED_UNSUPPORTED),
                   help="comma-separated rmgrs whose records may lack redo "
                        "(default: %(default)s)")
    p.add_argument("--strict", action="store_true",
                   help="also compare what PostgreSQL's masks hide but WAL determines: "
                        "VM bits of touched heap blocks, WAL-logged t_infomask bits")
    p.add_argument("--chain", action="store_true",
                   help="base each record on our own previous redo result (as GetPage@LSN "
                        "does) instead of the server's previous verification image")
    p.set_defaults(func=run)
