"""`strata attach-past` / `detach-past` end to end: the past as foreign tables in
a live database (joins with the present, copying rows back), writes refused,
only roles that may time travel read it, and the historical server stays up
while attached (its idle timeout here is one second) and goes after detach."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from strata.home import HomeLayout
from strata.runtime.cluster import Cluster
from strata.status import collect
from tests.e2e.restore_helpers import Strata, wait_until
from tests.strata_proc import StrataUp

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def strata() -> Iterator[Strata]:
    from tests.conftest import _scratch

    home = _scratch("attach-") / "home"
    up = StrataUp(home, "--instance-idle-timeout", "1")
    try:
        dsn = up.primary_dsn()
        up.proxy_dsn()
        yield Strata(up, home, dsn)
        assert up.terminate() == 0
    finally:
        up.kill()
        Cluster(datadir=home / "primary" / "data").stop("immediate")


def _instances(s: Strata, *, leased: bool = False) -> dict[str, int]:
    """LSN -> port of the running historical servers (`leased`: only those a
    lease holds now: `strata status` shows their idle time as 0)."""
    st = collect(HomeLayout(s.home))
    return {str(i["lsn"]): int(i["port"]) for i in st["instances"]
            if not leased or i["idle_seconds"] == 0}


def test_attach_join_copy_back_and_detach(strata: Strata) -> None:
    with strata.connect() as c:
        c.execute("CREATE TABLE orders (id int PRIMARY KEY, item text, qty int)")
        c.execute("INSERT INTO orders SELECT i, 'item ' || i, i FROM generate_series(1, 100) i")
    _, lsn = strata.point()
    with strata.connect() as c:
        c.execute("DELETE FROM orders WHERE id = 42")
        c.execute("UPDATE orders SET qty = 0 WHERE id <= 10")
    strata.sync()
    res = strata.cli("attach-past", "--at", lsn, "--schema", "past_then")
    assert res.returncode == 0, res.stderr
    assert "1 foreign tables" in res.stdout
    lease = json.loads(next((strata.home / "leases").glob("*.json")).read_text())
    assert lease["schema"] == "past_then" and lease["database"] == "postgres"

    with strata.connect() as c:
        assert c.execute("SELECT count(*), sum(qty) FROM past_then.orders").fetchone() == \
            (100, 5050)
        changed = c.execute("SELECT count(*) FROM orders o JOIN past_then.orders p USING (id) "
                            "WHERE o.qty <> p.qty").fetchone()[0]
        assert changed == 10
        c.execute("INSERT INTO orders SELECT * FROM past_then.orders WHERE id = 42")
        assert c.execute("SELECT item, qty FROM orders WHERE id = 42").fetchone() == \
            ("item 42", 42)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            c.execute("DELETE FROM past_then.orders WHERE id = 1")

    # no session uses the past now, yet its server outlives its idle timeout
    # (1 s): the daemon's lease keeper holds it. A witness, a server at another
    # point that nothing holds, is reaped once idle: the reaper has passed since,
    # and the same leased server (port) is still there.
    wait_until(lambda: lease["lsn"] in _instances(strata, leased=True),
               "the lease keeper to hold the server")
    port = _instances(strata)[lease["lsn"]]
    _, witness = strata.point()
    def servers() -> set[Path]:  # the pool's directories: <LSN>-<n>
        return {p for p in (strata.home / "instances").iterdir() if "-" in p.name}

    before = servers()
    res = strata.cli("query", "--at", witness, "SELECT 1")
    assert res.returncode == 0, res.stderr
    (witness_dir,) = servers() - before  # its files, until it is reaped
    wait_until(lambda: not witness_dir.exists(), "the reaper to remove the witness")
    assert _instances(strata, leased=True).get(lease["lsn"]) == port

    res = strata.cli("detach-past", "--schema", "past_then")
    assert res.returncode == 0, res.stderr
    with strata.connect() as c:
        assert c.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'past_then'"
                         ).fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM pg_foreign_server").fetchone()[0] == 0
    assert list((strata.home / "leases").glob("*.json")) == []
    wait_until(lambda: lease["lsn"] not in _instances(strata), "the server to be reaped")
    res = strata.cli("detach-past", "--schema", "past_then")
    assert res.returncode == 1 and "nothing is attached" in res.stderr


def test_only_roles_that_may_time_travel_read_the_past(strata: Strata) -> None:
    with strata.connect() as c:
        c.execute("CREATE TABLE secrets (v text)")
        c.execute("INSERT INTO secrets VALUES ('then')")
        c.execute("CREATE ROLE mallory LOGIN PASSWORD 'mallory-pw'")
        c.execute("GRANT SELECT ON secrets TO mallory")  # the past's own grants still apply
    _, lsn = strata.point()
    res = strata.cli("attach-past", "--at", lsn, "--schema", "past_s")
    assert res.returncode == 0, res.stderr
    res = strata.cli("attach-past", "--at", lsn, "--schema", "past_s")
    assert res.returncode == 1 and "already exists" in res.stderr
    with strata.connect() as c:
        c.execute("GRANT USAGE ON SCHEMA past_s TO mallory")
        c.execute("GRANT SELECT ON ALL TABLES IN SCHEMA past_s TO mallory")
        c.execute("GRANT USAGE ON FOREIGN SERVER strata_past_past_s TO mallory")
        c.execute("CREATE USER MAPPING FOR mallory SERVER strata_past_past_s "
                  "OPTIONS (user 'mallory', password 'mallory-pw')")
    mallory = psycopg.conninfo.make_conninfo(strata.dsn, user="mallory", password="mallory-pw",
                                             passfile="/dev/null")
    with psycopg.connect(mallory, autocommit=True) as m:
        with pytest.raises(psycopg.Error) as ei:
            m.execute("SELECT * FROM past_s.secrets")
        assert "42501" in str(ei.value) or "permission denied" in str(ei.value)
    with strata.connect() as c:
        c.execute("GRANT strata_time_travel TO mallory")
    with psycopg.connect(mallory, autocommit=True) as m:
        assert m.execute("SELECT v FROM past_s.secrets").fetchall() == [("then",)]
    res = strata.cli("attach-past", "--at", lsn, "--schema", "past_m", "--user", "mallory")
    assert res.returncode == 1  # mallory has no password file entry: it is not the daemon's role
    assert strata.cli("detach-past", "--schema", "past_s").returncode == 0
