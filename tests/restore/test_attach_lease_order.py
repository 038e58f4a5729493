"""restore/FORMAT.md invariant 1, without a server: `attach_past` writes the lease
before the transaction creating the foreign server commits and removes it if
that commit fails; `detach_past` removes it only after the transaction dropping
the server committed (and keeps it when that commit fails)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from strata.lsn import Lsn
from strata.restore import attach
from strata.restore.endpoint import Endpoint, Point
from strata.restore.leases import LEASE_DIR, lease_path


class CommitFailed(Exception):
    pass


class FakeConn:
    """Answers the catalog checks as a database where the schema does not exist yet
    (attach) or exists (detach); records what the lease directory held at commit."""

    def __init__(self, lease: Path, *, schema_exists: bool, commit_fails: bool) -> None:
        self.lease, self.schema_exists, self.commit_fails = lease, schema_exists, commit_fails
        self.lease_at_commit: bool | None = None
        self.statements: list[str] = []

    def execute(self, sql: str, params: object = None) -> Any:
        self.statements.append(sql)
        conn = self

        class Cursor:
            def fetchone(self) -> tuple[object, ...]:
                if sql is attach.MAY_TRAVEL_SQL:
                    return (True,)
                if "count(*)" in sql and ("pg_namespace WHERE" in sql
                                          or "pg_foreign_server WHERE" in sql):
                    return (1 if conn.schema_exists else 0,)
                return (0,)
        return Cursor()

    def commit(self) -> None:
        self.lease_at_commit = self.lease.exists()
        if self.commit_fails:
            raise CommitFailed("the server went away at COMMIT")

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


def _endpoint(tmp_path: Path, conn: FakeConn, monkeypatch: pytest.MonkeyPatch) -> Endpoint:
    ep = Endpoint("127.0.0.1", 5432, "postgres", tmp_path)
    monkeypatch.setattr(Endpoint, "connect", lambda self, db, **kw: conn)
    monkeypatch.setattr(attach, "resolve_point",
                        lambda ep, at, db: Point(Lsn.parse("0/3000028"), "LSN 0/3000028"))
    monkeypatch.setattr(attach, "password_for", lambda passfile, user: None)
    return ep


@pytest.mark.parametrize("commit_fails", [False, True])
def test_attach_writes_the_lease_before_its_commit_and_removes_it_if_the_commit_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commit_fails: bool) -> None:
    lease = lease_path(tmp_path / LEASE_DIR, "postgres", "past_x")
    conn = FakeConn(lease, schema_exists=False, commit_fails=commit_fails)
    ep = _endpoint(tmp_path, conn, monkeypatch)
    if commit_fails:
        with pytest.raises(CommitFailed):
            attach.attach_past(ep, "0/3000028", "past_x")
    else:
        attach.attach_past(ep, "0/3000028", "past_x")
    assert conn.lease_at_commit is True  # written before the commit
    assert lease.exists() is not commit_fails
    assert any(s.startswith("CREATE SERVER") for s in conn.statements)


@pytest.mark.parametrize("commit_fails", [False, True])
def test_detach_removes_the_lease_only_after_its_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commit_fails: bool) -> None:
    lease = lease_path(tmp_path / LEASE_DIR, "postgres", "past_x")
    attach.write_lease(tmp_path / LEASE_DIR, attach.Lease(Lsn.parse("0/3000028"), "postgres",
                                                          "past_x", attach.server_name("past_x"),
                                                          "LSN 0/3000028"))
    conn = FakeConn(lease, schema_exists=True, commit_fails=commit_fails)
    ep = _endpoint(tmp_path, conn, monkeypatch)
    if commit_fails:
        with pytest.raises(CommitFailed):
            attach.detach_past(ep, "past_x")
    else:
        assert attach.detach_past(ep, "past_x")
    assert conn.lease_at_commit is True  # still there while the drop commits
    assert lease.exists() is commit_fails
    assert any(s.startswith("DROP SERVER") for s in conn.statements)
