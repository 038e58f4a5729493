"""The streaming replication client: WAL bytes from a physical slot, feedback back.

What it is: the only module in `wal/` that talks to a server. It opens a
``replication=true`` connection with psycopg 3's libpq layer
(`psycopg.pq.PGconn`), checks the server is PostgreSQL 18 (IDENTIFY_SYSTEM,
TIMELINE_HISTORY when the server moved to a new timeline), runs
``START_REPLICATION SLOT s PHYSICAL X/Y TIMELINE n`` and reads COPY BOTH:
XLogData becomes `WalChunk`s, keepalives asking for a reply are answered at
once, and a standby status update is sent every `status_interval` seconds
and soon after the consumer reports progress.

Positions: `received_lsn` is the end of what was handed to the consumer. The
status update sends ``write = max(received_lsn, reported write)`` (so a
primary shutting down, which waits until its standbys confirm what it sent,
is not held up) and ``flush`` / ``apply`` exactly as the consumer reported
them through `report` — the server moves the slot's restart_lsn to ``flush``,
so WAL is only released once the consumer made it durable (the store's
``durable_lsn`` once ingest is wired in).

Reconnects: when the connection drops or the server restarts, the receiver
reconnects with capped exponential backoff and resumes at `received_lsn`;
overlapping bytes are cut by LSN, so the consumer sees one contiguous stream.
Conditions retrying cannot fix (slot missing, WAL removed, not PG 18,
another cluster, a timeline that forked below us) raise `WalSourceError`.

Fed by: a DSN, a slot name, a start LSN, the consumer's feedback. Feeds:
`StreamSource` (below), the daemon. Owns: one replication connection.

Threading: `poll`/`stream` run in one thread (the one that owns the
connection); `report` and `stop` may be called from any thread or a signal
handler — they only record state and wake the polling thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from psycopg import OperationalError, pq

from strata.errors import ProtocolError, WalSourceError
from strata.lsn import Lsn
from strata.pg.timestamp import timestamptz_now
from strata.runtime.fdwait import wait_ready
from strata.wal.replication import (
    Retry,
    check_slot_name,
    connect_replication,
    describe_dsn,
    errmsg,
    exec_rows,
    raise_for,
    replication_conninfo,
)
from strata.wal.replication_messages import (
    PrimaryKeepalive,
    StandbyStatusUpdate,
    SystemIdentity,
    parse_server_message,
    parse_timeline_history,
    split_xlogdata,
    switchpoint_of,
    timeline_of_lsn,
)
from strata.wal.source import WalChunk

log = logging.getLogger(__name__)
COALESCE_BYTES = 1 << 20  # WAL of the messages already buffered returned as one chunk


@dataclass(frozen=True, slots=True)
class ReceiverStats:
    received_lsn: Lsn
    server_wal_end: Lsn
    last_flush_sent: Lsn
    bytes_received: int
    reconnects: int
    timeline: int | None
    messages: int  # every message from the server (WAL, keepalives), all connections


class WalReceiver:
    """Streams WAL from physical slot `slot` starting at `start_lsn`.

    Usage (one thread)::

        rx = WalReceiver(dsn, "strata", start)
        for chunk in rx.stream():
            consume(chunk)
            rx.report(write_lsn=..., flush_lsn=durable)   # any thread
        # rx.stop() from elsewhere ends the loop

    `give_up_after`: seconds of continuous failure to reconnect after which
    `poll` raises WalSourceError (None: retry forever, as a daemon should).
    """

    def __init__(self, dsn: str, slot: str, start_lsn: int, *, timeline: int | None = None,
                 status_interval: float = 10.0, min_feedback_interval: float = 0.2,
                 backoff_initial: float = 0.1, backoff_max: float = 5.0,
                 give_up_after: float | None = None, connect_timeout: float = 10.0,
                 system_id: int | None = None, receive_timeout: float | None = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        check_slot_name(slot)
        # Every interval above is measured on `clock` (tests drive a manual one; the
        # waits on the socket still block for real, but decide nothing by themselves).
        self._clock = clock
        self.dsn = dsn
        self.slot = slot
        self.where = describe_dsn(dsn)
        self.status_interval = status_interval
        self.min_feedback_interval = min_feedback_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.give_up_after = give_up_after
        # Like wal_receiver_timeout: a server silent this long gets a status update
        # asking for a reply at half of it, and the connection is dropped at all of it
        # (a dead network path sends no RST; without this we would wait forever).
        self.receive_timeout = receive_timeout
        self._last_recv_at = 0.0
        self._pinged = False
        self.connect_timeout = connect_timeout
        self._conninfo = replication_conninfo(dsn)
        self._start = Lsn(start_lsn)
        self._received = Lsn(start_lsn)
        self._timeline = timeline
        self._system_id = system_id  # when known: refuse a server of another cluster
        self._server_wal_end = Lsn(0)
        self._bytes = 0
        self._messages = 0
        self._copy_ended = False  # the server ended COPY after the chunk last returned
        self._reconnects = 0
        self._conn_count = 0
        self._conn: pq.abc.PGconn | None = None
        # consumer feedback (guarded by _lock; written by report() from any thread)
        self._lock = threading.Lock()
        self._rep_write = Lsn(0)
        self._rep_flush = Lsn(0)
        self._rep_apply = Lsn(0)
        self._sent_flush = Lsn(0)
        self._last_status_at = 0.0
        self._reply_pending = False
        # reconnect bookkeeping
        self._failing_since: float | None = None
        self._attempts = 0
        self._next_attempt_at = 0.0
        self._stopping = threading.Event()
        self._finished = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- public state ---------------------------------------------------------------
    @property
    def start_lsn(self) -> Lsn:
        return self._start

    @property
    def received_lsn(self) -> Lsn:
        """End of the WAL handed to the consumer (resume point after a reconnect)."""
        return self._received

    @property
    def server_wal_end(self) -> Lsn:
        """The server's WAL end as of its last message (for lag)."""
        return self._server_wal_end

    @property
    def timeline(self) -> int | None:
        return self._timeline

    @property
    def system_id(self) -> int | None:
        return self._system_id

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def stats(self) -> ReceiverStats:
        return ReceiverStats(self._received, self._server_wal_end, self._sent_flush,
                             self._bytes, self._reconnects, self._timeline, self._messages)

    # -- feedback and control (any thread) ------------------------------------------------
    def report(self, write_lsn: int, flush_lsn: int, apply_lsn: int | None = None) -> None:
        """The consumer has written `write_lsn` and made durable `flush_lsn`.

        Requires: flush_lsn <= write_lsn. Positions never move backwards (a lower
        value is ignored) — the server would otherwise move the slot back.
        """
        if flush_lsn > write_lsn:
            raise ValueError(f"flush {Lsn(flush_lsn)} is past write {Lsn(write_lsn)}")
        with self._lock:
            self._rep_write = max(self._rep_write, Lsn(write_lsn))
            self._rep_flush = max(self._rep_flush, Lsn(flush_lsn))
            apply = flush_lsn if apply_lsn is None else apply_lsn
            self._rep_apply = max(self._rep_apply, Lsn(apply))
        self._wake()

    def stop(self) -> None:
        """End `stream()` / make `poll()` return None from now on. The polling thread
        then calls `close()`, which sends a last status update and disconnects."""
        self._stopping.set()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Send a final status update and close the connection (polling thread)."""
        self._finished = True
        self._disconnect(final_status=True)
        fds = (self._wake_r, self._wake_w)
        self._wake_r = self._wake_w = -1  # before closing: a late _wake() must not hit a reused fd
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __enter__(self) -> WalReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop ---------------------------------------------------------------------
    def stream(self, idle_timeout: float | None = None) -> Iterator[WalChunk]:
        """Chunks until `stop()` (or `idle_timeout` seconds without WAL, if given).
        Closes the receiver when the iteration ends."""
        try:
            while not self._finished:
                chunk = self.poll(idle_timeout if idle_timeout is not None else 1.0)
                if chunk is not None:
                    yield chunk
                elif idle_timeout is not None:
                    return
        finally:
            self.close()

    def poll(self, timeout: float | None = None) -> WalChunk | None:
        """The next chunk of WAL, or None after `timeout` seconds without one (or when
        stopped). Answers keepalives, sends feedback and reconnects meanwhile.

        Raises: WalSourceError for conditions a reconnect cannot cure.
        """
        deadline = None if timeout is None else self._clock() + timeout
        while True:
            if self._stopping.is_set():
                # The connection stays open until close(), so the consumer's last
                # report (made after it saw the stream end) still reaches the server.
                self._finished = True
                return None
            if self._finished:
                return None
            try:
                if self._conn is None and not self._try_connect(deadline):
                    if self._deadline_passed(deadline) or self._stopping.is_set():
                        return None
                    continue  # woken early (e.g. by report()): keep waiting to reconnect
                chunk = self._receive(deadline)
                if chunk is not None or self._deadline_passed(deadline):
                    return chunk
            except Retry as e:
                if self._stopping.is_set():
                    self._disconnect(final_status=False)
                    continue  # the top of the loop finishes
                self._on_failure(str(e))
            except WalSourceError:
                self._disconnect(final_status=False)
                raise

    def _deadline_passed(self, deadline: float | None) -> bool:
        return deadline is not None and self._clock() >= deadline

    def _on_failure(self, why: str) -> None:
        self._disconnect(final_status=False)
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        delay = min(self.backoff_max, self.backoff_initial * (2 ** self._attempts))
        self._attempts += 1
        self._next_attempt_at = now + delay
        log.warning("WAL stream from %s interrupted (%s); reconnecting in %.1fs at %s",
                    self.where, why, delay, self._received)
        if self.give_up_after is not None and now - self._failing_since > self.give_up_after:
            raise WalSourceError(
                f"cannot stream WAL from {self.where} for {now - self._failing_since:.0f}s "
                f"(resume point {self._received}): {why}"
            )

    def _sleep_until(self, when: float, deadline: float | None) -> bool:
        """Wait (wakeable) until `when`; False if the poll deadline comes first."""
        until = when if deadline is None else min(when, deadline)
        remaining = until - self._clock()
        if remaining > 0:
            wait_ready([self._wake_r], timeout=remaining)
            self._drain_wake()
        return self._clock() >= when

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 4096):
                pass

    def _try_connect(self, deadline: float | None) -> bool:
        if self._next_attempt_at > self._clock() and (
            not self._sleep_until(self._next_attempt_at, deadline) or self._stopping.is_set()
        ):
            return False
        self._connect()
        return True

    def _connect(self) -> None:
        conn = connect_replication(self._conninfo, self.where, timeout=self.connect_timeout,
                     wake_fd=self._wake_r, stopping=self._stopping)
        try:
            rows = exec_rows(conn, "IDENTIFY_SYSTEM", self.where)
            if len(rows) != 1:
                raise ProtocolError(f"IDENTIFY_SYSTEM returned {len(rows)} rows")
            ident = SystemIdentity.from_row(rows[0])
            if self._system_id is not None and ident.system_id != self._system_id:
                raise WalSourceError(
                    f"the server at {self.where} is another cluster (system identifier "
                    f"{ident.system_id}, was {self._system_id}); refusing to mix its WAL in"
                )
            self._system_id = ident.system_id
            tli = self._choose_timeline(conn, ident)
            self._start_replication(conn, tli)
        except BaseException:
            conn.finish()
            raise
        if self._conn_count:
            self._reconnects += 1
        self._conn_count += 1
        self._conn = conn
        self._timeline = tli
        self._last_status_at = 0.0  # send our position right away
        self._last_recv_at = self._clock()
        self._pinged = False
        log.info("streaming WAL from %s slot %s at %s on timeline %d",
                 self.where, self.slot, self._received, tli)

    def _choose_timeline(self, conn: pq.abc.PGconn, ident: SystemIdentity) -> int:
        """The timeline to request our resume point on (tliOfPointInHistory)."""
        if ident.timeline == self._timeline or ident.timeline == 1:
            return ident.timeline
        rows = exec_rows(conn, f"TIMELINE_HISTORY {ident.timeline}", self.where)
        if len(rows) != 1 or rows[0][1] is None:
            raise ProtocolError(f"TIMELINE_HISTORY {ident.timeline} returned no file")
        history = parse_timeline_history(rows[0][1].decode())
        if self._timeline is not None:
            end = switchpoint_of(history, self._timeline)
            if self._timeline not in {e.tli for e in history} and self._timeline != ident.timeline:
                raise WalSourceError(
                    f"timeline {self._timeline} we streamed is not in the history of "
                    f"timeline {ident.timeline} on {self.where}"
                )
            if end is not None and self._received > end:
                raise WalSourceError(
                    f"we received WAL up to {self._received} on timeline {self._timeline}, "
                    f"but the server's timeline {ident.timeline} forked from it at {end}"
                )
        return timeline_of_lsn(history, ident.timeline, self._received)

    def _start_replication(self, conn: pq.abc.PGconn, tli: int) -> None:
        cmd = f'START_REPLICATION SLOT "{self.slot}" PHYSICAL {self._received} TIMELINE {tli}'
        try:
            res = conn.exec_(cmd.encode())
        except OperationalError as e:
            raise Retry(f"START_REPLICATION on {self.where}: {e}") from e
        if res.status != pq.ExecStatus.COPY_BOTH:
            raise_for(res, conn, f"START_REPLICATION of slot {self.slot!r} at {self._received} "
                                  f"on {self.where}")

    def _disconnect(self, *, final_status: bool) -> None:
        conn = self._conn
        if conn is None:
            return
        if final_status:
            with contextlib.suppress(Exception):
                self._send_status(conn, reply_requested=False)
        self._conn = None
        self._copy_ended = False
        with contextlib.suppress(Exception):
            conn.finish()

    def _receive(self, deadline: float | None) -> WalChunk | None:
        """Read messages until a chunk arrives or the deadline passes."""
        conn = self._conn
        assert conn is not None
        while True:
            self._maybe_send_status(conn)
            chunk, ended = self._drain(conn)
            if chunk is not None:
                return chunk
            if ended:
                self._end_of_copy(conn)
                return None
            # nothing buffered; wait for the socket, a wake-up, or feedback time
            # (past the deadline: only take in what has already arrived).
            if self._stopping.is_set():
                return None
            expired = self._deadline_passed(deadline)
            wait = min(self._next_status_due(), self._check_silence(conn)) - self._clock()
            if deadline is not None:
                wait = min(wait, deadline - self._clock())
            readable, _ = wait_ready([conn.socket, self._wake_r],
                                     timeout=0.0 if expired else max(0.0, wait))
            if self._wake_r in readable:
                self._drain_wake()
            if conn.socket in readable:
                try:
                    conn.consume_input()
                except OperationalError as e:
                    raise Retry(f"receiving from {self.where}: {e}") from e
            elif expired:
                return None

    def _drain(self, conn: pq.abc.PGconn) -> tuple[WalChunk | None, bool]:
        """The messages libpq holds already, their WAL as one chunk up to `COALESCE_BYTES`
        (a busy primary sends a message per WAL flush). Returns (the chunk or None,
        whether the server ended COPY: after the chunk, at the next `_receive`)."""
        if self._copy_ended:
            self._copy_ended = False
            return None, True
        parts: list[bytes | memoryview] = []
        start: int | None = None
        size, got, ended = 0, 0, False
        while size < COALESCE_BYTES:
            try:
                n, buf = conn.get_copy_data(1)
            except OperationalError as e:
                raise Retry(f"receiving from {self.where}: {e}") from e
            if n <= 0:  # 0: nothing buffered; -1: the server ended COPY
                ended = n == -1
                break
            got += 1
            w = split_xlogdata(buf)  # the usual message, taken without an object
            if w is not None:
                at, data = self._received, self._accept(*w)
                if data is not None:
                    start = at if start is None else start
                    parts.append(data)
                    size += len(data)
                continue
            msg = parse_server_message(buf)
            if isinstance(msg, PrimaryKeepalive):
                self._server_wal_end = max(self._server_wal_end, msg.wal_end)
                if msg.reply_requested:
                    self._reply_pending = True
                    break  # answered by the next `_receive` at once
        if got:
            self._messages += got
            self._attempts, self._failing_since, self._pinged = 0, None, False
            self._last_recv_at = self._clock()
        if start is None:
            return None, ended
        self._copy_ended = ended
        return WalChunk(Lsn(start), b"".join(parts)), False

    def _check_silence(self, conn: pq.abc.PGconn) -> float:
        """Ping a silent server, drop a dead one; returns when to look again."""
        if self.receive_timeout is None:
            return float("inf")
        silent = self._clock() - self._last_recv_at
        if silent >= self.receive_timeout:
            raise Retry(f"no message from the server for {silent:.1f}s (receive_timeout)")
        if silent >= self.receive_timeout / 2 and not self._pinged:
            self._send_status(conn, reply_requested=True)
            self._pinged = True
        half = self._last_recv_at + self.receive_timeout / 2
        return half if not self._pinged else self._last_recv_at + self.receive_timeout

    def _accept(self, start: int, wal_end: int, data: bytes | memoryview
                ) -> bytes | memoryview | None:
        """An XLogData message's WAL from the received position on (which moves past it):
        what we have trimmed (None if nothing is left), a gap refused."""
        if wal_end > self._server_wal_end:
            self._server_wal_end = Lsn(wal_end)
        if start > self._received:
            raise WalSourceError(
                f"gap in the WAL stream from {self.where}: expected {self._received}, "
                f"the server sent {start}"
            )
        if start < self._received:
            cut = self._received - start
            if cut >= len(data):
                return None
            data, start = data[cut:], self._received
        if not data:
            return None
        self._received = Lsn(start + len(data))
        self._bytes += len(data)
        return data

    def _end_of_copy(self, conn: pq.abc.PGconn) -> None:
        """The server ended COPY: either its timeline ended (it tells us the next
        one; we continue on the same connection) or it is going away."""
        with contextlib.suppress(OperationalError):
            conn.put_copy_end()
            conn.flush()
        next_tli: int | None = None
        error: str | None = None
        while True:
            try:
                res = conn.get_result()
            except OperationalError as e:
                raise Retry(f"end of stream from {self.where}: {e}") from e
            if res is None:
                break
            if res.status == pq.ExecStatus.TUPLES_OK and res.ntuples == 1 and res.nfields >= 2:
                v = res.get_value(0, 0)
                next_tli = int(v) if v is not None else None
            elif res.status == pq.ExecStatus.FATAL_ERROR:
                error = errmsg(res, conn)
        if next_tli is not None and conn.status == pq.ConnStatus.OK:
            log.info("timeline %s ended at %s on %s; following timeline %d",
                     self._timeline, self._received, self.where, next_tli)
            self._start_replication(conn, next_tli)
            self._timeline = next_tli
            return
        raise Retry(f"the server ended the stream{': ' + error if error else ''}")

    # -- status updates -------------------------------------------------------------------
    def _next_status_due(self) -> float:
        with self._lock:
            dirty = self._rep_flush != self._sent_flush
        if self._reply_pending:
            return 0.0
        gap = self.min_feedback_interval if dirty else self.status_interval
        return self._last_status_at + gap

    def _maybe_send_status(self, conn: pq.abc.PGconn) -> None:
        if self._clock() >= self._next_status_due():
            self._send_status(conn, reply_requested=False)

    def _send_status(self, conn: pq.abc.PGconn, *, reply_requested: bool) -> None:
        with self._lock:
            flush = self._rep_flush
            write = max(self._rep_write, self._received, flush)
            apply = min(self._rep_apply, flush) if self._rep_apply else flush
        msg = StandbyStatusUpdate(write, flush, apply, timestamptz_now(), reply_requested)
        try:
            conn.put_copy_data(msg.encode())
            conn.flush()
        except OperationalError as e:
            raise Retry(f"sending feedback to {self.where}: {e}") from e
        self._sent_flush = flush
        self._last_status_at = self._clock()
        self._reply_pending = False
        log.debug("status to %s: write %s flush %s apply %s", self.where, write, flush, apply)


class StreamSource:
    """The streaming replication protocol as a `WalSource` (wraps `WalReceiver`)."""

    def __init__(self, receiver: WalReceiver) -> None:
        self.receiver = receiver

    @classmethod
    def connect(cls, dsn: str, slot: str, start_lsn: int, **options: object) -> StreamSource:
        """A source streaming from physical `slot` at `dsn`, from `start_lsn`
        (options as for `WalReceiver`)."""
        return cls(WalReceiver(dsn, slot, start_lsn, **options))  # type: ignore[arg-type]

    @property
    def start_lsn(self) -> Lsn:
        return self.receiver.start_lsn

    @property
    def received_lsn(self) -> Lsn:
        return self.receiver.received_lsn

    @property
    def finished(self) -> bool:
        return self.receiver.finished

    def poll(self, timeout: float | None = None) -> WalChunk | None:
        return self.receiver.poll(timeout)

    def stream(self, idle_timeout: float | None = None) -> Iterator[WalChunk]:
        return self.receiver.stream(idle_timeout)

    def report(self, write_lsn: int, flush_lsn: int, apply_lsn: int | None = None) -> None:
        self.receiver.report(write_lsn, flush_lsn, apply_lsn)

    def stop(self) -> None:
        self.receiver.stop()

    def close(self) -> None:
        self.receiver.close()
