"""Bulk-write ingest benchmark (issue 10, item 5): strata's catch-up next to
PostgreSQL's own replay of the same WAL.

    python bench/bench_ingest.py [--scale 1.0] [--only ctas,update,...] [--json OUT]
    python bench/bench_ingest.py --offline [--wal-cache DIR] [--profile DIR] [--scale 0.05]
    python bench/bench_ingest.py --scale 0.01          # a quick check that it runs

Workloads (sizes at --scale 1; each size option multiplies by --scale):

    ctas          CREATE TABLE bulk AS SELECT ... FROM generate_series(1, --rows)      (2M)
    update        UPDATE upd SET k = k + 1 on a table of --update-rows, made beforehand (1M)
    delete        DELETE FROM bulk WHERE id % 3 = 0, then VACUUM bulk
    index         CREATE INDEX ON bulk (v)
    pgbench_init  pgbench -i -s --pgbench-scale                                         (20)
    btree         INSERT of --rows / 4 random uuids into a table with a primary key (500k)
                  right after a checkpoint: index page splits that carry full-page images
    tpcb          pgbench -c4 -j2 -t --tpcb-tx (TPC-B on pgbench_init's tables; -t per client) (10000)
    tpcb_steady   the same again after an untimed run of the same size, with no checkpoint
                  since tpcb's: TPC-B's steady WAL, few full-page images

Each statement but tpcb_steady follows a CHECKPOINT (part of the untimed setup), so
every run starts from the same full-page-write state.

Live mode (default): one PostgreSQL 18 primary, a streaming standby made with
``pg_basebackup -R`` and ``strata up --source`` attached to the primary. Per
workload, after both have caught up with the setup: the standby's replay is
paused (``pg_wal_replay_pause()``; it keeps receiving WAL), the statement runs
on the primary (the primary's time), then a marker transaction
(``SELECT txid_current()``: a commit record right after the statement's WAL),
then the time from the statement's end until strata has ingested the marker
(its commit appears in strata's time map, which ingest publishes as soon as
the stream goes idle; a read-only `TimeMap` polled every 10 ms: the WAL
positions strata reports to the primary follow received bytes and status
intervals instead), then the standby's replay is resumed and timed until
``pg_last_wal_replay_lsn()`` reaches the marker's end. CPU seconds of
every strata process (the ``strata up`` process and its Python descendants,
from /proc) over the statement and its catch-up, divided by the WAL MiB; layer
bytes written (``du <home>/layers`` once strata reports the LSN durable; strata
runs with ``--flush-interval 2``) per WAL byte.

Offline mode (``--offline``): the same workloads are recorded once (a cleanly
stopped base data directory, the WAL after it and each workload's LSN range,
in --wal-cache, reused when present), then fed from the files through the ingest
pipeline in this process (128 kB chunks as the walsender sends them, taken
and fed as `IngestPipeline.run` does, advancing every 8 MiB) into a fresh store imported from
the base. Per workload: WAL MiB, records, CPU s of this process (ingest; then
including the flush and the background compaction it causes), records/s and
MB/s per CPU second, the wall time until the store has it all durable (the flush
runs in its background thread meanwhile, as in the ingest service) and the WAL MB/s
that makes, layer bytes per WAL byte, and a row for all of them together
(which phase an earlier phase's maintenance lands in is timing) (``--no-maintenance``: the store
runs no compaction or image creation, so the CPU "incl. flush + maintenance" is
ingest and flush alone, what the ingest service spends). ``--profile DIR`` writes a
cProfile file per workload (ingest only) and prints its top entries.

Numbers go to stdout as a markdown table (and --json). Everything started here
is stopped here; scratch directories are removed unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from strata.lsn import Lsn
from strata.runtime.cluster import SUPERUSER, Cluster
from strata.runtime.osuser import give_to_server_user, make_private_dir, run_as_server

MIB = 1 << 20
SCRATCH_ROOT = Path(tempfile.gettempdir()) / "strata-bench"
SETTINGS = {"wal_keep_size": "16GB", "max_wal_size": "16GB", "shared_buffers": "256MB",
            "hot_standby": "on", "checkpoint_timeout": "1h"}  # checkpoints: the setups' own


# -- workloads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    setup: tuple[str, ...]  # SQL, untimed
    sql: tuple[str, ...] = ()  # the timed statements
    pgbench: tuple[str, ...] = ()  # or a timed pgbench run
    warmup: tuple[str, ...] = ()  # an untimed pgbench run after the setup SQL


def workloads(args: argparse.Namespace) -> list[Workload]:
    rows = max(1000, int(args.rows * args.scale))
    upd = max(1000, int(args.update_rows * args.scale))
    pgscale = max(1, round(args.pgbench_scale * args.scale))
    tpcb = ("-c", "4", "-j", "2", "-n", "-t", str(max(100, int(args.tpcb_tx * args.scale))))
    every = [
        Workload("ctas", ("DROP TABLE IF EXISTS bulk", "CHECKPOINT"),
                 (f"CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS v, g % 1000 AS k "
                  f"FROM generate_series(1, {rows}) g",)),
        Workload("update", ("DROP TABLE IF EXISTS upd",
                            f"CREATE TABLE upd AS SELECT g AS id, md5(g::text) AS v, 0 AS k "
                            f"FROM generate_series(1, {upd}) g", "VACUUM upd", "CHECKPOINT"),
                 ("UPDATE upd SET k = k + 1",)),
        Workload("delete", ("CHECKPOINT",), ("DELETE FROM bulk WHERE id % 3 = 0", "VACUUM bulk")),
        Workload("index", ("CHECKPOINT",), ("CREATE INDEX bulk_v ON bulk (v)",)),
        Workload("pgbench_init", ("CHECKPOINT",), pgbench=("-i", "-q", "-s", str(pgscale))),
        Workload("btree", ("DROP TABLE IF EXISTS ids",
                           "CREATE TABLE ids (id uuid PRIMARY KEY, v int)", "CHECKPOINT"),
                 (f"INSERT INTO ids SELECT gen_random_uuid(), g "
                  f"FROM generate_series(1, {max(1000, rows // 4)}) g",)),
        Workload("tpcb", ("CHECKPOINT",), pgbench=tpcb),
        # no checkpoint: after tpcb and as many transactions again, most pages touched
        # already carry their full-page image (TPC-B's steady WAL, ~0.5 KB/transaction)
        Workload("tpcb_steady", (), pgbench=tpcb, warmup=tpcb),
    ]
    only = set(args.only.split(",")) if args.only else None
    if only is not None and (bad := only - {w.name for w in every}):
        raise SystemExit(f"unknown workload(s) {', '.join(sorted(bad))}")
    # delete and index need the bulk table: keep ctas when they are asked for
    if only is not None and only & {"delete", "index"}:
        only.add("ctas")
    if only is not None and "tpcb_steady" in only:  # it follows tpcb
        only.add("tpcb")
    if only is not None and "tpcb" in only:  # and TPC-B pgbench's tables
        only.add("pgbench_init")
    return [w for w in every if only is None or w.name in only]


def scratch() -> Path:
    SCRATCH_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(SCRATCH_ROOT, 0o755)
    d = Path(tempfile.mkdtemp(prefix="ingest-", dir=SCRATCH_ROOT))
    os.chmod(d, 0o755)  # the server user traverses it
    return d


def insert_lsn(c: Cluster) -> Lsn:
    return Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()")[0][0])


def record_end(lsn: Lsn) -> Lsn:
    """The end of the last record before insert position `lsn`: an insert position
    just past a page header (nothing written on that page yet) is the page start."""
    off = lsn % 8192
    return Lsn(lsn - off) if off in (24, 40) else lsn


def run_statements(c: Cluster, w: Workload) -> float:
    """Run the timed part of `w`; returns its wall seconds."""
    t = time.perf_counter()
    if w.pgbench:
        pgbench(c, w.pgbench)
    else:
        with c.connect() as conn:
            for s in w.sql:
                conn.execute(s)
    return time.perf_counter() - t


def pgbench(c: Cluster, args: tuple[str, ...]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    subprocess.run([str(c.bins.path("pgbench")), *args, "-h", "127.0.0.1", "-p",
                    str(c.port), "-U", SUPERUSER, "postgres"], check=True, env=env,
                   capture_output=True)


def setup(c: Cluster, w: Workload) -> None:
    with c.connect() as conn:
        for s in w.setup:
            conn.execute(s)
    if w.warmup:
        pgbench(c, w.warmup)


def du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


@dataclass
class Row:
    name: str
    wal_bytes: int = 0
    records: int = 0
    primary_s: float = 0.0
    strata_catchup_s: float = 0.0  # after the statement's end
    durable_s: float = 0.0  # offline: from the first chunk until the flush has it all
    standby_replay_s: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # per strata process (or phase)
    layer_bytes: int = 0

    @property
    def wal_mib(self) -> float:
        return self.wal_bytes / MIB


# -- live mode ------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int, float] | None:
    """(command name, parent pid, utime + stime seconds) of `pid`, None when it is gone.
    A strata service or file system is named by its module's last part."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    with contextlib.suppress(OSError):  # a service names itself by its module
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        for a in argv:
            if a.startswith(b"strata.services.") or a.startswith(b"strata.historical."):
                comm = a.decode().rsplit(".", 1)[1]
    fields = stat[stat.rindex(")") + 2:].split()
    return comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> tuple[str, float] | None:
    """(command name, utime + stime seconds) of `pid`, None when it is gone."""
    st = proc_stat(pid)
    return None if st is None else (st[0], st[2])


