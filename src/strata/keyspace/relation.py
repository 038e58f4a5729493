"""REL_BLOCK, REL_SIZE and DB_DIR values: relation pages, fork lengths and
database directories.

What it is: the codecs of the values ingest stores under these key kinds
(keyspace/FORMAT.md has the byte tables). Fed by: ingest (which builds them
from WAL records and imports). Feeds: reconstruct (decodes REL_BLOCK deltas
back into WAL records), historical (fork lengths, database directories),
ingest on restart. Owns: these encodings. Pure.
"""

from __future__ import annotations

import struct

from strata.lsn import Lsn
from strata.pg.constants import ForkNumber

# REL_BLOCK delta value: start LSN, end LSN, then the whole record.
_DELTA_HEADER = struct.Struct("<QQ")
DELTA_HEADER_SIZE = _DELTA_HEADER.size
# REL_SIZE value: number of blocks.
_REL_SIZE = struct.Struct("<I")
# DB_DIR value: format byte (1) then PG_VERSION contents.
DB_DIR_PRESENT = b"\x0118\n"

# Forks whose pages are stored (visibility map and free space map are not:
# a read-only historical server does not need them, wal-census 5.2).
STORED_FORKS = (ForkNumber.MAIN, ForkNumber.INIT)


def encode_delta(lsn: int, end_lsn: int, raw: bytes) -> bytes:
    """A REL_BLOCK delta: the whole WAL record `raw` that starts at `lsn`."""
    return _DELTA_HEADER.pack(lsn, end_lsn) + raw


def decode_delta(data: bytes) -> tuple[Lsn, Lsn, bytes]:
    """(start LSN, end LSN, record bytes) of a REL_BLOCK delta."""
    lsn, end = _DELTA_HEADER.unpack_from(data, 0)
    return Lsn(lsn), Lsn(end), data[_DELTA_HEADER.size:]


def encode_rel_size(nblocks: int) -> bytes:
    return _REL_SIZE.pack(nblocks)


def decode_rel_size(data: bytes) -> int:
    return int(_REL_SIZE.unpack_from(data, 0)[0])
