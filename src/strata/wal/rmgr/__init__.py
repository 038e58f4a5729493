"""The PostgreSQL 18 resource-manager table: ids, names and record-type names.

What it is: the Python side of src/include/access/rmgrlist.h plus every
rmgr's ``*_identify`` function from src/backend/access/rmgrdesc/*.c (18.x),
so that our names are byte-for-byte what ``pg_waldump`` prints.

Fed by: nothing (pure tables). Feeds: `strata waldump`, ingest and redo
dispatch (which key on the ``RM_*_ID`` constants here). The per-rmgr main-data
parsers live in sibling modules (``rmgr/heap.py``, ``rmgr/xact.py``, ...),
owned by their own authors; this module owns only the table.
"""

from __future__ import annotations

from strata.errors import WalDecodeError
from strata.pg.rmgrids import (  # noqa: F401  (re-exported: the one table)
    RM_BRIN_ID,
    RM_BTREE_ID,
    RM_CLOG_ID,
    RM_COMMIT_TS_ID,
    RM_DBASE_ID,
    RM_GENERIC_ID,
    RM_GIN_ID,
    RM_GIST_ID,
    RM_HASH_ID,
    RM_HEAP2_ID,
    RM_HEAP_ID,
    RM_LOGICALMSG_ID,
    RM_MAX_BUILTIN_ID,
    RM_MAX_CUSTOM_ID,
    RM_MAX_ID,
    RM_MIN_CUSTOM_ID,
    RM_MULTIXACT_ID,
    RM_RELMAP_ID,
    RM_REPLORIGIN_ID,
    RM_SEQ_ID,
    RM_SMGR_ID,
    RM_SPGIST_ID,
    RM_STANDBY_ID,
    RM_TBLSPC_ID,
    RM_XACT_ID,
    RM_XLOG_ID,
)
from strata.wal.record import XLR_INFO_MASK

RMGR_NAMES: tuple[str, ...] = (
    "XLOG", "Transaction", "Storage", "CLOG", "Database", "Tablespace", "MultiXact",
    "RelMap", "Standby", "Heap2", "Heap", "Btree", "Hash", "Gin", "Gist", "Sequence",
    "SPGist", "BRIN", "CommitTs", "ReplicationOrigin", "Generic", "LogicalMessage",
)