def all_processes() -> dict[int, tuple[str, int, float]]:
    """`proc_stat` of every process."""
    return {int(p.name): st for p in Path("/proc").iterdir()
            if p.name.isdigit() and (st := proc_stat(int(p.name))) is not None}


def strata_processes(root: int) -> list[int]:
    """`root` and its descendants that are not PostgreSQL servers."""
    procs = all_processes()
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        info = procs.get(pid)
        if info is None or info[0] in ("postgres", "postmaster"):
            continue
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_snapshot(root: int) -> dict[int, tuple[str, float]]:
    return {pid: info for pid in strata_processes(root) if (info := proc_cpu(pid)) is not None}


class LiveRig:
    """The primary, the standby and `strata up --source` of one live run."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.primary = Cluster(datadir=base / "primary" / "data")
        self.primary.initdb(settings=SETTINGS)
        self.primary.start()
        self.standby = self._make_standby()
        self.home = base / "home"
        self._out = (base / "strata.out").open("w")
        self._err = (base / "strata.err").open("w")
        self.strata = subprocess.Popen(
            [sys.executable, "-m", "strata.cli.main", "up", "--home", str(self.home), "--port",
             "0", "--source", self.primary.dsn(), "--flush-interval", "2",
             "--progress-interval", "1", "--status-interval", "1"],
            stdout=self._out, stderr=self._err)
        self._wait(lambda: (self.home / "state.json").exists(), 1800, "strata up to start")
        self._timemap: Any = None

    def _make_standby(self) -> Cluster:
        dest = self.base / "standby" / "data"
        dest.parent.mkdir(parents=True)
        give_to_server_user(dest.parent, recursive=False, mode=0o755)
        make_private_dir(dest)
        run_as_server([self.primary.bins.path("pg_basebackup"), "-h", "127.0.0.1", "-p",
                       str(self.primary.port), "-U", SUPERUSER, "-D", dest, "-X", "stream",
                       "-c", "fast", "-R", "--no-sync"], timeout=600)
        (dest / "postmaster.pid").unlink(missing_ok=True)
        s = Cluster(datadir=dest)
        s.start()
        return s

    def _wait(self, ok: Any, timeout: float, what: str, step: float = 0.01) -> float:
        t0 = time.monotonic()
        while not ok():
            if self.strata.poll() is not None:
                raise RuntimeError(f"strata up exited {self.strata.returncode} while waiting "
                                   f"for {what}:\n" + (self.base / "strata.err").read_text()[-3000:])
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(step)
        return time.monotonic() - t0

    def strata_ingested(self, xid: int, end: Lsn) -> bool:
        """Whether strata has published the commit of `xid` that ends at `end`."""
        from strata.home import HomeLayout
        from strata.timemap.timemap import TimeMap

        if self._timemap is None:
            self._timemap = TimeMap.open(HomeLayout(self.home).timemap, readonly=True)
        self._timemap.refresh()
        e = self._timemap.last_at_or_before(end)
        return e is not None and e.xid == xid

    def strata_lsns(self) -> tuple[Lsn, Lsn]:
        """(processed, durable) as strata last reported them to the primary."""
        rows = self.primary.sql("SELECT write_lsn::text, flush_lsn::text FROM pg_stat_replication"
                                " WHERE application_name = 'strata'")
        if not rows or rows[0][0] is None:
            return Lsn(0), Lsn(0)
        return Lsn.parse(rows[0][0]), Lsn.parse(rows[0][1] or "0/0")

    def standby_lsns(self) -> tuple[Lsn, Lsn]:
        """(received, replayed) of the standby."""
        r, p = self.standby.sql("SELECT pg_last_wal_receive_lsn()::text, "
                                "pg_last_wal_replay_lsn()::text")[0]
        return Lsn.parse(r or "0/0"), Lsn.parse(p or "0/0")

    def marker(self) -> tuple[int, Lsn]:
        """A commit right now: (its xid, the end of its record)."""
        xid = int(self.primary.sql("SELECT txid_current()")[0][0]) & 0xFFFFFFFF
        return xid, record_end(insert_lsn(self.primary))

    def settle(self) -> None:
        """Wait until strata and the standby have everything written so far."""
        xid, mark = self.marker()
        self._wait(lambda: self.strata_ingested(xid, mark), 3600, f"strata at {mark}", 0.05)
        self._wait(lambda: self.standby_lsns()[1] >= mark, 3600, f"standby at {mark}", 0.05)

    def run(self, w: Workload) -> Row:
        setup(self.primary, w)
        self.settle()
        self.standby.sql("SELECT pg_wal_replay_pause()")
        self._wait(lambda: self.standby.sql("SELECT pg_get_wal_replay_pause_state()")[0][0]
                   == "paused", 60, "the standby to pause")
        layers0 = du(self.home / "layers")
        start = insert_lsn(self.primary)
        cpu0 = cpu_snapshot(self.strata.pid)
        row = Row(w.name, primary_s=run_statements(self.primary, w))
        t_end = time.monotonic()
        end = record_end(insert_lsn(self.primary))
        row.wal_bytes = end - start
        xid, mark = self.marker()
        self._wait(lambda: self.strata_ingested(xid, mark), 3600,
                   f"strata to ingest up to {mark}")
        row.strata_catchup_s = time.monotonic() - t_end
        cpu1 = cpu_snapshot(self.strata.pid)
        row.cpu_s = {("strata up" if p == self.strata.pid else cpu1[p][0]) + f"[{p}]":
                     cpu1[p][1] - cpu0.get(p, ("", 0.0))[1] for p in cpu1}
        self._wait(lambda: self.standby_lsns()[0] >= mark, 600, "the standby to receive")
        self.standby.sql("SELECT pg_wal_replay_resume()")
        row.standby_replay_s = self._wait(lambda: self.standby_lsns()[1] >= mark, 3600,
                                          f"the standby to replay up to {mark}", 0.005)
        self._wait(lambda: self.strata_lsns()[1] >= mark, 600, "strata to make it durable", 0.1)
        row.layer_bytes = du(self.home / "layers") - layers0
        return row

    def close(self) -> None:
        if self._timemap is not None:
            self._timemap.close()
        if self.strata.poll() is None:
            self.strata.send_signal(signal.SIGTERM)
            try:
                self.strata.wait(120)
            except subprocess.TimeoutExpired:
                self.strata.kill()
                self.strata.wait(10)
        self._out.close()
        self._err.close()
        self.standby.stop("fast")
        self.primary.stop("fast")


def live(args: argparse.Namespace) -> list[Row]:
    base = scratch()
    rig: LiveRig | None = None
    rows: list[Row] = []
    try:
        rig = LiveRig(base)
        for w in workloads(args):
            rows.append(rig.run(w))
            say(f"{w.name}: {rows[-1].wal_mib:.1f} MiB, primary {rows[-1].primary_s:.2f} s, "
                f"strata +{rows[-1].strata_catchup_s:.2f} s, standby {rows[-1].standby_replay_s:.2f} s")
        return rows
    finally:
        if rig is not None:
            rig.close()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            say(f"kept {base}")


# -- offline mode ---------------------------------------------------------------------------


def record_wal(args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    """Run the workloads once on a fresh primary; keep its stopped base, its WAL and
    the workloads' LSN ranges in `cache`."""
    meta_file = cache / "phases.json"
    if meta_file.exists():
        meta: dict[str, Any] = json.loads(meta_file.read_text())
        return meta
    base = scratch()
    try:
        c = Cluster(datadir=base / "data")
        c.initdb(settings=SETTINGS)
        c.start()
        c.stop()
        shutil.copytree(c.datadir, cache / "base", symlinks=True)
        c.start()
        phases: list[dict[str, Any]] = []
        try:
            for w in workloads(args):
                setup(c, w)
                start = record_end(insert_lsn(c))
                secs = run_statements(c, w)
                phases.append({"name": w.name, "start": str(start), "primary_s": secs,
                               "end": str(record_end(insert_lsn(c)))})
        finally:
            c.stop()
        shutil.copytree(c.wal_dir(), cache / "wal")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    meta = {"phases": phases}
    meta_file.write_text(json.dumps(meta, indent=1))
    return meta


