"""Waiting for file descriptors of any number: `select.poll`, never `select.select`.

What it is: `wait_ready(read, write, timeout)`, the one way strata's code
waits for sockets and pipes to become readable or writable.
Why not `select.select`: it refuses any descriptor >= FD_SETSIZE (1024) with
"filedescriptor out of range in select()". A process that has opened a large
store holds one descriptor per layer file (storage/directory.py raises
RLIMIT_NOFILE for them), so every socket or pipe it opens afterwards gets a
number above 1024. Found at pgbench scale 300: after a 30-minute history the
ingest service could not reconnect to the primary on restart.
Owns: nothing; no state.
"""

from __future__ import annotations

import errno
import math
import select
from collections.abc import Iterable
from typing import Protocol


class HasFileno(Protocol):
    def fileno(self) -> int: ...


Waitable = int | HasFileno

_READ = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
_WRITE = select.POLLOUT | select.POLLHUP | select.POLLERR


def _fd(x: Waitable) -> int:
    return x if isinstance(x, int) else x.fileno()


def wait_ready(read: Iterable[Waitable] = (), write: Iterable[Waitable] = (),
               timeout: float | None = None) -> tuple[set[int], set[int]]:
    """Wait until one of `read` is readable or one of `write` writable, or `timeout`
    seconds pass (None: no limit). Returns (readable fds, writable fds), like
    `select.select` does: a hung-up or failed descriptor counts as ready (the
    read or write that follows reports what happened).

    Raises: OSError(EBADF) for a descriptor that is not open (as select does)."""
    want: dict[int, int] = {}
    for x in read:
        fd = _fd(x)
        want[fd] = want.get(fd, 0) | select.POLLIN | select.POLLPRI
    for x in write:
        fd = _fd(x)
        want[fd] = want.get(fd, 0) | select.POLLOUT
    poller = select.poll()
    for fd, events in want.items():
        poller.register(fd, events)
    ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
    readable: set[int] = set()
    writable: set[int] = set()
    for fd, ev in poller.poll(ms):
        if ev & select.POLLNVAL:
            raise OSError(errno.EBADF, f"file descriptor {fd} is not open")
        if ev & _READ and want[fd] & select.POLLIN:
            readable.add(fd)
        if ev & _WRITE and want[fd] & select.POLLOUT:
            writable.add(fd)
    return readable, writable
