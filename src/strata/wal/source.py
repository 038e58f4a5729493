"""WAL sources: one interface for raw WAL bytes, streamed or read from files.

What it is: `WalSource`, the protocol every source of WAL bytes follows, and
its two implementations. A source yields `WalChunk`s that are *contiguous*:
each chunk starts where the previous one ended, beginning at the source's
start LSN, so the consumer (the sans-IO `wal.reader`) can feed them as one
byte stream. Sources do not parse records; where valid WAL ends inside the
bytes is the reader's decision.

- `wal.receiver.StreamSource`: the streaming replication protocol from a
  physical slot; feedback goes back to the server (it lives with the
  receiver, which imports this module, never the reverse).
- `FileSource`: segment files in a directory (a pg_wal copy or an archive),
  found by `wal.segments.WalDirectory`: raw bytes in LSN order from a start
  position; stops at the end of what is there (or the first missing segment),
  or, with ``follow=True``, waits for the next segment file to appear (archive
  semantics: a file appears whole).

Fed by: a server (DSN + slot) or a directory. Feeds: the reader/decoder, the
daemon, ``strata waldump``. Owns: nothing on disk.

A "source" here is always a source of WAL bytes (`wal.segments.SegmentWalSource`
yields records from segment files). `historical.source.DataDirSource` is
something else: a stopped data directory an import copies pages from.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from strata.lsn import Lsn
from strata.wal.segments import WalDirectory

__all__ = ["FileSource", "WalChunk", "WalSource"]


@dataclass(frozen=True, slots=True)
class WalChunk:
    """Raw WAL bytes ``[start, start + len(data))`` exactly as written by the server."""

    start: Lsn
    data: bytes

    @property
    def end(self) -> Lsn:
        return self.start + len(self.data)


@runtime_checkable
class WalSource(Protocol):
    """A contiguous stream of WAL bytes from `start_lsn` on.

    Invariant: every chunk returned starts at the previous chunk's end (the
    first at `start_lsn`); no byte is skipped or repeated, across reconnects too.
    """

    @property
    def start_lsn(self) -> Lsn: ...

    @property
    def received_lsn(self) -> Lsn:
        """End of the last chunk handed out (`start_lsn` before the first)."""
        ...

    @property
    def finished(self) -> bool:
        """True when no chunk will ever come again (end of files, or stopped)."""
        ...

    def poll(self, timeout: float | None = None) -> WalChunk | None:
        """The next chunk, or None if none arrived within `timeout` seconds (or
        the source is finished). Call from one thread."""
        ...

    def stream(self, idle_timeout: float | None = None) -> Iterator[WalChunk]:
        """Chunks until the source finishes, is stopped, or (if given) nothing
        arrives for `idle_timeout` seconds."""
        ...

    def report(self, write_lsn: int, flush_lsn: int, apply_lsn: int | None = None) -> None:
        """Feedback from the consumer: WAL below `flush_lsn` is durable and may be
        released by the server. Thread-safe."""
        ...

    def stop(self) -> None:
        """Ask the source to finish; safe from any thread or a signal handler."""
        ...

    def close(self) -> None: ...


def _stream_from(source: WalSource, idle_timeout: float | None) -> Iterator[WalChunk]:
    while not source.finished:
        chunk = source.poll(idle_timeout if idle_timeout is not None else 1.0)
        if chunk is not None:
            yield chunk
        elif idle_timeout is not None:
            return


# -- segment files -------------------------------------------------------------------


class FileSource:
    """WAL bytes from segment files in `directory`, in LSN order from `start_lsn`.

    Which file holds a segment is `WalDirectory.segment_for`'s choice: with
    `timeline` given, along that timeline's history (its ``<tli>.history`` file);
    otherwise the newest timeline present for that segment number.

    Requires: the directory is readable by us. The bytes past the server's
    insert position in a live pg_wal are stale; the reader stops there.
    """

    def __init__(self, directory: str | os.PathLike[str], start_lsn: int, *,
                 timeline: int | None = None, follow: bool = False,
                 segment_size: int | None = None, chunk_size: int = 1 << 20) -> None:
        self.dir = WalDirectory(directory, segment_size)
        self.directory = self.dir.path
        self._start = Lsn(start_lsn)
        self._pos = Lsn(start_lsn)
        self.timeline = timeline
        self.follow = follow
        self.chunk_size = chunk_size
        self._stop = threading.Event()
        self._finished = False

    # -- WalSource ------------------------------------------------------------------
    @property
    def start_lsn(self) -> Lsn:
        return self._start

    @property
    def received_lsn(self) -> Lsn:
        return self._pos

    @property
    def finished(self) -> bool:
        return self._finished

    def report(self, write_lsn: int, flush_lsn: int, apply_lsn: int | None = None) -> None:
        """Files need no feedback."""

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._finished = True

    def stream(self, idle_timeout: float | None = None) -> Iterator[WalChunk]:
        if not self.follow:
            while True:
                chunk = self.poll(0)
                if chunk is None:
                    return
                yield chunk
        yield from _stream_from(self, idle_timeout)

    def poll(self, timeout: float | None = None) -> WalChunk | None:
        while not self._finished:
            if self._stop.is_set():
                self._finished = True
                return None
            chunk = self._read_next()
            if chunk is not None:
                self._pos = chunk.end
                return chunk
            if not self.follow:
                self._finished = True
                return None
            # Wait for the next segment to appear; the stop event wakes us early.
            wait = 0.2 if timeout is None else min(0.2, timeout)
            if self._stop.wait(wait) or (timeout is not None and timeout <= wait):
                if self._stop.is_set():
                    self._finished = True
                return None
            if timeout is not None:
                timeout -= wait
        return None

    # -- internals ------------------------------------------------------------------
    def _segment_path(self, segno: int) -> Path | None:
        history = self.dir.history_begins(self.timeline) if self.timeline is not None else None
        found = self.dir.segment_for(segno, history=history)
        if found is None:
            self.dir.rescan()  # it may have appeared since (or become complete)
            found = self.dir.segment_for(segno, history=history)
        return found[1] if found is not None else None

    def _read_next(self) -> WalChunk | None:
        seg_size = self.dir.segment_size
        if seg_size is None:
            self.dir.rescan()
            seg_size = self.dir.segment_size
            if seg_size is None:
                return None
        segno, offset = divmod(int(self._pos), seg_size)
        path = self._segment_path(segno)
        if path is None:
            return None
        try:
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read(min(self.chunk_size, seg_size - offset))
        except FileNotFoundError:  # a .partial renamed to its complete name meanwhile
            self.dir.rescan()
            return None
        if not data:
            # A short file (e.g. .partial renamed, or truncated copy): nothing more here.
            return None
        return WalChunk(self._pos, data)
