"""Struct parser for Sequence (rmgr 15) WAL records, PostgreSQL 18.

What it is: xl_seq_rec (commands/sequence.h): the sequence relation's
locator followed by the whole sequence tuple. Fed by main data; feeds
reconstruct.redo.sequence.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.errors import WalDecodeError
from strata.wal.record import RelFileLocator
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    XLOG_SEQ_LOG,
)

SEQ_MAGIC = 0x1717
SIZE_OF_SEQ_REC = 12

_LOCATOR = struct.Struct("<III")


@dataclass(frozen=True, slots=True)
class XlSeqRec:
    locator: RelFileLocator
    tuple_data: bytes  # the HeapTupleHeader + data, as PageAddItem gets it

    @classmethod
    def parse(cls, data: bytes) -> XlSeqRec:
        if len(data) < SIZE_OF_SEQ_REC:
            raise WalDecodeError(f"xl_seq_rec: {len(data)} bytes, need {SIZE_OF_SEQ_REC}")
        spc, db, rel = _LOCATOR.unpack_from(data)
        return cls(RelFileLocator(spc, db, rel), bytes(data[SIZE_OF_SEQ_REC:]))
