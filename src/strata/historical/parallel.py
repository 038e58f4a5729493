"""Materialize mode spread over the cores: relation pages written by worker processes.

Fed by the page store (its directory: each worker opens it read-only with
`reader.open_reader`; the caller's `StoreView` for the small files). Feeds
`modes` (materialize mode). Owns the data directory it writes, like
`materialize`, and its worker processes (spawned, ended before it returns).

The parent writes the skeleton, the small files at X (`write_layout`), the
configuration and the pg_control template, and creates every relation segment
file at its final length (sparse). The relation forks are cut into block
ranges of at most `chunk_blocks`, dealt to `workers` processes largest first;
a worker rebuilds its ranges (`ServedView.pages(..., start, end)`: range
scans, the same patches as one process) and writes pages in place. The
result is byte-for-byte what `materialize(ServedView(...))` writes.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

from strata.errors import CorruptionError, InstanceError
from strata.historical.controlfile import parse_control, with_checksum_version
from strata.historical.materialize import (
    WRITTEN_FORKS,
    MaterializedDir,
    _ForkWriter,
    relation_dir,
    write_config,
    write_layout,
    write_skeleton,
)
from strata.historical.served import ServedView
from strata.historical.source import BLCKSZ, FORK_SUFFIX, RelFile
from strata.historical.store_view import StoreView
from strata.lsn import Lsn
from strata.runtime.osuser import give_to_server_user

DEFAULT_CHUNK_BLOCKS = 4096  # 32 MB of pages per task


class _Task(NamedTuple):
    path: str  # the fork's base file (segment 0)
    spc: int
    db: int
    rel: int
    fork: int
    from_fork: int
    start: int
    end: int


_worker: tuple[StoreView, ServedView] | None = None


def _init_worker(store_dir: str, lsn: int, invalid_index_ams: Sequence[str]) -> None:
    global _worker
    from strata.historical.reader import open_reader

    source = StoreView(open_reader(store_dir), Lsn(lsn))
    _worker = (source, ServedView(source, invalid_index_ams))


def _run_task(task: _Task, segblocks: int, checksums: bool) -> int:
    """Write blocks [start, end) of one fork; returns the bytes written."""
    assert _worker is not None
    _source, served = _worker
    served.serve_from(task.spc, task.db, task.rel, task.fork, task.from_fork)
    w = _ForkWriter(Path(task.path), segblocks, checksums)
    try:
        w.last = task.start - 1
        for blk, page in served.pages(task.spc, task.db, task.rel, task.fork, task.start,
                                      task.end):
            w.add(blk, page)
            if len(w.blknos) >= 128:
                w.flush()
        w.flush()
    finally:
        for fd in w.fds.values():
            os.close(fd)
    return w.bytes_written


def _presize(base: Path, nblocks: int, segblocks: int) -> None:
    nsegs = max(1, -(-nblocks // segblocks))
    for seg in range(nsegs):
        name = base.name + (f".{seg}" if seg else "")
        blocks = max(0, min(segblocks, nblocks - seg * segblocks))
        fd = os.open(base.with_name(name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, blocks * BLCKSZ)
        finally:
            os.close(fd)


def plan_tasks(rels: Sequence[tuple[Path, RelFile, int]], chunk_blocks: int) -> list[_Task]:
    """Block ranges of every fork, at most `chunk_blocks` each, largest first."""
    tasks = []
    for base, r, from_fork in rels:
        for start in range(0, r.nblocks, chunk_blocks):
            tasks.append(_Task(str(base), r.spc, r.db, r.rel, r.fork, from_fork, start,
                               min(r.nblocks, start + chunk_blocks)))
    tasks.sort(key=lambda t: t.end - t.start, reverse=True)
    return tasks


def materialize_parallel(store_dir: Path, source: StoreView, datadir: Path, *,
                         workers: int, invalid_index_ams: Sequence[str] = (),
                         settings: Mapping[str, str] | None = None,
                         chunk_blocks: int = DEFAULT_CHUNK_BLOCKS
                         ) -> tuple[MaterializedDir, int]:
    """Write the data directory of `source` (served: see `served`) with `workers`
    processes. Returns: what was written, and how many indexes were marked invalid.
    Raises: as `materialize` (the partial directory is removed).
    """
    template = source.control_template()
    cf = parse_control(template)
    if cf.blcksz != BLCKSZ:
        raise CorruptionError(f"pg_control block size {cf.blcksz} is not {BLCKSZ}")
    if datadir.exists() and any(datadir.iterdir()):
        raise InstanceError(f"cannot materialize into {datadir}: it is not empty")
    served = ServedView(source, invalid_index_ams)
    t0 = time.perf_counter()
    try:
        write_skeleton(datadir)
        dirs = write_layout(served, datadir, cf.catalog_version_dir)
        rels = []
        for r in served.relations():
            if r.fork not in WRITTEN_FORKS:
                continue
            base = relation_dir(dirs, r) / f"{r.rel}{FORK_SUFFIX[r.fork]}"
            _presize(base, r.nblocks, cf.relseg_size)
            rels.append((base, r, served._from.get((r.spc, r.db, r.rel, r.fork), r.fork)))
        tasks = plan_tasks(rels, chunk_blocks)
        ctx = multiprocessing.get_context("spawn")
        nbytes = 0
        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(tasks))), mp_context=ctx,
                                 initializer=_init_worker,
                                 initargs=(str(store_dir), int(source.lsn),
                                           tuple(invalid_index_ams))) as pool:
            futures = [pool.submit(_run_task, t, cf.relseg_size, True) for t in tasks]
            for f in futures:
                nbytes += f.result()
        for spc, db in served.databases():
            served.facts(spc, db)
        marked = served.indexes_marked_invalid
        (datadir / "global" / "pg_control").write_bytes(with_checksum_version(template, 1))
        write_config(datadir, source.lsn, settings)
        give_to_server_user(datadir, recursive=True, mode=0o700)
    except BaseException:
        shutil.rmtree(datadir, ignore_errors=True)
        raise
    mat = MaterializedDir(
        datadir=datadir, lsn=source.lsn, control=source.control(), timeline=cf.timeline,
        wal_segment_size=cf.xlog_seg_size, checksums=True, relations=len(rels),
        pages=sum(r.nblocks for _b, r, _f in rels), bytes_written=nbytes,
        seconds=time.perf_counter() - t0)
    return mat, marked
