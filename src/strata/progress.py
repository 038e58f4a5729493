"""Progress of long work: a rich progress bar on a terminal, plain lines otherwise.

What it is: `Progress` (stages, an amount done against a total in some unit,
notes that stay on screen) with two faces chosen by `make_progress`:
`BarProgress` (rich, when the stream is a TTY) and `LineProgress` (one line
per stage and note, and at most one line every `interval` seconds while the
amount grows: logs and pipes stay readable). The silent base class is what a
caller gets when nobody watches.
Fed by: the long commands: the history import (`bootstrap`), `strata
restore` and its family, `strata compact`; `materialize` takes `update` as
its page callback. Feeds: a text stream (stderr by default: stdout keeps
reports). Owns: nothing else. Bottom layer: imports nothing from strata.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO, Any

BYTES = "B"  # the unit whose amounts are shown as sizes (kB, MB...) and speeds


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def amount(n: float, unit: str) -> str:
    return human_bytes(n) if unit == BYTES else f"{n:,.0f} {unit}"


class Progress:
    """Silent: every method does nothing but keep the count (SQL callers, tests)."""

    unit = BYTES
    total: int | None = None
    done = 0

    def stage(self, text: str) -> None:
        """A new step of the work begins."""

    def start(self, total: int | None, unit: str = BYTES) -> None:
        """An amount of `total` `unit` (None: unknown) is to be done from now on."""
        self.total, self.unit, self.done = total, unit, 0

    def advance(self, n: int, what: str = "") -> None:
        """`n` more done (`what`: what it is being done to)."""
        self.update(self.done + n, what=what)

    def update(self, done: int, total: int | None = None, what: str = "") -> None:
        """`done` done so far (of `total`, when it changed). Also a `ProgressFn`."""
        self.done = done
        if total is not None:
            self.total = total

    def note(self, text: str) -> None:
        """A line that stays (a table copied, a result)."""

    def close(self) -> None:
        """The work is over (the bar, if any, shows it complete)."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Laps:
    """Seconds per phase of one piece of work (a server start, a SET), for its log
    line: "durable 0.31s, mount 0.12s"."""

    def __init__(self) -> None:
        self._t = time.perf_counter()
        self.parts: list[tuple[str, float]] = []

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.parts.append((name, now - self._t))
        self._t = now

    def __str__(self) -> str:
        return ", ".join(f"{name} {s:.2f}s" for name, s in self.parts)


def write_line(out: IO[str], text: str) -> None:
    """`text` and its newline in one write, then a flush. Several processes share one
    stdout (the daemon and its services): `print` writes the text and the newline
    separately, and an unbuffered stream (PYTHONUNBUFFERED) sends those as two
    writes, between which another process's line can land, gluing two lines."""
    out.write(text + "\n")
    out.flush()


class LineProgress(Progress):
    def __init__(self, out: IO[str], prefix: str, interval: float = 2.0) -> None:
        self.out, self.prefix, self.interval = out, prefix, interval
        self._last = time.monotonic()

    def _say(self, text: str) -> None:
        write_line(self.out, f"{self.prefix}: {text}")

    def stage(self, text: str) -> None:
        self._say(text)

    def update(self, done: int, total: int | None = None, what: str = "") -> None:
        super().update(done, total, what)
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            of = f" of ~{amount(self.total, self.unit)}" if self.total else ""
            self._say(f"{what + ': ' if what else ''}{amount(self.done, self.unit)}{of}")

    def note(self, text: str) -> None:
        self._say(text)


class BarProgress(Progress):
    def __init__(self, out: IO[str], prefix: str) -> None:
        from rich.console import Console

        self.console = Console(file=out)
        self.prefix = prefix
        self.bar: Any = None
        self.task: Any = None
        self._new_bar(BYTES)

    def _new_bar(self, unit: str) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        if self.bar is not None:
            self.bar.stop()
        counts: tuple[Any, ...] = (
            (DownloadColumn(), TransferSpeedColumn()) if unit == BYTES else
            (MofNCompleteColumn(), TextColumn(f"{unit}"),
             TextColumn("{task.fields[rate]}")))
        self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), *counts,
                                TimeElapsedColumn(), console=self.console, transient=False)
        self.task = self.bar.add_task(self.prefix, total=None, rate="")
        self.bar.start()
        self._t0 = time.monotonic()

    def stage(self, text: str) -> None:
        self.bar.update(self.task, description=f"{self.prefix}: {text}")

    def start(self, total: int | None, unit: str = BYTES) -> None:
        description = self.bar.tasks[0].description
        if unit != self.unit:
            self._new_bar(unit)
        super().start(total, unit)
        self.bar.update(self.task, total=max(total, 1) if total is not None else None,
                        completed=0, description=description)

    def update(self, done: int, total: int | None = None, what: str = "") -> None:
        super().update(done, total, what)
        if self.total is not None and self.done > self.total:
            self.total = self.done  # the estimate was low: the bar grows
        fields: dict[str, Any] = {"completed": self.done, "total": self.total}
        if what:
            fields["description"] = f"{self.prefix}: {what}"
        if self.unit != BYTES:
            elapsed = time.monotonic() - self._t0
            fields["rate"] = f"{self.done / elapsed:,.0f} {self.unit}/s" if elapsed > 0 else ""
        self.bar.update(self.task, **fields)

    def note(self, text: str) -> None:
        self.bar.console.print(f"{self.prefix}: {text}")

    def close(self) -> None:
        end = self.done or 1
        self.bar.update(self.task, total=end, completed=end)
        self.bar.stop()


def make_progress(out: IO[str] | None = None, prefix: str = "strata",
                  tty: bool | None = None) -> Progress:
    """A bar when `out` (default stderr) is a terminal, else lines."""
    out = out if out is not None else sys.stderr
    if tty is None:
        tty = out.isatty()
    return BarProgress(out, prefix) if tty else LineProgress(out, prefix)
