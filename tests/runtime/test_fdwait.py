"""wait_ready on descriptors above FD_SETSIZE (1024), where select.select refuses.

Oracle: the kernel's pipe semantics (readable once written or hung up,
writable while its buffer has room) and select.select's own refusal of such
numbers, which is why the module exists.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
from collections.abc import Iterator

import pytest

from strata.runtime.fdwait import wait_ready

pytestmark = pytest.mark.unit

HIGH = 1500  # above FD_SETSIZE


@pytest.fixture
def high_pipe() -> Iterator[tuple[int, int]]:
    """A pipe whose ends are descriptors HIGH and HIGH + 1."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft <= HIGH + 1:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    r, w = os.pipe()
    try:
        os.dup2(r, HIGH)
        os.dup2(w, HIGH + 1)
    finally:
        os.close(r)
        os.close(w)
    try:
        yield HIGH, HIGH + 1
    finally:
        for fd in (HIGH, HIGH + 1):
            with contextlib.suppress(OSError):
                os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_select_refuses_such_descriptors(high_pipe: tuple[int, int]) -> None:
    r, _ = high_pipe
    with pytest.raises(ValueError, match="out of range"):
        select.select([r], [], [], 0)


def test_readable_only_once_written_and_writable_while_room(high_pipe: tuple[int, int]) -> None:
    r, w = high_pipe
    assert wait_ready([r], [w], timeout=0) == (set(), {w})
    os.write(w, b"x")
    assert wait_ready([r], timeout=0.5) == ({r}, set())
    assert os.read(r, 10) == b"x"
    assert wait_ready([r], timeout=0.05) == (set(), set())


def test_a_hung_up_pipe_is_readable(high_pipe: tuple[int, int]) -> None:
    r, w = high_pipe
    os.close(w)
    assert wait_ready([r], timeout=1.0) == ({r}, set())
    assert os.read(r, 10) == b""


def test_objects_with_fileno_and_a_closed_descriptor(high_pipe: tuple[int, int]) -> None:
    r, w = high_pipe

    class Wrapped:
        def fileno(self) -> int:
            return w

    assert wait_ready(write=[Wrapped()], timeout=0) == (set(), {w})
    os.close(r)
    with pytest.raises(OSError) as e:
        wait_ready([r], timeout=0)
    assert e.value.errno == errno.EBADF
