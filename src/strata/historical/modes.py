"""One factory for historical servers in either mode: lazy, materialize or auto.

Fed by the page store (a `PageReader` in this process for the small files,
and its directory for the processes that read pages: the lazy file system,
materialize workers). Feeds `pool.InstancePool` (the factory is an
`InstanceFactory`), the daemon and `strata query`. Owns, per instance root::

    <root>/data/       the data directory (lazy: the FUSE mount point)
    <root>/overlay/    lazy only: small files at X and whatever the server writes
    <root>/sock/       unix socket directory, 0700, server user
    <root>/data.log    server log; <root>/lazyfs.log the file system's log
    <root>/server.pid  the postmaster's pid (`cleanup_instances` after a crash)

Both modes start the same way (`checkpoint.write_startup_files`: pg_control
at X with wal_level=replica and a shutdown checkpoint segment, then a hot
standby): no pg_resetwal, no normal start/stop. Indexes of access methods
without redo are marked invalid and unlogged relations made readable (empty)
by `served` / `catalog_patch`, in the pages themselves.

`resolve_mode("auto")` is lazy where `lazy.lazy_available()` says FUSE works,
else materialize, and says which and why (`HistoricalFactory.reason`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from strata.errors import ConfigError, IngestBehindError
from strata.historical.checkpoint import ServerLimits, write_startup_files
from strata.historical.controlfile import parse_control
from strata.historical.instance import HistoricalInstance, launch, wait_process_exit
from strata.historical.lazy import (
    FsSpares,
    LazyMount,
    cleanup_mounts,
    kill_spares,
    lazy_available,
)
from strata.historical.materialize import materialize, server_settings, write_layout
from strata.historical.parallel import materialize_parallel
from strata.historical.reader import PageReader
from strata.historical.served import ServedView
from strata.historical.skeleton import SKELETONS_DIR, SkeletonPool, build_skeleton
from strata.historical.store_view import StoreView
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.progress import Laps
from strata.runtime.osuser import give_to_server_user

log = logging.getLogger(__name__)

SERVER_PID_FILE = "server.pid"  # <root>/server.pid: the postmaster, for `cleanup_instances`

# Index access methods whose WAL has no redo yet: their indexes are marked invalid
# in historical servers, so queries answer through other plans. Every index AM
# of 18.6 has redo (issue 12); keep in step with store_view.NO_REDO_YET_RMGRS
# (tests/test_history_service.py checks both against the redo registry).
UNSUPPORTED_INDEX_AMS: tuple[str, ...] = ()


# Settings a lazy server adds to `materialize.SERVER_SETTINGS` (a caller's own
# `settings` still win, and a session's SET is carried over by the proxy).
# random_page_cost: on a lazy data directory a cold random read is a FUSE round
# trip for one page, while a sequential one comes with the kernel's readahead
# and pages rebuilt ahead in windows; at pgbench scale 100 a page read at random
# cost ~8x one read in order (BENCHMARKS.md, tenth session). With the default 4,
# count(*) of pgbench_accounts in the past picks a parallel index-only scan,
# because pg_class.relallvisible (from the last VACUUM) says every page is
# all-visible while the visibility map at X says few are: it then fetches the
# heap one page at a time, cold 9-10 s, where the seq scan 6 picks takes 5-6 s
# (and 0.4-0.8 s warm against 0.8-1.2 s). Selective index scans keep their plans.
LAZY_SETTINGS: dict[str, str] = {"random_page_cost": "6"}


class HistoricalMode(StrEnum):
    LAZY = "lazy"
    MATERIALIZE = "materialize"
    AUTO = "auto"


def resolve_mode(mode: HistoricalMode | str) -> tuple[HistoricalMode, str]:
    """The mode to use (lazy or materialize) and a sentence saying why.

    Raises: ConfigError for an unknown mode, or lazy asked where FUSE does not work.
    """
    try:
        m = HistoricalMode(mode)
    except ValueError:
        raise ConfigError(f"unknown historical mode {mode!r}: use lazy, materialize or auto"
                          ) from None
    if m is HistoricalMode.MATERIALIZE:
        return m, "materialize (asked for)"
    ok, why = lazy_available()
    if m is HistoricalMode.LAZY:
        if not ok:
            raise ConfigError(f"historical mode lazy is not possible here: {why}")
        return m, f"lazy (asked for; {why})"
    if ok:
        return HistoricalMode.LAZY, f"lazy (auto: {why})"
    return HistoricalMode.MATERIALIZE, f"materialize (auto: lazy is not possible: {why})"


def server_limits(settings: Mapping[str, str]) -> ServerLimits:
    """The pg_control settings a hot standby with `settings` accepts."""
    d = ServerLimits()
    return ServerLimits(
        max_connections=int(settings.get("max_connections", d.max_connections)),
        max_worker_processes=int(settings.get("max_worker_processes", d.max_worker_processes)),
        max_wal_senders=int(settings.get("max_wal_senders", d.max_wal_senders)),
        max_prepared_xacts=int(settings.get("max_prepared_transactions", d.max_prepared_xacts)),
        max_locks_per_xact=int(settings.get("max_locks_per_transaction", d.max_locks_per_xact)))


@dataclass
class HistoricalFactory:
    """``factory(lsn, root) -> HistoricalInstance`` in the resolved `mode`.

    `ensure_durable(lsn)` is called first: readers in other processes see only
    what the writer has made durable (the daemon passes a flush through X).
    """

    store: PageReader
    store_dir: Path
    mode: HistoricalMode
    reason: str = ""
    invalid_index_ams: tuple[str, ...] = UNSUPPORTED_INDEX_AMS
    socket_only: bool = False
    ensure_durable: Callable[[Lsn], None] | None = None
    workers: int = 1
    settings: Mapping[str, str] = field(default_factory=dict)
    skeletons: SkeletonPool | None = None
    spares: FsSpares | None = None
    timeout: float = 60.0

    def __call__(self, lsn: Lsn, root: Path) -> HistoricalInstance:
        t0 = time.perf_counter()
        laps = Laps()
        lsn = Lsn(lsn)
        if self.ensure_durable is not None:
            self.ensure_durable(lsn)
            laps("durable")
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)
        try:
            if self.mode is HistoricalMode.LAZY:
                inst = self._lazy(lsn, root, laps)
            else:
                inst = self._materialize(lsn, root, laps)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        inst.startup_seconds = time.perf_counter() - t0
        log.info("historical server at %s (%s) ready in %.2fs (%s)", lsn, inst.mode,
                 inst.startup_seconds, laps)
        return inst

    @property
    def limits(self) -> ServerLimits:
        return server_limits(server_settings(self.settings))

    def _launch(self, lsn: Lsn, root: Path, mount: LazyMount | None,
                marked: int) -> HistoricalInstance:
        cluster = launch(root / "data", socket_only=self.socket_only, timeout=self.timeout,
                         pid_file=None if mount is None else mount.overlay / "postmaster.pid")
        pid = cluster.postmaster_pid()
        # outside the data directory: readable after a crash even if a mount died
        (root / SERVER_PID_FILE).write_text(f"{pid}\n")
        return HistoricalInstance(
            root=root, lsn=lsn, cluster=cluster, invalid_index_ams=self.invalid_index_ams,
            indexes_marked_invalid=marked, mode=str(self.mode), mount=mount,
            socket_only=self.socket_only)

    def _lazy(self, lsn: Lsn, root: Path, laps: Laps) -> HistoricalInstance:
        source = StoreView(self.store, lsn)
        template = source.control_template()
        cf = parse_control(template)
        overlay = root / "overlay"
        if self.skeletons is not None:
            self.skeletons.take(overlay)
        else:
            build_skeleton(overlay, self.settings)
        write_layout(source, overlay, cf.catalog_version_dir)
        give_to_server_user(overlay, recursive=True, mode=0o700)
        write_startup_files(overlay, template, source.control(), lsn, limits=self.limits)
        laps("skeleton")
        mountpoint = root / "data"
        mountpoint.mkdir(mode=0o700)
        give_to_server_user(mountpoint, recursive=False, mode=0o700)
        mount = LazyMount.start(self.store_dir, lsn, mountpoint, overlay,
                                logfile=root / "lazyfs.log",
                                invalid_index_ams=self.invalid_index_ams, timeout=self.timeout,
                                spares=self.spares)
        laps("mount")
        try:
            inst = self._launch(lsn, root, mount, 0)
        except BaseException:
            mount.unmount()
            raise
        laps("server")
        return inst

    def _materialize(self, lsn: Lsn, root: Path, laps: Laps) -> HistoricalInstance:
        source = StoreView(self.store, lsn)
        datadir = root / "data"
        if self.workers > 1:
            mat, marked = materialize_parallel(
                self.store_dir, source, datadir, workers=self.workers,
                invalid_index_ams=self.invalid_index_ams, settings=self.settings)
        else:
            served = ServedView(source, self.invalid_index_ams)
            mat = materialize(served, datadir, settings=self.settings)
            marked = served.indexes_marked_invalid
        write_startup_files(datadir, source.control_template(), source.control(), lsn,
                            checksums=mat.checksums, limits=self.limits)
        laps("pages")
        inst = self._launch(lsn, root, None, marked)
        laps("server")
        return inst

    def close(self) -> None:
        """Remove the prepared skeletons and end the spare file system processes."""
        if self.skeletons is not None:
            self.skeletons.close()
        if self.spares is not None:
            self.spares.close()


def durable_through(store: PageStore, *, timeout: float = 30.0) -> Callable[[Lsn], None]:
    """An `ensure_durable` for the process that writes the store: wait (bounded)
    until ingest has passed X, then flush through X, so the processes that read
    the store (lazy file systems, materialize workers) see everything up to X.

    Raises (when called): IngestBehindError when ingest does not reach X in time.
    """
    def ensure(lsn: Lsn) -> None:
        deadline = time.monotonic() + timeout
        while store.ingested_lsn < lsn:
            if time.monotonic() > deadline:
                raise IngestBehindError(
                    f"ingest is at LSN {store.ingested_lsn}, not yet at {lsn} after "
                    f"{timeout:.0f} s; try again", nearest=store.ingested_lsn)
            time.sleep(0.01)
        if store.durable_lsn < lsn:
            store.flush(up_to=lsn)

    return ensure


def _postmaster_of(root: Path) -> int | None:
    """The pid in `root/server.pid` if that process is still the postgres of `root/data`."""
    try:
        pid = int((root / SERVER_PID_FILE).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    ok = bool(cmdline) and cmdline[0].endswith(b"postgres") and \
        os.fsencode(root / "data") in cmdline
    return pid if ok else None


def cleanup_instances(root: Path) -> list[Path]:
    """Remove what a killed strata left under an instances root: stop every
    historical server (by the pid kept beside its data directory, so also one
    whose lazy file system died), unmount every lazy file system (their
    processes then exit), kill the spare file systems (`lazy.kill_spares`),
    delete the instance directories. The daemon calls
    it at start. Returns the instance directories removed."""
    root = Path(root)
    if not root.exists():
        return []
    gone = []
    for inst in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        pid = _postmaster_of(inst)
        if pid is not None:
            log.warning("stopping a historical server left running in %s", inst)
            for sig in (signal.SIGQUIT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                if wait_process_exit(pid, 10):
                    break
        gone.append(inst)
    cleanup_mounts(root)
    for pid in kill_spares(root):  # no mount: what is left are spares
        wait_process_exit(pid, 5)
    for inst in gone:
        shutil.rmtree(inst, ignore_errors=True)
    shutil.rmtree(root / SKELETONS_DIR, ignore_errors=True)
    return gone


def make_factory(store: PageReader, store_dir: Path, *, mode: HistoricalMode | str = "auto",
                 instances_root: Path | None = None, skeletons: int = 2, spares: int = 2,
                 invalid_index_ams: Sequence[str] = UNSUPPORTED_INDEX_AMS,
                 socket_only: bool = False, workers: int | None = None,
                 ensure_durable: Callable[[Lsn], None] | None = None,
                 settings: Mapping[str, str] | None = None) -> HistoricalFactory:
    """The factory for `InstancePool`, with the mode resolved (see `resolve_mode`).

    Lazy mode keeps `spares` file system processes started ahead (two: a spare
    takes 3-5 s to be ready under load, its replacement starting 2 s after a take,
    so with one, every other SET of a burst waited ~1 s for a Python start; each
    costs ~45 MB) and, with `instances_root`, `skeletons` data-directory
    skeletons ready under it (the caller ends both with `close()`); its servers
    take `LAZY_SETTINGS` under `settings`. `workers`
    (default: the number of cores) materialize in parallel processes.
    Raises: ConfigError (see `resolve_mode`).
    """
    resolved, reason = resolve_mode(mode)
    pool = None
    fs_spares = None
    if resolved is HistoricalMode.LAZY:
        settings = {**LAZY_SETTINGS, **(settings or {})}
        fs_spares = FsSpares(spares, owner=instances_root, store_dir=Path(store_dir))
        if instances_root is not None and skeletons > 0:
            pool = SkeletonPool(instances_root, size=skeletons, settings=settings)
    return HistoricalFactory(
        store=store, store_dir=Path(store_dir), mode=resolved, reason=reason,
        invalid_index_ams=tuple(invalid_index_ams), socket_only=socket_only,
        ensure_durable=ensure_durable, workers=workers or os.cpu_count() or 1,
        settings=dict(settings or {}), skeletons=pool, spares=fs_spares)