class FileStream:
    """A finished WAL directory as the pipeline's `Stream`, handing out nothing
    past `limit` (moved forward by the caller; the end of WAL is zeros)."""

    def __init__(self, wal: Path, start: Lsn, limit: Lsn, system_id: int, timeline: int) -> None:
        from strata.wal.source import FileSource

        self.src = FileSource(wal, start, chunk_size=128 << 10)  # a walsender message
        self.limit = limit
        self.system_id = system_id
        self.timeline = timeline
        self.server_wal_end = Lsn(0)
        self._held: Any = None  # the part of a chunk past the limit

    @property
    def received_lsn(self) -> Lsn:
        return self.src.received_lsn

    @property
    def finished(self) -> bool:
        """Nothing more to hand out until the caller moves `limit` (or the WAL ended):
        the pipeline's `take` stops gathering here, as at the end of a stream, instead
        of waiting `PublishConfig.gather` for WAL a phase's end never brings."""
        if self._held is not None:
            return bool(self._held.start >= self.limit)
        return bool(self.src.finished or self.src.received_lsn >= self.limit)

    def poll(self, timeout: float | None = None) -> Any:
        from strata.wal.source import WalChunk

        chunk, self._held = (self._held, None) if self._held is not None else \
            (self.src.poll(timeout), None)
        if chunk is None or chunk.end <= self.limit:
            return chunk
        if chunk.start >= self.limit:
            self._held = chunk
            return None
        cut = self.limit - chunk.start
        self._held = WalChunk(Lsn(self.limit), chunk.data[cut:])
        return WalChunk(chunk.start, chunk.data[:cut])

    def report(self, write_lsn: int, flush_lsn: int, apply_lsn: int | None = None) -> None:
        pass


