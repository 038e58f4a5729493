"""`strata up` / `strata psql` end to end, and the daemon's pieces.

The e2e test runs `strata up` in a subprocess on a scratch home exactly as a
user would, drives SQL through the DSN it prints, and checks what a user
relies on: the progress reaches the server's WAL position, SIGTERM stops
everything (no process left), and a second start resumes where the first
stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from strata.daemon import Daemon, UpOptions
from strata.errors import ConfigError
from strata.home import ROOT_HOME, HomeLayout, check_server_can_reach, resolve_home
from strata.home.files import ReceiverState, load_daemon_state, load_receiver_state, write_json
from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from strata.wal.replication import read_slot
from tests.conftest import make_cluster
from tests.strata_proc import StrataUp, flush_lsn, processes_under


@pytest.fixture
def up_home(scratch_dir: Path) -> Iterator[Path]:
    """A scratch strata home; its primary is stopped at the end whatever happened."""
    home = scratch_dir / "home"
    try:
        yield home
    finally:
        Cluster(datadir=home / "primary" / "data").stop("immediate")



@pytest.mark.e2e
def test_up_streams_stops_cleanly_and_resumes(up_home: Path) -> None:
    # -- first run: initdb, start, stream ----------------------------------------------
    up = StrataUp(up_home)
    try:
        dsn = up.primary_dsn()
        start = Lsn.parse(up.wait_for(r"streaming WAL from slot strata at (\S+)$").group(1))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE demo (id serial PRIMARY KEY, name text)")
            conn.execute("INSERT INTO demo (name) SELECT 'n' || g FROM generate_series(1, 500) g")
            target = flush_lsn(conn)
        assert target > start
        up.wait_ingested(target)
        # strata psql reaches the same server through <home>/state.json
        state = load_daemon_state(HomeLayout(up_home).daemon_file)
        assert state is not None and state.pid == up.proc.pid
        out = subprocess.run([sys.executable, "-m", "strata.cli.main", "psql", "--home",
                              str(up_home), "-Atc", "SELECT count(*) FROM demo"],
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "500", out.stderr
        assert up.terminate() == 0
    finally:
        up.kill()
    assert not Cluster(datadir=up_home / "primary" / "data").is_running()
    assert processes_under(up_home) == []
    assert not (up_home / "state.json").exists()
    saved = load_receiver_state(HomeLayout(up_home).receiver_file)
    assert saved is not None and saved.flushed_lsn >= target, up.output()

    # -- second run: resumes at the saved position, -v prints records -------------------
    up2 = StrataUp(up_home, "-v")
    try:
        resumed = up2.wait_for(r"streaming WAL from slot strata at (\S+) \(resumed\)$")
        assert Lsn.parse(resumed.group(1)) == saved.flushed_lsn
        dsn = up2.primary_dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM demo").fetchone() == (500,)
            conn.execute("INSERT INTO demo (name) VALUES ('after restart')")
            target2 = flush_lsn(conn)
        up2.wait_ingested(target2)
        # the first record of this run is the previous run's shutdown checkpoint
        first = up2.wait_for(r"^rmgr: \S+ .* lsn: (\S+),")
        assert Lsn.parse(first.group(1)) == saved.flushed_lsn
        assert "CHECKPOINT_SHUTDOWN" in first.string
        up2.wait_for(r"^rmgr: Heap .*desc: INSERT")
        assert up2.terminate() == 0
    finally:
        up2.kill()
    assert processes_under(up_home) == []
    again = load_receiver_state(HomeLayout(up_home).receiver_file)
    assert again is not None and again.flushed_lsn >= target2
    assert again.system_id == saved.system_id


@pytest.mark.e2e
def test_up_after_a_crash_of_strata_restarts_the_primary_and_loses_nothing(
        up_home: Path) -> None:
    """kill -9 of strata mid-ingest: the memtable is lost, the slot still holds
    everything after durable_lsn, a restart re-streams it and every earlier
    point answers as before."""
    up = StrataUp(up_home, "--flush-interval", "0.5")
    try:
        dsn = up.primary_dsn()
        proxy = up.wait_for(r"time travel proxy: (.*)$").group(1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t SELECT generate_series(1, 200)")
            target = flush_lsn(conn)
        up.wait_ingested(target)
        with psycopg.connect(proxy, autocommit=True) as conn:
            conn.execute(f"SET strata.travel_lsn = '{target}'")
            before = conn.execute("SELECT count(*), sum(x) FROM t").fetchone()
        assert before == (200, 20100)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO t SELECT generate_series(1001, 1100)")
            mid = flush_lsn(conn)
        up.wait_ingested(mid)  # ingested, not necessarily durable
        up.crash()  # strata dies mid-stream; its primary (a separate session) keeps running
    finally:
        up.kill()
    assert Cluster(datadir=up_home / "primary" / "data").is_running()
    saved = load_receiver_state(HomeLayout(up_home).receiver_file)
    assert saved is not None
    # The slot never passed what strata had made durable: the resume point is still there.
    slot = read_slot(dsn, "strata")
    assert slot is not None and slot.restart_lsn is not None
    assert slot.restart_lsn <= saved.flushed_lsn
    with psycopg.connect(dsn, autocommit=True) as conn:  # written while strata was down
        conn.execute("INSERT INTO t SELECT generate_series(201, 300)")

    up2 = StrataUp(up_home)
    try:
        resumed = up2.wait_for(r"streaming WAL from slot strata at (\S+) \(resumed\)$")
        assert Lsn.parse(resumed.group(1)) <= saved.flushed_lsn or \
            Lsn.parse(resumed.group(1)) >= saved.flushed_lsn  # the store's durable_lsn
        dsn2 = up2.primary_dsn()
        proxy2 = up2.wait_for(r"time travel proxy: (.*)$").group(1)
        with psycopg.connect(dsn2, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (400,)
            target2 = flush_lsn(conn)
        up2.wait_ingested(target2)
        with psycopg.connect(proxy2, autocommit=True) as conn:
            conn.execute(f"SET strata.travel_lsn = '{target}'")
            assert conn.execute("SELECT count(*), sum(x) FROM t").fetchone() == before
            conn.execute(f"SET strata.travel_lsn = '{target2}'")
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (400,)
        assert up2.terminate(sig=signal.SIGINT) == 0  # Ctrl-C
    finally:
        up2.kill()
    assert not Cluster(datadir=up_home / "primary" / "data").is_running()
    assert processes_under(up_home) == []


@pytest.mark.e2e
def test_up_restarts_an_embedded_primary_that_died(up_home: Path) -> None:
    up = StrataUp(up_home)
    try:
        up.wait_for(r"time travel proxy: ")
        c = Cluster(datadir=up_home / "primary" / "data")
        old_pid = c.postmaster_pid()
        c.kill9()
        deadline = time.monotonic() + 60
        up.wait_for(r"the embedded primary is not running; starting it again")
        while not (c.is_running() and c.postmaster_pid() != old_pid):
            assert time.monotonic() < deadline, up.output()
            time.sleep(0.1)
        dsn = up.primary_dsn()
        while True:  # the restarted server may still be in crash recovery
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("CREATE TABLE after_crash (x int)")
                    target = flush_lsn(conn)
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, up.output()
                time.sleep(0.1)
        up.wait_ingested(target)  # the receiver reconnected by itself
        assert up.terminate() == 0
    finally:
        up.kill()
    assert not Cluster(datadir=up_home / "primary" / "data").is_running()
    assert processes_under(up_home) == []


@pytest.mark.e2e
def test_attach_mode_creates_the_slot_and_streams(scratch_dir: Path) -> None:
    """--source: history is imported from a base backup of a primary strata did
    not start, then WAL is ingested; stopping strata leaves that primary alone."""
    c = make_cluster(scratch_dir / "src")
    c.sql("CREATE TABLE a (x int); INSERT INTO a SELECT generate_series(1, 100)")
    home = scratch_dir / "home"
    up = StrataUp(home, "--source", c.dsn())
    try:
        proxy = up.proxy_dsn()
        c.sql("INSERT INTO a SELECT generate_series(101, 150)")
        target = Lsn.parse(c.sql("SELECT pg_current_wal_flush_lsn()::text")[0][0])
        c.sql("DELETE FROM a")
        end = Lsn.parse(c.sql("SELECT pg_current_wal_flush_lsn()::text")[0][0])
        up.wait_ingested(end)
        with psycopg.connect(proxy, autocommit=True) as conn:
            conn.execute(f"SET strata.travel_lsn = '{target}'")
            assert conn.execute("SELECT count(*) FROM a").fetchone() == (150,)
            conn.execute("RESET strata.travel_lsn")
            assert conn.execute("SELECT count(*) FROM a").fetchone() == (0,)
        assert up.terminate() == 0
        assert c.is_running()  # attach mode never stops the user's primary
        # the slot keeps everything after what the store made durable
        slot = read_slot(c.dsn(), "strata")
        assert slot is not None and slot.restart_lsn is not None
        saved = load_receiver_state(HomeLayout(home).receiver_file)
        assert saved is not None and slot.restart_lsn <= saved.flushed_lsn
        assert saved.flushed_lsn >= end  # a clean stop flushes everything ingested
        assert processes_under(home) == []
        # History of another cluster is refused, not mixed in.
        other = make_cluster(scratch_dir / "other")
        try:
            with pytest.raises(ConfigError, match="belongs to another cluster"):
                Daemon(UpOptions(home=home, source=other.dsn(), port=0)).run()
        finally:
            other.stop("immediate")
    finally:
        up.kill()
        c.stop("immediate")


def test_receiver_state_round_trips_atomically(tmp_path: Path) -> None:
    st = ReceiverState("strata", 7311111111111111111, 1, Lsn.parse("0/3000100"),
                       Lsn.parse("0/3000000"), Lsn.parse("0/2FFFFC0"))
    write_json(HomeLayout(tmp_path).receiver_file, st.to_json())
    back = load_receiver_state(HomeLayout(tmp_path).receiver_file)
    assert back is not None
    assert (back.slot, back.system_id, back.timeline, back.received_lsn, back.flushed_lsn,
            back.last_record_lsn) == (st.slot, st.system_id, st.timeline, st.received_lsn,
                                      st.flushed_lsn, st.last_record_lsn)
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "receiver.json").write_text("{not json")
    with pytest.raises(ConfigError, match="damaged"):
        load_receiver_state(HomeLayout(tmp_path).receiver_file)


def test_home_comes_from_strata_home_and_must_be_reachable(
        monkeypatch: pytest.MonkeyPatch, scratch_dir: Path) -> None:
    monkeypatch.setenv("STRATA_HOME", str(scratch_dir / "h"))
    assert resolve_home(None) == scratch_dir / "h"
    assert resolve_home(str(scratch_dir / "explicit")) == scratch_dir / "explicit"
    private = scratch_dir / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    if os.geteuid() == 0:  # the server user could not reach a data directory in there
        with pytest.raises(ConfigError, match="other users cannot traverse"):
            check_server_can_reach(resolve_home(str(private / "h")))
    else:
        check_server_can_reach(resolve_home(str(private / "h")))
    assert resolve_home(str(private / "h")) == private / "h"  # tools may read it


def test_without_home_or_strata_home_root_uses_var_lib_strata_and_others_their_home(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATA_HOME", raising=False)
    if os.geteuid() == 0:
        assert resolve_home(None) == ROOT_HOME
    else:
        assert resolve_home(None) == Path("~/.strata").expanduser()


def test_psql_requires_a_running_strata(scratch_dir: Path) -> None:
    home = scratch_dir / "nothing"
    home.mkdir()
    out = subprocess.run([sys.executable, "-m", "strata.cli.main", "psql", "--home", str(home),
                          "-c", "SELECT 1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "strata is not running on" in out.stderr


def test_psql_arguments_split_home_from_psql_args() -> None:
    from strata.cli.psql import split_home

    assert split_home(["--home", "/h", "-c", "x"]) == ("/h", ["-c", "x"])
    assert split_home(["--home=/h", "--", "-l"]) == ("/h", ["-l"])
    assert split_home(["-c", "select 1"]) == (None, ["-c", "select 1"])


def test_up_refuses_a_bad_strata_storage_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from strata.cli.main import main

    monkeypatch.setenv("STRATA_STORAGE", "memtable_bytes=-1")
    home = tmp_path / "home"
    assert main(["up", "--home", str(home)]) != 0
    err = capsys.readouterr().err
    assert "STRATA_STORAGE='memtable_bytes=-1'" in err and "memtable_bytes" in err
    assert not home.exists()  # no primary created, nothing imported
