"""The JSON files of a strata home (home/FORMAT.md): where history starts,
where streaming stopped, the running daemon, and its progress.

What it is: one dataclass per file with its (de)serialisation, `load_*`
functions that tell a missing file from a damaged one, and `write_json`, the
one atomic writer (tmp + fsync + rename + fsync dir). Fed by: the daemon and
its services. Feeds: restarts (resume points) and the CLI (`strata psql`,
`query`, `status`). Owns: these formats.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from strata import durable
from strata.errors import ConfigError
from strata.lsn import Lsn

FORMAT_VERSION = 1


class _HasPid(Protocol):
    @property
    def pid(self) -> int: ...


_Running = TypeVar("_Running", bound=_HasPid)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """tmp + fsync + rename + fsync dir (`durable`): a crash leaves the old or the
    new file."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    durable.fs().write_durably(path, data, path.with_name(path.name + ".tmp"))


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    """The file's object, None when it does not exist. Raises: ConfigError when damaged."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("not an object")
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(f"version {d.get('version')!r} is not {FORMAT_VERSION}")
        return d
    except ValueError as e:
        raise ConfigError(f"{path} is damaged ({e}); {what}") from e


@dataclass(frozen=True, slots=True)
class HistoryInfo:
    """``history.json``: where history starts, written once after the import is durable."""

    system_id: int
    start_lsn: Lsn
    start_time: datetime
    mode: str  # "embedded" | "attach"

    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "system_id": str(self.system_id),
                "start_lsn": str(self.start_lsn), "start_time": self.start_time.isoformat(),
                "mode": self.mode}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HistoryInfo:
        return cls(int(d["system_id"]), Lsn.parse(d["start_lsn"]),
                   datetime.fromisoformat(d["start_time"]), str(d["mode"]))


def load_history_info(path: Path) -> HistoryInfo | None:
    d = _read_json(path, "history cannot be located")
    try:
        return None if d is None else HistoryInfo.from_json(d)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path} is damaged ({e}); history cannot be located") from e


@dataclass(frozen=True, slots=True)
class ReceiverState:
    """``receiver.json``: where streaming stopped (rewritten about once a second)."""

    slot: str
    system_id: int
    timeline: int | None
    received_lsn: Lsn
    flushed_lsn: Lsn  # the store's durable_lsn: the resume point and the slot's flush position
    last_record_lsn: Lsn | None
    updated_at: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(version=FORMAT_VERSION, received_lsn=str(self.received_lsn),
                 flushed_lsn=str(self.flushed_lsn), system_id=str(self.system_id),
                 last_record_lsn=str(self.last_record_lsn) if self.last_record_lsn else None,
                 updated_at=datetime.now(UTC).isoformat(timespec="seconds"))
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReceiverState:
        last = d.get("last_record_lsn")
        return cls(str(d["slot"]), int(d["system_id"]),
                   int(d["timeline"]) if d.get("timeline") is not None else None,
                   Lsn.parse(d["received_lsn"]), Lsn.parse(d["flushed_lsn"]),
                   Lsn.parse(last) if last else None, str(d.get("updated_at", "")))


def load_receiver_state(path: Path) -> ReceiverState | None:
    what = "remove it to restart from the slot"
    d = _read_json(path, what)
    try:
        return None if d is None else ReceiverState.from_json(d)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path} is damaged ({e}); {what}") from e


@dataclass(frozen=True, slots=True)
class DaemonState:
    """``state.json``: the running daemon, for `strata psql` / `query` / `status`.
    Removed on a clean stop; a stale one (its pid gone) reads as absent."""

    pid: int
    mode: str  # "embedded" | "attach"
    primary_dsn: str  # key=value, never a password
    proxy_port: int | None
    target_host: str
    target_port: int
    target_user: str
    target_dbname: str
    started_at: str
    passfile: str | None = None  # the embedded primary's superuser password file

    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DaemonState:
        return cls(int(d["pid"]), str(d["mode"]), str(d["primary_dsn"]),
                   int(d["proxy_port"]) if d.get("proxy_port") is not None else None,
                   str(d["target_host"]), int(d["target_port"]), str(d["target_user"]),
                   str(d["target_dbname"]), str(d.get("started_at", "")),
                   str(d["passfile"]) if d.get("passfile") else None)


def load_daemon_state(path: Path) -> DaemonState | None:
    """The running daemon's state; None if there is none or its process is gone."""
    return _load_running(path, "remove it", DaemonState.from_json)


def _load_running(path: Path, what: str, from_json: Callable[[dict[str, Any]], _Running]
                  ) -> _Running | None:
    """The state a running process keeps in `path`; None if there is none, it is
    damaged, or its process (`pid`) is gone."""
    try:
        d = _read_json(path, what)
        state = None if d is None else from_json(d)
    except (ConfigError, KeyError, TypeError, ValueError):
        return None
    if state is None:
        return None
    try:
        os.kill(state.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return state


@dataclass(frozen=True, slots=True)
class ProxyState:
    """``run/proxy.json``: the running proxy service (rewritten every few seconds):
    its port, how historical servers are built and which run."""

    pid: int
    port: int
    historical: str
    instances: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, **asdict(self),
                "updated_at": datetime.now(UTC).isoformat(timespec="seconds")}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProxyState:
        return cls(int(d["pid"]), int(d["port"]), str(d.get("historical", "")),
                   list(d.get("instances", [])))


def load_proxy_state(path: Path) -> ProxyState | None:
    """The running proxy service's state; None if there is none or its process is gone."""
    return _load_running(path, "it is rewritten by the running proxy", ProxyState.from_json)


def load_status(path: Path) -> dict[str, Any]:
    """``status.json`` (home/FORMAT.md lists its fields); {} when absent or unreadable
    (it is rewritten every progress interval: a reader may race a rename)."""
    try:
        return _read_json(path, "it is rewritten by the running daemon") or {}
    except ConfigError:
        return {}


def safe_dsn(dsn: str) -> str:
    """The DSN as key=value without the password."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    d = {k: v for k, v in conninfo_to_dict(dsn).items() if k != "password" and v is not None}
    return make_conninfo("", **d)
