"""Progress of long work: a rich progress bar on a terminal, plain lines otherwise.

What it is: `Progress` (stages, and bytes of data against an estimate) with
two faces chosen by `make_progress`: `BarProgress` (rich, when the stream is
a TTY) and `LineProgress` (one line per stage and per table copied, and at
most one line every `interval` seconds while a big table copies: logs and
pipes stay readable).
Fed by: restore (and the other restore-family commands). Feeds: a text
stream (stderr by default; stdout keeps the report). Owns: nothing else.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class Progress:
    """Silent base: every method is a no-op (used by the SQL interface and tests)."""

    def stage(self, text: str) -> None:
        pass

    def start_data(self, estimate: int) -> None:
        pass

    def data(self, what: str, nbytes: int) -> None:
        pass

    def table_done(self, what: str, rows: int, nbytes: int) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress(Progress):
    def __init__(self, out: IO[str], prefix: str = "restore", interval: float = 2.0) -> None:
        self.out = out
        self.prefix = prefix
        self.interval = interval
        self.estimate = 0
        self.done = 0
        self._last = time.monotonic()

    def _say(self, text: str) -> None:
        print(f"{self.prefix}: {text}", file=self.out, flush=True)

    def stage(self, text: str) -> None:
        self._say(text)

    def start_data(self, estimate: int) -> None:
        self.estimate = estimate

    def data(self, what: str, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            of = f" of ~{human_bytes(self.estimate)}" if self.estimate else ""
            self._say(f"copying {what}: {human_bytes(self.done)}{of}")

    def table_done(self, what: str, rows: int, nbytes: int) -> None:
        self._say(f"copied {what} ({rows} rows, {human_bytes(nbytes)})")


class BarProgress(Progress):
    def __init__(self, out: IO[str], prefix: str = "restore") -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        self.console = Console(file=out)
        self.prefix = prefix
        self.bar: Any = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                     DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn(),
                                     console=self.console, transient=False)
        self.task = self.bar.add_task(prefix, total=None)
        self.bar.start()

    def stage(self, text: str) -> None:
        self.bar.update(self.task, description=f"{self.prefix}: {text}")

    def start_data(self, estimate: int) -> None:
        self.bar.update(self.task, total=max(estimate, 1))

    def data(self, what: str, nbytes: int) -> None:
        t = self.bar.tasks[0]
        if t.total is not None and t.completed + nbytes > t.total:
            self.bar.update(self.task, total=t.completed + nbytes)  # the estimate was low
        self.bar.update(self.task, advance=nbytes, description=f"{self.prefix}: {what}")

    def table_done(self, what: str, rows: int, nbytes: int) -> None:
        self.bar.console.print(f"{self.prefix}: copied {what} ({rows} rows, "
                               f"{human_bytes(nbytes)})")

    def close(self) -> None:
        t = self.bar.tasks[0]
        self.bar.update(self.task, total=t.completed or 1, completed=t.completed or 1)
        self.bar.stop()


def make_progress(out: IO[str] | None = None, prefix: str = "restore",
                  tty: bool | None = None) -> Progress:
    out = out if out is not None else sys.stderr
    if tty is None:
        tty = out.isatty()
    return BarProgress(out, prefix) if tty else LineProgress(out, prefix)
