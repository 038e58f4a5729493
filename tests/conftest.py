"""Shared fixtures (plugin style): a PostgreSQL 18 primary, scratch dirs the
server user can reach, and tier markers.

Tiers: unmarked tests are `unit`; `pg` needs a server; `e2e` runs proxy and
historical instances; `slow` is soak and crash loops. CI runs them all.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

from strata.runtime.cluster import Cluster  # noqa: E402

SCRATCH_ROOT = Path(os.environ.get("STRATA_TEST_ROOT", "/tmp/strata-tests"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(m) for m in ("pg", "e2e", "slow")):
            item.add_marker(pytest.mark.unit)


def _scratch(prefix: str) -> Path:
    SCRATCH_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(SCRATCH_ROOT, 0o755)
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH_ROOT))
    os.chmod(d, 0o755)
    return d


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A fresh directory (mode 0755) that the server user can traverse."""
    d = _scratch("t-")
    yield d
    from tests.strata_proc import reap_under

    reap_under(d)  # nothing a failed test started may outlive it (mounts, FS processes)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def session_scratch() -> Iterator[Path]:
    d = _scratch("s-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def make_cluster(base: Path, **settings: object) -> Cluster:
    """initdb + start a primary in `base`; the caller stops it."""
    c = Cluster(datadir=base / "data")
    c.initdb(settings={"wal_keep_size": "1GB", "max_wal_size": "1GB", **settings})
    c.start()
    return c


def wait_clock_past(c: Cluster, ts: str, limit: float = 60) -> None:
    """Return once the server's clock_timestamp() is past `ts` (timestamptz text) by
    more than commit timestamps of concurrent backends can disagree (microseconds;
    1 ms here): a transaction that commits after this is stamped later than `ts`."""
    deadline = time.monotonic() + limit
    query = (f"SELECT clock_timestamp() > '{ts}'::timestamptz "
             "+ interval '1 millisecond'")
    while not c.sql(query)[0][0]:  # each try is a round trip: the clock moves meanwhile
        assert time.monotonic() < deadline, f"the server's clock did not pass {ts}"


@pytest.fixture(scope="session")
def pg_primary(session_scratch: Path) -> Iterator[Cluster]:
    """A running PostgreSQL 18 primary (wal_level=replica), shared by a session.

    Tests that change cluster-wide state should use `fresh_primary` instead.
    """
    c = make_cluster(session_scratch / "primary")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def fresh_primary(scratch_dir: Path) -> Iterator[Cluster]:
    """A primary of the test's own, stopped at the end of the test."""
    c = make_cluster(scratch_dir / "primary")
    try:
        yield c
    finally:
        c.stop("immediate")


@pytest.fixture
def fds_above_setsize() -> Iterator[None]:
    """Descriptors up to 1100 held open, so every socket or pipe opened meanwhile
    has a number above FD_SETSIZE (1024), as in a process that opened a store of
    ~1,000 layer files (select.select refuses such numbers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
