"""history.sql through `strata up` and its proxy: after every step, time travel
by LSN and by timestamp reproduces that step's fingerprint. strata is stopped
and restarted in the middle of the workload, so every step after that point
also proves that a restart resumes without losing or duplicating history.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from tests.conftest import _scratch
from tests.e2e.workload import (
    WORKLOADS,
    StepPoint,
    fingerprint,
    first_difference,
    load_steps,
    run_steps,
)
from tests.strata_proc import StrataUp, processes_under


@dataclass
class Run:
    up: StrataUp
    proxy: str
    points: list[StepPoint]


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    home = _scratch("proxyhist-") / "home"
    steps = load_steps(WORKLOADS / "history.sql")
    half = len(steps) // 2
    up = StrataUp(home, "--flush-interval", "1")
    up2: StrataUp | None = None
    try:
        dsn = up.primary_dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            points = run_steps(conn, steps[:half])
        up.wait_ingested(Lsn.parse(points[-1].lsn))
        assert up.terminate() == 0  # stop strata (and its primary) mid-workload
        up2 = StrataUp(home, "--flush-interval", "1")
        up2.wait_for(r"\(resumed\)$")
        dsn = up2.primary_dsn()
        proxy = up2.wait_for(r"time travel proxy: (.*)$").group(1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            points += run_steps(conn, steps[half:])
            end = Lsn.parse(conn.execute("SELECT pg_current_wal_insert_lsn()::text")
                            .fetchone()[0])  # type: ignore[index]
        up2.wait_ingested(end)
        yield Run(up2, proxy, points)
        rc = up2.terminate()
        assert rc == 0, "\n".join(
            ln for ln in up2.stderr_text().splitlines()
            if "served as empty pages" not in ln)[-4000:]
    finally:
        up.kill()
        if up2 is not None:
            up2.kill()
        Cluster(datadir=home / "primary" / "data").stop("immediate")
        leftover = processes_under(home)
        shutil.rmtree(home.parent, ignore_errors=True)
        assert leftover == []


def _check(proxy: str, setting: str, value: str, expected: StepPoint) -> str | None:
    with psycopg.connect(proxy, autocommit=True) as conn:
        conn.execute(f"SET strata.{setting} = '{value}'")
        got = fingerprint(conn)
    diff = first_difference(expected.fingerprint, got,
                            sequences="logged" if setting == "travel_lsn" else "at_least")
    return None if diff is None else f"step {expected.name} by {setting} {value}: {diff}"


@pytest.mark.e2e
def test_every_step_reproduces_by_lsn_through_the_proxy(run: Run) -> None:
    failures = [d for p in run.points if (d := _check(run.proxy, "travel_lsn", p.lsn, p))]
    assert not failures, "\n".join(failures)


@pytest.mark.e2e
def test_every_step_reproduces_by_time_through_the_proxy(run: Run) -> None:
    failures = [d for p in run.points
                if (d := _check(run.proxy, "travel_time", p.time.isoformat(), p))]
    assert not failures, "\n".join(failures)


@pytest.mark.e2e
def test_extended_protocol_prepared_and_pipelined(run: Run) -> None:
    """The same answers through prepared statements and pipeline mode."""
    p = next(q for q in run.points if q.name == "cold_updates")
    with psycopg.connect(run.proxy, autocommit=True) as conn:
        with conn.pipeline():
            conn.execute(f"SET strata.travel_lsn = '{p.lsn}'")
            c1 = conn.execute("SELECT count(*), sum(balance) FROM account WHERE id > %s", (0,),
                              prepare=True)
            c2 = conn.execute("SELECT md5(string_agg(owner, ',' ORDER BY id)) FROM account "
                              "WHERE id %% %s = 0", (11,), prepare=True)
        hist = (c1.fetchone(), c2.fetchone())
        shown = conn.execute("SHOW strata.travel_lsn").fetchone()
        assert shown is not None and shown[0] == p.lsn
        conn.execute("RESET strata.travel_lsn")
        live = conn.execute("SELECT count(*) FROM account").fetchone()
    # the account table at that step: 500 rows, owners of id % 11 == 0 renamed with '-x'
    assert hist[0] is not None and hist[0][0] == 500
    assert hist[1] is not None and hist[1][0] is not None
    assert live is not None and live[0] == 502  # after the subtransactions step
    acct = p.fingerprint["public.account"]
    with psycopg.connect(run.proxy, autocommit=True) as conn:
        conn.execute(f"SET strata.travel_lsn = '{p.lsn}'")
        assert fingerprint(conn)["public.account"] == acct
