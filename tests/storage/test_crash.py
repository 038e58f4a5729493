"""Crash tests: a writer subprocess (forked) SIGKILLs itself at chosen events: after
a random number of puts (the maintenance thread is wherever it is), at a random
durable-write operation (in the middle of writing a layer or the manifest), or at
a named commit-protocol point during flush, compaction, image creation and gc.
No clock decides anything. After each kill: the manifest loads, every layer
verifies, no .tmp or unreferenced file remains, durable_lsn never goes back, and
reads at or below durable_lsn return what the deterministic history says (what
they returned before the crash)."""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from strata import durable
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


@dataclass(frozen=True)
class Kill:
    """When the writer kills itself: at the `op`-th durable-write operation, or at
    commit point `point` (each time with probability 1/2), or else after `puts`
    puts, whichever comes first."""

    puts: int
    op: int | None = None
    point: str | None = None


def _die(log: Path, what: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{what}\n".encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


class _CountingFile(durable.WritableFile):
    def __init__(self, fs: KillingFS, path: Path) -> None:
        super().__init__(path)
        self._fs = fs

    def write(self, data: bytes) -> None:
        self._fs.step("write")
        super().write(data)

    def fsync(self) -> None:
        self._fs.step("fsync")
        super().fsync()


class KillingFS(durable.FileSystem):
    """The real file system, with a SIGKILL before its `kill_at`-th operation."""

    def __init__(self, kill_at: int, log: Path) -> None:
        self.kill_at, self.log, self.ops = kill_at, log, 0

    def step(self, what: str) -> None:
        self.ops += 1
        if self.ops == self.kill_at:
            _die(self.log, f"op:{what}")

    def create(self, path: Path) -> durable.WritableFile:
        self.step("create")
        return _CountingFile(self, path)

    def rename(self, src: Path, dst: Path) -> None:
        self.step("rename")
        super().rename(src, dst)

    def unlink(self, path: Path) -> None:
        self.step("unlink")
        super().unlink(path)

    def fsync_dir(self, path: Path) -> None:
        self.step("fsync_dir")
        super().fsync_dir(path)


def writer(directory: Path, seed: int, kill: Kill) -> None:
    """Child body: ingest the history from durable_lsn on, flushing as it goes,
    until `kill` says die."""
    rnd = random.Random(seed)
    log = directory.parent / "crash-points.log"
    if kill.point is not None:
        def die(p: str) -> None:
            if p == kill.point and rnd.random() < 0.5:
                _die(log, p)
        commit.crash_point = die
    fs = KillingFS(kill.op, log) if kill.op is not None else durable.fs()
    with durable.using(fs):
        ps = PageStore.open(directory, append_redo, CFG)
        lsn = int(ps.durable_lsn)
        for _ in range(kill.puts):
            lsn += 8
            k, v = entry_at(lsn)
            ps.put(rk(k), lsn, v)
            ps.advance(lsn)
            if rnd.random() < 0.02:
                ps.flush()
                # compaction and gc on this thread too, not only in the worker (whose
                # timing is the scheduler's): every commit point is reached for sure
                if rnd.random() < 0.3:
                    ps.compact()
                if rnd.random() < 0.3:
                    ps.gc()
        _die(log, "puts")


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


def choose_kill(rnd: random.Random, i: int) -> Kill:
    puts = rnd.randint(100, 1200)
    if i % 2 == 0:
        return Kill(puts)
    choice = rnd.choice([None, *POINTS])
    if choice is None:
        return Kill(puts * 4, op=rnd.randint(1, 1500))
    return Kill(puts * 4, point=choice)


def kill_loop(directory: Path, kills: int, seed: int) -> list[int]:
    rnd = random.Random(seed)
    durable_lsn = 0
    history = []
    model = History()
    for i in range(kills):
        kill = choose_kill(rnd, i)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                writer(directory, seed * 1000 + i, kill)
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)  # it kills itself
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        durable_lsn = check_after_crash(directory, durable_lsn, rnd, model)
        history.append(durable_lsn)
    return history


def test_sigkill_during_flush_compaction_gc_recovers_cleanly(tmp_path: Path) -> None:
    history = kill_loop(tmp_path / "layers", kills=8, seed=1)
    assert history[-1] > 0, "the writer never made anything durable"


@pytest.mark.slow
def test_two_hundred_sigkills_recover_cleanly(tmp_path: Path) -> None:
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
