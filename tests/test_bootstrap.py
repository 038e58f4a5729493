"""The history import (bootstrap.import_history) reports its progress: the
stages, then pages copied against the pages the data directory holds, done
when it returns (a bar on a terminal, lines otherwise: strata.progress)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from strata.bootstrap import import_history
from strata.historical.source import DataDirSource
from strata.home import HomeLayout
from strata.keyspace.relation import STORED_FORKS
from strata.progress import LineProgress
from tests.conftest import make_cluster

pytestmark = pytest.mark.pg


def test_the_import_reports_pages_copied_of_all_it_holds(scratch_dir: Path) -> None:
    c = make_cluster(scratch_dir / "p")
    try:
        c.sql("CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
        c.sql("CHECKPOINT")
    finally:
        c.stop()
    source = DataDirSource(c.datadir)
    pages = sum(rf.nblocks for rf in source.relations() if rf.fork in STORED_FORKS)
    out = io.StringIO()
    progress = LineProgress(out, "import", interval=0.0)
    info = import_history(HomeLayout(scratch_dir / "home"), source, mode="embedded",
                          progress=progress)
    assert (progress.done, progress.total, progress.unit) == (pages, pages, "pages")
    lines = out.getvalue().splitlines()
    assert lines[0] == f"import: copying the pages of {c.datadir} at {info.start_lsn}"
    assert f"import: {pages:,} pages of ~{pages:,} pages" in lines
    assert lines[-1] == "import: making the import durable"