def cpu_now() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def open_offline(cache: Path, work: Path, *, maintenance: bool,
                 background: bool = True) -> tuple[Any, Any, Any]:
    """A fresh store under `work` imported from the WAL cache's base (flushed, its
    maintenance waited for), and the ingest pipeline over the cache's WAL from there:
    (page store, time map, pipeline). The caller closes the store and the time map."""
    from strata.bootstrap import import_datadir
    from strata.historical.source import DataDirSource
    from strata.ingest.pipeline import IngestPipeline
    from strata.ingest.transam import TransamIngest
    from strata.ingest.walingest import WalIngest
    from strata.pagestore import PageStore
    from strata.reconstruct.reconstruct import reconstruct_value
    from strata.timemap.timemap import TimeMap

    source = DataDirSource(cache / "base")
    store = PageStore.open(work / "layers", reconstruct_value, maintenance=maintenance,
                           background=background)
    timemap = TimeMap.open(work / "timemap")
    at = source.lsn
    ingest = WalIngest(store, timemap, TransamIngest(source.control()), start_lsn=at)
    import_datadir(source, ingest)
    store.flush()
    store.wait_maintenance()
    stream = FileStream(cache / "wal", at, at, source.controlfile.system_identifier,
                        source.controlfile.timeline)
    pipe = IngestPipeline(stream, ingest, start=at,  # type: ignore[arg-type]
                          segment_size=source.controlfile.xlog_seg_size, slot="bench",
                          receiver_file=work / "receiver.json")
    return store, timemap, pipe


