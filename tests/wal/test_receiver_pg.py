"""The streaming receiver against a real PostgreSQL 18 primary.

Oracles: the server's own WAL files (the file source over pg_wal must give
the very same bytes and records), the server's pg_replication_slots view (the
slot never passes what the consumer reported), and the server's messages.
"""

from __future__ import annotations

import itertools
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.errors import EndOfWal, WalSourceError
from strata.lsn import Lsn
from strata.runtime.cluster import Cluster
from strata.wal.reader import RawRecord, WalReader
from strata.wal.receiver import WalReceiver
from strata.wal.replication import (
    drop_physical_slot,
    ensure_physical_slot,
    read_slot,
    server_setting,
)
from strata.wal.source import FileSource, WalChunk, WalSource
from tests.conftest import make_cluster

pytestmark = pytest.mark.pg


@pytest.fixture
def slot(pg_primary: Cluster) -> Iterator[str]:
    """A fresh physical slot on the shared primary, dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    ensure_physical_slot(pg_primary.dsn(), name)
    try:
        yield name
    finally:
        drop_physical_slot(pg_primary.dsn(), name)


def _flush_lsn(c: Cluster) -> Lsn:
    return Lsn.parse(c.sql("SELECT pg_current_wal_flush_lsn()::text")[0][0])


def _slot_restart(c: Cluster, name: str) -> Lsn:
    return Lsn.parse(c.sql(
        f"SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = '{name}'")[0][0])


def _workload(c: Cluster, table: str, rows: int = 2000) -> None:
    c.sql(f"CREATE TABLE IF NOT EXISTS {table} (id int, t text)")
    c.sql(f"INSERT INTO {table} SELECT g, repeat('x', 100) FROM generate_series(1, {rows}) g")
    c.sql(f"UPDATE {table} SET t = 'y' WHERE id % 7 = 0")


def _read_until(src: WalSource, end: Lsn, *, timeout: float = 60) -> list[WalChunk]:
    """Chunks from `src` until `end` is covered (and check contiguity on the way)."""
    chunks: list[WalChunk] = []
    pos = src.start_lsn
    deadline = time.monotonic() + timeout
    while pos < end:
        assert time.monotonic() < deadline, f"stream stuck at {pos}, wanted {end}"
        c = src.poll(0.5)
        if c is None:
            continue
        assert c.start == pos, f"chunk at {c.start}, expected {pos}"
        pos = c.end
        chunks.append(c)
    return chunks


def _bytes(chunks: list[WalChunk], start: Lsn, end: Lsn) -> bytes:
    data = b"".join(c.data for c in chunks)
    assert chunks[0].start == start
    return data[: end - start]


def _records(start: Lsn, data: bytes) -> list[RawRecord]:
    r = WalReader(start)
    r.feed(data)
    out: list[RawRecord] = []
    try:
        while (rec := r.read_record()) is not None:
            out.append(rec)
    except EndOfWal:
        pass
    return out


def _assert_chain(records: list[RawRecord]) -> None:
    """Records follow each other: each starts where the previous ended, and each
    record's xl_prev (bytes 8..16 of the header) names the previous record."""
    for a, b in itertools.pairwise(records):
        assert b.lsn >= a.end_lsn
        assert int.from_bytes(b.raw[8:16], "little") == a.lsn, f"prev of {b.lsn} is not {a.lsn}"


def test_stream_and_files_give_byte_identical_wal_and_records(
        pg_primary: Cluster, slot: str, scratch_dir: Path) -> None:
    info = read_slot(pg_primary.dsn(), slot)
    assert info is not None and info.restart_lsn is not None
    start = info.restart_lsn
    _workload(pg_primary, "t_" + slot)
    end = _flush_lsn(pg_primary)

    rx = WalReceiver(pg_primary.dsn(), slot, start, give_up_after=10)
    try:
        streamed = _read_until(rx, end)
    finally:
        rx.close()
    copy = scratch_dir / "wal"
    shutil.copytree(pg_primary.wal_dir(), copy, ignore=shutil.ignore_patterns("archive_status"))
    files = list(FileSource(copy, start).stream())

    s, f = _bytes(streamed, start, end), _bytes(files, start, end)
    assert len(s) == end - start > 100_000
    assert s == f
    rs, rf = _records(start, s), _records(start, f)
    assert len(rs) > 2000
    assert rs == rf
    assert rs[-1].end_lsn == end  # the stream reaches the server's flush position exactly
    _assert_chain(rs)


