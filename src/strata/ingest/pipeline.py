"""The ingest pipeline: WAL chunks in, durable history out, with the slot told.

What it is: `IngestPipeline`, the loop that feeds streamed WAL through the
reader and decoder into `WalIngest`, and `PublishPolicy`, the pure rule for
when to publish (advance), flush, save the resume point and report progress.
Fed by: a WAL stream (`wal.receiver.WalReceiver` or anything with its
`poll` / `report` / `server_wal_end` / `finished`), the store and time map
through `WalIngest`. Feeds: the store and time map (through `WalIngest`),
``receiver.json`` and the slot's feedback (write = the end of the last record
processed, flush = the store's ``durable_lsn``), and the caller's periodic
hooks (progress lines, status, primary checks).

Ordering that keeps "nothing lost" (home/FORMAT.md):
- `advance` syncs the time map before the store's watermark moves
  (timemap/FORMAT.md invariant 2);
- ``receiver.json`` records ``durable_lsn`` before the slot is told it may
  release WAL up to it (`save_and_confirm`);
- on stop, everything processed is advanced and flushed before the last
  save, so a clean stop resumes exactly where it stopped, and a crash
  resumes from the last durable LSN (the slot still holds the rest).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Flag, auto
from pathlib import Path
from typing import Protocol

from strata.errors import EndOfWal, WalSourceError
from strata.home.files import ReceiverState, write_json
from strata.ingest.walingest import WalIngest
from strata.lsn import Lsn
from strata.wal.reader import WalReader
from strata.wal.record import DecodedRecord
from strata.wal.source import WalChunk

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 30.0  # s: the default of PublishConfig and of `strata up --flush-interval`
# (10 s was tried: at pgbench scale 10, three times the L0s made three times the image
# layers, 1.11 layer bytes per WAL byte instead of ~0.5; the idle flush below is what
# makes a quiet stream durable at once)


class Stream(Protocol):
    """What the pipeline needs of a WAL stream (`WalReceiver` has it)."""

    @property
    def server_wal_end(self) -> Lsn: ...
    @property
    def received_lsn(self) -> Lsn: ...
    @property
    def system_id(self) -> int | None: ...
    @property
    def timeline(self) -> int | None: ...
    @property
    def finished(self) -> bool: ...
    def poll(self, timeout: float | None = None) -> WalChunk | None: ...
    def report(self, write_lsn: int, flush_lsn: int, apply_lsn: int | None = None) -> None: ...


class Action(Flag):
    NONE = 0
    ADVANCE = auto()  # publish what was ingested (time map sync, store watermark, slot write)
    FLUSH = auto()  # make it durable in layers
    SAVE = auto()  # record the resume point, then let the slot release WAL
    PERIODIC = auto()  # the caller's hooks: progress line, status file, primary check


@dataclass(frozen=True, slots=True)
class PublishConfig:
    advance_interval: float = 0.2  # s between publications (each fsyncs the time map)
    advance_bytes: int = 8 << 20  # ... or after this much WAL
    flush_interval: float = FLUSH_INTERVAL  # s between forced flushes of the memtable
    idle_flush_after: float = 1.0  # s without WAL after which everything processed is flushed
    save_interval: float = 1.0  # s between saves of receiver.json + slot confirmations
    periodic_interval: float = 1.0  # s between calls of the caller's hooks
    batch_bytes: int = 4 << 20  # WAL taken at once from a stream with more waiting (one batch)
    gather: float = 0.1  # s a trickle is gathered into one batch (a commit flushes WAL, and
    #                       the primary sends each flush: one tiny batch per commit otherwise;
    #                       under pgbench -c4 -j2, 20 ms batches cost 57-71 us of ingest CPU
    #                       per transaction, 100 ms ones 42-46: below `advance_interval`,
    #                       so what is published, and when, hardly changes)
    gather_step: float = 0.01  # s between reads of a trickle within `gather` (a busy primary
    #                            sends a message per commit: one wake-up per message otherwise;
    #                            each read costs a trip through the receiver: at 2 ms, 50 a
    #                            batch, ingest used 58-69 us per pgbench transaction, at 10 ms
    #                            48-49: BENCHMARKS.md, twenty-seventh session)
    idle_after: float = 0.05  # s without WAL after which unpublished work is published (idle)


@dataclass(slots=True)
class PublishPolicy:
    """When to advance, flush, save and call the hooks. Pure: the caller passes
    the clock and the positions, the policy says what is due and remembers it.

    - advance in batches: after `advance_interval` s or `advance_bytes` of WAL,
      or at once when the stream is idle (nothing more to batch with: no WAL
      for `idle_after` s, the run loop's wait while work is unpublished), so
      an fsync of the time map never lands on every replication message of a
      busy stream, and the end of a burst is published at once;
    - flush every `flush_interval` s when something is not durable yet, and
      once the stream has brought nothing for `idle_flush_after` s (the end of
      a burst is durable within a second or so: a historical server at any
      point older than that starts without waiting for a flush);
    - save every `save_interval` s; hooks every `periodic_interval` s.
    """

    config: PublishConfig
    last_advance: float
    last_flush: float
    last_save: float = 0.0
    last_periodic: float = 0.0
    pending_bytes: int = 0
    last_data: float = 0.0  # when WAL last arrived
    idle_flushed: bool = True  # the flush for the current idle spell was asked for

    @classmethod
    def start(cls, config: PublishConfig, now: float) -> PublishPolicy:
        return cls(config, last_advance=now, last_flush=now, last_periodic=now, last_data=now)

    def decide(self, now: float, *, received: int, idle: bool, processed: int, published: int,
               durable: int) -> Action:
        """What is due now. `received` bytes arrived since the last call; `idle`:
        the last poll returned nothing."""
        c = self.config
        self.pending_bytes += received
        if received:
            self.last_data, self.idle_flushed = now, False
        act = Action.NONE
        if processed > published and (idle or now - self.last_advance >= c.advance_interval
                                      or self.pending_bytes >= c.advance_bytes):
            act |= Action.ADVANCE
            self.last_advance, self.pending_bytes = now, 0
        quiet = idle and not self.idle_flushed and now - self.last_data >= c.idle_flush_after
        if durable < processed and (quiet or now - self.last_flush >= c.flush_interval):
            act |= Action.FLUSH
            self.last_flush = now
        if quiet or (act & Action.FLUSH and idle):
            self.idle_flushed = True
        if now - self.last_save >= c.save_interval:
            act |= Action.SAVE
            self.last_save = now
        if now - self.last_periodic >= c.periodic_interval:
            act |= Action.PERIODIC
            self.last_periodic = now
        return act


@dataclass(slots=True)
class PipelineStats:
    records: int = 0
    bytes: int = 0
    caught_up_at: float = field(default_factory=time.monotonic)


class IngestPipeline:
    """One run of the stream loop (see module docstring). `run` blocks until
    `stop_event` is set or the stream finishes; it always leaves everything
    processed durable and the resume point saved."""

    def __init__(self, stream: Stream, ingest: WalIngest, *, start: Lsn, segment_size: int,
                 slot: str, receiver_file: Path, config: PublishConfig | None = None,
                 on_record: Callable[[DecodedRecord], None] | None = None,
                 periodic: Callable[[], None] | None = None) -> None:
        self.stream = stream
        self.ingest = ingest
        self.slot = slot
        self.receiver_file = receiver_file
        self.config = config or PublishConfig()
        self.on_record = on_record
        self.periodic = periodic
        self.reader = WalReader(start, segment_size, prev_lsn=None)
        self.processed = start
        self.published = start
        self.last_record: Lsn | None = None
        self.saved = Lsn(0)  # the durable LSN receiver.json holds: the slot may release to here
        self.stats = PipelineStats()

    @property
    def store_durable(self) -> Lsn:
        return self.ingest.store.durable_lsn

    def feed(self, chunk: WalChunk, *more: WalChunk) -> None:
        """Frame, decode and ingest every complete record in `chunk` (and the
        chunks after it), a `RecordBatch` at a time.

        Raises: WalSourceError when streamed WAL is invalid (streamed WAL is
        flushed WAL: it must be valid to the end)."""
        for c in (chunk, *more):
            self.reader.feed(c.data)
            self.stats.bytes += len(c.data)
        ingest = self.ingest
        try:
            while (batch := self.reader.read_batch()) is not None:
                ingest.ingest_batch(batch)
                self.stats.records += len(batch)
                if self.on_record is not None:
                    for i in range(len(batch)):
                        self.on_record(batch.record(i))
                self.processed = batch.end_lsn
                self.last_record = batch.last_lsn
        except EndOfWal as e:
            raise WalSourceError(f"invalid WAL in the stream: {e}") from e

    def advance(self, now: float) -> None:
        self.ingest.advance(self.processed)
        self.published = self.processed
        # flush = what receiver.json holds, never more (a flush the worker finished
        # since the last save is confirmed by the next save)
        self.stream.report(self.processed, self.saved)
        if self.stream.server_wal_end <= self.processed:
            self.stats.caught_up_at = now

    def save_and_confirm(self) -> Lsn:
        """Record the durable position in receiver.json, then (only then) let the
        slot release the WAL before it. Returns that position."""
        durable = self.store_durable
        if self.stream.system_id is None:
            return durable  # never connected: nothing was processed, nothing to save
        write_json(self.receiver_file, ReceiverState(
            self.slot, self.stream.system_id, self.stream.timeline, self.stream.received_lsn,
            durable, self.last_record).to_json())
        self.saved = durable
        self.stream.report(self.processed, durable)
        return durable

    def run(self, stop_event: threading.Event, poll_timeout: float = 0.5,
            finish_flush_seconds: float | None = None) -> bool:
        """The loop; returns what `finish` returns."""
        policy = PublishPolicy.start(self.config, time.monotonic())
        self.stats.caught_up_at = time.monotonic()
        try:
            while not stop_event.is_set():
                # with work not yet published, a short wait tells "idle" (publish
                # now, at the end of a burst) from "busy" (keep batching)
                wait = (min(poll_timeout, self.config.idle_after)
                        if self.processed > self.published else poll_timeout)
                chunks = self.take(wait)
                if chunks:
                    self.feed(*chunks)
                now = time.monotonic()
                act = policy.decide(now, received=sum(len(c.data) for c in chunks),
                                    idle=not chunks, processed=self.processed,
                                    published=self.published, durable=self.store_durable)
                if Action.ADVANCE in act:
                    self.advance(now)
                if Action.FLUSH in act:
                    self.ingest.store.flush_soon()  # the flush worker writes it
                if Action.SAVE in act:
                    self.save_and_confirm()
                if Action.PERIODIC in act and self.periodic is not None:
                    self.periodic()
                if self.stream.finished:
                    break
        finally:
            done = self.finish(finish_flush_seconds)
        return done

    def take(self, timeout: float) -> list[WalChunk]:
        """The next chunk, and the ones behind it up to `batch_bytes`: those
        already waiting (a backlog is ingested in big batches) and those that
        arrive within `gather` s of the first (a trickle of small messages is
        ingested a batch at a time, not a message at a time: it waits in the
        socket for `gather_step` s at a time and is read in one go then, with no
        wake-up per message; a fast stream leaves only a step's worth there, ~180
        KB at 18 MB/s, well inside a TCP socket's autotuned buffer)."""
        chunk = self.stream.poll(timeout)
        if chunk is None:
            return []
        chunks, size = [chunk], len(chunk.data)
        until = time.monotonic() + self.config.gather
        while size < self.config.batch_bytes:
            more = self.stream.poll(0)
            if more is None:
                left = until - time.monotonic()
                if left <= 0 or self.stream.finished:
                    break
                time.sleep(min(left, self.config.gather_step))
                continue
            chunks.append(more)
            size += len(more.data)
        return chunks

    def finish(self, flush_seconds: float | None = None) -> bool:
        """Advance and flush everything processed, then save the resume point.

        With `flush_seconds`, the flush is waited for that long only (a stop must
        be quick): what is not durable by then is streamed again on the next
        start (the slot still holds it). Returns: whether everything processed
        is durable."""
        if self.processed > self.published:
            self.ingest.advance(self.processed)
            self.published = self.processed
        store = self.ingest.store
        if self.processed > self.store_durable:
            if flush_seconds is None:
                store.flush()
            else:
                store.flush_soon()  # seals and wakes the flush worker
                store.wait_durable(self.processed, timeout=flush_seconds)
        self.save_and_confirm()
        return self.store_durable >= self.processed
