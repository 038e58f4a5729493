"""The DDL log: what each catalog-changing transaction did, durable beside the
time map.

What it is: `DdlChange` (one statement-level change: "CREATE TABLE
public.demo", "ALTER TABLE public.demo ADD COLUMN email", "DROP DATABASE
olddb", with its object, names and owner role), `DdlEntry` (one committed
transaction: commit LSNs, time, xid, database and its changes), and
`DdlLog`, the append-only file ``<home>/timemap/ddl.dat`` (format in
FORMAT.md beside this module) with the time map's durability rules.

Fed by: ingest's catalog tracker (`strata.ingest.catalog`), which decodes
the catalog rows a transaction wrote and appends one entry at its commit.
Read by: `strata timeline --ddl` (readonly, beside the running writer).
Owned by: `TimeMap`, which opens, syncs and closes it with ``timemap.dat``
(so a durable LSN covers both files). Imports only the bottom layer.

Invariants (FORMAT.md):
  1. Entries ascend strictly by start_lsn; an entry at or below the last one
     is a re-ingested duplicate and is ignored (`append`).
  2. `sync()` runs with the time map's, before the store publishes a durable
     LSN, so every DDL entry at or below durable_lsn is in the file.
  3. Open cuts a torn or corrupt tail and entries whose end_lsn is above the
     durable LSN.
  4. `start_lsn` in the header: transactions committed at or after it were
     decoded; catalog changes before it (a home created by an older strata)
     are only known by the time map's catalog-change flag.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c

from strata import durable
from strata.errors import CorruptionError
from strata.lsn import MAX_LSN, Lsn

MAGIC = b"STRTDDL\x00"
VERSION = 1
_HEADER = struct.Struct("<8sIIQ")  # magic, version, reserved, start_lsn
_ENTRY_HEAD = struct.Struct("<IIQQ")  # payload length, crc, start_lsn, end_lsn
MAX_PAYLOAD = 16 << 20  # a sanity bound: anything larger is a corrupt length


@dataclass(frozen=True, slots=True)
class DdlChange:
    """One change, as a statement a user recognises.

    `statement`: rendered at decode time, e.g. ``ALTER TABLE public.demo RENAME
    TO demo2``. `action`: its leading verb (CREATE, DROP, ALTER, TRUNCATE,
    GRANT/REVOKE, CREATE OR REPLACE). `object_type`: TABLE, INDEX, SEQUENCE, VIEW,
    MATERIALIZED VIEW, FOREIGN TABLE, TYPE, SCHEMA, DATABASE, ROLE, FUNCTION,
    PROCEDURE, AGGREGATE or EXTENSION. `schema`/`name`: the object (schema ""
    for schemas, databases and roles). `relations`: qualified names of the
    relations the change concerns (the object itself, a renamed relation's
    new name, an index's table), for ``--table``. `role`: the owner role in
    the catalog row ("" when the row has none); WAL does not record the
    session user. `temp`: a temporary object (hidden unless asked).
    """

    statement: str
    action: str
    object_type: str
    schema: str
    name: str
    relations: tuple[str, ...] = ()
    role: str = ""
    temp: bool = False

    def to_json(self) -> dict[str, object]:
        return {"statement": self.statement, "action": self.action, "object": self.object_type,
                "schema": self.schema, "name": self.name, "relations": list(self.relations),
                "role": self.role, "temp": self.temp}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> DdlChange:
        rels: list[object] = list(d.get("relations") or [])  # type: ignore[call-overload]
        return cls(str(d["statement"]), str(d["action"]), str(d["object"]), str(d["schema"]),
                   str(d["name"]), tuple(str(r) for r in rels), str(d.get("role", "")),
                   bool(d.get("temp", False)))

    def concerns_relation(self, name: str) -> bool:
        """`name` (``rel`` or ``schema.rel``) is one of `relations`."""
        return any(name == q or ("." not in name and q.rsplit(".", 1)[-1] == name)
                   for q in self.relations)


@dataclass(frozen=True, slots=True)
class DdlEntry:
    """The decoded catalog changes of one committed transaction.

    `note`: why the list may be incomplete ("" when it is not), e.g. the
    transaction began before ingest resumed, or a catalog row could not be
    decoded.
    """

    start_lsn: Lsn  # the commit record's start
    end_lsn: Lsn  # its end
    timestamp: int  # PostgreSQL TimestampTz of the commit
    xid: int
    db: int  # database oid of the session (0 if the record has none)
    database: str  # its name at commit time
    changes: tuple[DdlChange, ...] = field(default=())
    note: str = ""

    def payload(self) -> bytes:
        return json.dumps({"ts": self.timestamp, "xid": self.xid, "db": self.db,
                           "database": self.database, "note": self.note,
                           "changes": [c.to_json() for c in self.changes]},
                          separators=(",", ":"), ensure_ascii=False).encode()

    def encode(self) -> bytes:
        body = self.payload()
        tail = struct.pack("<QQ", self.start_lsn, self.end_lsn) + body
        return struct.pack("<II", len(body), google_crc32c.value(tail)) + tail

    @classmethod
    def decode(cls, start: int, end: int, body: bytes) -> DdlEntry:
        d = json.loads(body)
        return cls(Lsn(start), Lsn(end), int(d["ts"]), int(d["xid"]), int(d["db"]),
                   str(d["database"]), tuple(DdlChange.from_json(c) for c in d["changes"]),
                   str(d.get("note", "")))


class DdlLog:
    """In-memory list over the durable append-only file. Thread-safe."""

    def __init__(self, path: Path | None, start_lsn: int = 0) -> None:
        self._path = path
        self.start_lsn = Lsn(start_lsn)
        self._lock = threading.Lock()
        self._entries: list[DdlEntry] = []
        self._file: durable.AppendFile | None = None

    @classmethod
    def open(cls, path: Path, *, durable_lsn: Lsn | None = None, readonly: bool = False
             ) -> DdlLog:
        """Load (or, unless `readonly`, create) the log at `path` (Invariant 3).

        A new file records `durable_lsn` (0 without one) as the point from
        which transactions are decoded (Invariant 4).
        Raises: CorruptionError on a wrong magic or an unknown version.
        """
        log = cls(path)
        data = path.read_bytes() if path.exists() else b""
        good = 0
        if len(data) >= _HEADER.size:
            magic, version, _, start = _HEADER.unpack_from(data, 0)
            if magic != MAGIC:
                raise CorruptionError(f"{path}: bad magic at offset 0 (not a DDL log)")
            if version != VERSION:
                raise CorruptionError(f"{path}: unsupported DDL log version {version}")
            log.start_lsn = Lsn(start)
            good = log._load(data, durable_lsn)
        elif readonly:
            # no log (a home from before DDL decoding, or its header is being
            # written): nothing is decoded
            log.start_lsn = MAX_LSN
            return log
        else:
            log.start_lsn = Lsn(durable_lsn or 0)
        if readonly:
            return log
        log._file = durable.AppendFile.open(path, _HEADER.pack(MAGIC, VERSION, 0, log.start_lsn),
                                            good)
        return log

    def _load(self, data: bytes, durable_lsn: Lsn | None) -> int:
        """Read entries; returns the length of the good prefix."""
        off = _HEADER.size
        while off + _ENTRY_HEAD.size <= len(data):
            length, crc, start, end = _ENTRY_HEAD.unpack_from(data, off)
            body_at = off + _ENTRY_HEAD.size
            if length > MAX_PAYLOAD or body_at + length > len(data):
                break  # torn tail
            if google_crc32c.value(data[off + 8:body_at + length]) != crc:
                break
            if durable_lsn is not None and end > durable_lsn:
                break
            self._add(DdlEntry.decode(start, end, data[body_at:body_at + length]))
            off = body_at + length
        return off

    def _add(self, e: DdlEntry) -> None:
        if self._entries and e.start_lsn <= self._entries[-1].start_lsn:
            raise ValueError(f"DDL log entries must ascend: {e.start_lsn} after "
                             f"{self._entries[-1].start_lsn}")
        self._entries.append(e)

    def append(self, e: DdlEntry) -> None:
        """Add an entry (Invariant 1): duplicates at or below the last are ignored."""
        with self._lock:
            if self._entries and e.start_lsn <= self._entries[-1].start_lsn:
                return
            self._add(e)
            if self._file is not None:
                self._file.append(e.encode())

    def sync(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.sync()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> Iterator[DdlEntry]:
        with self._lock:
            snapshot = list(self._entries)
        yield from snapshot

    def by_start_lsn(self) -> dict[Lsn, DdlEntry]:
        with self._lock:
            return {e.start_lsn: e for e in self._entries}