# -- record types (high nibble of xl_info), from the 18.6 headers ---------------
# XLOG (catalog/pg_control.h)
XLOG_CHECKPOINT_SHUTDOWN = 0x00
XLOG_CHECKPOINT_ONLINE = 0x10
XLOG_NOOP = 0x20
XLOG_NEXTOID = 0x30
XLOG_SWITCH = 0x40
XLOG_BACKUP_END = 0x50
XLOG_PARAMETER_CHANGE = 0x60
XLOG_RESTORE_POINT = 0x70
XLOG_FPW_CHANGE = 0x80
XLOG_END_OF_RECOVERY = 0x90
XLOG_FPI_FOR_HINT = 0xA0
XLOG_FPI = 0xB0
XLOG_OVERWRITE_CONTRECORD = 0xD0
XLOG_CHECKPOINT_REDO = 0xE0
# Transaction (access/xact.h)
XLOG_XACT_COMMIT = 0x00
XLOG_XACT_PREPARE = 0x10
XLOG_XACT_ABORT = 0x20
XLOG_XACT_COMMIT_PREPARED = 0x30
XLOG_XACT_ABORT_PREPARED = 0x40
XLOG_XACT_ASSIGNMENT = 0x50
XLOG_XACT_INVALIDATIONS = 0x60
XLOG_XACT_OPMASK = 0x70
XLOG_XACT_HAS_INFO = 0x80
# Storage (catalog/storage_xlog.h)
XLOG_SMGR_CREATE = 0x10
XLOG_SMGR_TRUNCATE = 0x20
# CLOG / CommitTs
CLOG_ZEROPAGE = 0x00
CLOG_TRUNCATE = 0x10
COMMIT_TS_ZEROPAGE = 0x00
COMMIT_TS_TRUNCATE = 0x10
# Database
XLOG_DBASE_CREATE_FILE_COPY = 0x00
XLOG_DBASE_CREATE_WAL_LOG = 0x10
XLOG_DBASE_DROP = 0x20
# Tablespace
XLOG_TBLSPC_CREATE = 0x00
XLOG_TBLSPC_DROP = 0x10
# MultiXact
XLOG_MULTIXACT_ZERO_OFF_PAGE = 0x00
XLOG_MULTIXACT_ZERO_MEM_PAGE = 0x10
XLOG_MULTIXACT_CREATE_ID = 0x20
XLOG_MULTIXACT_TRUNCATE_ID = 0x30
# RelMap
XLOG_RELMAP_UPDATE = 0x00
# Standby
XLOG_STANDBY_LOCK = 0x00
XLOG_RUNNING_XACTS = 0x10
XLOG_INVALIDATIONS = 0x20
# Heap / Heap2 (access/heapam_xlog.h)
XLOG_HEAP_INSERT = 0x00
XLOG_HEAP_DELETE = 0x10
XLOG_HEAP_UPDATE = 0x20
XLOG_HEAP_TRUNCATE = 0x30
XLOG_HEAP_HOT_UPDATE = 0x40
XLOG_HEAP_CONFIRM = 0x50
XLOG_HEAP_LOCK = 0x60
XLOG_HEAP_INPLACE = 0x70
XLOG_HEAP_OPMASK = 0x70
XLOG_HEAP_INIT_PAGE = 0x80
XLOG_HEAP2_REWRITE = 0x00
XLOG_HEAP2_PRUNE_ON_ACCESS = 0x10
XLOG_HEAP2_PRUNE_VACUUM_SCAN = 0x20
XLOG_HEAP2_PRUNE_VACUUM_CLEANUP = 0x30
XLOG_HEAP2_VISIBLE = 0x40
XLOG_HEAP2_MULTI_INSERT = 0x50
XLOG_HEAP2_LOCK_UPDATED = 0x60
XLOG_HEAP2_NEW_CID = 0x70
# Btree (access/nbtxlog.h)
XLOG_BTREE_INSERT_LEAF = 0x00
XLOG_BTREE_INSERT_UPPER = 0x10
XLOG_BTREE_INSERT_META = 0x20
XLOG_BTREE_SPLIT_L = 0x30
XLOG_BTREE_SPLIT_R = 0x40
XLOG_BTREE_INSERT_POST = 0x50
XLOG_BTREE_DEDUP = 0x60
XLOG_BTREE_DELETE = 0x70
XLOG_BTREE_UNLINK_PAGE = 0x80
XLOG_BTREE_UNLINK_PAGE_META = 0x90
XLOG_BTREE_NEWROOT = 0xA0
XLOG_BTREE_MARK_PAGE_HALFDEAD = 0xB0
XLOG_BTREE_VACUUM = 0xC0
XLOG_BTREE_REUSE_PAGE = 0xD0
XLOG_BTREE_META_CLEANUP = 0xE0
# Hash (access/hash_xlog.h)
XLOG_HASH_INIT_META_PAGE = 0x00
XLOG_HASH_INIT_BITMAP_PAGE = 0x10
XLOG_HASH_INSERT = 0x20
XLOG_HASH_ADD_OVFL_PAGE = 0x30
XLOG_HASH_SPLIT_ALLOCATE_PAGE = 0x40
XLOG_HASH_SPLIT_PAGE = 0x50
XLOG_HASH_SPLIT_COMPLETE = 0x60
XLOG_HASH_MOVE_PAGE_CONTENTS = 0x70
XLOG_HASH_SQUEEZE_PAGE = 0x80
XLOG_HASH_DELETE = 0x90
XLOG_HASH_SPLIT_CLEANUP = 0xA0
XLOG_HASH_UPDATE_META_PAGE = 0xB0
XLOG_HASH_VACUUM_ONE_PAGE = 0xC0
# Gin (access/ginxlog.h)
XLOG_GIN_CREATE_PTREE = 0x10
XLOG_GIN_INSERT = 0x20
XLOG_GIN_SPLIT = 0x30
XLOG_GIN_VACUUM_PAGE = 0x40
XLOG_GIN_DELETE_PAGE = 0x50
XLOG_GIN_UPDATE_META_PAGE = 0x60
XLOG_GIN_INSERT_LISTPAGE = 0x70
XLOG_GIN_DELETE_LISTPAGE = 0x80
XLOG_GIN_VACUUM_DATA_LEAF_PAGE = 0x90
# Gist (access/gistxlog.h; 0x40 and 0x50 are retired)
XLOG_GIST_PAGE_UPDATE = 0x00
XLOG_GIST_DELETE = 0x10
XLOG_GIST_PAGE_REUSE = 0x20
XLOG_GIST_PAGE_SPLIT = 0x30
XLOG_GIST_PAGE_DELETE = 0x60
XLOG_GIST_ASSIGN_LSN = 0x70
# Sequence
XLOG_SEQ_LOG = 0x00
# SPGist (access/spgxlog.h; 0x00, CREATE_INDEX, is retired)
XLOG_SPGIST_ADD_LEAF = 0x10
XLOG_SPGIST_MOVE_LEAFS = 0x20
XLOG_SPGIST_ADD_NODE = 0x30
XLOG_SPGIST_SPLIT_TUPLE = 0x40
XLOG_SPGIST_PICKSPLIT = 0x50
XLOG_SPGIST_VACUUM_LEAF = 0x60
XLOG_SPGIST_VACUUM_ROOT = 0x70
XLOG_SPGIST_VACUUM_REDIRECT = 0x80
# BRIN
XLOG_BRIN_CREATE_INDEX = 0x00
XLOG_BRIN_INSERT = 0x10
XLOG_BRIN_UPDATE = 0x20
XLOG_BRIN_SAMEPAGE_UPDATE = 0x30
XLOG_BRIN_REVMAP_EXTEND = 0x40
XLOG_BRIN_DESUMMARIZE = 0x50
XLOG_BRIN_OPMASK = 0x70
XLOG_BRIN_INIT_PAGE = 0x80
# ReplicationOrigin / LogicalMessage
XLOG_REPLORIGIN_SET = 0x00
XLOG_REPLORIGIN_DROP = 0x10
XLOG_LOGICAL_MESSAGE = 0x00

