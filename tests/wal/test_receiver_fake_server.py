"""The receiver against a scripted walsender (no PostgreSQL needed).

A small fake server speaks just enough of the wire protocol (startup,
IDENTIFY_SYSTEM, START_REPLICATION -> COPY BOTH) to script what a real server
cannot be made to do on demand: claim another major version, resend an
overlapping range after a reconnect, demand a reply, go silent.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from strata.errors import WalSourceError
from strata.lsn import Lsn
from strata.wal.receiver import WalReceiver
from strata.wal.replication_messages import (
    PrimaryKeepalive,
    StandbyStatusUpdate,
    XLogData,
    encode_keepalive,
    encode_xlogdata,
)
from strata.wal.source import WalChunk

SYSID = 7300000000000000001


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _row_description(names: list[str]) -> bytes:
    body = struct.pack("!H", len(names))
    for n in names:
        body += n.encode() + b"\0" + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    return _msg(b"T", body)


def _data_row(values: list[str | None]) -> bytes:
    body = struct.pack("!H", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!I", len(v)) + v.encode()
    return _msg(b"D", body)


def _ready() -> bytes:
    return _msg(b"Z", b"I")


def _complete(tag: str) -> bytes:
    return _msg(b"C", tag.encode() + b"\0")


class Session:
    """One client connection as the script sees it."""

    def __init__(self, sock: socket.socket, server: FakeWalSender) -> None:
        self.sock = sock
        self.server = server
        self.buf = b""

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("client closed")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_message(self) -> tuple[bytes, bytes]:
        kind = self._read(1)
        (length,) = struct.unpack("!I", self._read(4))
        return kind, self._read(length - 4)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_wal(self, start: int, data: bytes) -> None:
        self.send(_msg(b"d", encode_xlogdata(XLogData(Lsn(start), Lsn(start + len(data)), 0,
                                                      data))))

    def send_keepalive(self, wal_end: int, reply: bool) -> None:
        self.send(_msg(b"d", encode_keepalive(PrimaryKeepalive(Lsn(wal_end), 0, reply))))

    def next_status(self, timeout: float) -> StandbyStatusUpdate | None:
        """The next standby status update from the client (None on timeout)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                kind, body = self.read_message()
                if kind == b"d" and body[:1] == b"r":
                    upd = StandbyStatusUpdate.decode(body)
                    self.server.statuses.append(upd)
                    return upd
        except TimeoutError:
            return None
        finally:
            self.sock.settimeout(None)


Script = Callable[[Session, Lsn, int], None]  # (session, requested start, connection number)


@dataclass
class FakeWalSender:
    script: Script
    version: str = "18.6"
    sock: socket.socket = field(default_factory=socket.socket)
    requested: list[Lsn] = field(default_factory=list)
    statuses: list[StandbyStatusUpdate] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _conns: list[socket.socket] = field(default_factory=list)
    _closing: bool = False

    def start(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)  # accept() wakes up to notice close()
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def dsn(self) -> str:
        port = self.sock.getsockname()[1]
        return f"host=127.0.0.1 port={port} user=u dbname=x sslmode=disable gssencmode=disable"

    def close(self) -> None:
        self._closing = True
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        for t in self._threads:
            t.join(5)

    def _accept(self) -> None:
        n = 0
        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self._conns.append(conn)
            n += 1
            t = threading.Thread(target=self._serve, args=(conn, n), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket, n: int) -> None:
        s = Session(conn, self)
        try:
            (length,) = struct.unpack("!I", s._read(4))
            s._read(length - 4)  # protocol version + parameters (replication=true ...)
            s.send(_msg(b"R", struct.pack("!I", 0)))
            s.send(_msg(b"S", b"server_version\0" + self.version.encode() + b"\0"))
            s.send(_msg(b"K", struct.pack("!II", 4242, 1)))
            s.send(_ready())
            while True:
                kind, body = s.read_message()
                if kind == b"X":
                    return
                if kind != b"Q":
                    continue
                query = body.rstrip(b"\0").decode()
                if query == "IDENTIFY_SYSTEM":
                    s.send(_row_description(["systemid", "timeline", "xlogpos", "dbname"]))
                    s.send(_data_row([str(SYSID), "1", "0/9000000", None]))
                    s.send(_complete("IDENTIFY_SYSTEM") + _ready())
                elif query.startswith("START_REPLICATION"):
                    start = Lsn.parse(query.split()[4])
                    self.requested.append(start)
                    s.send(_msg(b"W", struct.pack("!bH", 0, 0)))
                    self.script(s, start, n)
                    return
        except (ConnectionError, OSError):
            return
        except BaseException as e:
            self.errors.append(e)
        finally:
            with contextlib.suppress(OSError):
                conn.close()


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeWalSender]]:
    servers: list[FakeWalSender] = []

    def make(script: Script, **kw: str) -> FakeWalSender:
        srv = FakeWalSender(script, **kw)
        srv.start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.close()
        assert not srv.errors, srv.errors


