"""Benchmark time travel end to end: `strata up --source` on a live pgbench primary.

    python bench/bench_timetravel.py [--scales 10 100 300] [--lag-seconds 30] [--tps-seconds 20]
                                     [--select-seconds 15] [--tps-pairs 2]
                                     [--targets 30 300 1800] [--modes lazy materialize]
                                     [--profile] [--json OUT]

Per scale, in one run, against a PostgreSQL 18 primary this script starts
(WAL archiving on, otherwise defaults) so one base backup + one archive serve
native PITR:

 1. ``pgbench -i -s N``; TPS without strata (``pgbench -c 4 -j 2 -T tps``);
    a base backup (the native PITR oracle's); then ``strata up --source``
    (attach: its own base backup + import; timed) in a subprocess.
 2. Ingest lag while ``pgbench -c 4 -j 2 -T lag`` runs at full speed: every
    0.5 s the primary's ``pg_current_wal_lsn()``, ``<home>/status.json``
    (ingested_lsn, lag_bytes) and ``pg_stat_replication.write_lag``; lag in
    seconds = now - the moment the primary's WAL position passed the ingested
    LSN. Then the catch-up time after pgbench stops. With ``--profile``,
    py-spy samples the strata process meanwhile (raw stacks, aggregated here).
 3. TPS with strata attached (same pgbench, back to back with the run before
    the attach but for the import in between).
 4. Proxy overhead: ``pgbench -S -c 4 -j 2 -T select`` direct, then through the proxy.
 5. Time to the first historical query, at two quiesced record-boundary LSNs:
    cold (new LSN: SET, then the first row of a query = materialise + start +
    answer) and warm (pooled instance; a fresh session each time), next to
    native PITR (copy the backup, replay the archive to
    ``recovery_target_lsn`` (inclusive off), paused hot standby, first row),
    checked equal on a fingerprint query.
 6. Materialisation pages/s (strata's log line per instance, and an in-process
    ``materialize`` from the stopped store, profiled with cProfile with --profile);
    storage: ``du <home>/layers`` against WAL bytes ingested.
 7. Historical modes (``--modes lazy materialize``), from the stopped store, at
    ``--targets`` seconds into the pgbench -c4 -j2 run of step 2 (which then
    lasts at least the last target; default +30 s, +5 min, +30 min): per mode
    and target, a new server (`historical.modes` factory: the work a cold SET
    does once the LSN is resolved) and the time to the first row of
    ``SELECT sum(bbalance) FROM pgbench_branches`` and, on another new server,
    of ``SELECT count(*) FROM pgbench_accounts`` (the first, cold, full scan of
    pgbench_accounts in the past; then warm ones) against the same scan on the
    live primary (warm); memory (PSS of the server's processes and of the lazy
    file system) and disk (instance root; lazy: the overlay) per open point;
    native PITR to the same LSN for both queries, answers checked equal.

Quick check at a tiny size: ``--scales 1 --lag-seconds 6 --targets 2 4
--tps-seconds 2 --tps-pairs 1 --select-seconds 2``.

Results are printed as markdown (bench/results/timetravel.md keeps them) and,
with --json, written as JSON. Everything started here is stopped here.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from strata.historical.instance import HistoricalInstance, start_instance
from strata.historical.materialize import materialize
from strata.historical.modes import UNSUPPORTED_INDEX_AMS, make_factory
from strata.historical.pitr import (
    RecoveryTarget,
    archive_now,
    archive_settings,
    base_backup,
    recover_to,
)
from strata.historical.store_view import StoreView
from strata.key import Key, KeyKind
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.reconstruct.reconstruct import reconstruct_value
from strata.runtime.cluster import SUPERUSER, Cluster
from strata.storage.values import WalRecord

SCRATCH_ROOT = Path(tempfile.gettempdir()) / "strata-bench"
FIRST_ROW_SQL = "SELECT sum(bbalance) FROM pgbench_branches"
COUNT_SQL = "SELECT count(*) FROM pgbench_accounts"
SCAN_SQL = "SELECT sum(abalance) FROM pgbench_accounts"
FINGERPRINT_SQL = ("SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
                   "(SELECT sum(bbalance) FROM pgbench_branches), "
                   "(SELECT sum(tbalance) FROM pgbench_tellers), "
                   "(SELECT count(*) FROM pgbench_history)")
# The daemon with INFO logging (instance-ready lines) but without -v's per-record output.
DAEMON_WRAPPER = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr,"
                  " format='%(asctime)s %(levelname)s %(name)s: %(message)s');"
                  " from strata.cli.main import main; sys.exit(main(sys.argv[1:]))")
READY_RE = re.compile(r"historical instance at (\S+) ready in ([0-9.]+)s \((\d+) pages\)")
TPS_RE = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


# -- helpers -------------------------------------------------------------------------------


def scratch() -> Path:
    SCRATCH_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(SCRATCH_ROOT, 0o755)
    d = Path(tempfile.mkdtemp(prefix="tt-", dir=SCRATCH_ROOT))
    os.chmod(d, 0o755)  # the server user traverses it
    return d


def pgbench_argv(c: Cluster, port: int, *args: str) -> list[str]:
    return [str(c.bins.path("pgbench")), *args, "-h", "127.0.0.1", "-p", str(port),
            "-U", SUPERUSER, "postgres"]


def pgbench_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def pgbench(c: Cluster, port: int, *args: str) -> str:
    r = subprocess.run(pgbench_argv(c, port, *args), check=True, env=pgbench_env(),
                       capture_output=True, text=True)
    return r.stdout + r.stderr


def tps_of(output: str) -> float:
    m = TPS_RE.search(output)
    if m is None:
        raise RuntimeError(f"no tps line in pgbench output:\n{output}")
    return float(m.group(1))


def du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        d: dict[str, Any] = json.loads(path.read_text())
        return d
    except (OSError, ValueError):
        return None


def mib(n: float) -> float:
    return n / 2**20


def summary(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    return {"median": statistics.median(xs), "max": max(xs), "min": min(xs), "n": len(xs)}


def backup_start_lsn(backup: Path) -> Lsn:
    m = re.search(r"START WAL LOCATION: (\S+)", (backup / "backup_label").read_text())
    assert m is not None, "backup_label has no START WAL LOCATION"
    return Lsn.parse(m.group(1))


# -- strata up -------------------------------------------------------------------------------


class Strata:
    """`strata up --source DSN` in a subprocess, stdout/stderr to files in `home`'s parent."""

    def __init__(self, base: Path, dsn: str) -> None:
        self.home = base / "home"
        self.out = base / "strata.out"
        self.err = base / "strata.err"
        self._fo = self.out.open("a")  # appended: a restart (resume) keeps the earlier lines
        self._fe = self.err.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DAEMON_WRAPPER, "up", "--home", str(self.home), "--port", "0",
             "--source", dsn, "--progress-interval", "0.5", "--status-interval", "1"],
            stdout=self._fo, stderr=self._fe)

    def wait_ready(self, timeout: float = 1800) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = read_json(self.home / "state.json")
            if st is not None and st.get("proxy_port"):
                return st
            if self.proc.poll() is not None:
                raise RuntimeError(f"strata up exited {self.proc.returncode}:\n"
                                   + self.err.read_text()[-3000:])
            time.sleep(0.1)
        raise RuntimeError("strata up did not become ready")

    def status(self) -> dict[str, Any] | None:
        return read_json(self.home / "status.json")

    def ingested(self) -> Lsn:
        st = self.status()
        return Lsn.parse(st["ingested_lsn"]) if st else Lsn(0)

    def wait_ingested(self, lsn: Lsn, timeout: float = 600) -> float:
        """Seconds until status.json shows ingested_lsn >= lsn."""
        t0 = time.monotonic()
        while self.ingested() < lsn:
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"ingest did not reach {lsn} in {timeout} s")
            if self.proc.poll() is not None:
                raise RuntimeError("strata up died:\n" + self.err.read_text()[-3000:])
            time.sleep(0.05)
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._fo.close()
        self._fe.close()

    def ready_lines(self) -> list[tuple[str, float, int]]:
        return [(m.group(1), float(m.group(2)), int(m.group(3)))
                for m in READY_RE.finditer(self.err.read_text())]


