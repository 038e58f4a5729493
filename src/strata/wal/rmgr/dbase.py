"""Typed main data of the Database resource manager (rmgr id 4).

What it is: `DbaseCreateFileCopy` (the new database's directory is a copy of
the template's files as of this LSN: no page data is in WAL),
`DbaseCreateWalLog` (directory and PG_VERSION only; pages and the relation map
follow as their own records), `DbaseDrop` (the database's directory in every
listed tablespace goes), and `parse`. Layouts: commands/dbcommands_xlog.h.

Fed by: `DecodedRecord`. Feeds: ingest (database directories, relation maps).
Owns: nothing but parsing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.errors import UnsupportedRecordError, WalDecodeError
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    RM_DBASE_ID,
    XLOG_DBASE_CREATE_FILE_COPY,
    XLOG_DBASE_CREATE_WAL_LOG,
    XLOG_DBASE_DROP,
)

_FILE_COPY = struct.Struct("<IIII")  # db_id, tablespace_id, src_db_id, src_tablespace_id
_WAL_LOG = struct.Struct("<II")  # db_id, tablespace_id
_DROP = struct.Struct("<Ii")  # db_id, ntablespaces


@dataclass(frozen=True, slots=True)
class DbaseCreateFileCopy:
    db_id: int
    tablespace_id: int
    src_db_id: int
    src_tablespace_id: int


@dataclass(frozen=True, slots=True)
class DbaseCreateWalLog:
    db_id: int
    tablespace_id: int


@dataclass(frozen=True, slots=True)
class DbaseDrop:
    db_id: int
    tablespace_ids: tuple[int, ...]


DbaseRecord = DbaseCreateFileCopy | DbaseCreateWalLog | DbaseDrop


def parse(record: DecodedRecord) -> DbaseRecord:
    """Raises: UnsupportedRecordError (unknown opcode), WalDecodeError (short data)."""
    info = record.info
    data = record.main_data
    try:
        if info == XLOG_DBASE_CREATE_FILE_COPY:
            return DbaseCreateFileCopy(*_FILE_COPY.unpack_from(data, 0))
        if info == XLOG_DBASE_CREATE_WAL_LOG:
            return DbaseCreateWalLog(*_WAL_LOG.unpack_from(data, 0))
        if info == XLOG_DBASE_DROP:
            db_id, n = _DROP.unpack_from(data, 0)
            if n < 0:
                raise WalDecodeError(f"Database DROP at {record.lsn} lists {n} tablespaces")
            return DbaseDrop(db_id, struct.unpack_from(f"<{n}I", data, _DROP.size))
    except struct.error as e:
        raise WalDecodeError(f"Database record at {record.lsn} is truncated: {e}") from e
    raise UnsupportedRecordError("Database", f"UNKNOWN ({info:#04x})", int(record.lsn))
