"""The control channel between strata's processes: JSON lines over a unix socket.

What it is: `ControlServer` (a service answers requests: one thread per
connection, one JSON object per line in each direction) and `ControlClient`
(a caller asks, with a timeout). Fed by: the services that own state (ingest:
positions, flush through an LSN). Feeds: the supervisor, the proxy service,
`strata status`. Owns: its socket file, under ``<home>/run/`` (mode 0600:
only this OS user may ask).

Protocol: a request is ``{"op": NAME, ...}``; the reply is the handler's dict
plus ``"ok": true``, or ``{"ok": false, "error": MESSAGE, "kind": ERROR_CLASS}``.
A handler may block (e.g. until an LSN is durable); the caller's timeout bounds
its wait.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from strata.errors import StrataError
from strata.lsn import Lsn

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlError(StrataError):
    """A control request failed: the service answered an error, or did not answer."""


class ControlServer:
    """Answers control requests on `path` until `close()`."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler]) -> None:
        self.path = path
        self.handlers = dict(handlers)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self._sock.bind(str(path))
        finally:
            os.umask(old)
        self._sock.listen(16)
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name=f"control:{path.name}",
                                        daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # a caller that gave up and went away
            self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            for line in f:
                try:
                    req = json.loads(line)
                    handler = self.handlers.get(str(req.get("op")))
                    if handler is None:
                        raise ControlError(f"unknown control request {req.get('op')!r}")
                    reply = {"ok": True, **handler(req)}
                except Exception as e:  # reported to the caller, who decides
                    reply = {"ok": False, "error": str(e), "kind": type(e).__name__}
                try:
                    f.write((json.dumps(reply) + "\n").encode())
                    f.flush()
                except OSError:
                    return

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class ControlClient:
    """Asks a service over its socket; one connection per request (requests are rare)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def request(self, op: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        """The service's reply. Raises: ControlError when it fails or does not answer."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(str(self.path))
                s.sendall((json.dumps({"op": op, **args}) + "\n").encode())
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
        except (OSError, TimeoutError) as e:
            raise ControlError(f"no answer to {op!r} from {self.path}: {e}") from e
        try:
            reply: dict[str, Any] = json.loads(buf)
        except ValueError as e:
            raise ControlError(f"unreadable answer to {op!r} from {self.path}") from e
        if not reply.get("ok"):
            raise ControlError(f"{op} failed: {reply.get('error')}")
        return reply


def ask_flush(path: Path, lsn: Lsn, wait: float = 30.0) -> Lsn:
    """Ask the ingest service listening on `path` to make everything through `lsn`
    durable, waiting up to `wait` s for ingest to get there; returns its durable
    LSN (below `lsn` when ingest did not get there).

    Raises: ControlError when the service does not answer (not running)."""
    reply = ControlClient(path).request("flush", timeout=wait + 30, lsn=str(lsn), wait=wait)
    return Lsn.parse(str(reply["durable_lsn"]))
