"""`IngestPipeline`: a backlog is taken from the stream in batches of up to
`batch_bytes` and ingested a `RecordBatch` at a time; the records, in order,
are those the reader finds chunk by chunk."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from strata.ingest.pipeline import IngestPipeline, PublishConfig
from strata.lsn import Lsn
from strata.wal.batch import RecordBatch
from strata.wal.source import WalChunk
from tests.wal.craft import WalBuilder

SEG = 1024 * 1024
START = SEG * 3


def _wal(records: int = 300) -> tuple[WalBuilder, bytes]:
    b = WalBuilder(START, SEG)
    for i in range(records):
        b.add_main(bytes([i % 256]) * (50 + i % 700), xid=1000 + i)
    return b, b.finish_page()


@dataclass
class FakeStream:
    chunks: list[WalChunk]
    reports: list[tuple[int, int]] = field(default_factory=list)
    server_wal_end: Lsn = field(default_factory=lambda: Lsn(0))
    received_lsn: Lsn = field(default_factory=lambda: Lsn(0))
    system_id: int | None = 1
    timeline: int | None = 1

    @property
    def finished(self) -> bool:
        return not self.chunks

    def poll(self, timeout: float | None = None) -> WalChunk | None:
        return self.chunks.pop(0) if self.chunks else None

    def report(self, write_lsn: int, flush_lsn: int, apply_lsn: int | None = None) -> None:
        self.reports.append((write_lsn, flush_lsn))


@dataclass
class FakeStore:
    durable_lsn: Lsn = field(default_factory=lambda: Lsn(0))

    def flush(self) -> Lsn:
        return self.durable_lsn


@dataclass
class FakeIngest:
    batches: list[RecordBatch] = field(default_factory=list)
    store: FakeStore = field(default_factory=FakeStore)
    advanced: list[int] = field(default_factory=list)

    def ingest_batch(self, batch: RecordBatch) -> None:
        self.batches.append(batch)

    def advance(self, lsn: int | None = None) -> None:
        self.advanced.append(int(lsn or 0))
        self.store.durable_lsn = Lsn(int(lsn or 0))


def _chunks(wal: bytes, size: int) -> list[WalChunk]:
    # the zeros after the last record are the end of WAL: not streamed
    return [WalChunk(Lsn(START + i), wal[i:i + size]) for i in range(0, len(wal), size)]


def _pipeline(stream: FakeStream, ingest: FakeIngest, tmp: Path, batch_bytes: int,
              gather: float = 0.0) -> IngestPipeline:
    return IngestPipeline(stream, ingest, start=Lsn(START), segment_size=SEG,  # type: ignore[arg-type]
                          slot="s", receiver_file=tmp / "receiver.json",
                          config=PublishConfig(batch_bytes=batch_bytes, gather=gather))


def test_take_gathers_waiting_chunks_up_to_batch_bytes(tmp_path: Path) -> None:
    _, wal = _wal()
    end = len(wal) - 8192  # stop before the zeros of the last page
    stream = FakeStream(_chunks(wal[:end], 10_000))
    pipe = _pipeline(stream, FakeIngest(), tmp_path, batch_bytes=35_000)
    taken = pipe.take(0)
    assert [len(c.data) for c in taken] == [10_000] * 4  # stops once 35,000 are reached
    assert taken[0].start == START and taken[-1].end == START + 40_000


def test_take_gathers_a_trickle_that_arrives_within_the_window(tmp_path: Path) -> None:
    """Chunks that arrive one by one within `gather` s of the first come as one
    batch, read without waking for each: the only wait on the stream is the first."""
    _, wal = _wal()
    waits: list[float | None] = []

    class Trickle(FakeStream):
        """A chunk arrives every 10 ms from the first poll on; poll(0) hands over
        those that have arrived, one per call."""

        given = 0
        t0: float | None = None

        def poll(self, timeout: float | None = None) -> WalChunk | None:
            waits.append(timeout)
            if self.t0 is None:
                self.t0 = time.monotonic()
            arrived = int((time.monotonic() - self.t0) / 0.01) + 1
            if self.given >= min(arrived, 10):
                return None
            self.given += 1
            return super().poll(timeout)

    stream = Trickle(_chunks(wal[:50_000], 1_000))
    pipe = _pipeline(stream, FakeIngest(), tmp_path, batch_bytes=1 << 20, gather=0.3)
    taken = pipe.take(0.5)
    assert [len(c.data) for c in taken] == [1_000] * 10  # one batch, not one per message
    assert waits[0] == 0.5 and all(w == 0 for w in waits[1:])
    step = PublishConfig().gather_step
    assert len(waits) < 0.3 / step + 20  # a poll per gather_step, not a wait per chunk


def test_a_backlog_is_ingested_in_big_batches_with_the_same_records(tmp_path: Path) -> None:
    b, wal = _wal()
    last = max(i for i, e in enumerate(b.ends) if e <= START + len(wal) - 8192)
    data = wal[:b.ends[last] - START]
    small, big = FakeIngest(), FakeIngest()
    _pipeline(FakeStream(_chunks(data, 8000)), small, tmp_path, 1).run(threading.Event(), 0)
    _pipeline(FakeStream(_chunks(data, 8000)), big, tmp_path, 1 << 20).run(threading.Event(), 0)
    lsns = [int(x) for x in b.lsns[:last + 1]]
    for ing in (small, big):
        assert [int(r) for bt in ing.batches for r in bt.recs["lsn"]] == lsns
        assert ing.advanced[-1] == b.ends[last]
    assert len(big.batches) == 1 < len(small.batches)


def test_the_end_of_a_burst_is_published_after_a_short_wait(tmp_path: Path) -> None:
    b, wal = _wal(20)
    data = wal[:b.ends[-2] - START]
    waits: list[float | None] = []

    class Recording(FakeStream):
        def poll(self, timeout: float | None = None) -> WalChunk | None:
            waits.append(timeout)
            return super().poll(timeout)

        @property
        def finished(self) -> bool:
            return len(waits) > 6  # a few idle polls after the data

    ingest = FakeIngest()
    pipe = _pipeline(Recording(_chunks(data, 100_000)), ingest, tmp_path, 1 << 20)
    pipe.run(threading.Event(), poll_timeout=0.5)
    # the data; a take that finds nothing more; then, work unpublished, a short wait
    # (idle: published at once); then, nothing unpublished, the long wait again
    assert waits[:4] == [0.5, 0, PublishConfig().idle_after, 0.5]
    assert ingest.advanced[0] == b.ends[-2]


def test_the_slot_is_told_durable_only_after_receiver_json_says_so(tmp_path: Path) -> None:
    """A flush the worker finished is confirmed to the slot by the next save, never by an
    advance before it (home/FORMAT.md: receiver.json first, then the slot)."""
    from strata.home.files import load_receiver_state

    b, wal = _wal(300)
    data = wal[:b.ends[-2] - START]
    half = (len(data) // 2) // 4096 * 4096
    stream = FakeStream(_chunks(data[:half], 4096))
    ingest = FakeIngest()
    p = _pipeline(stream, ingest, tmp_path, batch_bytes=1 << 20)
    p.feed(*p.take(0))
    p.advance(0.0)  # FakeIngest's advance makes everything durable at once
    assert ingest.store.durable_lsn == p.processed > START
    assert all(flush == 0 for _write, flush in stream.reports)
    assert load_receiver_state(tmp_path / "receiver.json") is None
    saved = p.save_and_confirm()
    state = load_receiver_state(tmp_path / "receiver.json")
    assert state is not None and state.flushed_lsn == saved == p.processed
    assert stream.reports[-1] == (p.processed, saved)
    stream.chunks = [WalChunk(Lsn(START + half + i), data[half + i:half + i + 4096])
                     for i in range(0, len(data) - half, 4096)]
    p.feed(*p.take(0))
    p.advance(1.0)  # durable moved on again: not confirmed before the next save
    assert ingest.store.durable_lsn == p.processed > saved
    assert max(flush for _write, flush in stream.reports) == saved
