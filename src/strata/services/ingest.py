"""The ingest service: the one process that writes history.

What it is: `IngestService`, run as ``python -m strata.services.ingest`` by the
supervisor (`strata.daemon`): it streams WAL from the slot, decodes and
ingests it (`ingest.pipeline`), owns the layer store as its only writer and
the time map, writes ``status.json``, and answers control requests on
``<home>/run/ingest.sock`` (`status`; `flush`: make everything up to an LSN
durable, for readers in other processes). Fed by: the primary (WAL), the
home. Feeds: the store and time map, the slot's feedback, the other services.

Stopping (SIGTERM/SIGINT): the stream stops, what was ingested is flushed if
that fits in `stop_flush_seconds`, the resume point is saved; whatever is not
flushed is streamed again on the next start (the slot still holds it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from strata.errors import ConfigError, WalSourceError
from strata.home import HomeLayout
from strata.home.files import HistoryInfo, load_history_info, load_receiver_state
from strata.ingest.pipeline import FLUSH_INTERVAL, IngestPipeline, PublishConfig
from strata.ingest.transam import TransamIngest
from strata.ingest.walingest import WalIngest
from strata.key import Key
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.reconstruct.reconstruct import reconstruct_value
from strata.runtime.primary import PrimaryClient
from strata.services.control import ControlServer
from strata.services.process import ServiceOutput, die_with_parent, run_service
from strata.status import LagClock, write_status
from strata.timemap.timemap import TimeMap
from strata.wal.receiver import WalReceiver
from strata.wal.record import DecodedRecord
from strata.wal.replication import (
    describe_dsn,
    ensure_physical_slot,
    identify_system,
    parse_size_setting,
    server_setting,
)
from strata.wal.rmgr import record_type_name, rmgr_name

log = logging.getLogger(__name__)

SLOT_NAME = "strata"


@dataclass(frozen=True, slots=True)
class IngestOptions:
    flush_interval: float = FLUSH_INTERVAL
    progress_interval: float = 10.0
    status_interval: float = 10.0  # standby status updates to the primary
    verbose: int = 0
    stop_flush_seconds: float = 1.0  # how long a stop may spend flushing


def format_record(rec: DecodedRecord) -> str:
    """One line per record in pg_waldump's shape (for ``strata up -v``)."""
    blocks = "".join(
        f", blkref #{b.block_id}: rel {b.rlocator} fork {b.fork} blk {b.blkno}"
        + (" FPW" if b.has_image else "")
        for b in rec.blocks
    )
    return (f"rmgr: {rmgr_name(rec.xl_rmid):<10} len (rec/tot): {rec.xl_tot_len - rec.fpi_len:>6}/"
            f"{rec.xl_tot_len:>6}, tx: {rec.xl_xid:>10}, lsn: {rec.lsn.padded()}, "
            f"prev {rec.xl_prev.padded()}, desc: {record_type_name(rec.xl_rmid, rec.xl_info)}"
            f"{blocks}")


def human_bytes(n: int) -> str:
    v = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(v) < 1024 or unit == "GB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TB"


