"""End to end without the proxy: import a stopped primary, ingest its WAL,
and rebuild the database at every workload step, by LSN and by time.

Oracle: the fingerprint the live primary had right after each step
(shared/workloads/README.md). A historical instance materialised from the
store at that point must give the same fingerprint.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from strata.historical.instance import start_instance
from strata.historical.materialize import materialize
from strata.historical.modes import UNSUPPORTED_INDEX_AMS
from strata.historical.store_view import StoreView
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.pg.timestamp import datetime_to_timestamptz
from strata.timemap.timemap import TimeMap
from tests.conftest import _scratch, make_cluster
from tests.e2e.workload import (
    WORKLOADS,
    StepPoint,
    fingerprint,
    first_difference,
    load_steps,
    run_steps,
)
from tests.store_import import import_stopped, ingest_through


@dataclass
class History:
    store: PageStore
    timemap: TimeMap
    start: Lsn
    points: list[StepPoint]
    root: Path


@pytest.fixture(scope="module")
def history() -> Iterator[History]:
    """history.sql run on a primary whose history was imported at a clean stop."""
    root = _scratch("hist-")
    primary = make_cluster(root / "primary", autovacuum="off")
    store: PageStore | None = None
    try:
        imp = import_stopped(primary, root)
        store, timemap, ingest, start = imp.store, imp.timemap, imp.ingest, imp.start
        with primary.connect() as conn:
            points = run_steps(conn, load_steps(WORKLOADS / "history.sql"))
        primary.stop()  # every record is on disk
        end = max(Lsn.parse(p.lsn) for p in points)
        ingest_through(ingest, primary.wal_dir(), start, end)
        yield History(store, timemap, start, points, root)
    finally:
        if store is not None:
            store.close()
        primary.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _fingerprint_at(h: History, lsn: Lsn, name: str) -> dict[str, object]:
    mat = materialize(StoreView(h.store, lsn), h.root / f"h-{name}" / "data")
    inst = start_instance(mat, invalid_index_ams=UNSUPPORTED_INDEX_AMS)
    try:
        with inst.connect() as conn:
            return fingerprint(conn)
    finally:
        inst.stop()
        inst.remove()


def _resolve_time(h: History, p: StepPoint) -> Lsn:
    return h.timemap.resolve_time(datetime_to_timestamptz(p.time), history_start=h.start,
                                  history_start_time=None).lsn


@pytest.mark.e2e
def test_every_history_step_reproduces_by_lsn(history: History) -> None:
    assert len(history.timemap) > len(history.points)
    failures = []
    for p in history.points:
        lsn = Lsn.parse(p.lsn)
        diff = first_difference(p.fingerprint, _fingerprint_at(history, lsn, p.name))
        if diff:
            failures.append(f"step {p.name} at {lsn}: {diff}")
    assert not failures, "\n".join(failures)


@pytest.mark.e2e
def test_step_times_resolve_to_the_same_committed_state(history: History) -> None:
    """T (taken after the step, writers quiet) resolves to the end of the step's
    last commit: exactly the transactions the step's LSN includes, and none of
    the WAL written after that commit."""
    for p in history.points:
        by_lsn = history.timemap.last_at_or_before(Lsn.parse(p.lsn))
        resolved = _resolve_time(history, p)
        by_time = history.timemap.last_at_or_before(resolved)
        assert by_time == by_lsn, f"step {p.name}: {by_time} != {by_lsn}"
        assert resolved == (by_lsn.end_lsn if by_lsn is not None else history.start)
        assert resolved <= Lsn.parse(p.lsn)


@pytest.mark.e2e
@pytest.mark.parametrize("step", ["rolled_back", "drop_table", "bulk"])
def test_history_step_reproduces_by_time(history: History, step: str) -> None:
    p = next(q for q in history.points if q.name == step)
    lsn = _resolve_time(history, p)
    diff = first_difference(p.fingerprint, _fingerprint_at(history, lsn, f"t-{step}"))
    assert diff is None, f"step {step} by time ({lsn}): {diff}"
