"""Messages of PostgreSQL's streaming replication protocol (physical), no I/O.

What it is: the byte layouts carried inside COPY BOTH after
``START_REPLICATION ... PHYSICAL`` (XLogData ``'w'``, primary keepalive
``'k'``, standby status update ``'r'``), the rows of ``IDENTIFY_SYSTEM`` and
``READ_REPLICATION_SLOT``, and timeline history files. Layouts follow
PostgreSQL 18's ``src/backend/replication/walsender.c`` (XLogSendPhysical,
WalSndKeepalive, ProcessStandbyReplyMessage) and ``access/timeline.c``.

Fed by: `wal.receiver` (the bytes of each CopyData message, the text cells of
result rows). Feeds: `wal.receiver`. Owns: nothing but pure functions and
value objects; every integer on the wire is big-endian (network order).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from strata.errors import ProtocolError, WalSourceError
from strata.lsn import Lsn

_XLOGDATA_HEADER = struct.Struct("!QQq")  # dataStart, walEnd, sendTime
_KEEPALIVE = struct.Struct("!QqB")  # walEnd, sendTime, replyRequested
_STANDBY_STATUS = struct.Struct("!cQQQqB")  # 'r', write, flush, apply, clock, replyRequested


@dataclass(frozen=True, slots=True)
class XLogData:
    """``'w'``: WAL bytes starting at `data_start`; `wal_end` is the server's
    flush position when it sent them; `send_time` is in PostgreSQL
    microseconds since 2000-01-01."""

    data_start: Lsn
    wal_end: Lsn
    send_time: int
    data: bytes

    @property
    def data_end(self) -> Lsn:
        return self.data_start + len(self.data)


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive:
    """``'k'``: the server's current end of WAL; `reply_requested` means answer now
    (the server may otherwise time us out after wal_sender_timeout, and a server
    shutting down waits for this answer before it exits)."""

    wal_end: Lsn
    send_time: int
    reply_requested: bool


ServerMessage = XLogData | PrimaryKeepalive
_XLOGDATA_DATA = 1 + _XLOGDATA_HEADER.size  # where an XLogData message's WAL starts


def split_xlogdata(buf: bytes | memoryview) -> tuple[int, int, bytes | memoryview] | None:
    """(data_start, wal_end, WAL bytes: a slice of `buf`) of an XLogData message,
    without an object (the receiver's path: a busy primary sends one per commit);
    None for any other message (`parse_server_message` says what it is)."""
    if len(buf) < _XLOGDATA_DATA or buf[0] != 0x77:  # 'w'
        return None
    start, end, _ts = _XLOGDATA_HEADER.unpack_from(buf, 1)
    return start, end, buf[_XLOGDATA_DATA:]


def parse_server_message(buf: bytes | memoryview) -> ServerMessage:
    """Parse the payload of one CopyData message sent by a walsender.

    Raises: ProtocolError naming the message type or length when it is not one
    we know (a physical walsender sends only 'w' and 'k').
    """
    if len(buf) == 0:
        raise ProtocolError("empty CopyData message from the walsender")
    kind = buf[0]
    if kind == 0x77:  # 'w'
        if len(buf) < _XLOGDATA_DATA:
            raise ProtocolError(f"XLogData message too short: {len(buf)} bytes")
        start, end, ts = _XLOGDATA_HEADER.unpack_from(buf, 1)
        return XLogData(Lsn(start), Lsn(end), ts, bytes(buf[_XLOGDATA_DATA:]))
    if kind == 0x6B:  # 'k'
        if len(buf) != 1 + _KEEPALIVE.size:
            raise ProtocolError(f"keepalive message has {len(buf)} bytes, expected 18")
        end, ts, reply = _KEEPALIVE.unpack_from(buf, 1)
        return PrimaryKeepalive(Lsn(end), ts, bool(reply))
    raise ProtocolError(f"unknown replication message type {chr(kind)!r} ({len(buf)} bytes)")


def encode_xlogdata(msg: XLogData) -> bytes:
    """The wire form of an XLogData message (tests and fakes use it)."""
    return b"w" + _XLOGDATA_HEADER.pack(msg.data_start, msg.wal_end, msg.send_time) + msg.data


def encode_keepalive(msg: PrimaryKeepalive) -> bytes:
    return b"k" + _KEEPALIVE.pack(msg.wal_end, msg.send_time, int(msg.reply_requested))


@dataclass(frozen=True, slots=True)
class StandbyStatusUpdate:
    """``'r'``: what the standby (we) received, made durable and applied.

    For a physical slot the server moves the slot's ``restart_lsn`` to `flush`
    (PhysicalConfirmReceivedLocation), so `flush` must never pass what strata
    has made durable. A zero position means "unknown" to the server.
    """

    write: Lsn
    flush: Lsn
    apply: Lsn
    clock: int
    reply_requested: bool = False

    def encode(self) -> bytes:
        return _STANDBY_STATUS.pack(b"r", self.write, self.flush, self.apply, self.clock,
                                    int(self.reply_requested))

    @classmethod
    def decode(cls, buf: bytes | memoryview) -> StandbyStatusUpdate:
        if len(buf) != _STANDBY_STATUS.size or buf[0] != 0x72:
            raise ProtocolError(f"not a standby status update ({len(buf)} bytes)")
        _, w, f, a, clock, reply = _STANDBY_STATUS.unpack(bytes(buf))
        return cls(Lsn(w), Lsn(f), Lsn(a), clock, bool(reply))


# -- result rows of replication commands ---------------------------------------------


@dataclass(frozen=True, slots=True)
class SystemIdentity:
    """The row of ``IDENTIFY_SYSTEM``: who the server is and where its WAL ends."""

    system_id: int
    timeline: int
    xlogpos: Lsn
    dbname: str | None

    @classmethod
    def from_row(cls, row: list[bytes | None]) -> SystemIdentity:
        if len(row) < 3 or row[0] is None or row[1] is None or row[2] is None:
            raise ProtocolError(f"unexpected IDENTIFY_SYSTEM row {row!r}")
        return cls(int(row[0]), int(row[1]), Lsn.parse(row[2].decode()),
                   row[3].decode() if len(row) > 3 and row[3] is not None else None)


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """The row of ``READ_REPLICATION_SLOT`` for an existing physical slot."""

    name: str
    restart_lsn: Lsn | None  # None: the slot has not reserved WAL yet
    restart_tli: int | None

    @classmethod
    def from_row(cls, name: str, row: list[bytes | None]) -> SlotInfo | None:
        """None when the slot does not exist (the server answers a row of NULLs)."""
        if len(row) != 3:
            raise ProtocolError(f"unexpected READ_REPLICATION_SLOT row {row!r}")
        kind, lsn, tli = row
        if kind is None:
            return None
        if kind != b"physical":
            raise WalSourceError(
                f"replication slot {name!r} is a {kind.decode()} slot; strata needs a physical slot"
            )
        return cls(name, Lsn.parse(lsn.decode()) if lsn else None, int(tli) if tli else None)


@dataclass(frozen=True, slots=True)
class TimelineHistoryEntry:
    """One line of a ``<tli>.history`` file: timeline `tli` ended at `switchpoint`
    (the first byte that belongs to the next timeline)."""

    tli: int
    switchpoint: Lsn


def parse_timeline_history(text: str) -> list[TimelineHistoryEntry]:
    """Parse a timeline history file (``parentTLI<TAB>X/Y<TAB>reason`` lines).

    Raises: WalSourceError naming the bad line; entries must ascend.
    """
    out: list[TimelineHistoryEntry] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        fields = s.split(None, 2)
        try:
            entry = TimelineHistoryEntry(int(fields[0]), Lsn.parse(fields[1]))
        except (ValueError, IndexError) as e:
            raise WalSourceError(f"bad timeline history line {lineno}: {line!r}") from e
        if out and (entry.tli <= out[-1].tli or entry.switchpoint < out[-1].switchpoint):
            raise WalSourceError(f"timeline history not ascending at line {lineno}: {line!r}")
        out.append(entry)
    return out


def timeline_of_lsn(history: list[TimelineHistoryEntry], current_tli: int, lsn: int) -> int:
    """The timeline a WAL position belongs to in the history ending at `current_tli`
    (tliOfPointInHistory): the first entry whose switchpoint lies after `lsn`."""
    for entry in history:
        if lsn < entry.switchpoint:
            return entry.tli
    return current_tli


def switchpoint_of(history: list[TimelineHistoryEntry], tli: int) -> Lsn | None:
    """Where timeline `tli` ended in this history; None if it is the newest one
    (or not in the history)."""
    for entry in history:
        if entry.tli == tli:
            return entry.switchpoint
    return None


def parse_server_version_num(value: str | int) -> int:
    """``server_version_num`` (e.g. 180006) -> major version (18)."""
    return int(value) // 10000
