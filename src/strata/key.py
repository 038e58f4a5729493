"""Keys: the one type naming a versioned thing in the store.

Bottom layer: imports nothing but `strata.errors`. Storage treats keys as
opaque fixed-width byte strings whose byte order equals tuple order; ingest,
reconstruct and historical give the fields their meaning, per the table below.

A key is 18 bytes, big-endian::

    kind u8 | spc u32 | db u32 | rel u32 | fork u8 | blk u32

Key-space allocation (the `kind` byte is written to disk: never renumber,
retired values stay reserved):

====  ==================  ===========================================  =============================
kind  name                fields used                                  value stored
====  ==================  ===========================================  =============================
0x00  REL_BLOCK           spc, db, rel (relfilenumber), fork, blk       8 KB page image / WAL record
0x01  REL_SIZE            spc, db, rel, fork (blk = 0)                  size record
0x02  SLRU_PAGE           rel = SlruKind, blk = page number             8 KB SLRU page image / delta
0x03  RELMAP              spc, db (global map: spc=1664, db=0)          524-byte pg_filenode.map
0x04  DB_DIR              spc, db                                       database directory record
0x05  CLUSTER             blk = ClusterField (0 = the control values)   control values record
0x06  AUX                 rel = AuxKind, blk = index                    the imported pg_control
0xFF  (reserved: above every real key, used as an exclusive range end)
====  ==================  ===========================================  =============================

Forks keep PostgreSQL's numbers (`strata.pg.constants.ForkNumber`). Value
encodings per kind: `strata.keyspace` (keyspace/FORMAT.md).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, Self

KEY_SIZE = 18
_KEY = struct.Struct(">BIIIBI")


class KeyKind(IntEnum):
    """Written to disk: never renumber."""

    REL_BLOCK = 0x00
    REL_SIZE = 0x01
    SLRU_PAGE = 0x02
    RELMAP = 0x03
    DB_DIR = 0x04
    CLUSTER = 0x05
    AUX = 0x06


class SlruKind(IntEnum):
    """`rel` field of SLRU_PAGE keys. Written to disk: never renumber."""

    XACT = 0
    MULTIXACT_OFFSETS = 1
    MULTIXACT_MEMBERS = 2


class Key(NamedTuple):
    """An 18-byte key; field order is sort order. A NamedTuple, not a frozen
    dataclass: a scan builds one per page, and a tuple is built 4x faster
    (0.3 against 1.3 us). Immutable, hashable, ordered by its fields."""

    kind: int
    spc: int = 0
    db: int = 0
    rel: int = 0
    fork: int = 0
    blk: int = 0

    def to_bytes(self) -> bytes:
        return _KEY.pack(self.kind, self.spc, self.db, self.rel, self.fork, self.blk)

    @classmethod
    def from_bytes(cls, data: bytes) -> Key:
        if len(data) != KEY_SIZE:
            raise ValueError(f"a key is {KEY_SIZE} bytes, got {len(data)}")
        return cls._make(_KEY.unpack(data))

    @classmethod
    def unpack_from(cls, buf: bytes | memoryview, offset: int = 0) -> Key:
        """The key in bytes [offset, offset + 18) of `buf` (a scan's per-page form:
        no slice). Raises: struct.error when `buf` is too short."""
        return cls._make(_KEY.unpack_from(buf, offset))

    def next(self) -> Key:
        """The smallest key greater than this one (for half-open range ends)."""
        return Key.from_bytes((int.from_bytes(self.to_bytes(), "big") + 1).to_bytes(KEY_SIZE, "big"))

    # -- constructors with meaning -------------------------------------------------
    @classmethod
    def rel_block(cls, spc: int, db: int, rel: int, fork: int, blk: int) -> Self:
        return cls(KeyKind.REL_BLOCK, spc, db, rel, fork, blk)

    @classmethod
    def rel_size(cls, spc: int, db: int, rel: int, fork: int) -> Self:
        return cls(KeyKind.REL_SIZE, spc, db, rel, fork, 0)

    @classmethod
    def slru_page(cls, slru: int, pageno: int) -> Self:
        return cls(KeyKind.SLRU_PAGE, 0, 0, slru, 0, pageno)

    @classmethod
    def relmap(cls, spc: int, db: int) -> Self:
        return cls(KeyKind.RELMAP, spc, db, 0, 0, 0)

    @classmethod
    def db_dir(cls, spc: int, db: int) -> Self:
        return cls(KeyKind.DB_DIR, spc, db, 0, 0, 0)

    @classmethod
    def cluster(cls, field: int = 0) -> Self:
        return cls(KeyKind.CLUSTER, 0, 0, 0, 0, field)

    def __str__(self) -> str:
        return self.to_bytes().hex().upper()


MIN_KEY = Key(0, 0, 0, 0, 0, 0)
MAX_KEY = Key(0xFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFF, 0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class KeyRange:
    """Half-open key range ``[start, end)``."""

    start: Key
    end: Key

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"negative key range [{self.start}, {self.end})")

    def __contains__(self, key: object) -> bool:
        return isinstance(key, Key) and self.start <= key < self.end

    @classmethod
    def relation(cls, spc: int, db: int, rel: int, fork: int) -> KeyRange:
        """Every block of one fork of one relation."""
        return cls(Key.rel_block(spc, db, rel, fork, 0), Key.rel_block(spc, db, rel, fork + 1, 0))

    @classmethod
    def kind(cls, kind: int) -> KeyRange:
        return cls(Key(kind), Key(kind + 1))

    @classmethod
    def everything(cls) -> KeyRange:
        return cls(MIN_KEY, MAX_KEY)
