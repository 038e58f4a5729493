"""The batched ingest path (`WalIngest.ingest_batch`, record batches from
`WalReader.read_batch`) stores exactly the entries the record-at-a-time path
(`WalIngest.ingest`) stores, and ends in the same state: on the sample records
of every kind (tests/data/wal) and on real WAL (pgbench; history.sql with its
DDL, drops and truncations; pgbench with an image on every block, compressed),
with the compiled reader and in pure Python."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from strata.bootstrap import import_datadir
from strata.errors import EndOfWal
from strata.historical.source import DataDirSource
from strata.ingest import batched
from strata.ingest.transam import TransamIngest
from strata.ingest.walingest import WalIngest
from strata.key import Key, KeyKind, KeyRange
from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.reconstruct.reconstruct import reconstruct_value
from strata.storage.values import Value
from strata.timemap.timemap import EndKind, TimeMap
from strata.wal import batch as batch_mod
from strata.wal.batch import BatchBuilder
from strata.wal.reader import WalReader
from strata.wal.rmgr import RM_XACT_ID
from strata.wal.segments import iter_records
from strata.wal.source import FileSource
from tests.conftest import _scratch, make_cluster
from tests.wal.conftest import (  # noqa: F401  (fixtures)
    WalRun,
    _insert_lsn,
    _pgbench,
    history_statements,
    history_wal,
    pgbench_wal,
    wal_scratch,
)

DATA = Path(__file__).resolve().parents[1] / "data"


class RecordingStore(PageStore):
    """A real store that remembers every put (single or batched) and range delete."""

    puts: list[tuple[Key, int, Value]]
    deletes: list[tuple[KeyRange, int]]

    def put(self, key: Key, lsn: int, value: Value) -> None:
        self.puts.append((key, lsn, value))
        super().put(key, lsn, value)

    def put_batch(self, batch: Any) -> None:
        if hasattr(batch, "entries"):  # the store's columnar EntryBatch
            self.puts += [(Key.from_bytes(e.key), e.lsn, e.value) for e in batch.entries()]
            super().put_batch(batch)
        else:
            for key, lsn, value in batch:
                self.put(key, lsn, value)

    def delete_range(self, key_range: KeyRange, lsn: int) -> int:
        self.deletes.append((key_range, lsn))
        return super().delete_range(key_range, lsn)


@dataclass
class Ingested:
    puts: list[tuple[Key, int, Value]]
    deletes: list[tuple[KeyRange, int]]
    sizes: dict[tuple[int, int, int, int], int]
    dbs: set[tuple[int, int]]
    state: ClusterState | None
    tx_ends: list[Any]
    ddl: list[Any]
    records: int


def canonical(puts: list[tuple[Key, int, Value]]) -> list[tuple[Key, int, Value]]:
    """Per LSN in key order; puts of one (key, LSN) keep their order (the last wins)."""
    return sorted(puts, key=lambda p: (p[1], p[0]))


def _state() -> ClusterState:
    return ClusterState.from_bytes((DATA / "transam" / "cluster_state_v1.bin").read_bytes())


def ingest_with(tmp: Path, start: Lsn, feed: Any, base: Path | None = None) -> Ingested:
    """`feed` WAL into a fresh store (imported from the stopped data directory
    `base` first, when given) and say what was stored."""
    store = RecordingStore.open(tmp / "layers", reconstruct_value, background=False)
    store.puts, store.deletes = [], []
    timemap = TimeMap.open(tmp / "timemap")
    try:
        if base is not None:
            source = DataDirSource(base)
            ing = WalIngest(store, timemap, TransamIngest(source.control()),
                            start_lsn=source.lsn)
            import_datadir(source, ing)
            ing = WalIngest(store, timemap, TransamIngest(source.control()),
                            start_lsn=source.lsn)  # as the daemon resumes: state from the store
            ing.load_state(source.lsn)
        else:
            ing = WalIngest(store, timemap, TransamIngest(_state()), start_lsn=start)
        store.puts, store.deletes = [], []
        feed(ing)
        ing.advance()
        return Ingested(store.puts, store.deletes, ing.relation_sizes(), ing.databases(),
                        ing.transam.cluster_state, list(timemap.entries()),
                        list(timemap.ddl.entries()), ing.stats.records)
    finally:
        store.close()
        timemap.close()


def assert_same(a: Ingested, b: Ingested) -> None:
    assert a.records == b.records
    assert len(a.puts) == len(b.puts)
    for i, (x, y) in enumerate(zip(canonical(a.puts), canonical(b.puts), strict=True)):
        assert x == y, f"entry #{i} differs:\n record path {x}\n batch path  {y}"
    assert a.deletes == b.deletes
    assert a.sizes == b.sizes and a.dbs == b.dbs
    assert a.state == b.state
    assert a.tx_ends == b.tx_ends
    assert a.ddl == b.ddl


@pytest.fixture(params=["compiled", "python"])
def reader_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[str]:
    monkeypatch.setattr(batch_mod, "_COMPILED", False if request.param == "compiled" else None)
    if request.param == "compiled":
        assert batch_mod.compiled_frame() is not None, "the compiled WAL reader is not built"
    yield request.param
    monkeypatch.setattr(batch_mod, "_COMPILED", False)


# -- sample records -----------------------------------------------------------------------


def _samples() -> list[tuple[bytes, Lsn, Lsn]]:
    """Every sample record (one cluster's WAL, with gaps) in LSN order, CREATE DATABASE
    excepted (it copies pages the gaps left out)."""
    wal = DATA / "wal"
    meta = json.loads((wal / "records.json").read_text())
    recs = [((wal / f"{name}.bin").read_bytes(), Lsn.parse(m["lsn"]), Lsn.parse(m["end_lsn"]))
            for name, m in meta.items() if not name.startswith("database_")]
    return sorted(recs, key=lambda r: r[1])


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_sample_records_in_batches_store_what_one_by_one_stores(
        tmp_path: Path, reader_mode: str, size: int) -> None:
    samples = _samples()

    def one_by_one(ing: WalIngest) -> None:
        for raw, lsn, end in samples:
            b = BatchBuilder()
            b.add(raw, lsn, end)
            ing.ingest(b.build().record(0))

    def batched(ing: WalIngest) -> None:
        for i in range(0, len(samples), size):
            b = BatchBuilder()
            for raw, lsn, end in samples[i:i + size]:
                b.add(raw, lsn, end)
            ing.ingest_batch(b.build())

    a = ingest_with(tmp_path / "a", Lsn(0), one_by_one)
    b = ingest_with(tmp_path / "b", Lsn(0), batched)
    assert a.records == len(samples) and len(a.puts) > 50
    assert {k.kind for k, _, _ in a.puts} >= {KeyKind.REL_BLOCK, KeyKind.REL_SIZE,
                                               KeyKind.SLRU_PAGE, KeyKind.CLUSTER}
    assert_same(a, b)


def test_a_batch_skips_what_the_start_lsn_says_is_stored(tmp_path: Path) -> None:
    samples = _samples()
    half = samples[len(samples) // 2][2]

    def one_by_one(ing: WalIngest) -> None:
        for raw, lsn, end in samples:
            b = BatchBuilder()
            b.add(raw, lsn, end)
            ing.ingest(b.build().record(0))

    def batched(ing: WalIngest) -> None:
        b = BatchBuilder()
        for raw, lsn, end in samples:
            b.add(raw, lsn, end)
        ing.ingest_batch(b.build())

    a = ingest_with(tmp_path / "a", half, one_by_one)
    b = ingest_with(tmp_path / "b", half, batched)
    assert 0 < a.records < len(samples)
    assert min(lsn for _, lsn, _ in b.puts) > half
    assert_same(a, b)


# -- real WAL -----------------------------------------------------------------------------


def _record_path(run: WalRun) -> Any:
    def feed(ing: WalIngest) -> None:
        for rec in iter_records(run.wal_dir, run.start):
            ing.ingest(rec)
    return feed


def _batch_path(run: WalRun, chunk: int) -> Any:
    def feed(ing: WalIngest) -> None:
        reader = WalReader(run.start, 16 << 20)
        src = FileSource(run.wal_dir, run.start, chunk_size=chunk)
        try:
            while (c := src.poll(0)) is not None:
                reader.feed(c.data)
                while (b := reader.read_batch()) is not None:
                    ing.ingest_batch(b)
        except EndOfWal:
            pass
    return feed


@pytest.mark.pg
@pytest.mark.parametrize("name", ["pgbench_wal", "history_wal"])
def test_real_wal_in_batches_stores_what_one_by_one_stores(
        name: str, request: pytest.FixtureRequest, tmp_path: Path, reader_mode: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch path equals the record path; most commits took the batch path's
    plain-commit shortcut (`WalIngest._plain_events`, no record decoded)."""
    run: WalRun = request.getfixturevalue(name)
    shortcut = WalIngest._plain_events
    taken = 0

    def counted(self: WalIngest, batch: Any, rows: Any) -> Any:
        nonlocal taken
        taken += int((batch.recs["rmid"][rows] == RM_XACT_ID).sum())
        return shortcut(self, batch, rows)

    monkeypatch.setattr(WalIngest, "_plain_events", counted)
    a = ingest_with(tmp_path / "a", run.start, _record_path(run))
    b = ingest_with(tmp_path / "b", run.start, _batch_path(run, 128 << 10))
    assert a.records > 1000 and a.tx_ends
    commits = sum(1 for e in a.tx_ends if e.kind == EndKind.COMMIT)
    assert taken > (commits // 2 if name == "pgbench_wal" else 0), (taken, commits)
    if name == "history_wal":
        assert a.deletes  # dropped and truncated relations went through the split path
    assert_same(a, b)


@dataclass
class ImportedRun:
    base: Path  # the primary's data directory, cleanly stopped, before the workload
    run: WalRun


@pytest.fixture(scope="module")
def imported_ddl_run() -> Iterator[ImportedRun]:
    """A primary imported at a clean stop, then history.sql, databases created
    both ways (file copy reads the template from the store) and dropped, and a
    catalog rewritten (VACUUM FULL pg_class: the DDL tracker follows it)."""
    root = _scratch("batched-")
    c = make_cluster(root / "primary")
    try:
        c.stop()
        base = root / "base"
        shutil.copytree(c.datadir, base, symlinks=True)
        start = DataDirSource(base).lsn
        c.start()
        with c.connect() as conn:
            for stmt in history_statements():
                conn.execute(stmt)  # type: ignore[arg-type]
            conn.execute("CREATE DATABASE copied STRATEGY file_copy")
            conn.execute("CREATE DATABASE logged STRATEGY wal_log")
            conn.execute("VACUUM FULL pg_class")
            conn.execute("CREATE TABLE after_rewrite (a int)")
            conn.execute("DROP DATABASE copied")
        end = Lsn.parse(c.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0])
        c.stop()
        yield ImportedRun(base, WalRun(c, start, end))
    finally:
        c.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.pg
def test_imported_history_in_batches_stores_what_one_by_one_stores(
        imported_ddl_run: ImportedRun, tmp_path: Path, reader_mode: str) -> None:
    r = imported_ddl_run
    a = ingest_with(tmp_path / "a", r.run.start, _record_path(r.run), base=r.base)
    b = ingest_with(tmp_path / "b", r.run.start, _batch_path(r.run, 128 << 10), base=r.base)
    assert a.ddl and any("after_rewrite" in str(e) for e in a.ddl)
    assert {KeyKind.DB_DIR, KeyKind.RELMAP} <= {k.kind for k, _, _ in a.puts}
    assert_same(a, b)


@pytest.fixture(scope="module")
def imaged_wal(wal_scratch: Path) -> Iterator[WalRun]:  # noqa: F811
    """pgbench WAL where every heap block reference carries an image
    (wal_consistency_checking = heap), pglz-compressed (the 7-byte image header
    of a compressed image with a hole), after a checkpoint (applied images too)."""
    c = make_cluster(wal_scratch / "imaged", wal_consistency_checking="heap",
                     wal_compression="pglz")
    try:
        _pgbench(c, "-i", "-s", "1", "-q")
        c.sql("CHECKPOINT")
        start = _insert_lsn(c)
        _pgbench(c, "-c", "2", "-j", "2", "-t", "200", "-n")
        end = _insert_lsn(c)
    finally:
        c.stop()
    yield WalRun(c, start, end)


@pytest.mark.pg
def test_records_with_images_on_other_blocks_store_what_one_by_one_stores(
        imaged_wal: WalRun, tmp_path: Path, reader_mode: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch path cuts other blocks' images (`batched._cuts`) as
    `wal.decoder.trimmed_for_block` does, for a heap UPDATE's old page too (the
    new page's image and tuple both cut), compressed images with holes
    included."""
    cuts = batched._cuts
    seen = {"rows": 0, "old": 0}

    def counted(batch: Any, rec: Any, block: Any, old: Any, rows: Any) -> Any:
        seen["rows"] += len(rows)
        seen["old"] += int(old[rows].sum())
        return cuts(batch, rec, block, old, rows)

    monkeypatch.setattr(batched, "_cuts", counted)
    a = ingest_with(tmp_path / "a", imaged_wal.start, _record_path(imaged_wal))
    b = ingest_with(tmp_path / "b", imaged_wal.start, _batch_path(imaged_wal, 128 << 10))
    assert seen["rows"] > 200 and seen["old"] > 10, seen
    assert_same(a, b)