# -- rm_identify tables ---------------------------------------------------------
# Keyed by the value each identify function switches on. Most switch on
# ``info & ~XLR_INFO_MASK``; Transaction on ``info & XLOG_XACT_OPMASK``;
# CommitTs and ReplicationOrigin on the raw ``info`` (so a set low bit makes them
# unknown, as in pg_waldump); Generic answers "Generic" for anything.
_MASKED: dict[int, dict[int, str]] = {
    RM_XLOG_ID: {
        0x00: "CHECKPOINT_SHUTDOWN", 0x10: "CHECKPOINT_ONLINE", 0x20: "NOOP", 0x30: "NEXTOID",
        0x40: "SWITCH", 0x50: "BACKUP_END", 0x60: "PARAMETER_CHANGE", 0x70: "RESTORE_POINT",
        0x80: "FPW_CHANGE", 0x90: "END_OF_RECOVERY", 0xD0: "OVERWRITE_CONTRECORD",
        0xB0: "FPI", 0xA0: "FPI_FOR_HINT", 0xE0: "CHECKPOINT_REDO",
    },
    RM_SMGR_ID: {0x10: "CREATE", 0x20: "TRUNCATE"},
    RM_CLOG_ID: {0x00: "ZEROPAGE", 0x10: "TRUNCATE"},
    RM_DBASE_ID: {0x00: "CREATE_FILE_COPY", 0x10: "CREATE_WAL_LOG", 0x20: "DROP"},
    RM_TBLSPC_ID: {0x00: "CREATE", 0x10: "DROP"},
    RM_MULTIXACT_ID: {
        0x00: "ZERO_OFF_PAGE", 0x10: "ZERO_MEM_PAGE", 0x20: "CREATE_ID", 0x30: "TRUNCATE_ID",
    },
    RM_RELMAP_ID: {0x00: "UPDATE"},
    RM_STANDBY_ID: {0x00: "LOCK", 0x10: "RUNNING_XACTS", 0x20: "INVALIDATIONS"},
    RM_HEAP2_ID: {
        0x10: "PRUNE_ON_ACCESS", 0x20: "PRUNE_VACUUM_SCAN", 0x30: "PRUNE_VACUUM_CLEANUP",
        0x40: "VISIBLE", 0x50: "MULTI_INSERT", 0xD0: "MULTI_INSERT+INIT", 0x60: "LOCK_UPDATED",
        0x70: "NEW_CID", 0x00: "REWRITE",
    },
    RM_HEAP_ID: {
        0x00: "INSERT", 0x80: "INSERT+INIT", 0x10: "DELETE", 0x20: "UPDATE", 0xA0: "UPDATE+INIT",
        0x40: "HOT_UPDATE", 0xC0: "HOT_UPDATE+INIT", 0x30: "TRUNCATE", 0x50: "HEAP_CONFIRM",
        0x60: "LOCK", 0x70: "INPLACE",
    },
    RM_BTREE_ID: {
        0x00: "INSERT_LEAF", 0x10: "INSERT_UPPER", 0x20: "INSERT_META", 0x30: "SPLIT_L",
        0x40: "SPLIT_R", 0x50: "INSERT_POST", 0x60: "DEDUP", 0xC0: "VACUUM", 0x70: "DELETE",
        0xB0: "MARK_PAGE_HALFDEAD", 0x80: "UNLINK_PAGE", 0x90: "UNLINK_PAGE_META",
        0xA0: "NEWROOT", 0xD0: "REUSE_PAGE", 0xE0: "META_CLEANUP",
    },
    RM_HASH_ID: {
        0x00: "INIT_META_PAGE", 0x10: "INIT_BITMAP_PAGE", 0x20: "INSERT", 0x30: "ADD_OVFL_PAGE",
        0x40: "SPLIT_ALLOCATE_PAGE", 0x50: "SPLIT_PAGE", 0x60: "SPLIT_COMPLETE",
        0x70: "MOVE_PAGE_CONTENTS", 0x80: "SQUEEZE_PAGE", 0x90: "DELETE", 0xA0: "SPLIT_CLEANUP",
        0xB0: "UPDATE_META_PAGE", 0xC0: "VACUUM_ONE_PAGE",
    },
    RM_GIN_ID: {
        0x10: "CREATE_PTREE", 0x20: "INSERT", 0x30: "SPLIT", 0x40: "VACUUM_PAGE",
        0x90: "VACUUM_DATA_LEAF_PAGE", 0x50: "DELETE_PAGE", 0x60: "UPDATE_META_PAGE",
        0x70: "INSERT_LISTPAGE", 0x80: "DELETE_LISTPAGE",
    },
    RM_GIST_ID: {
        0x00: "PAGE_UPDATE", 0x10: "DELETE", 0x20: "PAGE_REUSE", 0x30: "PAGE_SPLIT",
        0x60: "PAGE_DELETE", 0x70: "ASSIGN_LSN",
    },
    RM_SEQ_ID: {0x00: "LOG"},
    RM_SPGIST_ID: {
        0x10: "ADD_LEAF", 0x20: "MOVE_LEAFS", 0x30: "ADD_NODE", 0x40: "SPLIT_TUPLE",
        0x50: "PICKSPLIT", 0x60: "VACUUM_LEAF", 0x70: "VACUUM_ROOT", 0x80: "VACUUM_REDIRECT",
    },
    RM_BRIN_ID: {
        0x00: "CREATE_INDEX", 0x10: "INSERT", 0x90: "INSERT+INIT", 0x20: "UPDATE",
        0xA0: "UPDATE+INIT", 0x30: "SAMEPAGE_UPDATE", 0x40: "REVMAP_EXTEND", 0x50: "DESUMMARIZE",
    },
    RM_LOGICALMSG_ID: {0x00: "MESSAGE"},
}
_XACT: dict[int, str] = {
    0x00: "COMMIT", 0x10: "PREPARE", 0x20: "ABORT", 0x30: "COMMIT_PREPARED",
    0x40: "ABORT_PREPARED", 0x50: "ASSIGNMENT", 0x60: "INVALIDATION",
}
_RAW: dict[int, dict[int, str]] = {
    RM_COMMIT_TS_ID: {0x00: "ZEROPAGE", 0x10: "TRUNCATE"},
    RM_REPLORIGIN_ID: {0x00: "SET", 0x10: "DROP"},
}


