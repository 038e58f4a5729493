"""PostgreSQL 18 resource-manager ids (src/include/access/rmgrlist.h order).

Written in WAL: never renumber. Fed by: nothing. Feeds: the WAL reader,
`wal.rmgr` (which adds names and record types), ingest and redo dispatch.
"""

from __future__ import annotations

RM_XLOG_ID = 0
RM_XACT_ID = 1
RM_SMGR_ID = 2
RM_CLOG_ID = 3
RM_DBASE_ID = 4
RM_TBLSPC_ID = 5
RM_MULTIXACT_ID = 6
RM_RELMAP_ID = 7
RM_STANDBY_ID = 8
RM_HEAP2_ID = 9
RM_HEAP_ID = 10
RM_BTREE_ID = 11
RM_HASH_ID = 12
RM_GIN_ID = 13
RM_GIST_ID = 14
RM_SEQ_ID = 15
RM_SPGIST_ID = 16
RM_BRIN_ID = 17
RM_COMMIT_TS_ID = 18
RM_REPLORIGIN_ID = 19
RM_GENERIC_ID = 20
RM_LOGICALMSG_ID = 21

RM_MAX_BUILTIN_ID = RM_LOGICALMSG_ID
RM_MIN_CUSTOM_ID = 128
RM_MAX_CUSTOM_ID = 255
RM_MAX_ID = 255
