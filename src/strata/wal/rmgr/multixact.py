"""Typed main data of the MultiXact resource manager (rmgr id 6).

What it is: `MultiXactZeroPage` (ZERO_OFF_PAGE / ZERO_MEM_PAGE: an offsets or
members page is created all-zero; int64 page numbers in PostgreSQL 18),
`MultiXactCreate` (CREATE_ID: multixact `mid` starts at member offset `moff`
and has these (xid, status) members), `MultiXactTruncate` (TRUNCATE_ID), and
`parse`. Layouts: access/multixact.h of the 18.6 headers.

Fed by: `DecodedRecord`. Feeds: `ingest.transam` (pg_multixact pages) and
`ingest.cluster_state` (next multixact/offset, oldest multixact).
Owns: nothing but parsing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from strata.errors import UnsupportedRecordError, WalDecodeError
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    RM_MULTIXACT_ID,
    XLOG_MULTIXACT_CREATE_ID,
    XLOG_MULTIXACT_TRUNCATE_ID,
    XLOG_MULTIXACT_ZERO_MEM_PAGE,
    XLOG_MULTIXACT_ZERO_OFF_PAGE,
)

_PAGENO = struct.Struct("<q")
_CREATE = struct.Struct("<IIi")  # mid, moff, nmembers
_MEMBER = struct.Struct("<Ii")  # xid, status (enum, 4 bytes)
_TRUNCATE = struct.Struct("<IIIII")  # oldestMultiDB, startTruncOff, endTruncOff, startTruncMemb, endTruncMemb


class MultiXactStatus(IntEnum):
    FOR_KEY_SHARE = 0x00
    FOR_SHARE = 0x01
    FOR_NO_KEY_UPDATE = 0x02
    FOR_UPDATE = 0x03
    NO_KEY_UPDATE = 0x04
    UPDATE = 0x05


@dataclass(frozen=True, slots=True)
class MultiXactMember:
    xid: int
    status: int  # MultiXactStatus value


@dataclass(frozen=True, slots=True)
class MultiXactZeroPage:
    members: bool  # False: offsets page (ZERO_OFF_PAGE); True: members page
    pageno: int


@dataclass(frozen=True, slots=True)
class MultiXactCreate:
    mid: int
    moff: int
    members: tuple[MultiXactMember, ...]


@dataclass(frozen=True, slots=True)
class MultiXactTruncate:
    oldest_multi_db: int
    start_trunc_off: int  # multixact ids [start, end) whose offsets go
    end_trunc_off: int
    start_trunc_memb: int  # member offsets [start, end) that go
    end_trunc_memb: int


MultiXactRecord = MultiXactZeroPage | MultiXactCreate | MultiXactTruncate


def parse(record: DecodedRecord) -> MultiXactRecord:
    """Raises: UnsupportedRecordError (unknown opcode), WalDecodeError (short data)."""
    info = record.info
    data = record.main_data
    try:
        if info in (XLOG_MULTIXACT_ZERO_OFF_PAGE, XLOG_MULTIXACT_ZERO_MEM_PAGE):
            return MultiXactZeroPage(info == XLOG_MULTIXACT_ZERO_MEM_PAGE,
                                     _PAGENO.unpack_from(data, 0)[0])
        if info == XLOG_MULTIXACT_CREATE_ID:
            mid, moff, n = _CREATE.unpack_from(data, 0)
            if n < 0:
                raise WalDecodeError(f"MultiXact CREATE_ID at {record.lsn} has {n} members")
            members = tuple(MultiXactMember(*_MEMBER.unpack_from(data, _CREATE.size + i * _MEMBER.size))
                            for i in range(n))
            return MultiXactCreate(mid, moff, members)
        if info == XLOG_MULTIXACT_TRUNCATE_ID:
            return MultiXactTruncate(*_TRUNCATE.unpack_from(data, 0))
    except struct.error as e:
        raise WalDecodeError(f"MultiXact record at {record.lsn} is truncated: {e}") from e
    raise UnsupportedRecordError("MultiXact", f"UNKNOWN ({info:#04x})", int(record.lsn))
