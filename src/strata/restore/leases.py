"""Leases on historical servers: the past attached to a live database stays up.

What it is: the lease files of ``<home>/leases/`` (format: restore/FORMAT.md),
written by `strata attach-past` and removed by `strata detach-past`, and
`LeaseKeeper`, the daemon's thread that holds a pool lease on the historical
server at every leased LSN, so that server is never evicted or reaped while
a foreign server points at it.
Fed by: the lease files. Feeds: the instance pool (acquire / release).
Owns: the lease directory and the rule: a server is leased from the moment
the keeper sees the file (within `interval` seconds, and at the daemon's
start) until the file is gone. Nothing else depends on the lease for
correctness: the foreign server names an LSN, not a process, and a
historical server at that LSN is (re)built on the first connection anyway;
the lease only saves the rebuild.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from strata.errors import ConfigError
from strata.lsn import Lsn

log = logging.getLogger(__name__)

LEASE_VERSION = 1
LEASE_DIR = "leases"


@dataclass(frozen=True, slots=True)
class Lease:
    """One attached past: the LSN, where it is attached, through which server."""

    lsn: Lsn
    database: str
    schema: str
    server: str
    point: str = ""
    created_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"version": LEASE_VERSION, "lsn": str(self.lsn), "database": self.database,
                "schema": self.schema, "server": self.server, "point": self.point,
                "created_at": self.created_at or datetime.now(UTC).isoformat(timespec="seconds")}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Lease:
        if d.get("version") != LEASE_VERSION:
            raise ConfigError(f"lease version {d.get('version')!r} is not {LEASE_VERSION}")
        return cls(Lsn.parse(d["lsn"]), str(d["database"]), str(d["schema"]), str(d["server"]),
                   str(d.get("point", "")), str(d.get("created_at", "")))


def lease_path(directory: Path, database: str, schema: str) -> Path:
    return directory / (quote(f"{database}/{schema}", safe="") + ".json")


def write_lease(directory: Path, lease: Lease) -> Path:
    """Write a lease atomically (tmp, fsync, rename, fsync dir)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = lease_path(directory, lease.database, lease.schema)
    tmp = path.with_name(path.name + ".tmp")
    data = (json.dumps(lease.to_json(), indent=2, sort_keys=True) + "\n").encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def remove_lease(directory: Path, database: str, schema: str) -> bool:
    try:
        lease_path(directory, database, schema).unlink()
    except FileNotFoundError:
        return False
    return True


def read_leases(directory: Path) -> list[Lease]:
    """Every readable lease (a damaged file is logged and skipped)."""
    out = []
    for p in sorted(directory.glob("*.json")) if directory.exists() else []:
        try:
            out.append(Lease.from_json(json.loads(p.read_text())))
        except (OSError, ValueError, KeyError, TypeError, ConfigError) as e:
            log.warning("ignoring the damaged lease %s: %s", p, e)
    return out


class LeaseKeeper:
    """Holds `acquire(lsn)` for every leased LSN until its lease goes, then
    `release(lsn)` (one hold per LSN, however many leases name it)."""

    def __init__(self, directory: Path, acquire: Callable[[Lsn], object],
                 release: Callable[[Lsn], None], interval: float = 1.0) -> None:
        self.directory = directory
        self.acquire = acquire
        self.release = release
        self.interval = interval
        self.held: set[Lsn] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync(self) -> None:
        """Acquire what new leases name, release what no lease names any more.
        An acquire that fails (the server cannot start now) is retried next time."""
        wanted = {lease.lsn for lease in read_leases(self.directory)}
        for lsn in sorted(self.held - wanted):
            self.release(lsn)
            self.held.discard(lsn)
        for lsn in sorted(wanted - self.held):
            if self._stop.is_set():
                return
            try:
                self.acquire(lsn)
            except Exception as e:
                log.warning("cannot hold the historical server at %s for its lease: %s", lsn, e)
                continue
            self.held.add(lsn)

    def start(self) -> LeaseKeeper:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.sync()
                except Exception:
                    log.exception("keeping the leases of %s failed", self.directory)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, name="strata-leases", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and release every hold (the servers may then go)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=300)
            self._thread = None
        for lsn in sorted(self.held):
            with contextlib.suppress(Exception):
                self.release(lsn)
        self.held.clear()
