"""The repository's copy of the shared workloads (tests/data/workloads) is the
shared one, byte for byte, wherever the shared directory is present."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.workload import WORKLOADS

pytestmark = pytest.mark.unit

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "workloads"


def test_history_sql_is_in_the_repository() -> None:
    assert (WORKLOADS / "history.sql").stat().st_size > 0


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared/workloads beside this clone")
def test_the_copy_equals_the_shared_workloads() -> None:
    for f in sorted(SHARED.iterdir()):
        assert (WORKLOADS / f.name).read_bytes() == f.read_bytes(), (
            f"{f.name} changed in {SHARED}: cp {f} {WORKLOADS}/")
