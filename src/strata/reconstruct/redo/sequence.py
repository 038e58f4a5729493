"""Sequence (rmgr 15) redo: seq_redo of PostgreSQL 18 (commands/sequence.c).

What it is: XLOG_SEQ_LOG re-initialises the sequence's single page from the
logged tuple (PageInit with the sequence_magic special space, the tuple at
offset 1). Fed by the dispatcher; registers itself for RM_SEQ_ID.
"""

from __future__ import annotations

import struct

from strata.errors import RedoError
from strata.reconstruct.redo import RM_SEQ_ID, page_ops, register, unsupported
from strata.wal.record import BlockRef, DecodedRecord
from strata.wal.rmgr.sequence import SEQ_MAGIC, XLOG_SEQ_LOG, XlSeqRec

_MAGIC = struct.Struct("<I")


def seq_redo(record: DecodedRecord, block: BlockRef, page: bytearray) -> None:
    if record.info != XLOG_SEQ_LOG:
        raise unsupported(record)
    xlrec = XlSeqRec.parse(record.main_data)
    # PostgreSQL builds the page in a local copy and copies it over whatever
    # the buffer held (XLogInitBufferForRedo): the result ignores `page`.
    page_ops.page_init(page, _MAGIC.size)
    _MAGIC.pack_into(page, page_ops.get_special(page), SEQ_MAGIC)
    if page_ops.page_add_item(page, xlrec.tuple_data, page_ops.FIRST_OFFSET_NUMBER) == 0:
        raise RedoError(f"seq_redo: failed to add item to page at {record.lsn}")


register(RM_SEQ_ID, seq_redo)
