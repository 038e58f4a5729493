"""Replication connections and the slot: conninfo, IDENTIFY_SYSTEM, physical
slots, server settings.

What it is: the one place that opens ``replication=true`` libpq connections
(psycopg 3's `psycopg.pq.PGconn`) and runs replication commands and small
queries over them: `ensure_physical_slot` / `read_slot` / `drop_physical_slot`,
`identify_system` (checks the server is PostgreSQL 18), `server_setting`.
Fed by: a DSN. Feeds: `wal.receiver` (the stream), the daemon (its slot),
`strata waldump`, tests. Owns no state.
"""

from __future__ import annotations

import re
import threading
import time

from psycopg import OperationalError, pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from strata.errors import ProtocolError, WalSourceError
from strata.runtime.fdwait import wait_ready
from strata.wal.replication_messages import (
    SlotInfo,
    SystemIdentity,
    parse_server_version_num,
)

REQUIRED_MAJOR = 18
_SLOT_NAME_RE = re.compile(r"^[a-z0-9_]{1,63}$")

# SQLSTATEs after which reconnecting may succeed: the server is starting, shutting
# down or overloaded, the connection broke, or our previous walsender still holds
# the slot (it has not noticed the old connection died yet).
_RETRYABLE_SQLSTATE_PREFIXES = ("08", "53", "57P", "55006")




class Retry(Exception):
    """A failure reconnecting may fix (the server is restarting, a walsender still
    holds the slot...)."""


def replication_conninfo(dsn: str, **extra: str) -> str:
    """`dsn` (key=value or URI) with ``replication=true`` and our application name."""
    params: dict[str, str] = {"replication": "true"}
    if "application_name" not in conninfo_to_dict(dsn):
        params["application_name"] = "strata"
    params.update(extra)
    return make_conninfo(dsn, **params)


def describe_dsn(dsn: str) -> str:
    """host:port/user of a DSN, without secrets (for messages)."""
    try:
        d = conninfo_to_dict(dsn)
    except Exception:
        return "(unparsable DSN)"
    return f"{d.get('host', 'localhost')}:{d.get('port', 5432)} as {d.get('user', '(default user)')}"


def check_slot_name(slot: str) -> None:
    if not _SLOT_NAME_RE.match(slot):
        raise WalSourceError(
            f"invalid replication slot name {slot!r}: use lower-case letters, digits and "
            "underscores (at most 63)"
        )


def sqlstate(res: pq.abc.PGresult | None) -> str:
    if res is None:
        return ""
    v = res.error_field(pq.DiagnosticField.SQLSTATE)
    return v.decode() if v else ""


def errmsg(res: pq.abc.PGresult | None, conn: pq.abc.PGconn) -> str:
    if res is not None and res.error_message:
        return res.error_message.decode(errors="replace").strip()
    return conn.get_error_message().strip()


def connect_replication(conninfo: str, where: str, *, timeout: float = 10.0, wake_fd: int = -1,
          stopping: threading.Event | None = None) -> pq.abc.PGconn:
    """A replication connection, or Retry / WalSourceError.

    Connects with libpq's non-blocking PQconnectStart/PQconnectPoll: the blocking
    PQconnectdb would hold the GIL (freezing every other thread) for as long as the
    server takes to answer, and could not be interrupted by `stop()`.
    """
    conn = pq.PGconn.connect_start(conninfo.encode())
    deadline = time.monotonic() + timeout
    status = pq.PollingStatus.WRITING
    while True:
        if conn.status == pq.ConnStatus.BAD or status == pq.PollingStatus.FAILED:
            break
        if status == pq.PollingStatus.OK:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (stopping is not None and stopping.is_set()):
            conn.finish()
            raise Retry(f"cannot connect to {where}: "
                         + ("stopped" if remaining > 0 else f"timeout after {timeout:.0f}s"))
        sock = conn.socket
        rlist = [sock] if status == pq.PollingStatus.READING else []
        wlist = [sock] if status == pq.PollingStatus.WRITING else []
        if wake_fd >= 0:
            rlist.append(wake_fd)
        wait_ready(rlist, wlist, min(remaining, 1.0))
        status = pq.PollingStatus(conn.connect_poll())
    if conn.status != pq.ConnStatus.OK:
        msg = conn.get_error_message().strip()
        conn.finish()
        if "authentication failed" in msg or "no pg_hba.conf entry" in msg or (
            "does not exist" in msg and "role" in msg
        ):
            raise WalSourceError(f"cannot connect for replication to {where}: {msg}")
        raise Retry(f"cannot connect to {where}: {msg}")
    version = conn.server_version
    major = parse_server_version_num(version)
    if major != REQUIRED_MAJOR:
        conn.finish()
        raise WalSourceError(
            f"the server at {where} is PostgreSQL {major} (server_version_num "
            f"{version}); strata needs PostgreSQL {REQUIRED_MAJOR}"
        )
    return conn


def exec_rows(conn: pq.abc.PGconn, command: str, where: str) -> list[list[bytes | None]]:
    """Run a replication command that answers rows; errors are classified."""
    try:
        res = conn.exec_(command.encode())
    except OperationalError as e:
        raise Retry(f"{command.split()[0]} on {where}: {e}") from e
    if res.status == pq.ExecStatus.TUPLES_OK:
        return [[res.get_value(r, c) for c in range(res.nfields)] for r in range(res.ntuples)]
    if res.status == pq.ExecStatus.COMMAND_OK:
        return []
    raise_for(res, conn, f"{command.split()[0]} on {where}")
    raise AssertionError("unreachable")


