"""Crash tests: a writer subprocess (forked) is killed with SIGKILL at random moments
and at named commit-protocol points during flush, compaction, image creation and gc.
After each kill: the manifest loads, every layer verifies, no .tmp or unreferenced
file remains, durable_lsn never goes back, and reads at or below durable_lsn return
what the deterministic history says (what they returned before the crash)."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from strata.key import KeyRange
from strata.pagestore import PageStore
from strata.storage import commit
from strata.storage.config import StorageConfig
from strata.storage.naming import TMP_SUFFIX, is_layer_filename
from strata.storage.tools import verify_store
from strata.storage.values import PageImage, Value, WalRecord

from .conftest import Model, append_redo, rk

CFG = StorageConfig(memtable_bytes=1500, block_bytes=400, target_file_bytes=2500,
                    l0_compaction_trigger=2, image_delta_threshold=1, cache_pages=0,
                    retention_lsn_distance=6000, background_maintenance=True,
                    maintenance_cpu_fraction=1.0)
KEYS = 13
POINTS = ["flush:renamed", "flush:committed", "compact:renamed", "compact:committed",
          "retention:renamed", "retention:committed", "gc:renamed",
          "image:renamed", "image:committed", "gc:committed", "retire:unlinked-one"]


def entry_at(lsn: int) -> tuple[int, Value]:
    """The deterministic history: what was put at `lsn` (multiples of 8)."""
    n = lsn // 8
    k = (n * 7) % KEYS
    if n % 11 == 0:
        return k, WalRecord(b"W%d." % n, will_init=True)
    if n % 5 == 0:
        return k, PageImage(b"I%d." % n)
    return k, WalRecord(b"+%d" % n)


def writer(directory: Path, seed: int, point: str | None) -> None:
    """Child body: ingest the history from durable_lsn on, flushing as it goes."""
    rnd = random.Random(seed)
    if point is not None:
        def die(p: str) -> None:
            if p == point and rnd.random() < 0.5:
                fd = os.open(directory.parent / "crash-points.log",
                             os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                os.write(fd, f"{p}\n".encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        commit.crash_point = die
    ps = PageStore.open(directory, append_redo, CFG)
    lsn = int(ps.durable_lsn)
    while True:
        lsn += 8
        k, v = entry_at(lsn)
        ps.put(rk(k), lsn, v)
        ps.advance(lsn)
        if rnd.random() < 0.02:
            ps.flush()
            if rnd.random() < 0.3:  # gc on this thread too: not only when the worker gets to it
                ps.gc()


def model_upto(durable: int, m: Model | None = None, start: int = 8) -> Model:
    """The history up to `durable` (extending `m`, which holds it up to start - 8)."""
    m = m if m is not None else Model()
    for lsn in range(start, durable + 1, 8):
        k, v = entry_at(lsn)
        m.put(rk(k), lsn, v)
    return m


class History:
    """The model, extended as durable_lsn grows (never rebuilt)."""

    def __init__(self) -> None:
        self.model = Model()
        self.upto = 0

    def at(self, durable: int) -> Model:
        if durable > self.upto:
            model_upto(durable, self.model, self.upto + 8)
            self.upto = durable
        return self.model


def check_after_crash(directory: Path, prev_durable: int, rnd: random.Random,
                      history: History) -> int:
    ps = PageStore.open(directory, append_redo, CFG, background=False)
    try:
        durable, retention = int(ps.durable_lsn), int(ps.retention_lsn)
        assert durable >= prev_durable, "durable_lsn went back"
        names = set(os.listdir(directory))
        live = ps.store.manifest.names()
        assert not [n for n in names if n.endswith(TMP_SUFFIX)]
        assert {n for n in names if is_layer_filename(n)} == live
        rep = verify_store(directory)
        assert rep.ok, rep.errors
        assert rep.leftovers == []
        if durable:
            m = history.at(durable)
            for _ in range(6):
                lsn = rnd.randint(retention, durable)
                k = rnd.randrange(KEYS)
                assert ps.get_page(rk(k), lsn) == m.get(rk(k), lsn), (k, lsn)
            lsn = rnd.randint(retention, durable)
            assert list(ps.scan(KeyRange.everything(), lsn)) == m.scan(lsn)
        return durable
    finally:
        ps.close()


def kill_loop(directory: Path, kills: int, seed: int) -> list[int]:
    rnd = random.Random(seed)
    durable = 0
    history = []
    model = History()
    for i in range(kills):
        point = rnd.choice([None, *POINTS]) if i % 2 else None
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                writer(directory, seed * 1000 + i, point)
            finally:
                os._exit(1)
        try:
            time.sleep(rnd.uniform(0.05, 0.25))
        finally:  # the child never outlives this loop, whatever happens here
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        durable = check_after_crash(directory, durable, rnd, model)
        history.append(durable)
    return history


def test_sigkill_during_flush_compaction_gc_recovers_cleanly(tmp_path: Path) -> None:
    history = kill_loop(tmp_path / "layers", kills=8, seed=1)
    assert history[-1] > 0, "the writer never made anything durable"


@pytest.mark.slow
def test_two_hundred_sigkills_recover_cleanly(tmp_path: Path) -> None:
    started = time.monotonic()
    history = kill_loop(tmp_path / "layers", kills=200, seed=2)
    assert history == sorted(history) and history[-1] > history[0]
    hit = set((tmp_path / "crash-points.log").read_text().split())
    # kills landed between rename and manifest edit and after it, in each verb
    assert {"flush:renamed", "flush:committed", "compact:renamed", "compact:committed"} <= hit, hit
    assert hit & {"gc:renamed", "gc:committed", "retire:unlinked-one", "retention:committed"}, hit
    ps = PageStore.open(tmp_path / "layers", append_redo, CFG, background=False)
    try:
        assert ps.retention_lsn > 0, "gc never ran"
    finally:
        ps.close()
    assert time.monotonic() - started < 240
