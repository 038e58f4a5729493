"""Typed main data of the RelMap resource manager (rmgr id 7), and the
``pg_filenode.map`` file format.

What it is: `RelmapUpdate` (xl_relmap_update: database, tablespace and the
complete new map file), `RelMapFile` (the 524-byte file: magic, count, 64
(oid, relfilenumber) slots, CRC-32C of everything before the CRC), and `parse`.
Layouts: utils/relmapper.h and src/backend/utils/cache/relmapper.c (18).

Fed by: `DecodedRecord`. Feeds: `ingest.transam` (relation-map values) and
the historical data directory. Owns: nothing but parsing and formatting.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import google_crc32c  # type: ignore[import-untyped]

from strata.errors import CorruptionError, UnsupportedRecordError, WalDecodeError
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import (  # noqa: F401  (one table of ids and record types)
    RM_RELMAP_ID,
    XLOG_RELMAP_UPDATE,
)

RELMAPPER_FILEMAGIC = 0x592717
MAX_MAPPINGS = 64
RELMAP_FILE_SIZE = 4 + 4 + MAX_MAPPINGS * 8 + 4  # sizeof(RelMapFile) = 524
_HEADER = struct.Struct("<iii")  # dbid, tsid, nbytes
_FILE_HEAD = struct.Struct("<ii")  # magic, num_mappings
_MAPPING = struct.Struct("<II")
_CRC = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class RelMapFile:
    """A parsed ``pg_filenode.map``."""

    mappings: tuple[tuple[int, int], ...]  # (catalog oid, relfilenumber), in file order

    @classmethod
    def from_bytes(cls, data: bytes) -> RelMapFile:
        """Raises: CorruptionError on a wrong size, magic, count or CRC."""
        if len(data) != RELMAP_FILE_SIZE:
            raise CorruptionError(f"relation map is {len(data)} bytes, expected {RELMAP_FILE_SIZE}")
        magic, n = _FILE_HEAD.unpack_from(data, 0)
        if magic != RELMAPPER_FILEMAGIC or not 0 <= n <= MAX_MAPPINGS:
            raise CorruptionError(f"relation map has magic {magic:#x} and {n} mappings")
        (crc,) = _CRC.unpack_from(data, RELMAP_FILE_SIZE - 4)
        if crc != relmap_crc(data):
            raise CorruptionError("relation map CRC mismatch")
        return cls(tuple(_MAPPING.unpack_from(data, 8 + 8 * i) for i in range(n)))

    def to_bytes(self) -> bytes:
        """The file as PostgreSQL writes it (unused slots zero, CRC last)."""
        if len(self.mappings) > MAX_MAPPINGS:
            raise ValueError(f"a relation map holds at most {MAX_MAPPINGS} mappings")
        buf = bytearray(RELMAP_FILE_SIZE)
        _FILE_HEAD.pack_into(buf, 0, RELMAPPER_FILEMAGIC, len(self.mappings))
        for i, (oid, filenumber) in enumerate(self.mappings):
            _MAPPING.pack_into(buf, 8 + 8 * i, oid, filenumber)
        _CRC.pack_into(buf, RELMAP_FILE_SIZE - 4, relmap_crc(bytes(buf)))
        return bytes(buf)

    def filenumber(self, oid: int) -> int | None:
        for o, f in self.mappings:
            if o == oid:
                return f
        return None


def relmap_crc(data: bytes) -> int:
    """CRC-32C over the file up to (not including) its CRC field."""
    return int(google_crc32c.value(bytes(data[:RELMAP_FILE_SIZE - 4])))


@dataclass(frozen=True, slots=True)
class RelmapUpdate:
    dbid: int  # 0 for the shared (global) map
    tsid: int  # the database's tablespace, or pg_global (1664)
    data: bytes  # the complete new map file

    @property
    def shared(self) -> bool:
        return self.dbid == 0

    def map_file(self) -> RelMapFile:
        return RelMapFile.from_bytes(self.data)


def parse(record: DecodedRecord) -> RelmapUpdate:
    """Raises: UnsupportedRecordError (unknown opcode), WalDecodeError (bad size)."""
    if record.info != XLOG_RELMAP_UPDATE:
        raise UnsupportedRecordError("RelMap", f"UNKNOWN ({record.info:#04x})", int(record.lsn))
    data = record.main_data
    try:
        dbid, tsid, nbytes = _HEADER.unpack_from(data, 0)
    except struct.error as e:
        raise WalDecodeError(f"RelMap record at {record.lsn} is truncated: {e}") from e
    # relmap_redo PANICs on any other size; so do we (as a decode error).
    if nbytes != RELMAP_FILE_SIZE or len(data) < _HEADER.size + nbytes:
        raise WalDecodeError(f"RelMap UPDATE at {record.lsn} carries {nbytes} bytes, "
                             f"expected {RELMAP_FILE_SIZE}")
    return RelmapUpdate(dbid & 0xFFFFFFFF, tsid & 0xFFFFFFFF,
                        bytes(data[_HEADER.size:_HEADER.size + nbytes]))