def wal_lsn(c: Cluster) -> Lsn:
    return Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()")[0][0])


# -- measurements -----------------------------------------------------------------------------


def start_spy(pid: int, seconds: int, out: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy sampling `pid` at 25 Hz without stopping it (raw collapsed stacks to `out`)."""
    if out is None or shutil.which("py-spy") is None:
        return None
    return subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(seconds), "-r", "25",
                             "--nonblocking", "-f", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure_lag(c: Cluster, s: Strata, seconds: int, profile_out: Path | None) -> dict[str, Any]:
    """pgbench at full speed; sample the primary's WAL position and strata's ingest every 0.5 s."""
    spy = start_spy(s.proc.pid, seconds + 2, profile_out)
    history: list[tuple[float, int]] = []  # (t, primary WAL position)
    samples: list[dict[str, float]] = []
    conn = psycopg.connect(c.dsn(), autocommit=True)
    start_lsn = wal_lsn(c)
    ingested0 = s.ingested()
    t0 = time.monotonic()
    bench = subprocess.Popen(pgbench_argv(c, c.port, "-c", "4", "-j", "2", "-T", str(seconds)),
                             env=pgbench_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    history.append((t0, start_lsn))

    def sample(phase: str) -> None:
        now = time.monotonic()
        row = conn.execute("SELECT pg_current_wal_lsn(), (SELECT extract(epoch FROM write_lag) "
                           "FROM pg_stat_replication WHERE application_name IS NOT NULL "
                           "ORDER BY backend_start DESC LIMIT 1)").fetchone()
        assert row is not None
        primary = Lsn.parse(str(row[0]))
        history.append((now, primary))
        st = s.status() or {}
        ingested = Lsn.parse(st.get("ingested_lsn", "0/0"))
        # when did the primary's position first pass `ingested`? (lag in seconds)
        passed = next((t for t, p in history if p >= ingested), now)
        samples.append({"t": now - t0, "phase": 0 if phase == "run" else 1,
                        "lag_bytes": float(max(0, primary - ingested)),
                        "status_lag_bytes": float(st.get("lag_bytes", 0)),
                        "lag_seconds": now - passed,
                        "write_lag": float(row[1]) if row[1] is not None else -1.0})

    while bench.poll() is None:
        sample("run")
        time.sleep(0.5)
    t_end = time.monotonic()
    out = bench.communicate()[0]
    end_lsn = wal_lsn(c)
    history.append((t_end, end_lsn))
    while s.ingested() < end_lsn:
        if time.monotonic() - t_end > 900:
            raise RuntimeError("ingest did not catch up in 900 s")
        sample("drain")
        time.sleep(0.5)
    t_caught = time.monotonic()
    conn.close()
    if spy is not None:
        spy.wait(60)
    run = [x for x in samples if x["phase"] == 0]
    wal_bytes = end_lsn - start_lsn
    return {
        "seconds": t_end - t0,
        "tps": tps_of(out),
        "wal_bytes": wal_bytes,
        "primary_wal_mb_s": mib(wal_bytes) / (t_end - t0),
        "ingest_mb_s": mib(end_lsn - ingested0) / (t_caught - t0),
        "catchup_after_stop_s": t_caught - t_end,
        "lag_bytes": summary([x["lag_bytes"] for x in run]),
        "status_lag_bytes": summary([x["status_lag_bytes"] for x in run]),
        "lag_seconds": summary([x["lag_seconds"] for x in run]),
        "write_lag_s": summary([x["write_lag"] for x in run if x["write_lag"] >= 0]),
        "samples": samples,
        "lsn_history": [(t - t0, int(lsn)) for t, lsn in history],
    }


def time_travel(proxy_port: int, lsn: Lsn, warm_runs: int = 3) -> dict[str, Any]:
    dsn = f"host=127.0.0.1 port={proxy_port} dbname=postgres user={SUPERUSER}"
    res: dict[str, Any] = {"lsn": str(lsn)}

    def once() -> tuple[float, float, float, Any]:
        t0 = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            t1 = time.perf_counter()
            conn.execute(f"SET strata.travel_lsn = '{lsn}'")
            t2 = time.perf_counter()
            conn.execute(FIRST_ROW_SQL).fetchone()
            t3 = time.perf_counter()
            fp = conn.execute(FINGERPRINT_SQL).fetchone()
        assert fp is not None
        return t1 - t0, t2 - t1, t3 - t1, fp

    connect, set_s, first, fp = once()
    res.update(cold_connect_s=connect, cold_set_s=set_s, cold_first_row_s=first,
               fingerprint=[str(v) for v in fp])
    warm = [once() for _ in range(warm_runs)]
    res["warm_first_row_s"] = summary([w[2] for w in warm])
    res["warm_connect_s"] = summary([w[0] for w in warm])
    return res


def native_pitr(backup: Path, archive: Path, work: Path, lsn: Lsn) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = recover_to(backup, archive, work, RecoveryTarget(lsn=lsn), timeout=600)
    try:
        t1 = time.perf_counter()
        with psycopg.connect(r.dsn(), autocommit=True) as conn:
            conn.execute(FIRST_ROW_SQL).fetchone()
            t2 = time.perf_counter()
            fp = conn.execute(FINGERPRINT_SQL).fetchone()
            assert fp is not None
            count = conn.execute(COUNT_SQL).fetchone()
    finally:
        r.stop("immediate")
        shutil.rmtree(work, ignore_errors=True)
    return {"first_row_s": t2 - t0, "restore_replay_pause_s": t1 - t0,
            "fingerprint": [str(v) for v in fp], "branches": str(fp[1]),
            "count": str(count[0]) if count else None}


def inprocess_materialize(home: Path, lsn: Lsn, work: Path, profile: bool,
                          relnames: dict[int, str]) -> dict[str, Any]:
    """From the stopped store: materialise at `lsn` and start the instance, each timed
    (the split of a cold SET); then, with `profile`, materialise again under cProfile.
    Counts the WAL records replayed per page (the hot pages' delta chains)."""
    replayed: Counter[Key] = Counter()

    def counting_redo(key: Key, base: bytes | None, records: list[WalRecord]) -> bytes:
        replayed[key] += len(records)
        return reconstruct_value(key, base, records)

    store = PageStore.open(home / "layers", counting_redo, background=False)
    res: dict[str, Any] = {}
    try:
        root = work / "plain"
        root.mkdir(parents=True)
        root.chmod(0o755)
        mat = materialize(StoreView(store, lsn), root / "data")
        res.update(pages=mat.pages, seconds=mat.seconds, pages_per_s=mat.pages_per_second,
                   bytes=mat.bytes_written)
        res["replayed_records"] = sum(replayed.values())
        res["replayed_pages"] = len(replayed)
        res["longest_chains"] = [
            (f"{relnames.get(k.rel, k.rel)} fork {k.fork} blk {k.blk}"
             if k.kind == KeyKind.REL_BLOCK else str(k), n)
            for k, n in replayed.most_common(8)]
        t = time.perf_counter()
        inst = start_instance(mat, root=root, invalid_index_ams=UNSUPPORTED_INDEX_AMS)
        try:
            with psycopg.connect(inst.cluster.dsn(), autocommit=True) as conn:
                conn.execute(FIRST_ROW_SQL).fetchone()
            res["start_and_first_row_s"] = time.perf_counter() - t
        finally:
            inst.stop()
        shutil.rmtree(root, ignore_errors=True)
        if profile:
            prof = cProfile.Profile()
            prof.enable()
            materialize(StoreView(store, lsn), work / "profiled" / "data")
            prof.disable()
            for key, order, n in (("cprofile_tottime", "tottime", 20),
                                  ("cprofile_cumulative", "cumulative", 30)):
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats(order).print_stats(n)
                res[key] = buf.getvalue()
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    return res


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size of `pids` (shared memory split among its users)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
    return total


def server_pids(postmaster: int) -> list[int]:
    kids = Path(f"/proc/{postmaster}/task/{postmaster}/children")
    try:
        return [postmaster, *map(int, kids.read_text().split())]
    except OSError:
        return [postmaster]


def timed_first_row(factory: Any, lsn: Lsn, root: Path, sql: str
                    ) -> tuple[HistoricalInstance, float, str, float]:
    """A new server at `lsn` (what a cold SET does after resolving it) and the first
    row: (instance, seconds to the first row, the value, seconds of that to start)."""
    t0 = time.perf_counter()
    inst = factory(lsn, root)
    started = time.perf_counter() - t0
    try:
        with psycopg.connect(inst.dsn(), autocommit=True) as conn:
            row = conn.execute(sql).fetchone()
        assert row is not None
    except BaseException:
        inst.remove()  # the caller never sees it: its server and mount end here
        raise
    return inst, time.perf_counter() - t0, str(row[0]), started


def point_cost(inst: HistoricalInstance) -> dict[str, int]:
    pid = inst.cluster.postmaster_pid()
    mem = pss_bytes(server_pids(pid)) if pid else 0
    fs = pss_bytes([inst.mount.pid]) if inst.mount is not None else 0
    disk = du(inst.root / "overlay") if inst.mount is not None else du(inst.root)
    return {"server_pss": mem, "fs_pss": fs, "disk": disk}


def scan_seconds(dsn: str, runs: int = 2, sql: str = SCAN_SQL) -> list[float]:
    """Seconds of each of `runs` runs of `sql` (a warm full scan by default)."""
    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(runs):
            t = time.perf_counter()
            conn.execute(sql).fetchone()
            out.append(time.perf_counter() - t)
    return out


def historical_modes(home: Path, targets: list[tuple[int, Lsn]], modes: list[str],
                     work: Path) -> list[dict[str, Any]]:
    """Step 7 (see the module docstring) for every target and mode, from the stopped store."""
    store = PageStore.open(home / "layers", reconstruct_value, background=False)
    out = []
    try:
        for mode in modes:
            factory = make_factory(store, home / "layers", mode=mode,
                                   instances_root=work / "instances")
            # as in a running daemon: the spare file system process is ready and has
            # opened the store (lazyfs.PREOPEN_AFTER, then the open itself)
            time.sleep(6)
            try:
                for offset, lsn in targets:
                    r: dict[str, Any] = {"mode": factory.mode.value, "offset_s": offset,
                                         "lsn": str(lsn), "reason": factory.reason}
                    inst, r["branches_first_row_s"], r["branches"], r["start_s"] = \
                        timed_first_row(factory, lsn, work / f"{mode}-{offset}-b", FIRST_ROW_SQL)
                    inst.remove()
                    inst, r["count_first_row_s"], r["count"], started = timed_first_row(
                        factory, lsn, work / f"{mode}-{offset}-c", COUNT_SQL)
                    try:
                        # the count was the first (cold) full scan; then two more
                        r["scan_s"] = [r["count_first_row_s"] - started, *scan_seconds(inst.dsn())]
                        r.update(point_cost(inst))
                    finally:
                        inst.remove()
                    out.append(r)
                    say(f"  {mode} at +{offset} s ({lsn}): branches {r['branches_first_row_s']:.2f}"
                        f" s, accounts count {r['count_first_row_s']:.2f} s, scan cold "
                        f"{r['scan_s'][0]:.2f} s, warm {r['scan_s'][-1]:.2f} s, server {mib(r['server_pss']):.0f} MiB, "
                        f"fs {mib(r['fs_pss']):.0f} MiB, disk {mib(r['disk']):.0f} MiB")
            finally:
                factory.close()
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    return out


def lsn_at(history: list[tuple[float, int]], offset: float) -> Lsn:
    """The primary's WAL position sampled closest after `offset` seconds into the run."""
    return Lsn(next((lsn for t, lsn in history if t >= offset), history[-1][1]))


def aggregate_pyspy(path: Path, top: int = 20) -> dict[str, list[tuple[str, float]]]:
    """py-spy raw output (one `frame;frame;... count` per line): self and inclusive shares."""
    if not path.exists():
        return {}
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    thread_c: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        total += count
        thread_c[frames[0]] += count
        self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if total == 0:
        return {}
    return {
        "threads": [(k, v / total) for k, v in thread_c.most_common(8)],
        "self": [(k, v / total) for k, v in self_c.most_common(top)],
        "inclusive": [(k, v / total) for k, v in incl.most_common(top + 15)],
        "samples": [("total", float(total))],
    }


# -- one scale ----------------------------------------------------------------------------------


def run_scale(scale: int, args: argparse.Namespace) -> dict[str, Any]:
    base = scratch()
    r: dict[str, Any] = {"scale": scale, "load_start": os.getloadavg()}
    archive = base / "archive"
    c = Cluster(datadir=base / "primary" / "data")
    c.initdb(settings=archive_settings(archive))
    c.start()
    strata: Strata | None = None
    try:
        t = time.perf_counter()
        pgbench(c, c.port, "-i", "-q", "-s", str(scale))
        r["pgbench_init_s"] = time.perf_counter() - t
        r["db_bytes"] = int(c.sql("SELECT pg_database_size('postgres')")[0][0])
        say(f"scale {scale}: init {r['pgbench_init_s']:.1f} s, {mib(r['db_bytes']):.0f} MiB")
        w0 = wal_lsn(c)
        r["tps_without"] = tps_of(pgbench(c, c.port, "-c", "4", "-j", "2",
                                          "-T", str(args.tps_seconds)))
        r["tps_without_wal_mb_s"] = mib(wal_lsn(c) - w0) / args.tps_seconds
        say(f"  tps without strata {r['tps_without']:.0f}")
        t = time.perf_counter()
        backup = base_backup(c, base / "backup")
        r["native_backup_s"] = time.perf_counter() - t
        backup_lsn = backup_start_lsn(backup)

        t = time.perf_counter()
        strata = Strata(base, c.dsn())
        state = strata.wait_ready()
        r["strata_attach_import_s"] = time.perf_counter() - t
        proxy = int(state["proxy_port"])
        r["catchup_after_attach_s"] = strata.wait_ingested(wal_lsn(c))
        r["layers_after_import_bytes"] = du(strata.home / "layers")
        say(f"  strata attached + imported in {r['strata_attach_import_s']:.1f} s")

        pyspy_out = base / "pyspy-ingest.txt" if args.profile else None
        r["lag"] = measure_lag(c, strata, max(args.lag_seconds, max(args.targets) + 2),
                               pyspy_out)
        mode_targets = [(t, lsn_at(r["lag"]["lsn_history"], t)) for t in args.targets]
        say(f"  lag run: tps {r['lag']['tps']:.0f}, WAL {r['lag']['primary_wal_mb_s']:.1f} MB/s, "
            f"ingest {r['lag']['ingest_mb_s']:.1f} MB/s, max lag "
            f"{mib(r['lag']['lag_bytes'].get('max', 0)):.1f} MiB")
        if pyspy_out is not None:
            r["pyspy_ingest"] = aggregate_pyspy(pyspy_out)
        target1 = wal_lsn(c)

        # TPS with strata attached and without, alternated (stop strata; start it
        # again, it resumes from durable_lsn, and catches up before the next "with").
        r["tps_with"], r["tps_without_pairs"], r["resume_s"] = [], [], []
        r["catchup_after_tps_with_s"] = []
        for _ in range(args.tps_pairs):
            r["tps_with"].append(tps_of(pgbench(c, c.port, "-c", "4", "-j", "2",
                                                "-T", str(args.tps_seconds))))
            r["catchup_after_tps_with_s"].append(strata.wait_ingested(wal_lsn(c)))
            strata.stop()
            r["tps_without_pairs"].append(tps_of(pgbench(c, c.port, "-c", "4", "-j", "2",
                                                         "-T", str(args.tps_seconds))))
            t = time.perf_counter()
            strata = Strata(base, c.dsn())
            proxy = int(strata.wait_ready()["proxy_port"])
            r["resume_s"].append(time.perf_counter() - t)
            strata.wait_ingested(wal_lsn(c))
            say(f"  tps with strata {r['tps_with'][-1]:.0f}, without "
                f"{r['tps_without_pairs'][-1]:.0f}")
        target2 = wal_lsn(c)
        strata.wait_ingested(target2)

        sel = ("-S", "-c", "4", "-j", "2", "-T", str(args.select_seconds))
        r["select_direct_tps"] = tps_of(pgbench(c, c.port, *sel))
        spy = start_spy(strata.proc.pid, args.select_seconds,
                        base / "pyspy-proxy.txt" if args.profile else None)
        r["select_proxy_tps"] = tps_of(pgbench(c, proxy, *sel))
        if spy is not None:
            spy.wait(60)
            r["pyspy_proxy"] = aggregate_pyspy(base / "pyspy-proxy.txt")
        say(f"  -S direct {r['select_direct_tps']:.0f}, proxy {r['select_proxy_tps']:.0f}")

        archive_now(c)
        strata.wait_ingested(target2)
        r["targets"] = []
        for lsn in (target1, target2):
            tt = time_travel(proxy, lsn)
            nat = native_pitr(backup, archive, base / "pitr", lsn)
            tt["native"] = nat
            tt["wal_to_replay_bytes"] = lsn - backup_lsn
            tt["match"] = tt["fingerprint"] == nat["fingerprint"]
            r["targets"].append(tt)
            say(f"  at {lsn}: strata cold {tt['cold_first_row_s']:.2f} s, warm "
                f"{tt['warm_first_row_s']['median'] * 1000:.1f} ms, native "
                f"{nat['first_row_s']:.2f} s, match {tt['match']}")
        st = strata.status() or {}
        r["instances"] = st.get("instances", [])
        strata.stop()
        r["instance_ready"] = strata.ready_lines()
        hist = read_json(strata.home / "history.json") or {}
        rec = read_json(strata.home / "receiver.json") or {}
        start = Lsn.parse(hist["start_lsn"])
        durable = Lsn.parse(rec["flushed_lsn"])
        r["wal_ingested_bytes"] = durable - start
        r["layers_bytes"] = du(strata.home / "layers")
        r["layer_levels"] = st.get("layers", {})
        relnames = {int(n): str(name) for n, name in c.sql(
            "SELECT pg_relation_filenode(oid), relname FROM pg_class "
            "WHERE pg_relation_filenode(oid) IS NOT NULL")}
        r["materialize"] = inprocess_materialize(strata.home, target2, base / "mat",
                                                 args.profile and scale == min(args.scales),
                                                 relnames)
        say(f"  materialize in-process {r['materialize']['pages_per_s']:.0f} pages/s")
        c.sql("CHECKPOINT")
        r["live_scan_s"] = scan_seconds(c.dsn())
        r["modes"] = historical_modes(strata.home, mode_targets, args.modes, base / "modes")
        for offset, lsn in mode_targets:
            nat = native_pitr(backup, archive, base / "pitr", lsn)
            for m in r["modes"]:
                if m["offset_s"] == offset:
                    m["native_first_row_s"] = nat["first_row_s"]
                    m["match"] = (m["branches"], m["count"]) == (nat["branches"], nat["count"])
        r["load_end"] = os.getloadavg()
        return r
    finally:
        if strata is not None:
            strata.stop()
        c.stop("fast")
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            say(f"  kept {base}")


# -- report ---------------------------------------------------------------------------------------


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def report(results: list[dict[str, Any]]) -> str:
    lines = ["| measure | " + " | ".join(f"scale {r['scale']}" for r in results) + " |",
             "|---|" + "---|" * len(results)]

    def row(name: str, fn: Any) -> None:
        cells = []
        for r in results:
            try:
                cells.append(fn(r))
            except (KeyError, IndexError, TypeError):
                cells.append("-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row("load averages (1/5/15 min) at start / end of the scale", lambda r: (
        "/".join(f"{x:.1f}" for x in r["load_start"]) + " ; "
        + "/".join(f"{x:.1f}" for x in r["load_end"])))
    row("database size", lambda r: f"{mib(r['db_bytes']):.0f} MiB")
    row("strata attach (base backup + import)", lambda r: f"{r['strata_attach_import_s']:.1f} s")
    for i in (0, 1):
        row(f"target {i + 1}: WAL since the base backup",
            lambda r, i=i: f"{mib(r['targets'][i]['wal_to_replay_bytes']):.0f} MiB")
        row(f"target {i + 1}: strata cold, SET -> first row",
            lambda r, i=i: f"**{r['targets'][i]['cold_first_row_s']:.2f} s**")
        row(f"target {i + 1}: (of which the SET: resolve the LSN)",
            lambda r, i=i: f"{r['targets'][i]['cold_set_s'] * 1000:.0f} ms")
        row(f"target {i + 1}: strata warm, SET -> first row (median of 3)",
            lambda r, i=i: f"{r['targets'][i]['warm_first_row_s']['median'] * 1000:.1f} ms")
        row(f"target {i + 1}: native PITR, restore + replay -> first row",
            lambda r, i=i: f"**{r['targets'][i]['native']['first_row_s']:.2f} s**")
        row(f"target {i + 1}: (of which restore + replay until paused)",
            lambda r, i=i: f"{r['targets'][i]['native']['restore_replay_pause_s']:.2f} s")
        row(f"target {i + 1}: same answer as native PITR",
            lambda r, i=i: "yes" if r['targets'][i]['match'] else "**NO**")
    row("instance ready (materialise+start), strata log",
        lambda r: ", ".join(f"{s:.2f} s / {p} pages" for _, s, p in r["instance_ready"]))
    row("materialise pages/s (in-process, target 2)",
        lambda r: f"{r['materialize']['pages_per_s']:,.0f} ({r['materialize']['pages']:,} pages"
                  f" in {r['materialize']['seconds']:.2f} s)")
    row("WAL records replayed to materialise target 2 (pages with any)", lambda r: (
        f"{r['materialize']['replayed_records']:,} ({r['materialize']['replayed_pages']:,})"))
    row("longest delta chains replayed (records)", lambda r: "; ".join(
        f"{name}: {n:,}" for name, n in r["materialize"]["longest_chains"][:4]))
    row("in-process: instance start + first row (after materialise)",
        lambda r: f"{r['materialize']['start_and_first_row_s']:.2f} s")
    modes = sorted({(m["mode"], m["offset_s"]) for r in results for m in r.get("modes", [])},
                   key=lambda x: (x[1], x[0]))

    def mode_cell(r: dict[str, Any], mode: str, offset: int, fn: Any) -> str:
        m = next(m for m in r["modes"] if (m["mode"], m["offset_s"]) == (mode, offset))
        return str(fn(m))

    for mode, offset in modes:
        what = f"{mode} at +{offset} s"
        row(f"{what}: new server -> first row, pgbench_branches sum", lambda r, m=mode, o=offset:
            mode_cell(r, m, o, lambda x: f"**{x['branches_first_row_s']:.2f} s** (native PITR "
                                         f"{x['native_first_row_s']:.2f} s)"))
        row(f"{what}: new server -> first row, pgbench_accounts count",
            lambda r, m=mode, o=offset: mode_cell(
                r, m, o, lambda x: f"**{x['count_first_row_s']:.2f} s**"))
        row(f"{what}: (of which the new server, until it accepts connections)",
            lambda r, m=mode, o=offset: mode_cell(r, m, o, lambda x: f"{x['start_s']:.2f} s"))
        row(f"{what}: full scan of pgbench_accounts in the past, cold / warm; live, warm",
            lambda r, m=mode, o=offset: mode_cell(
                r, m, o, lambda x: f"{x['scan_s'][0]:.2f} s / {x['scan_s'][-1]:.2f} s; "
                                   f"{r['live_scan_s'][-1]:.2f} s (cold "
                                   f"{x['scan_s'][0] / r['live_scan_s'][-1]:.1f}x)"))
        row(f"{what}: memory (server PSS + file system PSS), disk", lambda r, m=mode, o=offset:
            mode_cell(r, m, o, lambda x: f"{mib(x['server_pss']):.0f} + {mib(x['fs_pss']):.0f}"
                                         f" MiB, {mib(x['disk']):.0f} MiB"))
        row(f"{what}: same answers as native PITR", lambda r, m=mode, o=offset: mode_cell(
            r, m, o, lambda x: "yes" if x["match"] else "**NO**"))
    row("pgbench TPS during lag run (-c4 -j2)", lambda r: f"{r['lag']['tps']:.0f}")
    row("primary WAL MB/s (lag run)", lambda r: f"{r['lag']['primary_wal_mb_s']:.1f}")
    row("strata decode+ingest MB/s (start -> caught up)", lambda r: f"{r['lag']['ingest_mb_s']:.1f}")
    row("ingest lag bytes, median / max", lambda r: (
        f"{mib(r['lag']['lag_bytes']['median']):.1f} / {mib(r['lag']['lag_bytes']['max']):.1f} MiB"))
    row("status.json lag_bytes, median / max", lambda r: (
        f"{mib(r['lag']['status_lag_bytes']['median']):.1f} / "
        f"{mib(r['lag']['status_lag_bytes']['max']):.1f} MiB"))
    row("ingest lag seconds, median / max", lambda r: (
        f"{r['lag']['lag_seconds']['median']:.1f} / {r['lag']['lag_seconds']['max']:.1f} s"))
    row("pg_stat_replication write_lag, median / max", lambda r: (
        f"{r['lag']['write_lag_s']['median']:.1f} / {r['lag']['write_lag_s']['max']:.1f} s"))
    row("catch-up after pgbench stopped", lambda r: f"{r['lag']['catchup_after_stop_s']:.1f} s")
    row("TPS without strata, before the attach (-c4 -j2)", lambda r: f"{r['tps_without']:.0f}")
    row("TPS with strata attached, each run", lambda r: ", ".join(
        f"{x:.0f}" for x in r["tps_with"]))
    row("TPS without strata (stopped), each run right after", lambda r: ", ".join(
        f"{x:.0f}" for x in r["tps_without_pairs"]))
    row("TPS with / without, median of the runs", lambda r: (
        f"{statistics.median(r['tps_with']):.0f} / "
        f"{statistics.median([r['tps_without'], *r['tps_without_pairs']]):.0f} ("
        f"{statistics.median(r['tps_with']) / statistics.median([r['tps_without'], *r['tps_without_pairs']]):.0%})"))
    row("catch-up after each TPS-with run", lambda r: ", ".join(
        f"{x:.1f} s" for x in r["catchup_after_tps_with_s"]))
    row("strata restart (resume) until the proxy listens", lambda r: ", ".join(
        f"{x:.1f} s" for x in r["resume_s"]))
    row("pgbench -S TPS direct", lambda r: f"{r['select_direct_tps']:.0f}")
    row("pgbench -S TPS through the proxy", lambda r: (
        f"{r['select_proxy_tps']:.0f} ({r['select_proxy_tps'] / r['select_direct_tps']:.0%})"))
    row("WAL ingested (history start -> end)", lambda r: f"{mib(r['wal_ingested_bytes']):.0f} MiB")
    row("layers on disk after import", lambda r: f"{mib(r['layers_after_import_bytes']):.0f} MiB")
    row("layers on disk at the end", lambda r: f"{mib(r['layers_bytes']):.0f} MiB")
    row("layers by level (count, MiB)", lambda r: ", ".join(
        f"{k} {v['count']}, {mib(v['bytes']):.0f}" for k, v in r["layer_levels"].items()))
    row("layer bytes per WAL byte (growth / WAL)", lambda r: (
        f"{(r['layers_bytes'] - r['layers_after_import_bytes']) / r['wal_ingested_bytes']:.2f}"))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[10])
    ap.add_argument("--lag-seconds", type=int, default=30)
    ap.add_argument("--tps-seconds", type=int, default=20)
    ap.add_argument("--select-seconds", type=int, default=15)
    ap.add_argument("--tps-pairs", type=int, default=2,
                    help="alternations of pgbench with strata attached / stopped")
    ap.add_argument("--targets", type=int, nargs="+", default=[30, 300, 1800],
                    help="seconds into the pgbench run of step 2 to travel to in step 7")
    ap.add_argument("--modes", nargs="+", default=["lazy", "materialize"],
                    choices=["lazy", "materialize", "auto"])
    ap.add_argument("--profile", action="store_true",
                    help="py-spy on strata during the lag run; cProfile of materialize")
    ap.add_argument("--json", type=Path, help="write every number (and the samples) here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directories")
    args = ap.parse_args()
    load0 = os.getloadavg()
    t0 = time.time()
    results = [run_scale(s, args) for s in args.scales]
    load1 = os.getloadavg()
    print(f"# time travel benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))}, "
          f"{time.time() - t0:.0f} s; nproc {os.cpu_count()}; load averages before "
          f"{', '.join(f'{x:.2f}' for x in load0)}, after {', '.join(f'{x:.2f}' for x in load1)}\n")
    print(report(results))
    for r in results:
        for key, what in (("pyspy_ingest", "during the lag run"),
                          ("pyspy_proxy", "during pgbench -S through the proxy")):
            if key not in r:
                continue
            print(f"\n## py-spy, strata process {what} (scale {r['scale']})\n")
            for kind in ("samples", "threads", "self", "inclusive"):
                print(f"{kind}:")
                for name, share in r[key].get(kind, []):
                    print(f"  {share:6.1%}  {name}" if kind != "samples" else f"  {share:.0f}")
        if "cprofile_tottime" in r.get("materialize", {}):
            print(f"\n## cProfile of materialize (scale {r['scale']})\n")
            print(r["materialize"]["cprofile_tottime"])
            print(r["materialize"]["cprofile_cumulative"])
    if args.json is not None:
        args.json.write_text(json.dumps({"load_before": load0, "load_after": load1,
                                         "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
