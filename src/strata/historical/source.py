"""What a data directory at LSN X is made of: the `ClusterView` protocol.

A `ClusterView` is a read-only view of a cluster's files as of one LSN: the
input of `materialize` and of the lazy file system. The page store offers one
(`store_view.StoreView`, over `pagestore.scan(key_range, lsn)`); this module
offers `DataDirSource`, which reads a cleanly stopped PostgreSQL 18 data
directory (the source an import copies into the store, and the tests').
Fed by the file system (DataDirSource); feeds `materialize`, `bootstrap`.
Owns no file.

"Source" elsewhere: `wal.source.WalSource` (and its `StreamSource`,
`FileSource`) and `wal.segments.SegmentWalSource` are sources of WAL bytes or
records; ``strata up --source DSN`` names the primary to attach to (the WAL
comes from it). A `DataDirSource` is the source of an import, never of WAL.

The store's view maps the key space (`strata.key`) directly: `relations`
from REL_SIZE keys, `pages` from one `scan(KeyRange.relation(spc, db, rel, fork),
lsn)` per fork (streaming, sorted; never one lookup per page), `slru_segments`
from SLRU_PAGE keys through `slru_segments_from_pages`, `relmap` from RELMAP keys,
`databases` from DB_DIR keys, `control` from the cluster values at X
(a `keyspace.cluster.ClusterState`), `control_template` from the pg_control
kept at import.

Identifiers follow the key space (`strata.key`): tablespace OID `spc`
(1664 = global, 1663 = default), database OID `db` (0 for global), relfilenumber
`rel`, fork number (0 main, 1 fsm, 2 vm, 3 init), block number.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

from strata.errors import CorruptionError
from strata.historical.controlfile import DB_SHUTDOWNED, parse_control
from strata.key import SlruKind
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pg.constants import BLCKSZ, DEFAULTTABLESPACE_OID, GLOBALTABLESPACE_OID, ForkNumber

SLRU_DIRS: dict[SlruKind, str] = {
    SlruKind.XACT: "pg_xact",
    SlruKind.MULTIXACT_OFFSETS: "pg_multixact/offsets",
    SlruKind.MULTIXACT_MEMBERS: "pg_multixact/members",
}
FORK_SUFFIX: dict[int, str] = {0: "", 1: "_fsm", 2: "_vm", 3: "_init"}
_REL_FILE = re.compile(r"^(\d+)(?:_(fsm|vm|init))?(?:\.(\d+))?$")
_FORK_OF = {None: ForkNumber.MAIN, "fsm": ForkNumber.FSM, "vm": ForkNumber.VM,
            "init": ForkNumber.INIT}


class RelFile(NamedTuple):
    """One fork of one relation and its length in blocks."""

    spc: int
    db: int
    rel: int
    fork: int
    nblocks: int


class ClusterView(Protocol):
    """Everything a data directory at `lsn` holds that PostgreSQL needs to serve reads.

    Visibility-map and free-space-map forks may be offered; `materialize` leaves
    them out.
    """

    @property
    def lsn(self) -> Lsn:
        """The state described: every WAL record ending at or before it is applied."""
        ...

    def databases(self) -> list[tuple[int, int]]:
        """(spc, db) of every database directory, including (1664, 0) for global/."""
        ...

    def relations(self) -> Iterator[RelFile]:
        """Every relation fork with its true length in blocks (never too short)."""
        ...

    def pages(self, spc: int, db: int, rel: int, fork: int) -> Iterator[tuple[int, bytes]]:
        """(blkno, 8 KB page) in ascending blkno, streaming; absent blocks are zero pages."""
        ...

    def slru_segments(self, kind: SlruKind) -> Iterator[tuple[str, bytes]]:
        """(segment file name, its bytes) for pg_xact or pg_multixact offsets/members."""
        ...

    def relmap(self, spc: int, db: int) -> bytes | None:
        """pg_filenode.map of that database directory (global: spc 1664, db 0), or None."""
        ...

    def control(self) -> ClusterState:
        """The cluster's control values at `lsn` (what its pg_control is written from)."""
        ...

    def control_template(self) -> bytes:
        """A valid pg_control of this cluster (system identifier, checksum version,
        catalog version, segment sizes); `pg_resetwal` overwrites the values at X."""
        ...


SLRU_PAGES_PER_SEGMENT = 32


def slru_segment_name(segno: int) -> str:
    """File name of SLRU segment `segno` for pg_xact and pg_multixact (short names: %04X)."""
    return f"{segno:04X}"


def slru_segments_from_pages(pages: Iterator[tuple[int, bytes]]) -> Iterator[tuple[str, bytes]]:
    """Group (pageno, 8 KB page) in ascending pageno into segment files.

    For a store-backed source (SLRU_PAGE keys). A segment holds 32 pages; it ends
    at its last page present, and pages missing before that are zero pages.
    """
    segno = -1
    buf = bytearray()
    for pageno, page in pages:
        if len(page) != BLCKSZ:
            raise CorruptionError(f"SLRU page {pageno} is {len(page)} bytes, not {BLCKSZ}")
        s, off = divmod(pageno, SLRU_PAGES_PER_SEGMENT)
        if s != segno:
            if segno >= 0:
                yield slru_segment_name(segno), bytes(buf)
            segno, buf = s, bytearray()
        elif off * BLCKSZ < len(buf):
            raise CorruptionError(f"SLRU page {pageno} out of order")
        buf += bytes(off * BLCKSZ - len(buf))
        buf += page
    if segno >= 0:
        yield slru_segment_name(segno), bytes(buf)


