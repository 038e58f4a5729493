"""Typed main data of the CLOG resource manager (rmgr id 3).

What it is: `ClogZeroPage` (a pg_xact page is created all-zero) and
`ClogTruncate` (segments before the one holding `pageno` are removed), and
`parse`. In PostgreSQL 18 page numbers are int64. Layouts: access/clog.h.

Fed by: `DecodedRecord`. Feeds: `ingest.transam` (pg_xact pages).
Owns: nothing but parsing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.errors import UnsupportedRecordError, WalDecodeError
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    CLOG_TRUNCATE,
    CLOG_ZEROPAGE,
    RM_CLOG_ID,
)

_ZEROPAGE = struct.Struct("<q")
_TRUNCATE = struct.Struct("<qII")  # pageno, oldestXact, oldestXactDb


@dataclass(frozen=True, slots=True)
class ClogZeroPage:
    pageno: int


@dataclass(frozen=True, slots=True)
class ClogTruncate:
    pageno: int  # cutoff page: segments wholly before its segment go
    oldest_xact: int
    oldest_xact_db: int


ClogRecord = ClogZeroPage | ClogTruncate


def parse(record: DecodedRecord) -> ClogRecord:
    """Raises: UnsupportedRecordError (unknown opcode), WalDecodeError (short data)."""
    info = record.info
    try:
        if info == CLOG_ZEROPAGE:
            return ClogZeroPage(_ZEROPAGE.unpack_from(record.main_data, 0)[0])
        if info == CLOG_TRUNCATE:
            return ClogTruncate(*_TRUNCATE.unpack_from(record.main_data, 0))
    except struct.error as e:
        raise WalDecodeError(f"CLOG record at {record.lsn} is truncated: {e}") from e
    raise UnsupportedRecordError("CLOG", f"UNKNOWN ({info:#04x})", int(record.lsn))
