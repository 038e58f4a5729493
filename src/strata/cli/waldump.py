"""``strata waldump``: print WAL records the way pg_waldump does.

What it is: the command-line face of the reader and decoder. One line per
record with the fields pg_waldump prints (rmgr, rec/tot lengths, xid, lsn,
prev, record type, block references with fork and FPW marks), or one JSON
object per line (``--json``), or pg_waldump's ``--stats=record`` table
(``--stats``; ``--stats=rmgr`` for the per-rmgr table).

Sources: ``--path DIR`` reads segment files (`wal.segments`); ``--source DSN``
streams from the server over the replication protocol (`wal.receiver.StreamSource`
from `wal.receiver`) through a physical slot: ``--slot`` names an existing
one, otherwise a slot ``strata_waldump_<pid>`` is created for the run and
dropped afterwards. Without ``--end``, a streamed dump stops at the server's
flush position as of the start.

Fed by: the command line. Feeds: stdout (records), stderr (where WAL ended).
Owns: the optional temporary slot.

The ``desc`` column carries only the record type: rmgr-specific descriptions
are not reproduced (compare fields, not free text). Everything else is
formatted exactly as pg_waldump 18 does (xlogdesc.c XLogRecGetBlockRefInfo,
pg_waldump.c XLogDumpDisplayRecord / XLogDumpDisplayStats).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from strata.errors import ConfigError, EndOfWal, WalSourceError
from strata.lsn import Lsn
from strata.pg.constants import XLOG_BLCKSZ
from strata.wal.decoder import decode_record
from strata.wal.reader import RawRecord, WalReader
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import (
    RM_MAX_BUILTIN_ID,
    RM_MIN_CUSTOM_ID,
    RM_XACT_ID,
    record_type_name,
    rmgr_is_valid,
    rmgr_name,
    stats_type_name,
)
from strata.wal.segments import SegmentWalSource

FORK_NAMES = ("main", "fsm", "vm", "init")


def fork_name(fork: int) -> str:
    return FORK_NAMES[fork] if 0 <= fork < len(FORK_NAMES) else str(fork)


# -- formatting -------------------------------------------------------------------
def format_record(rec: DecodedRecord) -> str:
    """One pg_waldump line (without the rmgr-specific desc text)."""
    fpi_len = rec.fpi_len
    parts = [
        f"rmgr: {rmgr_name(rec.xl_rmid):<11} len (rec/tot): {rec.xl_tot_len - fpi_len:6}/"
        f"{rec.xl_tot_len:6}, tx: {rec.xl_xid:10}, lsn: {rec.lsn.padded()}, "
        f"prev {rec.xl_prev.padded()}, desc: {record_type_name(rec.xl_rmid, rec.xl_info)} "
    ]
    for b in rec.blocks:
        r = b.rlocator
        if b.fork != 0:
            parts.append(f", blkref #{b.block_id}: rel {r.spc}/{r.db}/{r.rel} "
                         f"fork {fork_name(b.fork)} blk {b.blkno}")
        else:
            parts.append(f", blkref #{b.block_id}: rel {r.spc}/{r.db}/{r.rel} blk {b.blkno}")
        if b.image is not None:
            parts.append(" FPW" if b.image.apply else " FPW for WAL verification")
    return "".join(parts)


def record_json(rec: DecodedRecord) -> dict[str, Any]:
    """The ``--json`` object of a record (also used by tests and tools)."""
    return {
        "lsn": str(rec.lsn),
        "end_lsn": str(rec.end_lsn),
        "prev": str(rec.xl_prev),
        "rmgr": rmgr_name(rec.xl_rmid),
        "type": record_type_name(rec.xl_rmid, rec.xl_info),
        "xid": rec.xl_xid,
        "info": rec.xl_info,
        "total_len": rec.xl_tot_len,
        "main_len": rec.main_len,
        "fpi_len": rec.fpi_len,
        "origin": rec.origin,
        "toplevel_xid": rec.toplevel_xid,
        "blocks": [
            {
                "id": b.block_id,
                "spc": b.rlocator.spc,
                "db": b.rlocator.db,
                "rel": b.rlocator.rel,
                "fork": fork_name(b.fork),
                "blk": b.blkno,
                "has_image": b.has_image,
                "apply_image": b.apply_image,
                "will_init": b.will_init,
                "data_len": len(b.data),
            }
            for b in rec.blocks
        ],
    }


@dataclass
class _Counts:
    count: int = 0
    rec_len: int = 0
    fpi_len: int = 0


@dataclass
class WalStats:
    """XLogStats: per-rmgr and per-record-type counts and sizes."""

    start: Lsn | None = None
    end: Lsn | None = None
    count: int = 0
    rmgr: dict[int, _Counts] = field(default_factory=dict)
    record: dict[tuple[int, int], _Counts] = field(default_factory=dict)

    def add(self, rec: DecodedRecord) -> None:
        """XLogRecStoreStats."""
        if self.start is None:
            self.start = rec.lsn
        self.end = rec.end_lsn
        self.count += 1
        fpi = rec.fpi_len
        rec_len = rec.xl_tot_len - fpi
        rmid = rec.xl_rmid
        c = self.rmgr.get(rmid)
        if c is None:
            c = self.rmgr[rmid] = _Counts()
        c.count += 1
        c.rec_len += rec_len
        c.fpi_len += fpi
        recid = rec.xl_info >> 4
        if rmid == RM_XACT_ID:
            recid &= 0x07  # drop XLOG_XACT_HAS_INFO, as pg_waldump does
        r = self.record.get((rmid, recid))
        if r is None:
            r = self.record[(rmid, recid)] = _Counts()
        r.count += 1
        r.rec_len += rec_len
        r.fpi_len += fpi

    def render(self, per_record: bool = True) -> str:
        """XLogDumpDisplayStats, byte for byte ("" when no record was counted)."""
        if self.end is None or self.start is None:
            return ""
        valid = [ri for ri in sorted(self.rmgr) if rmgr_is_valid(ri)]
        total_count = sum(self.rmgr[ri].count for ri in valid)
        total_rec = sum(self.rmgr[ri].rec_len for ri in valid)
        total_fpi = sum(self.rmgr[ri].fpi_len for ri in valid)
        total_len = total_rec + total_fpi
        out = [f"WAL statistics between {self.start} and {self.end}:"]
        out.append(f"{'Type':<27} {'N':>20} {'(%)':>8} {'Record size':>20} {'(%)':>8} "
                   f"{'FPI size':>20} {'(%)':>8} {'Combined size':>20} {'(%)':>8}")
        out.append(f"{'----':<27} {'-':>20} {'---':>8} {'-----------':>20} {'---':>8} "
                   f"{'--------':>20} {'---':>8} {'-------------':>20} {'---':>8}")

        def row(name: str, c: _Counts) -> str:
            tot = c.rec_len + c.fpi_len
            n_pct = 100 * c.count / total_count if total_count else 0.0
            r_pct = 100 * c.rec_len / total_rec if total_rec else 0.0
            f_pct = 100 * c.fpi_len / total_fpi if total_fpi else 0.0
            t_pct = 100 * tot / total_len if total_len else 0.0
            return (f"{name:<27} {c.count:20} ({n_pct:6.02f}) {c.rec_len:20} ({r_pct:6.02f}) "
                    f"{c.fpi_len:20} ({f_pct:6.02f}) {tot:20} ({t_pct:6.02f})")

        rmids = list(range(RM_MAX_BUILTIN_ID + 1)) + [
            ri for ri in sorted(self.rmgr) if ri >= RM_MIN_CUSTOM_ID]
        for ri in rmids:
            if not per_record:
                c = self.rmgr.get(ri, _Counts())
                if ri >= RM_MIN_CUSTOM_ID and c.count == 0:
                    continue
                out.append(row(rmgr_name(ri), c))
                continue
            for rj in range(16):
                rc = self.record.get((ri, rj))
                if rc is None or rc.count == 0:
                    continue
                out.append(row(f"{rmgr_name(ri)}/{stats_type_name(ri, rj)}", rc))
        out.append(f"{'':<27} {'--------':>20} {'':>8} {'--------':>20} {'':>8} "
                   f"{'--------':>20} {'':>8} {'--------':>20}")
        rec_pct = 100 * total_rec / total_len if total_len else 0.0
        fpi_pct = 100 * total_fpi / total_len if total_len else 0.0
        out.append(f"{'Total':<27} {self.count:20} {'':<9}{total_rec:20} "
                   f"{f'[{rec_pct:.02f}%]':<9}{total_fpi:20} {f'[{fpi_pct:.02f}%]':<9}"
                   f"{total_len:20} {'[100%]':<6}")
        return "\n".join(out) + "\n"


# -- sources ----------------------------------------------------------------------
@dataclass
class _Outcome:
    end_of_wal: EndOfWal | None = None


def _records_from_path(path: str, start: Lsn | None, end: Lsn | None,
                       outcome: _Outcome) -> Iterator[RawRecord]:
    src = SegmentWalSource(path, start, end=end)
    yield from src
    outcome.end_of_wal = src.end_of_wal


def _records_from_server(dsn: str, slot: str | None, start: Lsn | None, end: Lsn | None,
                         outcome: _Outcome) -> Iterator[RawRecord]:
    import psycopg


    try:
        yield from _stream(dsn, slot, start, end, outcome)
    except psycopg.Error as e:
        raise WalSourceError(f"strata waldump --source: {e}") from e


def _stream(dsn: str, slot: str | None, start: Lsn | None, end: Lsn | None,
            outcome: _Outcome) -> Iterator[RawRecord]:
    import psycopg

    from strata.wal.receiver import StreamSource

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT redo_lsn::text, pg_current_wal_flush_lsn()::text, "
            "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') "
            "FROM pg_control_checkpoint()"
        ).fetchone()
        assert row is not None
        redo, flush, seg_size = Lsn.parse(row[0]), Lsn.parse(row[1]), int(row[2])
        made_slot = None
        if slot is None:
            made_slot = f"strata_waldump_{os.getpid()}"
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (made_slot,))
            slot = made_slot
    first = start if start is not None else redo
    stop_at = end if end is not None else flush
    page_start = first - first % XLOG_BLCKSZ
    source = StreamSource.connect(dsn, slot, page_start)
    try:
        reader = WalReader(page_start, seg_size)
        for chunk in source.stream():
            reader.feed(chunk.data)
            try:
                for rec in reader:
                    if rec.lsn >= stop_at:
                        return
                    if rec.lsn >= first:
                        yield rec
            except EndOfWal as e:
                outcome.end_of_wal = e
                return
            source.report(reader.next_lsn, reader.next_lsn)
            if reader.next_lsn >= stop_at:
                return
    finally:
        source.close()
        if made_slot is not None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (made_slot,))


# -- command ----------------------------------------------------------------------
def _parse_lsn(text: str) -> Lsn:
    try:
        return Lsn.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    if (args.path is None) == (args.source is None):
        raise ConfigError("strata waldump needs exactly one of --path DIR or --source DSN")
    outcome = _Outcome()
    if args.path is not None:
        raws = _records_from_path(args.path, args.start, args.end, outcome)
    else:
        raws = _records_from_server(args.source, args.slot, args.start, args.end, outcome)
    stats = WalStats() if args.stats else None
    write = out.write
    for raw in raws:
        rec = decode_record(raw.raw, raw.lsn, raw.end_lsn)
        if stats is not None:
            stats.add(rec)
        elif args.json:
            write(json.dumps(record_json(rec), separators=(",", ":")) + "\n")
        else:
            write(format_record(rec) + "\n")
    if stats is not None:
        write(stats.render(per_record=args.stats == "record"))
    out.flush()
    eow = outcome.end_of_wal
    if eow is not None and (args.end is None or eow.lsn < args.end):
        print(f"strata waldump: {eow}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "waldump", help="print WAL records like pg_waldump",
        description="Decode PostgreSQL 18 WAL from segment files or a server and print one "
                    "line per record (pg_waldump's fields), JSON lines, or statistics.")
    p.add_argument("--start", type=_parse_lsn, default=None,
                   help="first LSN (default: oldest segment for --path, the last "
                        "checkpoint's redo point for --source)")
    p.add_argument("--end", type=_parse_lsn, default=None,
                   help="stop before records starting at or after this LSN")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--path", help="directory of WAL segment files")
    src.add_argument("--source", metavar="DSN", help="stream from this server")
    p.add_argument("--slot", help="physical slot to stream from (with --source; default: a "
                                  "slot created and dropped for this run)")
    p.add_argument("--json", action="store_true", help="one JSON object per record")
    p.add_argument("--stats", nargs="?", const="record", choices=("record", "rmgr"),
                   default=None, help="statistics instead of records (default per record "
                                      "type, like pg_waldump --stats=record)")
    p.set_defaults(func=lambda a: run(a))
