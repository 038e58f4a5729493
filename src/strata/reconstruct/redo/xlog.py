"""XLOG (rmgr 0) redo: the page side of xlog_redo in PostgreSQL 18.

What it is: FPI and FPI_FOR_HINT carry an apply-image for every block; the
dispatcher restores those before any rmgr function runs, so a block of an
FPI record reaching this function has no image to apply, which PostgreSQL
treats as an error ("unexpected XLogReadBufferForRedo result when restoring
backup block"). Every other XLOG record type has no block references.
Registers itself for RM_XLOG_ID.
"""

from __future__ import annotations

from strata.errors import RedoError
from strata.reconstruct.redo import RM_XLOG_ID, register, unsupported
from strata.wal.record import BlockRef, DecodedRecord

XLOG_FPI_FOR_HINT = 0xA0
XLOG_FPI = 0xB0


def xlog_redo(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if record.info in (XLOG_FPI, XLOG_FPI_FOR_HINT):
        raise RedoError(f"XLOG FPI record at {record.lsn}: block {block.block_id} "
                        "has no image to restore")
    raise unsupported(record)


register(RM_XLOG_ID, xlog_redo)
