"""Progress (strata.progress): plain lines when the output is not a terminal, a
rich bar when it is; amounts in bytes or in counted units."""

from __future__ import annotations

import io
import re
from typing import Any

from strata.progress import BarProgress, LineProgress, Progress, make_progress
from strata.services.process import ServiceOutput


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _plain(out: io.StringIO) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())


def test_lines_name_stages_and_notes_and_rate_limit_amounts() -> None:
    out = io.StringIO()
    p = make_progress(out, "restore")
    assert isinstance(p, LineProgress)
    p.interval = 3600.0  # no periodic line during this test
    p.stage("copying x")
    p.start(10 << 20)
    for _ in range(100):
        p.advance(1 << 16, "copying public.t")
    p.note("copied public.t (1000 rows, 6.2 MB)")
    p.close()
    assert out.getvalue().splitlines() == ["restore: copying x",
                                           "restore: copied public.t (1000 rows, 6.2 MB)"]
    p.interval = 0.0
    p.advance(1, "copying public.t")
    assert out.getvalue().splitlines()[-1] == "restore: copying public.t: 6.3 MB of ~10.0 MB"


def test_lines_count_other_units() -> None:
    out = io.StringIO()
    p = make_progress(out, "import")
    assert isinstance(p, LineProgress)
    p.interval = 0.0
    p.start(20000, "pages")
    p.update(5120, what="pages")
    assert out.getvalue().splitlines() == ["import: pages: 5,120 pages of ~20,000 pages"]


def test_a_terminal_gets_a_bar_that_survives_a_low_estimate() -> None:
    out = _Tty()
    p = make_progress(out, "restore")
    assert isinstance(p, BarProgress)
    p.stage("copying")
    p.start(100)
    p.advance(1000, "copying public.t")  # more than estimated: the total grows
    assert p.total == 1000
    p.note("copied public.t (3 rows, 1000 B)")
    p.close()
    assert "restore: copied public.t (3 rows, 1000 B)" in _plain(out)


def test_a_bar_in_counted_units_shows_done_of_total() -> None:
    out = _Tty()
    with make_progress(out, "compact") as p:
        p.stage("merging L0 layers")
        p.start(4, "entries")
        for i in range(1, 5):
            p.update(i)
    text = _plain(out)
    assert "compact: merging L0 layers" in text and "4/4" in text and "entries" in text


def test_the_silent_progress_keeps_the_count_as_a_callback() -> None:
    p = Progress()
    p.start(None, "pages")
    p.update(3, 10)
    p.advance(2)
    assert (p.done, p.total, p.unit) == (5, 10, "pages")


class _Writes(io.RawIOBase):
    """A raw stream that keeps each write call apart (what a pipe sees)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.chunks.append(bytes(b))
        return len(b)


def test_a_line_reaches_an_unbuffered_stdout_in_one_write() -> None:
    # PYTHONUNBUFFERED: the text layer writes through to the raw pipe; two writes
    # per line let another process's line land in between (a glued DSN in CI)
    raw = _Writes()
    out = io.TextIOWrapper(raw, write_through=True)  # type: ignore[arg-type]
    ServiceOutput(out).say("strata: time travel proxy: host=x")
    LineProgress(out, "ingest").stage("1 rec/s")
    assert raw.chunks == [b"strata: time travel proxy: host=x\n", b"ingest: 1 rec/s\n"]
