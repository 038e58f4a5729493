"""pg_dump of one database at one point in history, streamed.

What it is: `PgDump`, a context manager running the wheel's pg_dump (plain
format, every identifier quoted, UTF-8, no statistics) against the
historical server at an LSN through the proxy, whose stdout is read as
entries (`restore.script.Dump`) while pg_dump still writes: nothing is
staged on disk. The proxy leases the historical server to pg_dump's session
for as long as it runs.
Fed by: `restore.restore` (endpoint, database, LSN, what to select).
Feeds: `restore.apply`. Owns: the pg_dump subprocess (killed and reaped on
any exit path) and the rule that a dump is usable only when pg_dump exited
0 and its script is complete (`finish`).
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from typing import IO

from strata.errors import RestoreError
from strata.lsn import Lsn
from strata.restore.endpoint import Endpoint
from strata.restore.script import Dump, Entry
from strata.runtime.pgbin import find_pg_binaries

CHUNK = 1 << 18
BASE_ARGS = ("--format=plain", "--quote-all-identifiers", "--encoding=UTF8", "--no-statistics",
             "--no-password")


def pattern(*parts: str) -> str:
    """A pg_dump name pattern matching exactly these (quoted) name parts."""
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


class PgDump:
    def __init__(self, ep: Endpoint, dbname: str, lsn: Lsn, selection: list[str]) -> None:
        role = ["--role", ep.role] if ep.role is not None else []
        self.argv = [str(find_pg_binaries().path("pg_dump")), *BASE_ARGS, *role, *selection,
                     "--dbname", ep.conninfo(dbname, at=lsn)]
        self.what = f"database {dbname} at LSN {lsn}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.dump: Dump | None = None
        self._err: list[str] = []
        self._t: threading.Thread | None = None

    def __enter__(self) -> PgDump:
        env = dict(os.environ)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=env)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._t = threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True)
        self._t.start()
        out = self.proc.stdout
        self.dump = Dump(iter(lambda: out.read1(CHUNK), b""))  # type: ignore[attr-defined]
        return self

    def _drain(self, stream: IO[bytes]) -> None:
        for line in stream:
            self._err.append(line.decode("utf-8", "replace").rstrip())

    def entries(self) -> Iterator[Entry]:
        assert self.dump is not None
        return self.dump.entries()

    def errors(self) -> str:
        lines = [ln for ln in self._err if "strata: session is now at" not in ln]
        return "\n".join(lines[-20:])

    def finish(self) -> None:
        """Wait for pg_dump. Raises: RestoreError unless it exited 0 with a
        complete script (every entry was read)."""
        assert self.proc is not None and self.dump is not None
        rc = self.proc.wait()
        if self._t is not None:
            self._t.join(10)
        if rc != 0:
            raise RestoreError(f"pg_dump of {self.what} failed (exit code {rc}):\n"
                               f"{self.errors()}")
        if not self.dump.complete:
            raise RestoreError(f"pg_dump of {self.what} ended before its script was complete")

    def __exit__(self, *exc: object) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.kill()
        p.wait()
        for s in (p.stdout, p.stderr):
            if s is not None:
                s.close()
        if self._t is not None:
            self._t.join(10)