class IngestService:
    """One run of the ingest process. `run(stop)` blocks until `stop` is set or
    the stream ends; it always closes the store and time map."""

    def __init__(self, layout: HomeLayout, dsn: str, opts: IngestOptions,
                 out: ServiceOutput) -> None:
        self.layout = layout
        self.dsn = dsn
        self.opts = opts
        self.out = out
        self.store: PageStore | None = None
        self.timemap: TimeMap | None = None
        self.pipeline: IngestPipeline | None = None
        self.receiver: WalReceiver | None = None
        self.primary = PrimaryClient(dsn)
        self.info: HistoryInfo | None = None
        self._lag = LagClock()
        self._stop = threading.Event()
        self._control: ControlServer | None = None
        self.flushed_all = True

    # -- control requests ------------------------------------------------------------
    def _status(self, req: dict[str, Any]) -> dict[str, Any]:
        store = self.store
        assert store is not None
        p = self.pipeline
        return {"ingested_lsn": str(store.ingested_lsn), "durable_lsn": str(store.durable_lsn),
                "processed_lsn": str(p.processed if p is not None else store.ingested_lsn),
                "retention_lsn": str(store.retention_lsn),
                "streaming": p is not None}

    def _flush(self, req: dict[str, Any]) -> dict[str, Any]:
        """Make everything up to `lsn` durable (waiting up to `wait` s for ingest to
        get there first). Replies the durable LSN; `reached` says whether it covers
        `lsn`."""
        store = self.store
        assert store is not None
        target = Lsn.parse(str(req["lsn"]))
        deadline = time.monotonic() + float(req.get("wait", 10.0))
        while store.ingested_lsn < target and time.monotonic() < deadline \
                and not self._stop.is_set():
            time.sleep(0.01)
        if store.durable_lsn < target <= store.ingested_lsn:
            store.flush(target)
        return {"durable_lsn": str(store.durable_lsn), "reached": store.durable_lsn >= target}

    # -- run ------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        if self.receiver is not None:
            self.receiver.stop()

    def run(self) -> None:
        info = load_history_info(self.layout.history_file)
        if info is None:
            raise ConfigError(f"{self.layout.root} has no history yet (history.json missing)")
        self.info = info
        # the maintenance service compacts, images and collects garbage
        self.store = PageStore.open(self.layout.layers, reconstruct_value, maintenance=False)
        self.timemap = TimeMap.open(self.layout.timemap, durable_lsn=self.store.durable_lsn)
        try:
            self._control = ControlServer(self.layout.ingest_socket,
                                          {"status": self._status, "flush": self._flush})
            self._stream()
        finally:
            if self._control is not None:
                self._control.close()
            self.timemap.close()
            self.primary.close()
            if not self.flushed_all:
                # A stop must be quick: the flush still running is abandoned (its
                # temporary file is removed when the store next opens) and the
                # next start streams again from the durable LSN the slot holds.
                self.out.say(f"strata: ingest stopped before its last flush ended; the next "
                             f"start resumes at {self.store.durable_lsn}")
                sys.stdout.flush()
                os._exit(0)
            self.store.close()

    def _ingest_at(self, durable: Lsn) -> WalIngest:
        """The ingest writer resuming at `durable`, with its state read from the store."""
        assert self.store is not None and self.timemap is not None
        state = self.store.get_page(Key.cluster(0), durable)
        if state is None:
            raise ConfigError(f"the store in {self.layout.layers} has no cluster values at "
                              f"{durable}: history is damaged")
        ingest = WalIngest(self.store, self.timemap, TransamIngest(ClusterState.from_bytes(state)),
                           start_lsn=durable)
        ingest.load_state(durable)
        return ingest

    def _open_stream(self) -> tuple[WalReceiver, Lsn, int, bool]:
        """The receiver at the resume point: (receiver, start, segment size, resumed)."""
        assert self.store is not None and self.info is not None
        slot, created = ensure_physical_slot(self.dsn, SLOT_NAME)
        if slot.restart_lsn is None:
            raise WalSourceError(f"replication slot {SLOT_NAME!r} has not reserved WAL; "
                                 "drop it or let strata create it")
        seg_size = parse_size_setting(server_setting(self.dsn, "wal_segment_size"))
        ident = identify_system(self.dsn)
        if ident.system_id != self.info.system_id:
            raise ConfigError(
                f"history in {self.layout.root} belongs to another cluster (system identifier "
                f"{self.info.system_id}; {describe_dsn(self.dsn)} is {ident.system_id})")
        saved = load_receiver_state(self.layout.receiver_file)
        # The resume point is what the store made durable: everything after it
        # (the memtable of a strata that crashed) is streamed again.
        start = Lsn(max(self.store.durable_lsn, self.info.start_lsn))
        if created or start < (slot.restart_lsn or 0):
            raise WalSourceError(
                f"strata needs WAL from {start}, but slot {SLOT_NAME!r} starts at "
                f"{slot.restart_lsn}: the WAL in between is gone and history cannot continue")
        timeline = saved.timeline if saved is not None else slot.restart_tli
        rx = WalReceiver(self.dsn, SLOT_NAME, start, timeline=timeline,
                         system_id=self.info.system_id, status_interval=self.opts.status_interval)
        return rx, start, seg_size, saved is not None

    def _stream(self) -> None:
        assert self.info is not None
        rx, start, seg_size, resumed = self._open_stream()
        self.receiver = rx
        if self._stop.is_set():
            rx.stop()
        self.out.say(f"strata: history from {self.info.start_time.isoformat(timespec='seconds')} "
                     f"(LSN {self.info.start_lsn}); streaming WAL from slot {SLOT_NAME} at "
                     f"{start}" + (" (resumed)" if resumed else ""))
        self.pipeline = IngestPipeline(
            rx, self._ingest_at(start), start=start, segment_size=seg_size, slot=SLOT_NAME,
            receiver_file=self.layout.receiver_file,
            config=PublishConfig(flush_interval=self.opts.flush_interval),
            on_record=(lambda r: self.out.say(format_record(r))) if self.opts.verbose else None,
            periodic=self._periodic)
        self._next_progress = time.monotonic() + self.opts.progress_interval
        self._progress_mark = (0, 0, time.monotonic())
        try:
            self.flushed_all = self.pipeline.run(self._stop,
                                                 finish_flush_seconds=self.opts.stop_flush_seconds)
        finally:
            rx.close()  # sends the last status update
            self.out.say(f"strata: stopped streaming at {self.pipeline.processed} "
                         f"({self.pipeline.stats.records} records this run)")

    def _periodic(self) -> None:
        """Every second from the ingest loop: progress line and status file every
        progress interval."""
        now = time.monotonic()
        if now >= self._next_progress:
            self._next_progress = now + self.opts.progress_interval
            self._report_progress(now)

    def _lag_bytes(self) -> int:
        """How far ingest is behind the primary's WAL right now (the primary's own
        position when it answers; the receiver's view can be seconds old)."""
        assert self.pipeline is not None and self.receiver is not None
        try:
            head = self.primary.wal_lsn()
        except Exception:
            head = self.receiver.server_wal_end
        return max(0, head - self.pipeline.processed)

    def _report_progress(self, now: float) -> None:
        p, rx, store, info = self.pipeline, self.receiver, self.store, self.info
        assert p is not None and rx is not None and store is not None and info is not None
        records0, bytes0, t0 = self._progress_mark
        records, nbytes = p.stats.records - records0, p.stats.bytes - bytes0
        self._progress_mark = (p.stats.records, p.stats.bytes, now)
        lag = self._lag_bytes()
        if records or nbytes:
            self.out.say(f"ingest: {records / max(now - t0, 1e-9):.0f} rec/s, {p.stats.records} "
                         f"records, {human_bytes(p.stats.bytes)}, at {p.processed}, durable "
                         f"{store.durable_lsn}, lag {human_bytes(lag)}")
        tm = self.timemap
        assert tm is not None
        oldest = Lsn(max(info.start_lsn, store.retention_lsn))
        if oldest > info.start_lsn:
            tm.trim_before(oldest)  # retention: the time map's blocks before it go too
        at = tm.last_at_or_before(oldest) if oldest > info.start_lsn else None
        last = tm.last()
        write_status(
            self.layout, received=rx.received_lsn, ingested=store.ingested_lsn,
            durable=store.durable_lsn, server_wal_end=rx.server_wal_end, lag_bytes=lag,
            lag_seconds=self._lag.seconds(lag), oldest_lsn=oldest,
            oldest_time=at.time if at is not None else info.start_time,
            newest_commit_time=last.time if last else None,
            layers=store.layer_summary())


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="strata-ingest")
    p.add_argument("--home", required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--flush-interval", type=float, default=FLUSH_INTERVAL)
    p.add_argument("--progress-interval", type=float, default=10.0)
    p.add_argument("--status-interval", type=float, default=10.0)
    p.add_argument("--verbose", type=int, default=0)
    args = p.parse_args(argv)
    die_with_parent()
    svc = IngestService(HomeLayout(Path(args.home)), args.dsn, IngestOptions(
        flush_interval=args.flush_interval, progress_interval=args.progress_interval,
        status_interval=args.status_interval, verbose=args.verbose),
        ServiceOutput(out or sys.stdout))
    return run_service("ingest", svc.run, svc.stop)


if __name__ == "__main__":
    raise SystemExit(main())