class DataDirSource:
    """A `ClusterView` over a cleanly stopped PostgreSQL 18 data directory.

    Requires: the server is stopped and pg_control says "shut down" (a copy of a
    running cluster is not a consistent state). The lsn is the shutdown
    checkpoint's location.
    Raises: CorruptionError when pg_control is unreadable or not "shut down".
    """

    def __init__(self, datadir: Path) -> None:
        self.datadir = Path(datadir)
        self._template = (self.datadir / "global" / "pg_control").read_bytes()
        self.controlfile = parse_control(self._template)
        if self.controlfile.state != DB_SHUTDOWNED:
            raise CorruptionError(
                f"{self.datadir} was not shut down cleanly (pg_control state "
                f"{self.controlfile.state}); stop the server with pg_ctl stop first")
        self._segblocks = self.controlfile.relseg_size
        self._listing: dict[tuple[int, int], dict[tuple[int, int], list[tuple[int, Path, int]]]] = {}

    @property
    def lsn(self) -> Lsn:
        return self.controlfile.checkpoint

    def _db_dir(self, spc: int, db: int) -> Path:
        if spc == GLOBALTABLESPACE_OID:
            return self.datadir / "global"
        if spc == DEFAULTTABLESPACE_OID:
            return self.datadir / "base" / str(db)
        return (self.datadir / "pg_tblspc" / str(spc) / self.controlfile.catalog_version_dir
                / str(db))

    def databases(self) -> list[tuple[int, int]]:
        out = [(GLOBALTABLESPACE_OID, 0)]
        out += sorted((DEFAULTTABLESPACE_OID, int(p.name)) for p in (self.datadir / "base").iterdir()
                      if p.name.isdigit() and p.is_dir())
        tbl = self.datadir / "pg_tblspc"
        for link in sorted(tbl.iterdir() if tbl.exists() else [], key=lambda p: int(p.name)):
            if not link.name.isdigit():
                continue
            vdir = link / self.controlfile.catalog_version_dir
            if vdir.is_dir():
                out += sorted((int(link.name), int(p.name)) for p in vdir.iterdir()
                              if p.name.isdigit() and p.is_dir())
        return out

    def _segments(self, spc: int, db: int) -> dict[tuple[int, int], list[tuple[int, Path, int]]]:
        """(rel, fork) -> [(segno, path, size)] sorted by segno; one directory scan, cached."""
        cached = self._listing.get((spc, db))
        if cached is not None:
            return cached
        out: dict[tuple[int, int], list[tuple[int, Path, int]]] = {}
        with os.scandir(self._db_dir(spc, db)) as it:
            for entry in it:
                m = _REL_FILE.match(entry.name)
                if m is None or not entry.is_file(follow_symlinks=False):
                    continue  # pg_filenode.map, PG_VERSION, pg_internal.init, t<n>_ temp files
                size = entry.stat().st_size
                if size % BLCKSZ:
                    raise CorruptionError(
                        f"{entry.path} is {size} bytes, not a multiple of {BLCKSZ}")
                key = (int(m.group(1)), int(_FORK_OF[m.group(2)]))
                out.setdefault(key, []).append((int(m.group(3) or 0), Path(entry.path), size))
        for segs in out.values():
            segs.sort()
        self._listing[(spc, db)] = out
        return out

    def relations(self) -> Iterator[RelFile]:
        for spc, db in self.databases():
            for (rel, fork), segs in sorted(self._segments(spc, db).items()):
                segno, _path, size = segs[-1]
                yield RelFile(spc, db, rel, fork, segno * self._segblocks + size // BLCKSZ)

    def pages(self, spc: int, db: int, rel: int, fork: int) -> Iterator[tuple[int, bytes]]:
        for segno, seg, _size in self._segments(spc, db).get((rel, fork), []):
            first = segno * self._segblocks
            with seg.open("rb") as f:
                blk = first
                while True:
                    chunk = f.read(BLCKSZ * 64)
                    if not chunk:
                        break
                    for off in range(0, len(chunk), BLCKSZ):
                        yield blk, chunk[off:off + BLCKSZ]
                        blk += 1

    def slru_segments(self, kind: SlruKind) -> Iterator[tuple[str, bytes]]:
        d = self.datadir / SLRU_DIRS[SlruKind(kind)]
        for p in sorted(d.iterdir(), key=lambda p: p.name):
            if re.fullmatch(r"[0-9A-F]{4,15}", p.name):
                yield p.name, p.read_bytes()

    def relmap(self, spc: int, db: int) -> bytes | None:
        p = self._db_dir(spc, db) / "pg_filenode.map"
        return p.read_bytes() if p.exists() else None

    def control(self) -> ClusterState:
        """The values of this directory's pg_control, at its checkpoint."""
        return self.controlfile.cluster_state()

    def control_template(self) -> bytes:
        return self._template
