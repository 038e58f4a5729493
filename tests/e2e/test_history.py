"""`strata history` end to end against an UPDATE/DELETE history with known
versions: each transaction's xid and commit LSN are recorded as it runs, and
the command must name exactly those, version by version (a subtransaction's
update included, an aborted one left out), reading only pages that changed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from tests.e2e.restore_helpers import Strata, store_readable
from tests.strata_proc import StrataUp

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def strata() -> Iterator[Strata]:
    from tests.conftest import _scratch

    home = _scratch("history-") / "home"
    up = StrataUp(home, "--flush-interval", "1")
    try:
        dsn = up.primary_dsn()
        up.proxy_dsn()
        yield Strata(up, home, dsn)
        assert up.terminate() == 0
    finally:
        up.kill()
        Cluster(datadir=home / "primary" / "data").stop("immediate")


def _tx(c: Any, *stmts: str) -> tuple[int, str]:
    """Run `stmts` in one transaction; (its top-level xid, the LSN after its commit)."""
    with c.transaction():
        for s in stmts:
            c.execute(s)
        xid = int(c.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
    return xid, c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]


def test_every_version_with_its_commit(strata: Strata) -> None:
    with strata.connect() as c:
        c.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric, "
                  "note text)")
        c.execute("INSERT INTO accounts SELECT i, 'o' || i, i, NULL FROM generate_series(1, 20000) i "
                  "WHERE i <> 42")
    t0, _ = strata.point()
    with strata.connect() as c:
        x1, _ = _tx(c, "INSERT INTO accounts VALUES (42, 'ann', 100, 'opened')")
        x2, l2 = _tx(c, "UPDATE accounts SET balance = 150 WHERE id = 42",
                     "UPDATE accounts SET balance = balance + 1 WHERE id BETWEEN 1000 AND 1010")
        c.execute("BEGIN")
        c.execute("UPDATE accounts SET balance = -1 WHERE id = 42")
        c.execute("ROLLBACK")  # never visible: no version
        with c.transaction():
            c.execute("SAVEPOINT s")
            c.execute("UPDATE accounts SET note = 'frozen' WHERE id = 42")
            # the new version's xmin is the subtransaction's own xid
            sub = int(c.execute("SELECT xmin::text FROM accounts WHERE id = 42").fetchone()[0])
            c.execute("RELEASE SAVEPOINT s")
            x3 = int(c.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
        x4, _ = _tx(c, "DELETE FROM accounts WHERE id = 42")
        x5, _ = _tx(c, "INSERT INTO accounts VALUES (42, 'bob', 0, 'reopened')")
        c.execute("UPDATE accounts SET owner = 'other' WHERE id = 7")
    t2, _ = strata.point()
    assert sub != x3

    res = strata.cli("history", "accounts", "--where", "id = 42", "--from", t0, "--to", t2,
                     "--json")
    if not store_readable():
        assert res.returncode == 1 and "cannot read while strata up runs" in res.stderr
        return
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    got = [(v["created"]["xid"], v["ended"]["xid"] if v["ended"] else None,
            v["row"]["balance"], v["row"]["note"]) for v in doc["versions"]]
    assert got == [(x1, x2, "100", "opened"), (x2, sub, "150", "opened"),
                   (sub, x4, "150", "frozen"), (x5, None, "0", "reopened")]
    by_xid = {v["created"]["xid"]: v["created"] for v in doc["versions"]}
    assert by_xid[sub]["top_xid"] == x3
    assert Lsn.parse(by_xid[x2]["lsn"]) <= Lsn.parse(l2)
    # only pages that changed were read (each at each of its changes): far fewer
    # than the table has
    with strata.connect() as c:
        pages = c.execute("SELECT pg_relation_size('accounts') / 8192").fetchone()[0]
    assert 0 < doc["pages_read"] < pages / 2

    # from a point in the middle: the version visible there first, then the rest
    mid = strata.cli("history", "accounts", "--where", "owner = 'ann'", "--from", l2,
                     "--to", t2)
    assert mid.returncode == 0, mid.stderr
    assert mid.stdout.count("version ") == 2
    assert f"made by xid {x2} at" in mid.stdout and f"ended by xid {x4}" in mid.stdout
    assert "note=frozen" in mid.stdout

    none = strata.cli("history", "accounts", "--where", "id = -5", "--from", t0, "--to", t2)
    assert none.returncode == 0 and "no version matches" in none.stdout
    bad = strata.cli("history", "accounts", "--where", "nosuchcolumn = 1", "--from", t0)
    assert bad.returncode == 1 and "nosuchcolumn" in bad.stderr
