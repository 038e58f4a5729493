"""Write a PostgreSQL 18 data directory at LSN X from a `ClusterView`.

Fed by a `ClusterView` (the page store's, or `DataDirSource` for imports and
tests). Feeds `instance` (which runs pg_resetwal and starts the server on the
directory). Owns the directory it writes, until `instance` takes it over.

What is written (wal-census.md section 5 says why each piece is needed):
  * PG_VERSION at the top and in every database directory; our own
    postgresql.conf / pg_hba.conf / pg_ident.conf (see `server_settings`);
  * global/ and base/<db>/ relation files: the forks `served` shows (main
    and visibility map; FSM left out), each at least its true length: pages the source does not
    yield and the tail up to `nblocks` are holes, which read as zero pages
    (a too-short file gives silently wrong seq scans, extra zero pages are
    harmless);
  * tablespaces: files under ``pg_strata_tblspc/<oid>/PG_18_<catversion>/<db>``
    inside the data directory, with a relative symlink ``pg_tblspc/<oid>`` to it;
  * pg_xact and pg_multixact/{offsets,members} segments, pg_filenode.map files;
  * the empty directories PostgreSQL expects (`SKELETON`);
  * global/pg_control: the source's template with `data_checksum_version`
    set by the checksum policy (pg_resetwal later writes the values at X).

Checksums. Policy "compute" (default): every non-new page gets a valid
pd_checksum (numpy, a few microseconds a page, see `checksum`) and pg_control
says checksums are on, whatever the source cluster had. That keeps the standby
from ever writing hint bits into its files (MarkBufferDirtyHint returns early in
recovery when checksums are on), so relation files stay byte-identical while
it serves queries. Policy "disable" writes pages as they come and sets
checksum version 0 in pg_control (exactly what offline ``pg_checksums
--disable`` does, without running it): cheapest, but the standby may then
write hint bits to its private copy. bench/results/historical.md measures both.

Everything is owned by the server user (`strata.runtime.osuser`) at the end.
Validate first, act second: the template and target are checked before any
file is written; a failure midway removes the partial directory.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from strata.errors import CorruptionError, InstanceError
from strata.historical.controlfile import parse_control, with_checksum_version
from strata.historical.source import FORK_SUFFIX, SLRU_DIRS, ClusterView, RelFile
from strata.key import SlruKind
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pg.constants import BLCKSZ, DEFAULTTABLESPACE_OID, GLOBALTABLESPACE_OID, ForkNumber
from strata.reconstruct.redo.page_ops import set_checksums
from strata.runtime.osuser import give_to_server_user

PG_VERSION_TEXT = "18\n"
TABLESPACE_ROOT = "pg_strata_tblspc"
SKELETON: tuple[str, ...] = (
    "global", "base", "pg_tblspc", "pg_xact", "pg_multixact/offsets", "pg_multixact/members",
    "pg_logical/snapshots", "pg_logical/mappings", "pg_wal/archive_status", "pg_wal/summaries",
    "pg_subtrans", "pg_commit_ts", "pg_stat", "pg_stat_tmp", "pg_replslot", "pg_serial",
    "pg_snapshots", "pg_notify", "pg_twophase", "pg_dynshmem",
)
WRITTEN_FORKS = frozenset({ForkNumber.MAIN, ForkNumber.VM, ForkNumber.INIT})
BATCH_PAGES = 128  # checksum and write this many pages at once (numpy batch; cache-friendly)
_ZERO_PAGE = bytes(BLCKSZ)

# Our configuration for a throwaway, read-only copy. Why each value:
#  * listen only on 127.0.0.1 (port and a private 0700 socket directory come from the
#    command line), trust auth in pg_hba.conf: only the proxy reaches it;
#  * hot_standby on: the instance serves reads as a standby paused at X;
#  * wal_level replica: a hot standby refuses to start if the last primary run
#    (our one normal start) had wal_level minimal;
#  * autovacuum off: the one normal start must not change relation files;
#  * fsync off, synchronous_commit off: the copy is rebuilt from the store, never
#    recovered, so durability buys nothing and fsync only slows the normal
#    start/stop and the shutdown checkpoint;
#  * modest max_connections / shared_buffers: many instances share one machine;
#  * io_method sync: no I/O worker processes per instance; jit off: faster first query;
#  * transaction_buffers at its maximum (1024 pages, 8 MB: the commit status of 32M
#    transactions): a standby with data checksums sets hint bits only in its buffers,
#    never dirtying the page (no WAL in recovery), so every scan checks every tuple's
#    transaction in pg_xact again; with the default (16 pages at 32MB shared_buffers)
#    a history of more than 0.5M transactions thrashed pg_xact's buffers and a warm
#    count(*) of pgbench_accounts after 5 minutes of TPC-B took 7-14 s instead of 0.1 s
#    (each miss a read through the lazy file system).
SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_permissions": "0700",
    "max_connections": "20",
    "superuser_reserved_connections": "3",
    "shared_buffers": "32MB",
    "hot_standby": "on",
    "wal_level": "replica",
    "max_wal_senders": "0",
    "max_replication_slots": "0",
    "max_prepared_transactions": "0",
    "autovacuum": "off",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "on",
    "io_method": "sync",
    "transaction_buffers": "1024",
    "jit": "off",
    "logging_collector": "off",
    "log_line_prefix": "'%m [%p] '",
    "track_commit_timestamp": "off",
    "archive_mode": "off",
    "max_wal_size": "64MB",
    "min_wal_size": "32MB",
    "datestyle": "'iso, mdy'",
    "timezone": "'UTC'",
    "lc_messages": "'C'",
}
HBA_CONF = (
    "# pgStrata historical instance: reachable only from this machine\n"
    "local   all   all                 trust\n"
    "host    all   all   127.0.0.1/32  trust\n"
)

ProgressFn = Callable[[int, int], None]
"""progress(pages_done, pages_total), called after every batch (`strata.progress.Progress.update`
is one: a bar or lines for a caller that shows them)."""


class ChecksumPolicy(StrEnum):
    COMPUTE = "compute"
    DISABLE = "disable"


@dataclass(frozen=True, slots=True)
class MaterializedDir:
    """A data directory written at `lsn`, ready for `instance.prepare`."""

    datadir: Path
    lsn: Lsn
    control: ClusterState
    timeline: int
    wal_segment_size: int
    checksums: bool
    relations: int
    pages: int
    bytes_written: int
    seconds: float

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.seconds if self.seconds > 0 else 0.0


def server_settings(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**SERVER_SETTINGS, **(overrides or {})}


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


class _ForkWriter:
    """Writes one relation fork's pages into its 1 GB segment files."""

    def __init__(self, base: Path, segblocks: int, checksums: bool) -> None:
        self.base = base
        self.segblocks = segblocks
        self.checksums = checksums
        self.fds: dict[int, int] = {}
        self.buf = bytearray()
        self.blknos: list[int] = []
        self.last = -1
        self.bytes_written = 0

    def _fd(self, segno: int) -> int:
        fd = self.fds.get(segno)
        if fd is None:
            name = self.base.name + (f".{segno}" if segno else "")
            fd = os.open(self.base.with_name(name), os.O_RDWR | os.O_CREAT, 0o600)
            self.fds[segno] = fd
        return fd

    def add(self, blkno: int, page: bytes) -> None:
        if blkno <= self.last:
            raise CorruptionError(f"{self.base}: block {blkno} after block {self.last} "
                                  "(a source must yield pages in ascending order)")
        if len(page) != BLCKSZ:
            raise CorruptionError(f"{self.base}: block {blkno} is {len(page)} bytes, not {BLCKSZ}")
        self.last = blkno
        if page == _ZERO_PAGE:
            return  # a hole reads as a zero page
        self.buf += page
        self.blknos.append(blkno)

    def flush(self) -> None:
        if not self.blknos:
            return
        if self.checksums:
            set_checksums(self.buf, self.blknos)
        view = memoryview(self.buf)
        i, n = 0, len(self.blknos)
        while i < n:
            # one pwrite per run of consecutive blocks within one segment
            j = i + 1
            seg = self.blknos[i] // self.segblocks
            while (j < n and self.blknos[j] == self.blknos[j - 1] + 1
                   and self.blknos[j] // self.segblocks == seg):
                j += 1
            off = (self.blknos[i] % self.segblocks) * BLCKSZ
            os.pwrite(self._fd(seg), view[i * BLCKSZ:j * BLCKSZ], off)
            i = j
        view.release()
        self.bytes_written += len(self.buf)
        self.buf = bytearray()
        self.blknos = []

    def finish(self, nblocks: int) -> int:
        """Set every segment's length so the fork has max(nblocks, written) blocks."""
        self.flush()
        total = max(nblocks, self.last + 1)
        nsegs = max(1, -(-total // self.segblocks))
        for seg in range(nsegs):
            blocks = min(self.segblocks, total - seg * self.segblocks)
            os.ftruncate(self._fd(seg), max(0, blocks) * BLCKSZ)
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        return total


def materialize(source: ClusterView, datadir: Path, *,
                checksums: ChecksumPolicy | str = ChecksumPolicy.COMPUTE,
                progress: ProgressFn | None = None,
                settings: Mapping[str, str] | None = None) -> MaterializedDir:
    """Write the data directory of `source` at `datadir`.

    Requires: `datadir` does not exist or is empty; its parent is traversable by
    the server user.
    Returns: what was written (for `instance.prepare` and progress reports).
    Raises: CorruptionError (bad template or pages; the partial directory is
    removed), InstanceError when `datadir` is not empty.
    """
    policy = ChecksumPolicy(checksums)
    datadir = Path(datadir)
    template = source.control_template()
    cf = parse_control(template)  # validate first
    if cf.blcksz != BLCKSZ:
        raise CorruptionError(f"pg_control block size {cf.blcksz} is not {BLCKSZ}")
    if datadir.exists() and any(datadir.iterdir()):
        raise InstanceError(f"cannot materialize into {datadir}: it is not empty")
    control = source.control()
    lsn = source.lsn
    for parent in reversed(datadir.parents):
        if not parent.exists():  # parents we create must let the server user through
            parent.mkdir()
            os.chmod(parent, 0o755)
    t0 = time.perf_counter()
    try:
        stats = _write_all(source, datadir, cf.catalog_version_dir, cf.relseg_size,
                           policy is ChecksumPolicy.COMPUTE, progress)
        (datadir / "global" / "pg_control").write_bytes(
            with_checksum_version(template, 1 if policy is ChecksumPolicy.COMPUTE else 0))
        write_config(datadir, lsn, settings)
        give_to_server_user(datadir, recursive=True, mode=0o700)
    except BaseException:
        shutil.rmtree(datadir, ignore_errors=True)
        raise
    relations, pages, nbytes = stats
    return MaterializedDir(
        datadir=datadir, lsn=lsn, control=control, timeline=cf.timeline,
        wal_segment_size=cf.xlog_seg_size, checksums=policy is ChecksumPolicy.COMPUTE,
        relations=relations, pages=pages, bytes_written=nbytes,
        seconds=time.perf_counter() - t0)


def write_skeleton(datadir: Path) -> None:
    """The empty directories and PG_VERSION: what no point in time changes."""
    _mkdir(datadir)
    for name in SKELETON:
        _mkdir(datadir / name)
    (datadir / "PG_VERSION").write_text(PG_VERSION_TEXT)


def write_config(datadir: Path, lsn: Lsn | None,
                 settings: Mapping[str, str] | None = None) -> None:
    """postgresql.conf (`server_settings`), pg_hba.conf, pg_ident.conf, postgresql.auto.conf."""
    conf = server_settings(settings)
    at = f" at LSN {lsn}" if lsn is not None else ""
    (datadir / "postgresql.conf").write_text(
        f"# pgStrata historical instance (read-only copy{at})\n"
        + "".join(f"{k} = {v}\n" for k, v in conf.items()))
    (datadir / "pg_hba.conf").write_text(HBA_CONF)
    (datadir / "pg_ident.conf").write_text("")
    (datadir / "postgresql.auto.conf").write_text("")


def database_dir(datadir: Path, spc: int, db: int, catver_dir: str) -> Path:
    """The directory of database `db` in tablespace `spc` (global/ for 1664)."""
    if spc == GLOBALTABLESPACE_OID:
        return datadir / "global"
    if spc == DEFAULTTABLESPACE_OID:
        return datadir / "base" / str(db)
    return datadir / TABLESPACE_ROOT / str(spc) / catver_dir / str(db)


def write_layout(source: ClusterView, datadir: Path, catver_dir: str
                 ) -> dict[tuple[int, int], Path]:
    """Database directories (PG_VERSION, pg_filenode.map), tablespace links and SLRU
    segments at the source's LSN: every small file that depends on X except
    pg_control. Requires: the skeleton exists. Returns: (spc, db) -> directory."""
    dirs: dict[tuple[int, int], Path] = {}
    for spc, db in source.databases():
        d = database_dir(datadir, spc, db, catver_dir)
        if spc not in (GLOBALTABLESPACE_OID, DEFAULTTABLESPACE_OID):
            _mkdir(d.parent)
            link = datadir / "pg_tblspc" / str(spc)
            if not link.is_symlink():
                link.symlink_to(Path("..") / TABLESPACE_ROOT / str(spc))
        _mkdir(d)
        dirs[(spc, db)] = d
        relmap = source.relmap(spc, db)
        if relmap is not None:
            (d / "pg_filenode.map").write_bytes(relmap)
            if spc != GLOBALTABLESPACE_OID:
                (d / "PG_VERSION").write_text(PG_VERSION_TEXT)
        elif spc == DEFAULTTABLESPACE_OID:
            (d / "PG_VERSION").write_text(PG_VERSION_TEXT)

    for kind in SlruKind:
        for name, data in source.slru_segments(kind):
            (datadir / SLRU_DIRS[kind] / name).write_bytes(data)
    return dirs


def write_fork(source: ClusterView, rdir: Path, r: RelFile, segblocks: int, checksums: bool,
               on_batch: Callable[[int], None] | None = None) -> int:
    """Write one relation fork (all its segments) under `rdir`; returns bytes written.
    `on_batch(blocks_done_in_this_fork)` after every batch."""
    w = _ForkWriter(rdir / f"{r.rel}{FORK_SUFFIX[r.fork]}", segblocks, checksums)
    try:
        for blkno, page in source.pages(r.spc, r.db, r.rel, r.fork):
            w.add(blkno, page)
            if len(w.blknos) >= BATCH_PAGES:
                w.flush()
                if on_batch is not None:
                    on_batch(w.last + 1)
        w.finish(r.nblocks)
    finally:
        for fd in w.fds.values():
            os.close(fd)
    return w.bytes_written


def _write_all(source: ClusterView, datadir: Path, catver_dir: str, segblocks: int,
               checksums: bool, progress: ProgressFn | None) -> tuple[int, int, int]:
    write_skeleton(datadir)
    dirs = write_layout(source, datadir, catver_dir)
    rels = [r for r in source.relations() if r.fork in WRITTEN_FORKS]
    total = sum(r.nblocks for r in rels)
    done = 0
    nbytes = 0
    for r in rels:
        rdir = relation_dir(dirs, r)

        def on_batch(blocks: int, done: int = done) -> None:
            if progress is not None:
                progress(min(done + blocks, total), total)

        nbytes += write_fork(source, rdir, r, segblocks, checksums, on_batch)
        done += r.nblocks
        if progress is not None:
            progress(min(done, total), total)
    return len(rels), total, nbytes


def relation_dir(dirs: Mapping[tuple[int, int], Path], r: RelFile) -> Path:
    """The directory of `r` among those `write_layout` made.
    Raises: CorruptionError when the source did not list its database."""
    rdir = dirs.get((r.spc, r.db))
    if rdir is None:
        raise CorruptionError(
            f"relation {r.rel} is in database directory {r.spc}/{r.db}, "
            "which the source's databases() does not list")
    return rdir