START = Lsn.parse("0/5000000")


class ManualClock:
    """The receiver's clock, moved by the test: intervals pass when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_for(cond: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """A bounded poll of a condition (the limit only stops a broken test)."""
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def poll_until(rx: WalReceiver, cond: Callable[[], bool],
               into: list[WalChunk] | None = None, limit: float = 30.0) -> None:
    """Poll `rx` without blocking (its clock may stand still) until `cond()`;
    chunks received go to `into`."""
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "timed out polling the receiver"
        ch = rx.poll(0)
        if ch is not None and into is not None:
            into.append(ch)
        elif ch is None:
            time.sleep(0.005)


def test_a_server_that_is_not_pg18_is_refused(fake: Callable[..., FakeWalSender]) -> None:
    srv = fake(lambda s, start, n: None, version="17.4")
    rx = WalReceiver(srv.dsn, "strata", START, give_up_after=5)
    with pytest.raises(WalSourceError, match=r"PostgreSQL 17 .*needs PostgreSQL 18"):
        rx.poll(5)
    rx.close()
    assert srv.requested == []


def test_reconnect_resumes_at_received_and_cuts_the_resent_overlap(
        fake: Callable[..., FakeWalSender]) -> None:
    payload = bytes(range(256)) * 2  # 512 distinct-ish bytes, position-checkable

    def script(s: Session, start: Lsn, n: int) -> None:
        if n == 1:
            s.send_wal(START, payload[:100])
            # the client's answer to a keepalive says it has the 100 bytes
            s.send_keepalive(START + 100, reply=True)
            while (upd := s.next_status(30)) is not None and upd.write < START + 100:
                pass
            return  # connection drops abruptly
        # Second connection: a server may resend from an earlier point (e.g. a page
        # start); 50 bytes overlap what the client already has.
        s.send_wal(START + 50, payload[50:300])
        s.next_status(5)

    srv = fake(script)
    rx = WalReceiver(srv.dsn, "strata", START, backoff_initial=0.05, give_up_after=10)
    got = bytearray()
    pos = START
    try:
        deadline = time.monotonic() + 10
        while len(got) < 300 and time.monotonic() < deadline:
            ch = rx.poll(0.2)
            if ch is not None:
                assert ch.start == pos
                pos = ch.end
                got += ch.data
    finally:
        rx.close()
    assert bytes(got) == payload[:300]
    assert srv.requested == [START, START + 100]
    assert rx.stats().reconnects == 1


def test_keepalive_asking_for_a_reply_gets_the_consumer_positions_at_once(
        fake: Callable[..., FakeWalSender]) -> None:
    """The receiver's clock stands still: no periodic update can fall due, so the
    status update that follows the keepalive is its answer."""
    answers: list[StandbyStatusUpdate | None] = []
    ready = threading.Event()

    def script(s: Session, start: Lsn, n: int) -> None:
        s.send_wal(start, b"\0" * 64)
        first = s.next_status(30)  # sent right after connecting
        assert first is not None and first.flush == 0  # nothing reported yet
        ready.wait(30)
        s.send_keepalive(start + 64, reply=True)
        answers.append(s.next_status(30))

    srv = fake(script)
    rx = WalReceiver(srv.dsn, "strata", START, status_interval=60, give_up_after=10,
                     clock=ManualClock())
    try:
        got: list[WalChunk] = []
        poll_until(rx, lambda: bool(got), got)
        rx.report(START + 64, START + 32)
        ready.set()
        poll_until(rx, lambda: bool(answers))
    finally:
        rx.close()
    upd = answers[0]
    assert upd is not None, "no status update after the keepalive"
    assert (upd.write, upd.flush, upd.apply) == (START + 64, START + 32, START + 32)


def test_a_silent_server_is_dropped_after_receive_timeout(
        fake: Callable[..., FakeWalSender]) -> None:
    pings: list[bool] = []

    def script(s: Session, start: Lsn, n: int) -> None:
        if n == 1:
            # Swallow everything, answer nothing: a half-dead server or network.
            while (upd := s.next_status(3)) is not None:
                pings.append(upd.reply_requested)
            return
        s.send_wal(start, b"x" * 8)
        s.next_status(2)

    srv = fake(script)
    rx = WalReceiver(srv.dsn, "strata", START, receive_timeout=0.6, status_interval=60,
                     backoff_initial=0.05, give_up_after=10)
    try:
        ch = None
        deadline = time.monotonic() + 10
        while ch is None and time.monotonic() < deadline:
            ch = rx.poll(0.2)
    finally:
        rx.close()
    assert ch is not None and ch.start == START
    assert True in pings  # it asked for a reply before giving up on the connection
    assert srv.requested == [START, START]


@pytest.fixture
def mute_port() -> Iterator[socket.socket]:
    """A listening socket whose TCP handshake completes (kernel backlog) but no one
    ever answers."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    try:
        yield lsock
    finally:
        lsock.close()


