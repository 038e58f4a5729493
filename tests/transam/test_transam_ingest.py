"""TransamIngest: which puts each record yields, and that applying them gives
PostgreSQL's pages (crafted records; the pg-tier proof uses real WAL)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from strata.errors import CorruptionError
from strata.ingest.cluster_state import cluster_state_from_pg_controldata
from strata.ingest.transam import ZERO_PAGE_VALUE, TransamIngest, import_baseline
from strata.key import Key, KeyKind, SlruKind
from strata.keyspace.cluster import ClusterState
from strata.keyspace.slru import TRUNCATED_VALUE, image_value
from strata.lsn import Lsn
from strata.pg.constants import BLCKSZ
from strata.pg.slru import (
    MULTIXACT_MEMBERS_PER_PAGE,
    XidStatus,
    clog_get_status,
    clog_page,
    get_multixact_member,
    get_multixact_offset,
)
from strata.reconstruct.slru import apply_value
from strata.wal.record import DecodedRecord
from strata.wal.rmgr.relmap import RelMapFile

DATA = Path(__file__).resolve().parent.parent / "data" / "transam"
_lsn = [0x10000]


def rec(rmid: int, info: int, data: bytes = b"", xid: int = 0) -> DecodedRecord:
    _lsn[0] += 0x40
    return DecodedRecord(lsn=Lsn(_lsn[0]), end_lsn=Lsn(_lsn[0] + 0x38), xl_tot_len=0, xl_xid=xid,
                         xl_prev=Lsn(0), xl_info=info, xl_rmid=rmid, xl_crc=0, blocks=(),
                         main_data=data)


def commit(xid: int, subxacts: list[int], *, abort: bool = False) -> DecodedRecord:
    data = struct.pack("<qI", 0, 0x02 if subxacts else 0)
    if subxacts:
        data += struct.pack(f"<i{len(subxacts)}I", len(subxacts), *subxacts)
    return rec(1, (0x20 if abort else 0x00) | (0x80 if subxacts else 0), data, xid=xid)


def apply(pages: dict[tuple[int, int], bytes], puts: list[tuple[Key, bytes]]) -> None:
    for key, value in puts:
        if key.kind == KeyKind.SLRU_PAGE:
            page = apply_value(pages.get((key.rel, key.blk)), value)
            if page is None:
                pages.pop((key.rel, key.blk), None)
            else:
                pages[(key.rel, key.blk)] = page


def test_commit_marks_xid_and_subxacts_committed_across_pages() -> None:
    ing = TransamIngest()
    puts = ing.puts(commit(32760, [32767, 32768, 32770]))
    assert [k for k, _ in puts] == [Key.slru_page(SlruKind.XACT, 0), Key.slru_page(SlruKind.XACT, 1)]
    pages: dict[tuple[int, int], bytes] = {}
    apply(pages, puts)
    for x in (32760, 32767, 32768, 32770):
        assert clog_get_status(pages[(0, clog_page(x))], x) == XidStatus.COMMITTED
    assert clog_get_status(pages[(0, 1)], 32769) == XidStatus.IN_PROGRESS


def test_abort_marks_aborted_and_prepare_touches_nothing() -> None:
    ing = TransamIngest()
    pages: dict[tuple[int, int], bytes] = {}
    apply(pages, ing.puts(commit(900, [901], abort=True)))
    assert clog_get_status(pages[(0, 0)], 900) == XidStatus.ABORTED
    assert clog_get_status(pages[(0, 0)], 901) == XidStatus.ABORTED
    prepare = struct.pack("<IIIIqIiiiiii?xHQq", 0x57F94534, 80 + 4, 950, 5, 0, 10, 0, 0, 0, 0, 0, 0,
                          False, 3, 0, 0) + b"g1\x00" + bytes(5)
    assert ing.puts(rec(1, 0x10, prepare, xid=950)) == []


def test_clog_zeropage_and_truncate_remove_whole_segments_only() -> None:
    ing = TransamIngest()
    for p in (0, 31, 32, 33, 64):
        ing.note_existing_page(SlruKind.XACT, p)
    assert ing.puts(rec(3, 0x00, struct.pack("<q", 65))) == [
        (Key.slru_page(SlruKind.XACT, 65), ZERO_PAGE_VALUE)]
    puts = ing.puts(rec(3, 0x10, struct.pack("<qII", 64, 2_000_000, 1)))
    assert puts == [(Key.slru_page(SlruKind.XACT, p), TRUNCATED_VALUE) for p in (0, 31, 32, 33)]
    assert ing.existing_pages(SlruKind.XACT) == {64, 65}


def test_multixact_create_writes_offsets_and_members() -> None:
    ing = TransamIngest(ClusterState(Lsn(0), 1000, 20000, 7, 20, 700, 1, 1, 1))
    data = struct.pack("<IIi", 7, 20, 2) + struct.pack("<IiIi", 1000, 1, 1001, 0)
    pages: dict[tuple[int, int], bytes] = {}
    puts = ing.puts(rec(6, 0x20, data, xid=1001))
    apply(pages, puts)
    off = pages[(SlruKind.MULTIXACT_OFFSETS, 0)]
    mem = pages[(SlruKind.MULTIXACT_MEMBERS, 0)]
    assert get_multixact_offset(off, 7) == 20 and get_multixact_offset(off, 8) == 22
    assert get_multixact_member(mem, 20) == (1000, 1)
    assert get_multixact_member(mem, 21) == (1001, 0)
    state = ClusterState.from_bytes(dict(puts)[Key.cluster(0)])
    assert (state.next_multi, state.next_multi_offset, state.next_xid) == (8, 22, 1002)


def test_18_6_order_zero_off_page_before_create_does_not_rezero() -> None:
    """18.6 logs ZERO_OFF_PAGE for the next page before CREATE_ID of the last
    multixact on a page; replay must not zero the page again."""
    ing = TransamIngest(ClusterState(Lsn(0), 1000, 20000, 2047, 20, 700, 1, 1, 1))
    assert ing.puts(rec(6, 0x00, struct.pack("<q", 1)))[0][1] == ZERO_PAGE_VALUE
    data = struct.pack("<IIi", 2047, 20, 1) + struct.pack("<Ii", 1000, 1)
    keys = [k for k, v in ing.puts(rec(6, 0x20, data)) if v != ZERO_PAGE_VALUE]
    assert Key.slru_page(SlruKind.MULTIXACT_OFFSETS, 1) in keys  # next multi's offset patch
    assert all(v != ZERO_PAGE_VALUE for _, v in ing.puts(rec(6, 0x20, data)))


def test_older_minor_create_preinitialises_next_page_and_skips_its_zero_record() -> None:
    ing = TransamIngest(ClusterState(Lsn(0), 1000, 20000, 2047, 20, 700, 1, 1, 1))
    data = struct.pack("<IIi", 2047, 20, 1) + struct.pack("<Ii", 1000, 1)
    puts = ing.puts(rec(6, 0x20, data))
    assert puts[0] == (Key.slru_page(SlruKind.MULTIXACT_OFFSETS, 1), ZERO_PAGE_VALUE)
    pages: dict[tuple[int, int], bytes] = {}
    apply(pages, puts)
    assert get_multixact_offset(pages[(SlruKind.MULTIXACT_OFFSETS, 1)], 2048) == 21
    # the ZERO_OFF_PAGE that follows must not wipe the next multi's offset
    assert ing.puts(rec(6, 0x00, struct.pack("<q", 1))) == []


def test_multixact_truncate_drops_member_and_offset_segments() -> None:
    ing = TransamIngest(ClusterState(Lsn(0), 1000, 20000, 200_000, 500_000, 700, 1, 1, 1))
    for p in (0, 1, 32, 97):
        ing.note_existing_page(SlruKind.MULTIXACT_OFFSETS, p)
    for p in (0, 32, 64):
        ing.note_existing_page(SlruKind.MULTIXACT_MEMBERS, p)
    per_seg = MULTIXACT_MEMBERS_PER_PAGE * 32
    data = struct.pack("<IIIII", 1, 1, 2048 * 64 + 5, 0, 2 * per_seg + 3)
    puts = ing.puts(rec(6, 0x30, data))
    gone = {(k.rel, k.blk) for k, v in puts if v == TRUNCATED_VALUE}
    assert gone == {(SlruKind.MULTIXACT_MEMBERS, 0), (SlruKind.MULTIXACT_MEMBERS, 32),
                    (SlruKind.MULTIXACT_OFFSETS, 0), (SlruKind.MULTIXACT_OFFSETS, 1),
                    (SlruKind.MULTIXACT_OFFSETS, 32)}


def _map(*pairs: tuple[int, int]) -> bytes:
    return RelMapFile(pairs).to_bytes()


def test_relmap_update_and_database_copy_and_drop() -> None:
    ing = TransamIngest()
    ing.note_relmap(1663, 1, _map((1259, 1259)))
    new = _map((1259, 16500))
    puts = ing.puts(rec(7, 0x00, struct.pack("<iii", 1, 1663, len(new)) + new))
    assert puts == [(Key.relmap(1663, 1), new)]
    puts = ing.puts(rec(4, 0x00, struct.pack("<IIII", 16400, 1663, 1, 1663)))
    assert puts == [(Key.relmap(1663, 16400), new)]  # the template's map as of now
    assert ing.puts(rec(4, 0x10, struct.pack("<II", 16401, 1663))) == []  # map comes as RelMap
    assert ing.puts(rec(4, 0x20, struct.pack("<Ii1I", 16400, 1, 1663))) == [
        (Key.relmap(1663, 16400), b"")]
    # a template directory without a map (another tablespace of it): nothing to copy
    assert ing.puts(rec(4, 0x00, struct.pack("<IIII", 16402, 16500, 1, 16500))) == []


def test_cluster_state_is_put_only_when_it_changes() -> None:
    ing = TransamIngest(ClusterState(Lsn(0), 1000, 20000, 1, 0, 700, 1, 1, 1))
    assert ing.puts(rec(10, 0x00, xid=500)) == []  # old xid: no change
    puts = ing.puts(rec(10, 0x00, xid=1000))
    assert [k for k, _ in puts] == [Key.cluster(0)]
    assert ClusterState.from_bytes(puts[0][1]).next_xid == 1001
    assert ing.puts(rec(10, 0x00, xid=1000)) == []


def test_import_baseline_reads_slru_pages_and_maps_of_every_tablespace(tmp_path: Path) -> None:
    d = tmp_path / "data"
    for sub in ("global", "base/5", "pg_xact", "pg_multixact/offsets", "pg_multixact/members",
                "pg_tblspc"):
        (d / sub).mkdir(parents=True)
    (d / "global" / "pg_filenode.map").write_bytes(_map((1262, 1262)))
    (d / "base" / "5" / "pg_filenode.map").write_bytes(_map((1259, 1259)))
    ts = tmp_path / "ts" / "PG_18_202506291" / "16401"
    ts.mkdir(parents=True)
    (ts / "pg_filenode.map").write_bytes(_map((1259, 16600)))
    (d / "pg_tblspc" / "16400").symlink_to(tmp_path / "ts")
    (d / "pg_xact" / "0000").write_bytes(bytes([1]) * BLCKSZ * 2)
    (d / "pg_multixact" / "offsets" / "0000").write_bytes(bytes(BLCKSZ))
    (d / "pg_multixact" / "members" / "0000").write_bytes(bytes(BLCKSZ))
    controldata = (DATA / "pg_controldata.txt").read_text()
    ing, puts = import_baseline(d, controldata)
    keys = dict(puts)
    assert keys[Key.slru_page(SlruKind.XACT, 1)] == image_value(bytes([1]) * BLCKSZ)
    assert Key.slru_page(SlruKind.MULTIXACT_MEMBERS, 0) in keys
    assert keys[Key.relmap(16400, 16401)] == _map((1259, 16600))
    assert {k for k in keys if k.kind == KeyKind.RELMAP} == {
        Key.relmap(1664, 0), Key.relmap(1663, 5), Key.relmap(16400, 16401)}
    assert ClusterState.from_bytes(keys[Key.cluster(0)]) == cluster_state_from_pg_controldata(controldata)
    assert ing.existing_pages(SlruKind.XACT) == {0, 1} and ing.relmap(16400, 16401) is not None
    (d / "base" / "5" / "pg_filenode.map").write_bytes(b"garbage")
    with pytest.raises(CorruptionError):
        import_baseline(d, controldata)
