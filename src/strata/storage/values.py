"""Values the store keeps under a (Key, Lsn): opaque bytes with a kind.

Fed by: ingest (through pagestore.put). Feeds: memtable, layer files, the
read path. Owns: the on-disk value-kind enum (written to disk: never renumber,
retired values stay reserved) and the entry encoding shared by every layer.

Storage never looks inside `data`; it only needs to know whether a value
ends a reconstruction chain: a `PageImage`, a `WalRecord` with `will_init`, or
a `Tombstone` ("this key was dropped at this LSN").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from strata.key import KEY_SIZE


class ValueKind(IntEnum):
    """Written to disk: never renumber."""

    PAGE_IMAGE = 0
    WAL_RECORD = 1
    WAL_RECORD_INIT = 2  # a WAL record that initialises the page (will_init)
    TOMBSTONE = 3


@dataclass(frozen=True, slots=True)
class PageImage:
    """A whole value: an 8 KB page, or any small value (e.g. a relation size)."""

    data: bytes


class WalRecord(NamedTuple):
    """A delta: applied on top of the older value by the redo callback.

    `will_init`: the record builds the page from nothing, so older values are
    not needed (the chain stops here). A NamedTuple, not a frozen dataclass:
    reads build one per delta they replay, and a tuple is built 2.5x faster
    (a frozen dataclass's __init__ was 9 % of a lazy scan's file system).

    `lsn`: the LSN the delta is stored at, as a read hands it to the redo
    callback (a record delta leaves its end LSN to it: keyspace value format
    5); 0 in a put and in the values reads return (the entry carries the LSN)."""

    data: bytes
    will_init: bool = False
    lsn: int = 0


@dataclass(frozen=True, slots=True)
class Tombstone:
    """The key stopped existing at this LSN (relation dropped, truncated away)."""


Value = PageImage | WalRecord | Tombstone

TOMBSTONE = Tombstone()


class Entry(NamedTuple):
    """One stored version. `key` is `Key.to_bytes()` (byte order == key order)."""

    key: bytes
    lsn: int
    value: Value


def ends_chain(value: Value) -> bool:
    """True if no older version is needed to reconstruct at this value."""
    return not isinstance(value, WalRecord) or value.will_init


def make_value(kind: int, data: bytes) -> Value:
    """Raises: ValueError for an unknown kind (callers turn it into CorruptionError)."""
    if kind == ValueKind.PAGE_IMAGE:
        return PageImage(data)
    if kind == ValueKind.WAL_RECORD:
        return WalRecord(data, False)
    if kind == ValueKind.WAL_RECORD_INIT:
        return WalRecord(data, True)
    if kind == ValueKind.TOMBSTONE:
        if data:
            raise ValueError("tombstone with a payload")
        return TOMBSTONE
    raise ValueError(f"unknown value kind {kind}")


# the row encoding of an entry in v1/v2 blocks (blocks.py):
# key 18s | lsn u64 | kind u8 | data length u32, then data
ENTRY_HEADER = struct.Struct(">18sQBI")
assert ENTRY_HEADER.size == KEY_SIZE + 13