def test_stop_interrupts_a_connect_that_hangs(mute_port: socket.socket) -> None:
    """A server that accepts the connection and never answers: without the wake-up,
    the connect would wait its whole timeout (10 minutes)."""
    port = mute_port.getsockname()[1]
    rx = WalReceiver(f"host=127.0.0.1 port={port} sslmode=disable gssencmode=disable",
                     "strata", START, connect_timeout=600, receive_timeout=None)
    results: list[WalChunk | None] = []
    t = threading.Thread(target=lambda: results.append(rx.poll(None)))
    t.start()
    try:
        mute_port.settimeout(30)
        conn, _ = mute_port.accept()  # the receiver is inside its connect now
        rx.stop()
        t.join(60)
        assert not t.is_alive(), "stop() did not interrupt the connect"
        assert results == [None] and rx.finished
        conn.close()
    finally:
        rx.stop()
        t.join(60)
        rx.close()


def test_connect_timeout_then_give_up(mute_port: socket.socket) -> None:
    port = mute_port.getsockname()[1]
    rx = WalReceiver(f"host=127.0.0.1 port={port} sslmode=disable gssencmode=disable",
                     "strata", START, connect_timeout=0.3, backoff_initial=0.05,
                     give_up_after=0.5)
    deadline = time.monotonic() + 60
    try:
        with pytest.raises(WalSourceError, match="timeout after"):
            while time.monotonic() < deadline:
                rx.poll(1)
    finally:
        rx.close()


def test_status_updates_are_periodic_at_the_configured_interval(
        fake: Callable[..., FakeWalSender]) -> None:
    """On the receiver's clock (driven here by hand): one update on connecting, then
    one each time `status_interval` has passed with nothing else to say, and a last
    one when it closes."""
    gone = threading.Event()

    def script(s: Session, start: Lsn, n: int) -> None:
        try:
            while s.next_status(60) is not None:  # until the client goes away
                pass
        finally:
            gone.set()

    srv = fake(script)
    clock = ManualClock()
    rx = WalReceiver(srv.dsn, "strata", START, status_interval=0.5, receive_timeout=None,
                     give_up_after=10, clock=clock)
    try:
        poll_until(rx, lambda: rx.connected)
        t0 = clock.now
        for step in range(17):  # 0 .. 2 s in steps of 1/8 s (exact in binary)
            clock.now = t0 + step * 0.125
            rx.poll(0)
            expected = 1 + int(step * 0.125 / 0.5)
            wait_for(lambda n=expected: len(srv.statuses) >= n,  # type: ignore[misc]
                     f"status update {expected}")
            assert len(srv.statuses) == expected, (step, len(srv.statuses))
    finally:
        rx.close()
    assert gone.wait(30), "the fake server did not see the client go"
    assert len(srv.statuses) == 1 + 4 + 1  # connect, four intervals, close


def test_messages_already_buffered_come_as_one_chunk(fake: Callable[..., FakeWalSender]) -> None:
    """A busy primary sends a message per WAL flush: what libpq holds at once is
    handed over as one chunk (the bytes unchanged and contiguous), and a keepalive
    that asks for a reply ends the chunk and is answered."""
    payload = bytes(range(256)) * 100
    sent = threading.Event()
    answered: list[StandbyStatusUpdate | None] = []

    def script(s: Session, start: Lsn, n: int) -> None:
        msgs = [_msg(b"d", encode_xlogdata(XLogData(Lsn(start + i), Lsn(start + i + 100), 0,
                                                    payload[i:i + 100])))
                for i in range(0, 15000, 100)]
        msgs.append(_msg(b"d", encode_keepalive(PrimaryKeepalive(Lsn(start + 15000), 0, True))))
        msgs += [_msg(b"d", encode_xlogdata(XLogData(Lsn(start + i), Lsn(start + i + 100), 0,
                                                     payload[i:i + 100])))
                 for i in range(15000, 25600, 100)]
        s.send(b"".join(msgs))
        sent.set()
        while (upd := s.next_status(30)) is not None and upd.write < start + 15000:
            pass
        answered.append(upd)
        s.next_status(5)

    srv = fake(script)
    rx = WalReceiver(srv.dsn, "strata", START, status_interval=60, give_up_after=10)
    chunks: list[WalChunk] = []
    try:
        # connects; the script's one sendall returns once loopback has queued every
        # message at our socket
        poll_until(rx, sent.is_set, chunks)
        poll_until(rx, lambda: sum(len(c.data) for c in chunks) >= len(payload), chunks)
        poll_until(rx, lambda: bool(answered))
    finally:
        rx.close()
    assert b"".join(c.data for c in chunks) == payload
    assert all(a.end == b.start for a, b in itertools.pairwise(chunks))
    assert 2 <= len(chunks) <= 12, [len(c.data) for c in chunks]  # 256 messages
    assert any(c.end == START + 15000 for c in chunks)  # the keepalive ended one
    assert answered[0] is not None and answered[0].write >= START + 15000
