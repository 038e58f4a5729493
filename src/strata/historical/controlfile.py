"""pg_control (ControlFileData, PostgreSQL 18, PG_CONTROL_VERSION 1800): read and patch.

Fed by the bytes of a `global/pg_control` (a cluster we import, or the
template kept from the import). Feeds `source.DataDirSource` (the values at
its checkpoint, as a `keyspace.cluster.ClusterState`) and `materialize` (which
patches `data_checksum_version` and writes the file before the values at LSN X
are set). Owns no file.

Names: `ControlFile` is the parsed pg_control file (what the bytes say);
`ClusterState` is the cluster's control values as of an LSN (what ingest keeps
and a historical pg_control is written from).

Offsets are those of ``ControlFileData`` in src/include/catalog/pg_control.h
for x86-64 / aarch64 (8-byte alignment of int64 and double); the embedded
`CheckPoint` starts at offset 40. The CRC-32C covers every byte before `crc`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import google_crc32c

from strata.errors import CorruptionError
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pg.structs import U32

PG_CONTROL_VERSION = 1800
PG_CONTROL_FILE_SIZE = 8192
FLOAT_FORMAT_VALUE = 1234567.0

# offsetof(ControlFileData, ...), see the module docstring
_OFF_CHECKPOINT_COPY = 40
_OFF_DATA_CHECKSUM_VERSION = 252
_OFF_CHAR_SIGNEDNESS = 256
_OFF_CRC = 292

# system_identifier, pg_control_version, catalog_version_no, state, (pad), time, checkPoint
_HEAD = struct.Struct("<QIIi4xqQ")
# CheckPoint: redo, ThisTimeLineID, PrevTimeLineID, fullPageWrites, wal_level, nextXid,
# nextOid, nextMulti, nextMultiOffset, oldestXid, oldestXidDB, oldestMulti, oldestMultiDB,
# (pad), time, oldestCommitTsXid, newestCommitTsXid, oldestActiveXid
_CHECKPOINT = struct.Struct("<QII?3xiQIIIIIII4xqIII")
# maxAlign .. float8ByVal, data_checksum_version, default_char_signedness
_TAIL = struct.Struct("<Id8I?3xI?")
_OFF_TAIL = 204

DB_SHUTDOWNED = 1


@dataclass(frozen=True, slots=True)
class ControlFile:
    """The fields of pg_control that historical compute needs."""

    system_identifier: int
    pg_control_version: int
    catalog_version_no: int
    state: int
    checkpoint: Lsn
    redo: Lsn
    timeline: int
    next_full_xid: int
    next_oid: int
    next_multi: int
    next_multi_offset: int
    oldest_xid: int
    oldest_xid_db: int
    oldest_multi: int
    oldest_multi_db: int
    blcksz: int
    relseg_size: int
    xlog_blcksz: int
    xlog_seg_size: int
    data_checksum_version: int
    default_char_signedness: bool

    def cluster_state(self) -> ClusterState:
        """The cluster values this file holds, at its checkpoint (`lsn` = the
        checkpoint record; the settings not kept here take their defaults)."""
        return ClusterState(
            lsn=self.checkpoint, next_full_xid=self.next_full_xid, next_oid=self.next_oid,
            next_multi=self.next_multi, next_multi_offset=self.next_multi_offset,
            oldest_xid=self.oldest_xid, oldest_xid_db=self.oldest_xid_db,
            oldest_multi=self.oldest_multi, oldest_multi_db=self.oldest_multi_db,
            timeline=self.timeline, wal_segment_size=self.xlog_seg_size,
            checkpoint_redo=self.redo, char_signed=self.default_char_signedness)

    @property
    def catalog_version_dir(self) -> str:
        """Directory name a tablespace uses for this catalog version (TABLESPACE_VERSION_DIRECTORY)."""
        return f"PG_18_{self.catalog_version_no}"


def control_crc(data: bytes | bytearray) -> int:
    return int(google_crc32c.value(bytes(data[:_OFF_CRC])))


def parse_control(data: bytes | bytearray) -> ControlFile:
    """Read a PostgreSQL 18 pg_control.

    Raises: CorruptionError when the size, version, CRC or float format is wrong.
    """
    if len(data) < _OFF_CRC + 4:
        raise CorruptionError(f"pg_control is {len(data)} bytes, too short for PostgreSQL 18")
    (sysid, version, catver, state, _time, checkpoint) = _HEAD.unpack_from(data, 0)
    if version != PG_CONTROL_VERSION:
        raise CorruptionError(
            f"pg_control version {version} is not PostgreSQL 18's {PG_CONTROL_VERSION}")
    stored = U32.unpack_from(data, _OFF_CRC)[0]
    if stored != control_crc(data):
        raise CorruptionError("pg_control has an incorrect CRC-32C (corrupt control file)")
    (redo, tli, _prev_tli, _fpw, _wal_level, next_xid, next_oid, next_multi, next_offset,
     oldest_xid, oldest_xid_db, oldest_multi, oldest_multi_db, _cp_time, _ots, _nts,
     _oldest_active) = _CHECKPOINT.unpack_from(data, _OFF_CHECKPOINT_COPY)
    (_max_align, float_format, blcksz, relseg_size, xlog_blcksz, xlog_seg_size, _name_len,
     _index_keys, _toast, _lob, _f8byval, checksum_version,
     signedness) = _TAIL.unpack_from(data, _OFF_TAIL)
    if float_format != FLOAT_FORMAT_VALUE:
        raise CorruptionError("pg_control float format check failed (wrong layout or platform)")
    return ControlFile(
        system_identifier=sysid, pg_control_version=version, catalog_version_no=catver,
        state=state, checkpoint=Lsn(checkpoint), redo=Lsn(redo), timeline=tli,
        next_full_xid=next_xid, next_oid=next_oid, next_multi=next_multi,
        next_multi_offset=next_offset, oldest_xid=oldest_xid, oldest_xid_db=oldest_xid_db,
        oldest_multi=oldest_multi, oldest_multi_db=oldest_multi_db, blcksz=blcksz,
        relseg_size=relseg_size, xlog_blcksz=xlog_blcksz, xlog_seg_size=xlog_seg_size,
        data_checksum_version=checksum_version, default_char_signedness=bool(signedness),
    )


def with_checksum_version(data: bytes, version: int) -> bytes:
    """The same control file with `data_checksum_version` set and the CRC recomputed.

    This is what ``pg_checksums --disable`` does offline (it rewrites only pg_control);
    setting 1 is only valid when every page written carries a valid pd_checksum.
    Requires: `data` parses (checked).
    """
    parse_control(data)
    buf = bytearray(data)
    U32.pack_into(buf, _OFF_DATA_CHECKSUM_VERSION, version)
    U32.pack_into(buf, _OFF_CRC, control_crc(buf))
    return bytes(buf)