def record_types(rmid: int) -> dict[int, str]:
    """Every record type of built-in rmgr `rmid`: the value its identify
    function switches on -> the name pg_waldump prints (docs/wal-record-types.md
    lists them all)."""
    if rmid == RM_XACT_ID:
        return dict(_XACT)
    if rmid == RM_GENERIC_ID:
        return {0x00: "Generic"}
    if rmid in _MASKED:
        return dict(_MASKED[rmid])
    if rmid in _RAW:
        return dict(_RAW[rmid])
    raise ValueError(f"no record-type table for resource manager {rmid}")


def rmgr_is_valid(rmid: int) -> bool:
    """RmgrIdIsValid: a built-in id or one in the custom range 128..255."""
    return 0 <= rmid <= RM_MAX_BUILTIN_ID or RM_MIN_CUSTOM_ID <= rmid <= RM_MAX_CUSTOM_ID


def rmgr_name(rmid: int) -> str:
    """The rmgr name pg_waldump prints (``custom###`` for custom ids)."""
    if 0 <= rmid <= RM_MAX_BUILTIN_ID:
        return RMGR_NAMES[rmid]
    if RM_MIN_CUSTOM_ID <= rmid <= RM_MAX_CUSTOM_ID:
        return f"custom{rmid:03d}"
    raise ValueError(f"invalid resource manager id {rmid}")


