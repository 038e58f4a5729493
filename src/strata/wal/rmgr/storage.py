"""Typed main data of the Storage resource manager (rmgr id 2).

What it is: `SmgrCreate` (a fork file is created) and `SmgrTruncate` (a
relation is cut to `blkno` blocks in the forks its flags name), and `parse`.
Layouts: catalog/storage_xlog.h of the 18.6 headers.

Fed by: `DecodedRecord`. Feeds: ingest (relation sizes and existence).
Owns: nothing but parsing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.errors import UnsupportedRecordError, WalDecodeError
from strata.wal.record import DecodedRecord, RelFileLocator
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    RM_SMGR_ID,
    XLOG_SMGR_CREATE,
    XLOG_SMGR_TRUNCATE,
)

SMGR_TRUNCATE_HEAP = 0x0001
SMGR_TRUNCATE_VM = 0x0002
SMGR_TRUNCATE_FSM = 0x0004
SMGR_TRUNCATE_ALL = SMGR_TRUNCATE_HEAP | SMGR_TRUNCATE_VM | SMGR_TRUNCATE_FSM

_CREATE = struct.Struct("<IIIi")  # rlocator (spc, db, rel), forkNum
_TRUNCATE = struct.Struct("<IIIIi")  # blkno, rlocator, flags


@dataclass(frozen=True, slots=True)
class SmgrCreate:
    rlocator: RelFileLocator
    fork: int


@dataclass(frozen=True, slots=True)
class SmgrTruncate:
    blkno: int  # new length in blocks of the main fork
    rlocator: RelFileLocator
    flags: int

    @property
    def truncates_heap(self) -> bool:
        return bool(self.flags & SMGR_TRUNCATE_HEAP)

    @property
    def truncates_vm(self) -> bool:
        return bool(self.flags & SMGR_TRUNCATE_VM)

    @property
    def truncates_fsm(self) -> bool:
        return bool(self.flags & SMGR_TRUNCATE_FSM)


StorageRecord = SmgrCreate | SmgrTruncate


def parse(record: DecodedRecord) -> StorageRecord:
    """Raises: UnsupportedRecordError (unknown opcode), WalDecodeError (short data)."""
    info = record.info
    try:
        if info == XLOG_SMGR_CREATE:
            spc, db, rel, fork = _CREATE.unpack_from(record.main_data, 0)
            return SmgrCreate(RelFileLocator(spc, db, rel), fork)
        if info == XLOG_SMGR_TRUNCATE:
            blkno, spc, db, rel, flags = _TRUNCATE.unpack_from(record.main_data, 0)
            return SmgrTruncate(blkno, RelFileLocator(spc, db, rel), flags)
    except struct.error as e:
        raise WalDecodeError(f"Storage record at {record.lsn} is truncated: {e}") from e
    raise UnsupportedRecordError("Storage", f"UNKNOWN ({info:#04x})", int(record.lsn))
