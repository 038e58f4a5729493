"""Typed main data of the Tablespace resource manager (rmgr id 5).

What it is: `TblspcCreate` (tablespace OID and its directory path) and
`TblspcDrop`, and `parse`. Layouts: commands/tablespace.h.

Fed by: `DecodedRecord`. Feeds: ingest (tablespace directories).
Owns: nothing but parsing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.errors import UnsupportedRecordError, WalDecodeError
from strata.pg.structs import U32
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    RM_TBLSPC_ID,
    XLOG_TBLSPC_CREATE,
    XLOG_TBLSPC_DROP,
)


@dataclass(frozen=True, slots=True)
class TblspcCreate:
    ts_id: int
    path: str


@dataclass(frozen=True, slots=True)
class TblspcDrop:
    ts_id: int


TblspcRecord = TblspcCreate | TblspcDrop


def parse(record: DecodedRecord) -> TblspcRecord:
    """Raises: UnsupportedRecordError (unknown opcode), WalDecodeError (short data)."""
    info = record.info
    data = record.main_data
    try:
        if info == XLOG_TBLSPC_CREATE:
            (ts_id,) = U32.unpack_from(data, 0)
            nul = data.find(b"\x00", 4)
            if nul < 0:
                raise WalDecodeError(f"Tablespace CREATE at {record.lsn}: unterminated path")
            return TblspcCreate(ts_id, data[4:nul].decode("utf-8", errors="surrogateescape"))
        if info == XLOG_TBLSPC_DROP:
            return TblspcDrop(U32.unpack_from(data, 0)[0])
    except struct.error as e:
        raise WalDecodeError(f"Tablespace record at {record.lsn} is truncated: {e}") from e
    raise UnsupportedRecordError("Tablespace", f"UNKNOWN ({info:#04x})", int(record.lsn))
