"""CLUSTER and AUX values: the control values of a cluster at an LSN, and the
imported pg_control template.

What it is: `ClusterState`, the values a historical data directory needs in
its control file (next full XID, next OID, next multixact and member offset,
oldest XID and multixact with their databases, timeline, WAL segment size,
...), the LSN they hold at, and its versioned byte encoding, stored under
``Key.cluster(0)``; and the AUX key of the pg_control template written at
import. Fed by: ingest (`ingest.cluster_state` moves the values along WAL;
`bootstrap` stores the import's). Feeds: historical (control file at X).
Owns: the encodings below.

Encoding (version 1; little-endian, 104 bytes; never reorder, append only with
a new version)::

    off size field
      0   4  magic b"STCS"
      4   2  version (1)
      6   2  flags: bit0 full_page_writes, bit1 wal_log_hints,
                    bit2 track_commit_timestamp, bit3 char signedness signed
      8   8  lsn (the state holds after every record ending at or before it)
     16   8  next_full_xid (epoch << 32 | xid)
     24   4  next_oid
     28   4  next_multi
     32   4  next_multi_offset
     36   4  oldest_xid
     40   4  oldest_xid_db
     44   4  oldest_multi
     48   4  oldest_multi_db
     52   4  oldest_commit_ts_xid
     56   4  newest_commit_ts_xid
     60   4  timeline
     64   4  prev_timeline
     68   4  wal_segment_size
     72   4  wal_level
     76   4  max_connections
     80   4  max_worker_processes
     84   4  max_wal_senders
     88   4  max_prepared_xacts
     92   4  max_locks_per_xact
     96   8  checkpoint_redo (redo LSN of the latest checkpoint seen)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.errors import CorruptionError
from strata.key import Key, KeyKind
from strata.lsn import INVALID_LSN, Lsn
from strata.pg.constants import DEFAULT_WAL_SEGMENT_SIZE, WAL_LEVEL_REPLICA

_MAGIC = b"STCS"
_VERSION = 1
_ENCODING = struct.Struct("<4sHHQQIIIIIIIIIIIIIIIIIIQ")
ENCODED_SIZE = _ENCODING.size

_FLAG_FPW = 1
_FLAG_WAL_LOG_HINTS = 2
_FLAG_TRACK_COMMIT_TS = 4
_FLAG_CHAR_SIGNED = 8

AUX_CONTROL_TEMPLATE = 0  # Key(AUX, rel=0): the imported pg_control bytes


def control_template_key() -> Key:
    """The AUX key of the imported pg_control (template of every historical one)."""
    return Key(KeyKind.AUX, 0, 0, AUX_CONTROL_TEMPLATE, 0, 0)


@dataclass(frozen=True, slots=True)
class ClusterState:
    """The control values of a cluster as of `lsn`."""

    lsn: Lsn
    next_full_xid: int
    next_oid: int
    next_multi: int
    next_multi_offset: int
    oldest_xid: int
    oldest_xid_db: int
    oldest_multi: int
    oldest_multi_db: int
    oldest_commit_ts_xid: int = 0
    newest_commit_ts_xid: int = 0
    timeline: int = 1
    prev_timeline: int = 1
    wal_segment_size: int = DEFAULT_WAL_SEGMENT_SIZE
    wal_level: int = WAL_LEVEL_REPLICA
    full_page_writes: bool = True
    wal_log_hints: bool = False
    track_commit_timestamp: bool = False
    max_connections: int = 100
    max_worker_processes: int = 8
    max_wal_senders: int = 10
    max_prepared_xacts: int = 0
    max_locks_per_xact: int = 64
    checkpoint_redo: Lsn = INVALID_LSN
    char_signed: bool = True

    @property
    def next_xid(self) -> int:
        return self.next_full_xid & 0xFFFFFFFF

    @property
    def next_xid_epoch(self) -> int:
        return self.next_full_xid >> 32

    # -- encoding --------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        flags = ((_FLAG_FPW if self.full_page_writes else 0)
                 | (_FLAG_WAL_LOG_HINTS if self.wal_log_hints else 0)
                 | (_FLAG_TRACK_COMMIT_TS if self.track_commit_timestamp else 0)
                 | (_FLAG_CHAR_SIGNED if self.char_signed else 0))
        return _ENCODING.pack(
            _MAGIC, _VERSION, flags, int(self.lsn), self.next_full_xid, self.next_oid,
            self.next_multi, self.next_multi_offset, self.oldest_xid, self.oldest_xid_db,
            self.oldest_multi, self.oldest_multi_db, self.oldest_commit_ts_xid,
            self.newest_commit_ts_xid, self.timeline, self.prev_timeline, self.wal_segment_size,
            self.wal_level, self.max_connections, self.max_worker_processes, self.max_wal_senders,
            self.max_prepared_xacts, self.max_locks_per_xact, int(self.checkpoint_redo))

    @classmethod
    def from_bytes(cls, data: bytes) -> ClusterState:
        """Raises: CorruptionError on a wrong magic, version or size."""
        if len(data) != ENCODED_SIZE or data[:4] != _MAGIC:
            raise CorruptionError(f"not a cluster state value ({len(data)} bytes, magic {data[:4]!r})")
        (_, version, flags, lsn, nfx, noid, nmulti, noff, oxid, oxdb, omulti, omdb, octs, ncts,
         tli, ptli, segsz, wal_level, maxconn, maxwork, maxsend, maxprep, maxlocks,
         redo) = _ENCODING.unpack(data)
        if version != _VERSION:
            raise CorruptionError(f"cluster state version {version} is not supported (know {_VERSION})")
        return cls(Lsn(lsn), nfx, noid, nmulti, noff, oxid, oxdb, omulti, omdb, octs, ncts, tli,
                   ptli, segsz, wal_level, bool(flags & _FLAG_FPW),
                   bool(flags & _FLAG_WAL_LOG_HINTS), bool(flags & _FLAG_TRACK_COMMIT_TS),
                   maxconn, maxwork, maxsend, maxprep, maxlocks, Lsn(redo),
                   bool(flags & _FLAG_CHAR_SIGNED))
