"""PostgreSQL 18 constants that several layers must agree on, each defined once.

Fed by: nothing (values from the 18.6 headers: pg_config.h, relpath.h,
pg_tablespace_d.h, transam.h, multixact.h). Feeds: every module that reads or
writes PostgreSQL bytes. Owns: nothing but these names, spelled as PostgreSQL
spells them so they can be grepped against its source.
"""

from __future__ import annotations

from enum import IntEnum

BLCKSZ = 8192  # pg_config.h: relation and SLRU page size
XLOG_BLCKSZ = 8192  # pg_config.h: WAL page size

GLOBALTABLESPACE_OID = 1664  # pg_tablespace_d.h: pg_global
DEFAULTTABLESPACE_OID = 1663  # pg_tablespace_d.h: pg_default


class ForkNumber(IntEnum):
    """relpath.h ForkNumber (also the `fork` field of store keys)."""

    MAIN = 0
    FSM = 1
    VM = 2
    INIT = 3


FORK_NAMES = {0: "main", 1: "fsm", 2: "vm", 3: "init"}

FIRST_NORMAL_XID = 3  # transam.h FirstNormalTransactionId
FIRST_MULTIXACT_ID = 1  # multixact.h FirstMultiXactId

DEFAULT_WAL_SEGMENT_SIZE = 16 * 1024 * 1024  # pg_config_manual.h

# xlog.h WalLevel (written in checkpoint records and pg_control)
WAL_LEVEL_MINIMAL = 0
WAL_LEVEL_REPLICA = 1
WAL_LEVEL_LOGICAL = 2
WAL_LEVEL_NAMES = {0: "minimal", 1: "replica", 2: "logical"}