def identify(rmid: int, xl_info: int) -> str | None:
    """The rmgr's ``rm_identify(xl_info)``: the type name, or None if unknown."""
    if rmid == RM_XACT_ID:
        return _XACT.get(xl_info & XLOG_XACT_OPMASK)
    if rmid == RM_GENERIC_ID:
        return "Generic"
    table = _MASKED.get(rmid)
    if table is not None:
        return table.get(xl_info & ~XLR_INFO_MASK & 0xFF)
    raw = _RAW.get(rmid)
    if raw is not None:
        return raw.get(xl_info)
    return None  # custom rmgrs: pg_waldump cannot name them either


def record_type_name(rmid: int, xl_info: int) -> str:
    """What pg_waldump prints after ``desc:`` for a record (``UNKNOWN (x)`` fallback)."""
    name = identify(rmid, xl_info)
    if name is None:
        return f"UNKNOWN ({xl_info & ~XLR_INFO_MASK & 0xFF:x})"
    return name


def stats_type_name(rmid: int, recid: int) -> str:
    """The name pg_waldump --stats=record uses for ``recid`` (xl_info >> 4, with
    Transaction's HAS_INFO bit already dropped): ``rm_identify(recid << 4)``."""
    name = identify(rmid, recid << 4)
    return name if name is not None else f"UNKNOWN ({recid << 4:x})"


def need(data: bytes, size: int, what: str) -> None:
    """Raises WalDecodeError unless `data` (a record's main or block data) holds
    at least `size` bytes for the struct `what`."""
    if len(data) < size:
        raise WalDecodeError(f"{what}: {len(data)} bytes, need at least {size}")
