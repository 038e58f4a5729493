"""Native PITR as the oracle for time travel through `strata up` in attach mode.

A primary the test starts itself (WAL archived) gets pgbench tables and a base
backup (the PITR starting point); then ``strata up --source`` attaches to it
(its own base backup over the replication protocol: history starts at that
backup's end) and a workload runs: pgbench runs with DDL between them. At
five record-boundary LSNs X (quiet points between phases, and record starts
picked at random from the archived WAL, inside pgbench runs) a session through
the proxy with ``SET strata.travel_lsn = X`` must answer exactly as a
PostgreSQL recovered from the base backup with ``recovery_target_lsn = X``,
``recovery_target_inclusive = off`` (stops before the record starting at X:
every record ending at or before X applied), paused as a hot standby. At
five times T (quiet points, and moments inside pgbench runs)
``SET strata.travel_time = T`` resolves to an LSN X (the end of the last
commit before the first commit later than T) and must answer exactly as native
PITR with ``recovery_target_lsn = X``, and as ``recovery_target_time = T``
apart from sequences (native PITR by time also replays the next transaction's
nextval() WAL written before its commit; strata leaves it out, so its
sequences are never ahead).
Compared: the fingerprint of tests/e2e/workload.py (sequences exactly: both
sides are rebuilt from WAL) and pgbench queries. The same checks also run
through psycopg 3 prepared statements in pipeline mode. At the end SIGTERM
must stop strata and every historical server it started.

A paused hot standby that stopped inside a transaction holding an
AccessExclusiveLock (pgbench's TRUNCATE, DDL) cannot read that table; such an
oracle is promoted at the same point first (`_readable`), which changes no
visible state.

Attach mode, history workload (marked slow): another primary started here,
``strata up --source`` on it, shared/workloads/history.sql; after every step,
travel by LSN and by time through the proxy reproduces the step's fingerprint
(sequences within the values nextval() WAL-logs ahead).

The random picks are printed (seed in STRATA_ORACLE_SEED to repeat a choice
of quiet points; record starts depend on the run's WAL).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from strata.historical.pitr import (
    RecoveryTarget,
    archive_now,
    archive_settings,
    base_backup,
    recover_to,
)
from strata.lsn import Lsn
from strata.runtime.cluster import SUPERUSER, Cluster
from strata.runtime.osuser import run_as_server
from strata.storage.manifest import load_manifest
from strata.wal.segments import find_first_record, iter_raw_records
from tests.conftest import _scratch, make_cluster, wait_clock_past
from tests.e2e.workload import (
    WORKLOADS,
    StepPoint,
    fingerprint,
    first_difference,
    load_steps,
    run_steps,
)
from tests.strata_proc import StrataUp, processes_under

pytestmark = [pytest.mark.e2e]

N_POINTS = 5

# Compared on both sides besides the fingerprint (pgbench's own invariants and
# index paths: aid lookups go through pgbench_accounts_pkey).
QUERIES: tuple[str, ...] = (
    "SELECT sum(abalance)::bigint, count(*) FROM pgbench_accounts",
    "SELECT sum(bbalance)::bigint, count(*) FROM pgbench_branches",
    "SELECT sum(tbalance)::bigint, count(*) FROM pgbench_tellers",
    "SELECT count(*), coalesce(sum(delta), 0)::bigint, max(mtime)::text FROM pgbench_history",
    "SELECT c.relname, c.relkind FROM pg_class c "
    "WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1",
    "SELECT count(*) FROM pgbench_accounts WHERE abalance <> 0",
)
LOOKUP = "SELECT aid, abalance FROM pgbench_accounts WHERE aid = %s"
LOOKUP_AIDS = (1, 4242, 50_000, 99_999)

DDL_1 = (
    "ALTER TABLE pgbench_history ADD COLUMN note text",
    "ALTER TABLE pgbench_accounts ADD COLUMN flag int DEFAULT 7",
    "CREATE TABLE extra (id serial PRIMARY KEY, v text, n numeric)",
    "INSERT INTO extra (v, n) SELECT 'v' || g, g * 1.5 FROM generate_series(1, 2000) g",
    "CREATE INDEX pgbench_history_aid ON pgbench_history (aid)",
    "UPDATE pgbench_accounts SET flag = 1 WHERE aid % 97 = 0",
)
DDL_2 = (
    "TRUNCATE pgbench_history",
    "DROP TABLE extra",
    "CREATE TABLE extra2 AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 1500) g",
    "CREATE INDEX extra2_h ON extra2 (h)",
    "DELETE FROM pgbench_accounts WHERE aid % 1000 = 3",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, note) "
    "SELECT 1, 1, g, g, now(), 'bulk' FROM generate_series(1, 300) g",
)


@dataclass(frozen=True, slots=True)
class Target:
    """One point to compare: an LSN or a timestamptz literal, and how it was chosen."""

    kind: str  # "lsn" | "time"
    value: str
    why: str

    def recovery_target(self) -> RecoveryTarget:
        return RecoveryTarget(lsn=Lsn.parse(self.value)) if self.kind == "lsn" \
            else RecoveryTarget(time=self.value)

    def set_sql(self) -> str:
        return f"SET strata.travel_{self.kind} = '{self.value}'"

    def __str__(self) -> str:
        return f"{self.kind} {self.value} ({self.why})"


@dataclass
class Answers:
    """What a server answers at one point."""

    fingerprint: dict[str, Any]
    queries: list[Any]
    lookups: list[Any]
    where: str = ""  # how the server got there (diagnostics)
    lsn: Lsn | None = None  # strata: the resolved LSN; native: the replay position

    def difference(self, oracle: Answers) -> str | None:
        diff = first_difference(oracle.fingerprint, self.fingerprint, exact_sequences=True)
        if diff is not None:
            return f"fingerprint: {diff}"
        for q, want, got in zip(QUERIES, oracle.queries, self.queries, strict=True):
            if want != got:
                return f"{q}: native PITR {want!r}, strata {got!r}"
        if oracle.lookups != self.lookups:
            return f"{LOOKUP} for {LOOKUP_AIDS}: native PITR {oracle.lookups!r}, " \
                   f"strata {self.lookups!r}"
        return None


@dataclass
class Oracle:
    root: Path
    primary: Cluster
    archive: Path
    backup: Path
    strata: StrataUp
    proxy_dsn: str
    lsns: list[Target]
    times: list[Target]
    end_lsn: Lsn
    _native: dict[Target, Answers] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def native(self, t: Target) -> Answers:
        """The answers of a PostgreSQL recovered to `t` (cached: one recovery per point)."""
        with self._lock:
            if t not in self._native:
                work = self.root / f"pitr-{len(self._native)}"
                server = recover_to(self.backup, self.archive, work, t.recovery_target(),
                                    timeout=180)
                try:
                    replayed, where = _readable(server)
                    with server.connect(options="-c lock_timeout=60s") as conn:
                        ans = answers(conn)
                    ans.where, ans.lsn = where, replayed
                finally:
                    server.stop("immediate")
                    shutil.rmtree(work, ignore_errors=True)
                self._native[t] = ans
            return self._native[t]


def _readable(server: Cluster) -> tuple[Lsn, str]:
    """Make a paused PITR server readable; returns where it stopped (the end of the
    last record replayed) and a description.

    A hot standby paused inside a transaction that took an AccessExclusiveLock
    (pgbench's TRUNCATE pgbench_history, DDL) keeps that lock in its startup
    process: reading the table would wait forever. Then recovery is resumed,
    which promotes the server at the same point: transactions in progress are
    aborted, so what is visible (committed rows, non-transactional sequence
    state, catalogs) is unchanged, and the locks are gone.
    """
    replayed = Lsn.parse(str(server.sql("SELECT pg_last_wal_replay_lsn()::text")[0][0]))
    locked = server.sql("SELECT coalesce(string_agg(relation::regclass::text, ', '), '') "
                        "FROM pg_locks WHERE locktype = 'relation' "
                        "AND mode = 'AccessExclusiveLock' AND granted")[0][0]
    if not locked:
        return replayed, f"paused after replaying to {replayed}"
    server.sql("SELECT pg_wal_replay_resume()")
    deadline = time.monotonic() + 120
    while server.sql("SELECT pg_is_in_recovery()")[0][0]:
        assert time.monotonic() < deadline, f"PITR server did not promote\n{server.log_tail()}"
        time.sleep(0.1)
    return replayed, (f"paused after replaying to {replayed}, promoted (replayed locks on "
                      f"{locked})")


def answers(conn: Any) -> Answers:
    fp = fingerprint(conn)
    qs = [conn.execute(q).fetchall() for q in QUERIES]
    lk = [conn.execute(LOOKUP, [aid]).fetchall() for aid in LOOKUP_AIDS]
    return Answers(fp, qs, lk)


def _pgbench(primary: Cluster, *args: str) -> None:
    run_as_server([primary.bins.path("pgbench"), "-h", "127.0.0.1", "-p", str(primary.port),
                   "-U", SUPERUSER, *args, "postgres"], timeout=300)


def _quiet_point(primary: Cluster) -> tuple[str, str]:
    """(insert LSN, clock_timestamp()) with no writer running: a record boundary
    and a time between commits."""
    lsn, ts = primary.sql("SELECT pg_current_wal_insert_lsn()::text, clock_timestamp()::text")[0]
    wait_clock_past(primary, str(ts))  # the next commit's timestamp is later than ts
    return str(lsn), str(ts)


_NEXT_XID = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"


def _pgbench_run(primary: Cluster, transactions: int, rng: random.Random) -> str:
    """pgbench -c 2, `transactions` each; returns a clock_timestamp() taken once a
    random number of them had committed (any time is valid: the oracle decides)."""
    sampled: list[str] = []
    done = threading.Event()
    first_xid = int(primary.sql(_NEXT_XID)[0][0])
    target = first_xid + rng.randint(transactions // 4, transactions * 7 // 4)

    def sample() -> None:
        deadline = time.monotonic() + 300
        # each transaction takes one xid: wait (polled) until `target` is handed out
        while int(primary.sql(_NEXT_XID)[0][0]) < target and not done.is_set():
            assert time.monotonic() < deadline, "pgbench made no progress"
            time.sleep(0.01)
        sampled.append(str(primary.sql("SELECT clock_timestamp()::text")[0][0]))

    t = threading.Thread(target=sample)
    t.start()
    try:
        _pgbench(primary, "-c", "2", "-j", "2", "-t", str(transactions))
    finally:
        done.set()
        t.join()
    return sampled[0]


def _stop_leftovers(home: Path) -> None:
    """After a failure: stop any historical server still running under `home`."""
    for pid_file in home.glob("instances/**/postmaster.pid"):
        Cluster(datadir=pid_file.parent).stop("immediate")


@pytest.fixture(scope="module")
def oracle() -> Iterator[Oracle]:
    seed = int(os.environ.get("STRATA_ORACLE_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    root = _scratch("pitr-oracle-")
    archive = root / "archive"
    primary = make_cluster(root / "primary", **archive_settings(archive))
    strata: StrataUp | None = None
    home = root / "home"
    try:
        _pgbench(primary, "-i", "-s", "1", "-q")
        backup = base_backup(primary, root / "backup")
        strata = StrataUp(home, "--source", primary.dsn(), "--port", "0",
                          "--flush-interval", "5")
        proxy = strata.proxy_dsn()

        quiet = [_quiet_point(primary)]
        in_run = [_pgbench_run(primary, 1500, rng)]
        for stmt in DDL_1:
            primary.sql(stmt)
        quiet.append(_quiet_point(primary))
        in_run.append(_pgbench_run(primary, 1500, rng))
        for stmt in DDL_2:
            primary.sql(stmt)
        quiet.append(_quiet_point(primary))
        in_run.append(_pgbench_run(primary, 1200, rng))
        quiet.append(_quiet_point(primary))
        # a commit later than every chosen time (recovery to T needs one to stop at;
        # _quiet_point waited for the clock), then every segment up to here in the archive
        primary.sql("CREATE TABLE end_marker (x int)")
        archive_now(primary)
        end = Lsn.parse(primary.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])

        # LSNs: two quiet points and three record starts inside the workload
        first, last = Lsn.parse(quiet[0][0]), Lsn.parse(quiet[-1][0])
        starts = [r.lsn for r in iter_raw_records(archive, first, last) if r.lsn > first]
        picked = rng.sample(range(len(quiet)), 2)
        lsns = [Target("lsn", quiet[i][0], f"quiet point {i}") for i in sorted(picked)]
        lsns += [Target("lsn", str(x), f"record start, {len(starts)} candidates")
                 for x in sorted(rng.sample(starts, N_POINTS - 2))]
        lsns.sort(key=lambda t: Lsn.parse(t.value))
        picked = rng.sample(range(len(quiet)), 2)
        times = [Target("time", ts, f"inside pgbench run {i}") for i, ts in enumerate(in_run)]
        times += [Target("time", quiet[i][1], f"quiet point {i}") for i in sorted(picked)]
        print(f"\nseed {seed}; LSN targets: {[str(t) for t in lsns]}; "
              f"time targets: {[str(t) for t in times]}")

        strata.wait_ingested(end, timeout=180)
        yield Oracle(root, primary, archive, backup, strata, proxy, lsns, times, end)
    finally:
        try:
            if strata is not None and strata.proc.poll() is None:
                try:
                    strata.terminate(timeout=60)
                except Exception:
                    strata.kill()
        finally:
            _stop_leftovers(home)
            primary.stop("immediate")
            shutil.rmtree(root, ignore_errors=True)


def _through_proxy(o: Oracle, t: Target) -> Answers:
    with psycopg.connect(o.proxy_dsn, autocommit=True) as conn:
        conn.execute(t.set_sql())
        ans = answers(conn)
        row = conn.execute(f"SHOW strata.travel_{t.kind}").fetchone()
        assert row is not None
        ans.where, ans.lsn = f"SHOW strata.travel_{t.kind}: {row}", Lsn.parse(row[1])
        conn.execute(f"RESET strata.travel_{t.kind}")
        # back in the present: the end marker exists, so this is the live primary
        assert conn.execute("SELECT to_regclass('end_marker') IS NOT NULL").fetchone() == (True,)
    return ans


def _check(o: Oracle, t: Target, got: Answers, how: str) -> None:
    want = o.native(t)
    print(f"{how} at {t}: strata {got.where}; native PITR {want.where}")
    diff = got.difference(want)
    assert diff is None, (f"{how} at {t}: first difference {diff}\n"
                          f"native PITR {want.where}; strata {got.where}")
    # Both stop before the same record (a recovery ends at the end of the record before
    # it, strata names a boundary: they may differ by alignment or a page header only).
    assert got.lsn is not None and want.lsn is not None
    assert find_first_record(o.archive, got.lsn) == find_first_record(o.archive, want.lsn), \
        f"{how} at {t}: strata stops at {got.lsn}, native PITR after replaying to {want.lsn}"


@pytest.mark.parametrize("i", range(N_POINTS))
def test_travel_lsn_matches_native_pitr_to_the_same_lsn(oracle: Oracle, i: int) -> None:
    t = oracle.lsns[i]
    _check(oracle, t, _through_proxy(oracle, t), "SET strata.travel_lsn")


def _check_time(o: Oracle, t: Target, got: Answers, how: str) -> None:
    """By time: exactly native PITR at the resolved LSN, and native PITR to the same
    time apart from sequences (never ahead of it)."""
    assert got.lsn is not None
    _check(o, Target("lsn", str(got.lsn), f"resolved from {t.value}"), got, how)
    want = o.native(t)
    diff = first_difference(want.fingerprint, got.fingerprint, sequences="at_most")
    assert diff is None, f"{how} at {t} vs recovery_target_time: {diff}"
    assert got.queries == want.queries and got.lookups == want.lookups, \
        f"{how} at {t}: native PITR by time {want.where}; strata {got.where}"


@pytest.mark.parametrize("i", range(N_POINTS))
def test_travel_time_matches_native_pitr_to_the_resolved_lsn_and_time(oracle: Oracle,
                                                                      i: int) -> None:
    t = oracle.times[i]
    _check_time(oracle, t, _through_proxy(oracle, t), "SET strata.travel_time")


def _through_pipeline(o: Oracle, t: Target) -> Answers:
    """Prepared statements (named, prepared first on the primary) and pipeline mode,
    the travel SET in the middle of the pipeline."""
    with psycopg.connect(o.proxy_dsn, autocommit=True) as conn:
        for q in QUERIES:  # prepared on the primary; used again in the past
            conn.execute(q, prepare=True).fetchall()
        conn.execute(LOOKUP, [1], prepare=True).fetchall()
        with conn.pipeline():
            conn.execute(t.set_sql())
            qcurs = [conn.execute(q, prepare=True) for q in QUERIES]
            lcurs = [conn.execute(LOOKUP, [aid], prepare=True) for aid in LOOKUP_AIDS]
        qs = [c.fetchall() for c in qcurs]
        lk = [c.fetchall() for c in lcurs]
        with conn.pipeline():
            fp = fingerprint(conn)
            show = conn.execute(f"SHOW strata.travel_{t.kind}")
            conn.execute(f"RESET strata.travel_{t.kind}")
            present = conn.execute("SELECT to_regclass('end_marker') IS NOT NULL", prepare=True)
        row = show.fetchone()
        assert row is not None
        ans = Answers(fp, qs, lk, where=f"SHOW strata.travel_{t.kind}: {row}",
                      lsn=Lsn.parse(row[1]))
        assert present.fetchone() == (True,)
    return ans


@pytest.mark.parametrize("kind", ["lsn", "time"])
def test_prepared_statements_in_pipeline_mode_match_native_pitr(oracle: Oracle,
                                                                 kind: str) -> None:
    # a record start inside a pgbench run / a time inside one: the least quiet points
    pool = oracle.lsns if kind == "lsn" else oracle.times
    t = next((p for p in pool if not p.why.startswith("quiet")), pool[0])
    check = _check if kind == "lsn" else _check_time
    check(oracle, t, _through_pipeline(oracle, t), "prepared statements, pipeline mode")


def test_the_chosen_points_tell_states_apart(oracle: Oracle) -> None:
    """The comparisons above mean something: the points do not all show one state."""
    states = {repr(oracle.native(t).queries) for t in oracle.lsns}
    assert len(states) >= 3, f"the {N_POINTS} LSN targets show only {len(states)} states"
    states = {repr(oracle.native(t).queries) for t in oracle.times}
    assert len(states) >= 3, f"the {N_POINTS} time targets show only {len(states)} states"


@dataclass(frozen=True)
class AttachHistory:
    points: list[StepPoint]
    end: Lsn
    strata: StrataUp
    dsn: str  # the proxy
    primary: Cluster


@pytest.fixture(scope="module")
def attach_history() -> Iterator[AttachHistory]:
    """Attach mode with the history workload: a fresh primary the test started,
    ``strata up --source`` on it, then shared/workloads/history.sql (every index
    kind, rewrites, TOAST, partitions...). A strata of its own: what it ingests
    must not disturb the PITR comparisons above."""
    root = _scratch("attach-history-")
    home = root / "home"
    primary = make_cluster(root / "primary")
    strata: StrataUp | None = None
    try:
        strata = StrataUp(home, "--source", primary.dsn(), "--port", "0",
                          "--flush-interval", "2")
        proxy = strata.proxy_dsn()
        with primary.connect() as conn:
            points = run_steps(conn, load_steps(WORKLOADS / "history.sql"))
        end = Lsn.parse(primary.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])
        yield AttachHistory(points, end, strata, proxy, primary)
    finally:
        try:
            if strata is not None and strata.proc.poll() is None:
                try:
                    strata.terminate(timeout=60)
                except Exception:
                    strata.kill()
        finally:
            _stop_leftovers(home)
            primary.stop("immediate")
            shutil.rmtree(root, ignore_errors=True)


def _history_failures(h: AttachHistory, kind: str) -> tuple[list[str], list[str]]:
    """Travel to every step (one session; a new one after a broken connection);
    returns (steps whose state differs, errors), one line each."""
    mismatches: list[str] = []
    failures: list[str] = []
    try:
        h.strata.wait_ingested(h.end, timeout=180)
    except AssertionError as e:
        return [], [str(e)]
    conn = psycopg.connect(h.dsn, autocommit=True)
    try:
        for p in h.points:
            at = p.lsn if kind == "lsn" else p.time.isoformat()
            try:
                conn.execute(f"SET strata.travel_{kind} = '{at}'")
                got = fingerprint(conn)
                # by LSN and by time alike: the step's state, sequences within what
                # nextval() WAL-logs ahead (a time resolves to the end of the step's
                # last commit, never into the next step's WAL)
                diff = first_difference(p.fingerprint, got)
                if diff is not None:
                    row = conn.execute(f"SHOW strata.travel_{kind}").fetchone()
                    assert row is not None
                    mismatches.append(f"step {p.name} at {kind} {at} (resolved {row}): {diff}"
                                      + _commits_between(h.primary, Lsn.parse(p.lsn),
                                                         Lsn.parse(row[1])))
            except psycopg.Error as e:
                failures.append(f"step {p.name} at {kind} {at}: {type(e).__name__}: {e}")
                if conn.broken or conn.closed:
                    conn.close()
                    try:
                        conn = psycopg.connect(h.dsn, autocommit=True)
                    except psycopg.OperationalError as e2:
                        failures.append(f"the proxy is gone ({e2}); strata up exit code: "
                                        f"{h.strata.proc.poll()}")
                        break
        if not failures and not mismatches:
            conn.execute(f"RESET strata.travel_{kind}")
            # the present again: the last step's state
            assert first_difference(h.points[-1].fingerprint, fingerprint(conn)) is None
    finally:
        conn.close()
    if failures:
        with contextlib.suppress(subprocess.TimeoutExpired):
            h.strata.proc.wait(10)  # a dying strata: let its last words arrive
        failures.append(h.strata.output())
    return mismatches, failures


def _commits_between(primary: Cluster, a: Lsn, b: Lsn) -> str:
    """pg_waldump's transaction records between two LSNs (diagnostics of a failure)."""
    lo, hi = min(a, b), max(a, b)
    if lo == hi:
        return ""
    cp = run_as_server([primary.bins.path("pg_waldump"), "-p", primary.wal_dir(), "-s", str(lo),
                        "-e", str(hi), "-r", "Transaction"], check=False, timeout=60)
    lines = [ln for ln in cp.stdout.splitlines() if "COMMIT" in ln or "ABORT" in ln]
    return f"\n  transaction records in [{lo}, {hi}):\n    " + "\n    ".join(lines[:20])


def _check_history(h: AttachHistory, kind: str) -> None:
    mismatches, failures = _history_failures(h, kind)
    # every step checked (before strata died, if it did) must have matched
    assert not mismatches, "\n".join(mismatches)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_attach_mode_every_history_step_reproduces_by_lsn(attach_history: AttachHistory) -> None:
    _check_history(attach_history, "lsn")


@pytest.mark.slow
def test_attach_mode_every_history_step_reproduces_by_time(
        attach_history: AttachHistory) -> None:
    _check_history(attach_history, "time")


def _flushed_and_imaged(layers: Path, end: Lsn, after: Lsn) -> bool:
    """The store's committed manifest is durable to `end` and holds an image layer
    made above `after`."""
    manifest = load_manifest(layers)
    return manifest is not None and manifest.durable_lsn >= end and any(
        le.name.is_image and le.name.image_lsn > after for le in manifest.layers)


@pytest.mark.slow
def test_attach_mode_keeps_running_through_maintenance_of_index_pages_without_redo(
        attach_history: AttachHistory) -> None:
    """More of the history workload (GIN, hash, BRIN, GiST, SP-GiST indexes) in two
    more databases: strata must keep ingesting and compacting (background flushes
    every 2 s, then image layers) and still answer in the past."""
    h = attach_history
    for db in ("history2", "history3"):
        h.primary.sql(f"CREATE DATABASE {db}")
        with h.primary.connect(db) as conn:
            points = run_steps(conn, load_steps(WORKLOADS / "history.sql"))
    end = Lsn.parse(h.primary.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])
    try:
        h.strata.wait_ingested(end, timeout=180)
        # flushes and image layers run after ingest: wait until a flush made all of
        # it durable and maintenance put image layers over the new databases
        deadline = time.monotonic() + 300
        while not _flushed_and_imaged(h.strata.home / "layers", end, h.end):
            assert h.strata.proc.poll() is None, "strata up exited"
            assert time.monotonic() < deadline, "no flush to the end or no new image layer"
            time.sleep(0.5)
    finally:
        if h.strata.proc.poll() is not None:
            h.strata.proc.wait(10)
    assert h.strata.proc.poll() is None, h.strata.output() + h.strata.stderr_text()[-4000:]
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(make_conninfo(h.dsn, dbname="history3"), autocommit=True) as conn:
        conn.execute(f"SET strata.travel_lsn = '{points[-1].lsn}'")
        assert first_difference(points[-1].fingerprint, fingerprint(conn)) is None


def test_sigterm_stops_strata_and_every_historical_server(oracle: Oracle) -> None:
    home = oracle.strata.home
    # at least one historical server is running (the checks above started them)
    with psycopg.connect(oracle.proxy_dsn, autocommit=True) as conn:
        conn.execute(oracle.lsns[-1].set_sql())
        assert conn.execute("SELECT count(*) FROM pgbench_branches").fetchone() == (1,)
        assert processes_under(home / "instances"), "no historical server is running"
        assert oracle.strata.terminate(timeout=90) == 0, oracle.strata.output()
    assert processes_under(home) == []
    assert not (home / "state.json").exists()
    assert oracle.primary.is_running()  # attach mode never stops the user's primary