def offline(args: argparse.Namespace) -> list[Row]:
    cache = Path(args.wal_cache) if args.wal_cache else scratch() / "wal-cache"
    cache.mkdir(parents=True, exist_ok=True)
    meta = record_wal(args, cache)
    work = scratch()
    rows: list[Row] = []
    try:
        store, timemap, pipe = open_offline(cache, work, maintenance=not args.no_maintenance)
        try:
            for ph in meta["phases"]:
                rows.append(offline_phase(args, pipe, ph, work))
                r = rows[-1]
                say(f"{r.name}: {r.wal_mib:.1f} MiB, {r.records} records, ingest "
                    f"{r.cpu_s['ingest']:.2f} CPU s ({r.cpu_s['ingest'] / max(r.wal_mib, 1e-9):.3f}"
                    f"/MiB), with flush + maintenance {r.cpu_s['total']:.2f} s")
        finally:
            store.close()
            timemap.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.wal_cache:
            shutil.rmtree(cache.parent, ignore_errors=True)
    return rows


def offline_phase(args: argparse.Namespace, pipe: Any, ph: dict[str, Any], work: Path) -> Row:
    start, end = Lsn.parse(ph["start"]), Lsn.parse(ph["end"])
    # everything before the workload (its setup) is ingested untimed
    feed_until(pipe, start, None)
    pipe.ingest.store.flush()
    pipe.ingest.store.wait_maintenance()
    layers0 = du(work / "layers")
    records0 = pipe.stats.records
    prof = cProfile.Profile() if args.profile else None
    c0, t0 = cpu_now(), time.perf_counter()
    feed_until(pipe, end, prof)
    c1, t1 = cpu_now(), time.perf_counter()
    pipe.ingest.store.flush()
    t2 = time.perf_counter()
    pipe.ingest.store.wait_maintenance()
    c2 = cpu_now()
    row = Row(ph["name"], wal_bytes=end - start, records=pipe.stats.records - records0,
              primary_s=ph["primary_s"], strata_catchup_s=t1 - t0, durable_s=t2 - t0,
              cpu_s={"ingest": c1 - c0, "total": c2 - c0},
              layer_bytes=du(work / "layers") - layers0)
    if prof is not None:
        out = Path(args.profile)
        out.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(out / f"{ph['name']}.prof")
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.profile_top)
        say(s.getvalue())
    return row


