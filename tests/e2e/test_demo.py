"""Issue 5's acceptance test, verbatim, through the bundled psql and `strata up`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from strata.runtime.cluster import Cluster
from strata.runtime.pgbin import find_pg_binaries
from tests.strata_proc import StrataUp, processes_under


def _psql(port: int, passfile: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(find_pg_binaries().path("psql")), "-X", "-h", "127.0.0.1", "-p", str(port),
         "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=0"],
        input=sql, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PGPASSFILE": passfile})


@pytest.mark.e2e
def test_demo_through_psql(scratch_dir: Path) -> None:
    home = scratch_dir / "home"
    up = StrataUp(home)
    try:
        m = up.wait_for(r"time travel proxy: .*port=(\d+).* passfile=(\S+)")
        port, passfile = int(m.group(1)), m.group(2)
        first = _psql(port, passfile, """
CREATE TABLE demo (id serial PRIMARY KEY, name text, amount numeric);
INSERT INTO demo (name, amount) VALUES ('Alice', 100.00);
SELECT now();
""")
        assert first.returncode == 0, first.stderr
        remembered = next(ln.strip() for ln in first.stdout.splitlines() if ln.strip()
                      and ln.strip()[0].isdigit() and ":" in ln)
        second = _psql(port, passfile, f"""
ALTER TABLE demo ADD COLUMN email text;
INSERT INTO demo (name, amount, email) VALUES ('Bob', 200.00, 'bob@example.com');
DROP TABLE demo;
SET strata.travel_time = '{remembered}';
SELECT * FROM demo;
RESET strata.travel_time;
SELECT * FROM demo;
""")
        out, err = second.stdout, second.stderr
        # the table is back, original schema (no email column), 1 row
        assert " id | name  | amount " in out, out + err
        assert "  1 | Alice | 100.00" in out
        assert "email" not in out
        assert "(1 row)" in out
        assert "NOTICE:  strata: session is now at LSN" in err
        # back in the present: the table is gone
        assert 'ERROR:  relation "demo" does not exist' in err
        assert up.terminate() == 0
    finally:
        up.kill()
        Cluster(datadir=home / "primary" / "data").stop("immediate")
    assert processes_under(home) == []
