"""The oracle harness and `strata redo-check` against a real server, plus
pg_checksum_page against pages a checksum-enabled server wrote."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from strata.cli.main import main as strata_main
from strata.reconstruct import redo as redo_pkg
from strata.reconstruct.check import check_wal_dir
from strata.reconstruct.redo import RM_HEAP_ID, page_ops
from strata.reconstruct.redo.heap import heap_redo
from strata.runtime.cluster import Cluster
from strata.wal.record import BlockRef, DecodedRecord

from .conftest import WalCapture, Workload, run_sql

pytestmark = pytest.mark.pg


@pytest.fixture(scope="module")
def small_capture(wcc_primary: Cluster) -> WalCapture:
    from .conftest import capture

    def body(c: Cluster) -> None:
        c.sql("CREATE DATABASE redo_check_cli")
        run_sql(c, """
            CREATE TABLE cli (a int PRIMARY KEY, b text);
            INSERT INTO cli SELECT g, 'row ' || g FROM generate_series(1, 400) g;
            UPDATE cli SET b = b || '!' WHERE a % 2 = 0;
            CREATE INDEX cli_hash ON cli USING hash (b);
            INSERT INTO cli SELECT g, 'more ' || g FROM generate_series(401, 450) g;
            SELECT * FROM cli WHERE a < 100 FOR SHARE;
        """, dbname="redo_check_cli")

    return capture(wcc_primary, body)


@pytest.fixture
def broken_heap_redo() -> Iterator[None]:
    """Heap redo that forgets to set the new tuple's xmin: the oracle must notice."""

    def broken(record: DecodedRecord, block: BlockRef, page: bytearray) -> bool | None:
        result = heap_redo(record, block, page)
        if record.info & 0x70 == 0 and block.fork == 0:  # INSERT
            off = page_ops.item_offset(page, page_ops.page_get_max_offset(page))
            page[off:off + 4] = b"\xde\xad\xbe\xef"
        return result

    redo_pkg.register(RM_HEAP_ID, broken)
    try:
        yield
    finally:
        redo_pkg.register(RM_HEAP_ID, heap_redo)


def test_oracle_reports_a_wrong_redo_with_offset_and_diff(
        small_capture: WalCapture, broken_heap_redo: None) -> None:
    rep = check_wal_dir(str(small_capture.wal_dir), small_capture.start, small_capture.end)
    assert rep.stats[("Heap", "INSERT")].mismatches > 0
    mm = rep.first_mismatch
    assert mm is not None and mm.rmgr == "Heap" and mm.record_type.startswith("INSERT")
    assert mm.offset > 0 and "de ad be ef" in mm.detail


def test_strict_heap_check_sees_infomask_bits_that_heap_mask_hides(
        small_capture: WalCapture, monkeypatch: pytest.MonkeyPatch) -> None:
    import strata.reconstruct.redo.heap as redo_heap

    orig = redo_heap.fix_infomask_from_infobits

    def drop_lock_only(page: bytearray, tup: int, infobits: int) -> None:
        orig(page, tup, infobits & ~0x02)  # forget XLHL_XMAX_LOCK_ONLY

    monkeypatch.setattr(redo_heap, "fix_infomask_from_infobits", drop_lock_only)
    args = (str(small_capture.wal_dir), small_capture.start, small_capture.end)
    assert check_wal_dir(*args).mismatches == 0  # PostgreSQL's heap_mask hides it
    strict = check_wal_dir(*args, strict_heap=True)
    assert strict.stats[("Heap", "LOCK")].mismatches > 0


def test_redo_check_cli_exit_status_follows_unsupported_policy(
        small_capture: WalCapture, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["redo-check", "--path", str(small_capture.wal_dir),
            "--start", str(small_capture.start), "--end", str(small_capture.end)]
    assert strata_main(args) == 0  # hash has redo
    assert "UNSUPPORTED:" not in capsys.readouterr().out
    # an rmgr without redo (as hash was before issue 12)
    redo_pkg._ensure_loaded()
    monkeypatch.delitem(redo_pkg._REGISTRY, redo_pkg.RM_HASH_ID)
    assert strata_main([*args, "--allow-unsupported", "Hash"]) == 0
    out = capsys.readouterr().out
    assert "Heap/INSERT" in out and "UNSUPPORTED: Hash/INSERT" in out and "(allowed)" in out
    assert strata_main([*args, "--allow-unsupported", ""]) == 1
    assert "NOT ALLOWED" in capsys.readouterr().out
    assert strata_main([*args, "--strict", "--chain", "--allow-unsupported", "Hash"]) == 0


def test_redo_check_cli_reads_a_local_server_by_dsn(
        small_capture: WalCapture, capsys: pytest.CaptureFixture[str]) -> None:
    c = small_capture.cluster
    rc = strata_main(["redo-check", "--source", c.dsn(), "--start", str(small_capture.start)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "MISMATCH" in out and "Heap/INSERT" in out


def test_pg_checksum_page_matches_pages_written_by_server(
        wcc_capture: Callable[[Workload], WalCapture]) -> None:
    paths: list[str] = []

    def body(c: Cluster) -> None:
        run_sql(c, "CREATE TABLE ck (a int, b text); "
                   "INSERT INTO ck SELECT g, md5(g::text) FROM generate_series(1, 3000) g;")
        paths.append(str(c.sql("SELECT pg_relation_filepath('ck')")[0][0]))

    cap = wcc_capture(body)  # ends with a CHECKPOINT: pages are on disk with checksums
    data = (cap.cluster.datadir / paths[0]).read_bytes()
    assert len(data) >= 8 * page_ops.BLCKSZ
    shifted = 0
    for blkno in range(len(data) // page_ops.BLCKSZ):
        page = data[blkno * page_ops.BLCKSZ:(blkno + 1) * page_ops.BLCKSZ]
        assert page_ops.get_checksum(page) == page_ops.pg_checksum_page(page, blkno), blkno
        shifted += page_ops.pg_checksum_page(page, blkno + 1) == page_ops.get_checksum(page)
    assert shifted == 0  # the block number is part of the checksum