def feed_until(pipe: Any, lsn: Lsn, prof: cProfile.Profile | None) -> None:
    """Feed the WAL up to `lsn` (a record end) through the pipeline as its run loop
    does (`IngestPipeline.take`: a backlog in batches of up to 4 MiB), advancing
    every 8 MiB."""
    pipe.stream.limit = lsn
    pending = 0
    while pipe.processed < lsn:
        if prof is not None:
            prof.enable()
        chunks = pipe.take(0)
        if not chunks:
            raise RuntimeError(f"WAL ends at {pipe.processed} before {lsn}")
        pipe.feed(*chunks)
        pending += sum(len(c.data) for c in chunks)
        if pending >= 8 << 20 or pipe.processed >= lsn:
            pipe.advance(time.monotonic())
            pending = 0
        if prof is not None:
            prof.disable()


# -- report ---------------------------------------------------------------------------------


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def total_row(rows: list[Row]) -> Row:
    """Every workload together: which phase the maintenance of an earlier one lands in
    (its image layers, above all) is timing, the sum is not."""
    return Row("all", wal_bytes=sum(r.wal_bytes for r in rows),
               records=sum(r.records for r in rows), primary_s=sum(r.primary_s for r in rows),
               strata_catchup_s=sum(r.strata_catchup_s for r in rows),
               durable_s=sum(r.durable_s for r in rows),
               cpu_s={k: sum(r.cpu_s[k] for r in rows) for k in ("ingest", "total")},
               layer_bytes=sum(r.layer_bytes for r in rows))