def raise_for(res: pq.abc.PGresult | None, conn: pq.abc.PGconn, what: str) -> None:
    state = sqlstate(res)
    msg = errmsg(res, conn)
    if conn.status != pq.ConnStatus.OK or state.startswith(_RETRYABLE_SQLSTATE_PREFIXES):
        raise Retry(f"{what}: {msg} (SQLSTATE {state or '?'})")
    if "has already been removed" in msg:
        raise WalSourceError(
            f"{what}: {msg} — the WAL strata needs is gone from the server; it cannot "
            "continue from where it stopped (was the slot dropped and re-created, or "
            "max_slot_wal_keep_size exceeded?)"
        )
    if state == "42704":
        raise WalSourceError(f"{what}: {msg} — create the physical slot first "
                             "(`strata up` creates it) or pass the right slot name")
    raise WalSourceError(f"{what}: {msg} (SQLSTATE {state or '?'})")


def read_slot(dsn: str, slot: str) -> SlotInfo | None:
    """The physical slot `slot` on the server (None if it does not exist).

    Uses READ_REPLICATION_SLOT, so a role with only the REPLICATION attribute
    suffices. Raises: WalSourceError when the server cannot be reached or is
    not PostgreSQL 18.
    """
    check_slot_name(slot)
    where = describe_dsn(dsn)
    try:
        conn = connect_replication(replication_conninfo(dsn), where)
    except Retry as e:
        raise WalSourceError(str(e)) from e
    try:
        rows = exec_rows(conn, f'READ_REPLICATION_SLOT "{slot}"', where)
    except Retry as e:
        raise WalSourceError(str(e)) from e
    finally:
        conn.finish()
    if len(rows) != 1:
        raise ProtocolError(f"READ_REPLICATION_SLOT returned {len(rows)} rows")
    return SlotInfo.from_row(slot, rows[0])


def ensure_physical_slot(dsn: str, slot: str) -> tuple[SlotInfo, bool]:
    """Create the physical slot `slot` (reserving WAL now) unless it exists.

    Returns: (the slot, whether it was created now).
    Raises: WalSourceError (unreachable server, not PG 18, a logical slot of that name).
    """
    info = read_slot(dsn, slot)
    if info is not None:
        return info, False
    where = describe_dsn(dsn)
    try:
        conn = connect_replication(replication_conninfo(dsn), where)
        try:
            exec_rows(conn, f'CREATE_REPLICATION_SLOT "{slot}" PHYSICAL RESERVE_WAL', where)
        except WalSourceError:
            if read_slot(dsn, slot) is None:  # not a lost race with another creator
                raise
        finally:
            conn.finish()
    except Retry as e:
        raise WalSourceError(str(e)) from e
    info = read_slot(dsn, slot)
    if info is None:
        raise WalSourceError(f"replication slot {slot!r} vanished right after creation on {where}")
    return info, True


def identify_system(dsn: str) -> SystemIdentity:
    """IDENTIFY_SYSTEM: the server's system identifier, timeline and WAL end.

    Raises: WalSourceError when the server cannot be reached or is not PostgreSQL 18.
    """
    where = describe_dsn(dsn)
    try:
        conn = connect_replication(replication_conninfo(dsn), where)
        try:
            rows = exec_rows(conn, "IDENTIFY_SYSTEM", where)
        finally:
            conn.finish()
    except Retry as e:
        raise WalSourceError(str(e)) from e
    if len(rows) != 1:
        raise ProtocolError(f"IDENTIFY_SYSTEM returned {len(rows)} rows")
    return SystemIdentity.from_row(rows[0])


def drop_physical_slot(dsn: str, slot: str) -> bool:
    """Drop `slot` if it exists, waiting while a walsender still holds it (a receiver
    closed a moment ago: the server notices the closed connection asynchronously).

    Returns: whether a slot was dropped. Raises: WalSourceError.
    """
    check_slot_name(slot)
    if read_slot(dsn, slot) is None:
        return False
    where = describe_dsn(dsn)
    try:
        conn = connect_replication(replication_conninfo(dsn), where)
        try:
            exec_rows(conn, f'DROP_REPLICATION_SLOT "{slot}" WAIT', where)
        finally:
            conn.finish()
    except Retry as e:
        raise WalSourceError(str(e)) from e
    return True


def server_setting(dsn: str, name: str) -> str:
    """``SHOW name`` over a replication connection (works for replication-only roles).

    Raises: WalSourceError when the server cannot be reached or is not PG 18.
    """
    if not re.match(r"^[a-z_]+$", name):
        raise ValueError(f"not a setting name: {name!r}")
    where = describe_dsn(dsn)
    try:
        conn = connect_replication(replication_conninfo(dsn), where)
        try:
            rows = exec_rows(conn, f"SHOW {name}", where)
        finally:
            conn.finish()
    except Retry as e:
        raise WalSourceError(str(e)) from e
    if len(rows) != 1 or rows[0][0] is None:
        raise ProtocolError(f"SHOW {name} returned {rows!r}")
    return rows[0][0].decode()


def parse_size_setting(text: str) -> int:
    """A size as SHOW prints it (``16MB``, ``8kB``, ``1GB``, bytes) -> bytes."""
    units = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
    m = re.match(r"^\s*(\d+)\s*([kMGT]?B)?\s*$", text)
    if m is None:
        raise ValueError(f"not a size: {text!r}")
    return int(m.group(1)) * units[m.group(2) or "B"]