def test_feedback_moves_the_slot_only_to_the_reported_flush(
        pg_primary: Cluster, slot: str) -> None:
    start = _slot_restart(pg_primary, slot)
    _workload(pg_primary, "t_" + slot, rows=500)
    end = _flush_lsn(pg_primary)
    rx = WalReceiver(pg_primary.dsn(), slot, start, status_interval=0.2,
                     min_feedback_interval=0.05, give_up_after=10)
    try:
        data = _bytes(_read_until(rx, end), start, end)
        records = _records(start, data)
        # Everything was received, nothing reported yet: the slot must not move.
        for _ in range(5):
            rx.poll(0.2)
        assert _slot_restart(pg_primary, slot) == start
        middle = records[len(records) // 2].end_lsn
        rx.report(end, middle)
        deadline = time.monotonic() + 10
        while _slot_restart(pg_primary, slot) != middle and time.monotonic() < deadline:
            rx.poll(0.2)
        assert _slot_restart(pg_primary, slot) == middle
        # and stays there while the consumer reports nothing new
        for _ in range(5):
            rx.poll(0.2)
        assert _slot_restart(pg_primary, slot) == middle
        rx.report(end, end)
    finally:
        rx.close()  # sends the last report
    # the server applies it asynchronously (the walsender reads it, then exits)
    deadline = time.monotonic() + 10
    while _slot_restart(pg_primary, slot) != end and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _slot_restart(pg_primary, slot) == end


def test_missing_slot_is_a_clear_wal_source_error(pg_primary: Cluster) -> None:
    rx = WalReceiver(pg_primary.dsn(), "no_such_slot", _flush_lsn(pg_primary), give_up_after=5)
    with pytest.raises(WalSourceError, match='replication slot "no_such_slot" does not exist'):
        rx.poll(10)
    rx.close()
    assert read_slot(pg_primary.dsn(), "no_such_slot") is None


def test_ensure_physical_slot_creates_once(pg_primary: Cluster) -> None:
    name = "t_" + uuid.uuid4().hex[:12]
    try:
        info, created = ensure_physical_slot(pg_primary.dsn(), name)
        assert created and info.restart_lsn is not None and info.restart_tli == 1
        again, created2 = ensure_physical_slot(pg_primary.dsn(), name)
        assert not created2 and again.restart_lsn == info.restart_lsn
    finally:
        drop_physical_slot(pg_primary.dsn(), name)


def test_a_slot_can_be_dropped_right_after_its_receiver_closes(pg_primary: Cluster) -> None:
    name = "t_" + uuid.uuid4().hex[:12]
    ensure_physical_slot(pg_primary.dsn(), name)
    rx = WalReceiver(pg_primary.dsn(), name, _slot_restart(pg_primary, name), give_up_after=10)
    rx.poll(0.5)
    assert rx.connected
    rx.close()
    assert drop_physical_slot(pg_primary.dsn(), name)  # waits for the walsender to let go
    assert read_slot(pg_primary.dsn(), name) is None
    assert not drop_physical_slot(pg_primary.dsn(), name)


@pytest.mark.usefixtures("fds_above_setsize")
def test_slot_and_stream_work_with_descriptors_above_1024(pg_primary: Cluster) -> None:
    """Found at pgbench scale 300: ingest could not reconnect after a restart
    ("filedescriptor out of range in select()") once its store had more layer
    files open than FD_SETSIZE."""
    name = "t_" + uuid.uuid4().hex[:12]
    ensure_physical_slot(pg_primary.dsn(), name)  # a replication connection
    try:
        start = _slot_restart(pg_primary, name)
        _workload(pg_primary, "t_" + name, rows=300)
        end = _flush_lsn(pg_primary)
        rx = WalReceiver(pg_primary.dsn(), name, start, give_up_after=10)
        try:
            chunks = _read_until(rx, end)  # the receiver waits on its socket
            assert rx.connected
        finally:
            rx.close()
        assert chunks[-1].end >= end
    finally:
        drop_physical_slot(pg_primary.dsn(), name)


def test_server_setting_reads_over_a_replication_connection(pg_primary: Cluster) -> None:
    assert server_setting(pg_primary.dsn(), "wal_segment_size") == "16MB"
    assert server_setting(pg_primary.dsn(), "wal_level") == "replica"


def test_stop_from_another_thread_ends_an_idle_stream(pg_primary: Cluster, slot: str) -> None:
    """The polling thread waits without a deadline and nothing falls due for ten
    minutes: only stop()'s wake-up can end its wait."""
    rx = WalReceiver(pg_primary.dsn(), slot, _slot_restart(pg_primary, slot), give_up_after=10,
                     status_interval=600, receive_timeout=None)
    done = threading.Event()

    def run() -> None:
        while not rx.finished:
            rx.poll(None)
        rx.close()
        done.set()

    t = threading.Thread(target=run)
    t.start()
    try:
        deadline = time.monotonic() + 60
        while not rx.connected:  # streaming, then idle
            assert time.monotonic() < deadline, "the receiver did not connect"
            time.sleep(0.01)
    finally:
        rx.stop()
        t.join(60)
    assert done.is_set(), "stop() did not end the idle stream"
    assert rx.finished and not rx.connected


@pytest.mark.parametrize("how", ["fast", "kill9"])
def test_primary_restart_mid_stream_loses_and_duplicates_nothing(
        scratch_dir: Path, how: str) -> None:
    c = make_cluster(scratch_dir / "p")
    try:
        info, _ = ensure_physical_slot(c.dsn(), "strata")
        assert info.restart_lsn is not None
        start = info.restart_lsn
        rx = WalReceiver(c.dsn(), "strata", start, backoff_initial=0.05, backoff_max=0.5,
                         give_up_after=60, status_interval=0.5)
        final: list[Lsn] = []
        failure: list[BaseException] = []

        def writer() -> None:
            try:
                with c.connect() as conn:
                    conn.execute("CREATE TABLE w (id int, t text)")
                    for i in range(40):
                        conn.execute("INSERT INTO w SELECT g, md5(g::text) "
                                     "FROM generate_series(%s::int, %s::int) g", (i * 100, i * 100 + 99))
                # the restart comes while the receiver streams: it has this WAL already
                written = _flush_lsn(c)
                deadline = time.monotonic() + 60
                while rx.received_lsn < written:
                    assert time.monotonic() < deadline, f"the receiver never reached {written}"
                    time.sleep(0.01)
                if how == "fast":
                    c.stop("fast")
                else:
                    c.kill9()
                c.start()
                with c.connect() as conn:
                    for i in range(40, 80):
                        conn.execute("INSERT INTO w SELECT g, md5(g::text) "
                                     "FROM generate_series(%s::int, %s::int) g", (i * 100, i * 100 + 99))
                final.append(_flush_lsn(c))
            except BaseException as e:
                failure.append(e)
                final.append(Lsn(0))

        t = threading.Thread(target=writer)
        t.start()
        chunks: list[WalChunk] = []
        pos = start
        deadline = time.monotonic() + 120
        try:
            while not final or pos < final[0]:
                assert time.monotonic() < deadline, f"stuck at {pos}"
                ch = rx.poll(0.2)
                if ch is not None:
                    assert ch.start == pos  # contiguous: nothing lost, nothing repeated
                    pos = ch.end
                    chunks.append(ch)
                    rx.report(pos, pos)
                if failure:
                    break
        finally:
            t.join(120)
            reconnects = rx.stats().reconnects
            rx.close()
        assert not failure, failure
        assert reconnects >= 1
        end = final[0]
        streamed = _bytes(chunks, start, end)
        files = _bytes(list(FileSource(c.wal_dir(), start).stream()), start, end)
        records = _records(start, streamed)
        # The files are the oracle: same records, and the stream reaches the end.
        assert records == _records(start, files)
        assert records[-1].end_lsn == end
        _assert_chain(records)
        assert sum(1 for r in records if r.raw[17] == 10) > 0  # heap records got through
    finally:
        c.stop("immediate")


def test_removed_wal_is_a_clear_wal_source_error(scratch_dir: Path) -> None:
    c = make_cluster(scratch_dir / "p", wal_keep_size="0", min_wal_size="32MB")
    try:
        first = Lsn.parse(c.sql("SELECT pg_current_wal_lsn()::text")[0][0])
        for _ in range(3):
            c.sql("CREATE TABLE IF NOT EXISTS x (a int); INSERT INTO x VALUES (1)")
            c.sql("SELECT pg_switch_wal()")
            c.sql("CHECKPOINT")
        ensure_physical_slot(c.dsn(), "strata")
        rx = WalReceiver(c.dsn(), "strata", first, give_up_after=5)
        with pytest.raises(WalSourceError, match="has already been removed"):
            rx.poll(10)
        rx.close()
    finally:
        c.stop("immediate")


def test_receiver_gives_up_after_the_configured_time_when_the_server_is_gone(
        scratch_dir: Path) -> None:
    c = make_cluster(scratch_dir / "p")
    try:
        info, _ = ensure_physical_slot(c.dsn(), "strata")
        assert info.restart_lsn is not None
        rx = WalReceiver(c.dsn(), "strata", info.restart_lsn, backoff_initial=0.05,
                         backoff_max=0.2, give_up_after=1.0)
        rx.poll(0.5)
        assert rx.connected
        c.stop("immediate")
        t0 = time.monotonic()
        with pytest.raises(WalSourceError, match="cannot stream WAL"):
            while time.monotonic() - t0 < 20:
                rx.poll(0.5)
        rx.close()
    finally:
        c.stop("immediate")


def _wait_sql(c: Cluster, query: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not c.sql(query)[0][0]:
        assert time.monotonic() < deadline, f"timed out waiting for: {query}"
        time.sleep(0.1)


def test_stream_follows_a_timeline_switch_without_loss(scratch_dir: Path) -> None:
    """A standby is promoted while we stream from it: the receiver finishes timeline 1
    up to the switch point and continues on timeline 2; the bytes equal what the
    server's own pg_wal holds along timeline 2's history."""
    from strata.runtime.osuser import make_private_dir, run_as_server

    primary = make_cluster(scratch_dir / "p")
    standby = Cluster(datadir=scratch_dir / "s" / "data")
    try:
        make_private_dir(standby.datadir)
        run_as_server([primary.bins.path("pg_basebackup"), "-h", "127.0.0.1", "-p",
                       str(primary.port), "-U", "postgres", "-D", standby.datadir, "-R",
                       "-X", "stream", "-c", "fast"])
        standby.start()
        info, _ = ensure_physical_slot(standby.dsn(), "strata")
        assert info.restart_lsn is not None and info.restart_tli == 1
        start = info.restart_lsn
        _workload(primary, "before", rows=300)
        target = _flush_lsn(primary)
        _wait_sql(standby, f"SELECT pg_last_wal_replay_lsn() >= '{target}'")
        rx = WalReceiver(standby.dsn(), "strata", start, backoff_initial=0.05,
                         backoff_max=0.5, give_up_after=60, status_interval=0.5)
        try:
            chunks = _read_until(rx, target)
            primary.stop("fast")
            standby.sql("SELECT pg_promote()")
            _wait_sql(standby, "SELECT NOT pg_is_in_recovery()")
            _workload(standby, "after", rows=300)
            end = Lsn.parse(standby.sql("SELECT pg_current_wal_flush_lsn()::text")[0][0])
            pos = chunks[-1].end
            deadline = time.monotonic() + 60
            while pos < end:
                assert time.monotonic() < deadline, f"stuck at {pos}, timeline {rx.timeline}"
                ch = rx.poll(0.2)
                if ch is not None:
                    assert ch.start == pos
                    pos = ch.end
                    chunks.append(ch)
            assert rx.timeline == 2
        finally:
            rx.close()
        streamed = _bytes(chunks, start, end)
        files = _bytes(list(FileSource(standby.wal_dir(), start, timeline=2).stream()),
                       start, end)
        records = _records(start, streamed)
        assert records == _records(start, files)
        assert records[-1].end_lsn == end
        _assert_chain(records)
        # A receiver started after the promotion, knowing or not the timeline it was on,
        # reads the history (TIMELINE_HISTORY) and gets the same bytes.
        for tli in (1, None):
            rx2 = WalReceiver(standby.dsn(), "strata", start, timeline=tli, give_up_after=10)
            try:
                again = _bytes(_read_until(rx2, end), start, end)
                assert rx2.timeline == 2
            finally:
                rx2.close()
            assert again == streamed
    finally:
        standby.stop("immediate")
        primary.stop("immediate")


def test_an_idle_but_alive_server_answers_pings_and_is_not_dropped(
        pg_primary: Cluster, slot: str) -> None:
    """receive_timeout 1 s on the receiver's clock (moved by hand): at 0.6 s of
    silence it asks for a reply; the server's answer keeps the connection, so at
    1.2 s (0.6 s after the answer) it is still there and asks again."""
    clock = ManualClock()
    rx = WalReceiver(pg_primary.dsn(), slot, _flush_lsn(pg_primary),
                     receive_timeout=1.0, status_interval=30, give_up_after=10, clock=clock)
    try:
        rx.poll(0)  # connects
        assert rx.connected
        # whatever the server sends on its own first (it has nothing to stream)
        _poll_quietly(rx)
        heard = rx.stats().messages
        clock.now += 0.6
        rx.poll(0)  # the ping
        deadline = time.monotonic() + 30
        while rx.stats().messages == heard:  # the server's answer
            assert time.monotonic() < deadline, "the server did not answer the ping"
            _poll_quietly(rx)
        clock.now += 0.6
        rx.poll(0)
        assert rx.connected
        assert rx.stats().reconnects == 0
    finally:
        rx.close()


class ManualClock:
    """The receiver's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _poll_quietly(rx: WalReceiver) -> None:
    """Take in what the server has sent (nothing to stream: from its flush position)."""
    rx.poll(0)
    time.sleep(0.01)