def report(rows: list[Row], offline_mode: bool) -> str:
    if offline_mode:
        rows = [*rows, total_row(rows)] if len(rows) > 1 else rows
        head = ("| workload | WAL MiB | records | primary s | ingest wall s | durable wall s "
                "| MB/s to durable | ingest CPU s "
                "| CPU-s/MiB | incl. flush + maintenance CPU-s/MiB | k records/CPU-s | MB/CPU-s "
                "| layer B / WAL B |\n"
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
        body = "".join(
            f"| {r.name} | {r.wal_mib:.1f} | {r.records} | {r.primary_s:.2f} | "
            f"{r.strata_catchup_s:.2f} | {r.durable_s:.2f} | "
            f"{r.wal_bytes / 1e6 / max(r.durable_s, 1e-9):.0f} | {r.cpu_s['ingest']:.2f} | "
            f"{r.cpu_s['ingest'] / max(r.wal_mib, 1e-9):.3f} | "
            f"{r.cpu_s['total'] / max(r.wal_mib, 1e-9):.3f} | "
            f"{r.records / max(r.cpu_s['ingest'], 1e-9) / 1000:.0f} | "
            f"{r.wal_bytes / 1e6 / max(r.cpu_s['ingest'], 1e-9):.0f} | "
            f"{r.layer_bytes / max(r.wal_bytes, 1):.2f} |\n" for r in rows)
        return head + body
    head = ("| workload | WAL MiB | primary s | strata catch-up s (after the statement) "
            "| standby replay s | strata / replay | strata CPU-s per WAL MiB (per process) "
            "| layer B / WAL B |\n|---|---:|---:|---:|---:|---:|---|---:|\n")
    body = "".join(
        f"| {r.name} | {r.wal_mib:.1f} | {r.primary_s:.2f} | {r.strata_catchup_s:.2f} | "
        f"{r.standby_replay_s:.2f} | {r.strata_catchup_s / max(r.standby_replay_s, 1e-3):.1f}x | "
        + ", ".join(f"{k} {v / max(r.wal_mib, 1e-9):.3f}" for k, v in r.cpu_s.items())
        + f" | {r.layer_bytes / max(r.wal_bytes, 1):.2f} |\n" for r in rows)
    return head + body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every size (default 1)")
    ap.add_argument("--rows", type=int, default=2_000_000, help="CREATE TABLE AS rows")
    ap.add_argument("--update-rows", type=int, default=1_000_000, help="rows of the UPDATE")
    ap.add_argument("--pgbench-scale", type=int, default=20, help="pgbench -i -s")
    ap.add_argument("--tpcb-tx", type=int, default=10000,
                    help="transactions per pgbench client in the tpcb workload")
    ap.add_argument("--only", help="comma-separated workloads (ctas,update,delete,index,"
                                   "pgbench_init,btree,tpcb,tpcb_steady)")
    ap.add_argument("--offline", action="store_true",
                    help="record the WAL once, then ingest it from files in this process")
    ap.add_argument("--wal-cache", help="offline: keep/reuse the recorded WAL here")
    ap.add_argument("--no-maintenance", action="store_true",
                    help="offline: no compaction or images (the last CPU column is then "
                         "ingest + flush alone: the ingest service's share)")
    ap.add_argument("--profile", metavar="DIR", help="offline: cProfile files per workload")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--keep", action="store_true", help="keep the live run's scratch directory")
    args = ap.parse_args()
    rows = offline(args) if args.offline else live(args)
    print(report(rows, args.offline))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
