from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import CorruptionError, LsnOutOfRangeError
from strata.lsn import Lsn
from strata.timemap.timemap import ENTRY_SIZE, EndKind, TimeMap, TxEnd


def _e(start: int, ts: int, xid: int = 1, kind: EndKind = EndKind.COMMIT) -> TxEnd:
    return TxEnd(Lsn(start), Lsn(start + 30), ts, xid, kind)


def _resolve(tm: TimeMap, ts: int) -> Lsn:
    return tm.resolve_time(ts, history_start=Lsn(0), history_start_time=None).lsn


def test_resolve_lands_at_the_end_of_the_last_commit_before_the_first_later_one() -> None:
    tm = TimeMap(None)
    # timestamps not monotonic in WAL order (as PostgreSQL allows); entries end at start + 30
    for start, ts in [(100, 10), (200, 20), (300, 35), (400, 30), (500, 40)]:
        tm.append(_e(start, ts))
    assert _resolve(tm, 5) == Lsn(0)  # before every commit: where history starts
    assert _resolve(tm, 10) == Lsn(130)  # inclusive: the commit at ts=10 is in, up to its end
    assert _resolve(tm, 31) == Lsn(230)  # 35 > 31 stops before 300 although 400 has ts 30
    assert _resolve(tm, 35) == Lsn(430)
    point = tm.resolve_time(100, history_start=Lsn(0), history_start_time=None)
    assert point.lsn == Lsn(530) and point.next_commit is None  # no later commit known yet
    assert point.last_commit is not None and point.last_commit.start_lsn == Lsn(500)


def test_the_same_time_resolves_to_the_same_lsn_as_more_commits_arrive() -> None:
    tm = TimeMap(None)
    tm.append(_e(100, 10))
    tm.append(_e(200, 20))
    first = tm.resolve_time(15, history_start=Lsn(0), history_start_time=None)
    for start, ts in [(300, 30), (400, 12), (500, 50)]:  # 400: a straggler, later in WAL
        tm.append(_e(start, ts))
        again = tm.resolve_time(15, history_start=Lsn(0), history_start_time=None)
        assert again.lsn == first.lsn == Lsn(130)


def test_resolve_names_included_commit() -> None:
    tm = TimeMap(None)
    tm.append(_e(100, 10, xid=7))
    tm.append(_e(200, 20, xid=8))
    p = tm.resolve_time(15, history_start=Lsn(0), history_start_time=None)
    assert p.lsn == Lsn(130)
    assert p.last_commit is not None and p.last_commit.xid == 7
    assert p.next_commit is not None and p.next_commit.xid == 8


def test_time_before_history_is_refused() -> None:
    tm = TimeMap(None)
    tm.append(_e(100, 10))
    with pytest.raises(LsnOutOfRangeError, match="before history starts"):
        tm.resolve_time(3, history_start=Lsn(50), history_start_time=5)


def test_append_ignores_duplicates_and_keeps_order(tmp_path: Path) -> None:
    tm = TimeMap.open(tmp_path)
    tm.append(_e(100, 10))
    tm.append(_e(200, 20))
    tm.append(_e(200, 20))  # re-ingested
    tm.append(_e(150, 15))  # below the last: a duplicate from a re-read
    assert [int(e.start_lsn) for e in tm.entries()] == [100, 200]
    tm.close()


def test_reopen_drops_entries_above_durable_lsn(tmp_path: Path) -> None:
    tm = TimeMap.open(tmp_path)
    for s in (100, 200, 300):
        tm.append(_e(s, s))
    tm.sync()
    tm.close()
    tm2 = TimeMap.open(tmp_path, durable_lsn=Lsn(230))
    assert [int(e.start_lsn) for e in tm2.entries()] == [100, 200]
    tm2.append(_e(300, 300))
    tm2.close()
    tm3 = TimeMap.open(tmp_path)
    assert [int(e.start_lsn) for e in tm3.entries()] == [100, 200, 300]
    tm3.close()


def test_torn_tail_is_cut(tmp_path: Path) -> None:
    tm = TimeMap.open(tmp_path)
    for s in (100, 200, 300):
        tm.append(_e(s, s))
    tm.close()
    path = tmp_path / "timemap.dat"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # corrupt the last entry's CRC
    path.write_bytes(bytes(data) + b"\x01\x02")  # and a partial entry after it
    tm2 = TimeMap.open(tmp_path)
    assert [int(e.start_lsn) for e in tm2.entries()] == [100, 200]
    tm2.close()
    assert path.stat().st_size == 16 + 2 * ENTRY_SIZE


def test_bad_magic_is_corruption(tmp_path: Path) -> None:
    (tmp_path / "timemap.dat").write_bytes(b"NOTATMAP" + b"\x00" * 40)
    with pytest.raises(CorruptionError, match="bad magic"):
        TimeMap.open(tmp_path)


def test_readonly_open_writes_nothing(tmp_path: Path) -> None:
    tm = TimeMap.open(tmp_path)
    tm.append(_e(100, 10))
    tm.sync()
    path = tmp_path / "timemap.dat"
    with path.open("ab") as f:
        f.write(b"\x07" * 5)  # a writer in the middle of an append
    before = path.read_bytes()
    ro = TimeMap.open(tmp_path, readonly=True)
    assert [int(e.start_lsn) for e in ro.entries()] == [100]
    ro.close()
    assert path.read_bytes() == before
    tm.close()


def test_a_read_only_map_follows_the_writer_with_refresh(tmp_path: Path) -> None:
    writer = TimeMap.open(tmp_path)
    writer.append(_e(100, 10))
    writer.sync()
    reader = TimeMap.open(tmp_path, readonly=True)
    assert [e.start_lsn for e in reader.entries()] == [Lsn(100)]
    writer.append(_e(200, 20))
    writer.append(_e(300, 30))
    writer.sync()
    assert reader.refresh() == 2
    assert reader.refresh() == 0
    assert reader.resolve_time(25, history_start=Lsn(0), history_start_time=None).lsn == Lsn(230)
    # the writer restarts below 300 (its store was durable only to 250): the file is cut,
    # the same WAL is ingested again and appended again; the reader ends up with it all
    writer.close()
    writer = TimeMap.open(tmp_path, durable_lsn=Lsn(250))
    assert reader.refresh() == 0  # nothing new yet (the cut entry is the same one)
    writer.append(_e(300, 30))
    writer.append(_e(400, 40))
    writer.sync()
    reader.refresh()
    assert [e.start_lsn for e in reader.entries()] == [Lsn(100), Lsn(200), Lsn(300), Lsn(400)]
    writer.close()


def test_append_many_writes_what_appending_one_by_one_writes(tmp_path: Path) -> None:
    """Same file bytes, entries and searches; duplicates at or below the last start
    are dropped by both; entries out of order are refused."""
    import random

    import numpy as np

    rng = random.Random(7)
    entries = []
    start = 100
    for _ in range(3000):
        start += rng.randint(1, 500)
        entries.append(TxEnd(Lsn(start), Lsn(start + rng.randint(30, 90)),
                             rng.randint(0, 10**6), rng.randint(3, 2**32 - 1),
                             rng.choice(list(EndKind)), rng.choice([0, 1])))
    one = TimeMap.open(tmp_path / "one")
    many = TimeMap.open(tmp_path / "many")
    for e in entries:
        one.append(e)
    for lo, hi in [(0, 1), (1, 700), (500, 2000), (2000, 2001), (1990, 3000)]:  # overlaps
        part = entries[lo:hi]
        many.append_many(np.array([e.start_lsn for e in part], dtype=np.uint64),
                         np.array([e.end_lsn for e in part], dtype=np.uint64),
                         np.array([e.timestamp for e in part], dtype=np.int64),
                         np.array([e.xid for e in part], dtype=np.uint32),
                         np.array([e.kind for e in part], dtype=np.uint8),
                         np.array([e.flags for e in part], dtype=np.uint8))
    one.sync()
    many.sync()
    assert (tmp_path / "one" / "timemap.dat").read_bytes() == \
        (tmp_path / "many" / "timemap.dat").read_bytes()
    assert list(many.entries()) == entries and len(many) == len(entries)
    for ts in [rng.randint(-10, 10**6 + 10) for _ in range(200)]:
        assert many.resolve_time(ts, history_start=Lsn(0), history_start_time=None) == \
            one.resolve_time(ts, history_start=Lsn(0), history_start_time=None)
    reopened = TimeMap.open(tmp_path / "many", readonly=True)
    assert list(reopened.entries()) == entries
    with pytest.raises(ValueError, match="ascend"):
        many.append_many(np.array([10**9, 10**9 - 1], dtype=np.uint64),
                         np.array([10**9, 10**9], dtype=np.uint64),
                         np.zeros(2, dtype=np.int64), np.zeros(2, dtype=np.uint32), 0)
    one.close()
    many.close()


def test_the_last_commit_of_an_xid_and_the_last_end_before_an_lsn() -> None:
    tm = TimeMap(None)
    tm.append(_e(100, 10, xid=7))
    tm.append(_e(200, 20, xid=8, kind=EndKind.ABORT))
    tm.append(_e(300, 30, xid=7))  # xids wrap: the newest commit of 7 is the one
    tm.append(_e(400, 40, xid=9, kind=EndKind.COMMIT_PREPARED))
    assert tm.last_commit_of_xid(7) == _e(300, 30, xid=7)
    assert tm.last_commit_of_xid(8) is None  # aborted
    assert tm.last_commit_of_xid(9) == _e(400, 40, xid=9, kind=EndKind.COMMIT_PREPARED)
    assert tm.last_at_or_before(Lsn(329)) == _e(200, 20, xid=8, kind=EndKind.ABORT)
    assert tm.last_at_or_before(Lsn(330)) == _e(300, 30, xid=7)
    assert tm.last_at_or_before(Lsn(129)) is None
    assert tm.first() == _e(100, 10, xid=7) and len(tm) == 4


@pytest.mark.parametrize("block", [5, 64])
def test_searches_across_blocks_equal_a_scan_of_every_entry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """With small blocks (most sealed, some kept until a sync, others read back
    from the file), the writer, a reader following it and a reopened map answer
    every search as a scan of the whole list does."""
    import random

    import numpy as np

    from strata.timemap import timemap as tm_mod

    monkeypatch.setattr(tm_mod, "BLOCK_ENTRIES", block)
    monkeypatch.setattr(tm_mod, "_CACHED_BLOCKS", 2)
    rng = random.Random(block)
    ref: list[TxEnd] = []
    writer = TimeMap.open(tmp_path)
    reader = TimeMap.open(tmp_path, readonly=True)
    start = 100

    def check(m: TimeMap, upto: int) -> None:
        got = ref[:upto]
        assert len(m) == len(got) and list(m.entries()) == got
        assert m.first() == (got[0] if got else None) and m.last() == (got[-1] if got else None)
        for _ in range(30):
            ts = rng.randint(-5, 10**6 + 5)
            running, i = -(1 << 63), 0
            while i < len(got) and max(running, got[i].timestamp) <= ts:
                running = max(running, got[i].timestamp)
                i += 1
            r = m.resolve_time(ts, history_start=Lsn(0), history_start_time=None)
            assert r.last_commit == (got[i - 1] if i else None)
            assert r.next_commit == (got[i] if i < len(got) else None)
            lsn = rng.randint(0, start + 100)
            before = [e for e in got if e.end_lsn <= lsn]
            assert m.last_at_or_before(Lsn(lsn)) == (before[-1] if before else None)
            xid = rng.randint(1, 40)
            commits = [e for e in got if e.xid == xid
                       and e.kind in (EndKind.COMMIT, EndKind.COMMIT_PREPARED)]
            assert m.last_commit_of_xid(xid) == (commits[-1] if commits else None)

    for _ in range(40):
        part = []
        for _ in range(rng.choice([1, 3, block, 2 * block + 1])):
            start += rng.randint(1, 90)
            part.append(TxEnd(Lsn(start), Lsn(start + rng.randint(20, 200)),
                              rng.randint(0, 10**6), rng.randint(1, 40),
                              rng.choice(list(EndKind)), 0))
        if rng.random() < 0.5:
            for e in part:
                writer.append(e)
        else:
            writer.append_many(*(np.array(c) for c in zip(*[(e.start_lsn, e.end_lsn, e.timestamp,
                                                                e.xid, e.kind, e.flags)
                                                               for e in part], strict=True)))
        ref += part
        if rng.random() < 0.4:
            writer.sync()
            reader.refresh()
            check(reader, len(ref))
        check(writer, len(ref))
    assert len(ref) > 10 * block
    writer.close()
    reopened = TimeMap.open(tmp_path, readonly=True)
    check(reopened, len(ref))


@pytest.mark.parametrize("block", [4, 32])
def test_trimming_keeps_every_search_at_or_after_the_lsn_trimmed_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """Retention trims whole blocks (FORMAT.md, "Trimming"): afterwards the writer,
    a reader that refreshes, a reader opened before and a reopened map answer every
    search at or after the LSN (and its entry's time) exactly as the untrimmed map,
    older searches raise or find nothing, and the file gives the space back."""
    import os
    import random

    from strata.timemap import timemap as tm_mod

    monkeypatch.setattr(tm_mod, "BLOCK_ENTRIES", block)
    rng = random.Random(block)
    ref_dir, dir_ = tmp_path / "ref", tmp_path / "trimmed"
    full, writer = TimeMap.open(ref_dir), TimeMap.open(dir_)
    early = TimeMap.open(dir_, readonly=True)  # opened before any trim, refreshed after
    got: list[TxEnd] = []
    start, ts = 100, 0
    for _ in range(max(20 * block, 600)):  # trims of more than a few file-system pages
        start += rng.randint(1, 90)
        ts += rng.randint(-30, 100)  # not monotonic in WAL order
        e = TxEnd(Lsn(start), Lsn(start + rng.randint(20, 200)), ts, rng.randint(1, 40),
                  rng.choice(list(EndKind)), 0)
        got.append(e)
        full.append(e)
        writer.append(e)
    full.sync()
    writer.sync()
    early.refresh()
    allocated = os.stat(dir_ / "timemap.dat").st_blocks
    heads = []
    for cut in sorted(rng.sample(range(len(got) // 4, len(got) * 3 // 4), 3)):
        lsn = got[cut].end_lsn
        heads.append(writer.trim_before(lsn))
        anchor = full.last_at_or_before(lsn)
        assert anchor is not None
        later = TimeMap.open(dir_, readonly=True)
        early.refresh()
        for m in (writer, later, early):
            assert m.last_at_or_before(lsn) == anchor
            held = list(m.entries())
            assert held == got[len(got) - len(held):] and len(m) == len(held)
            assert held[0] == m.first() and got.index(held[0]) == heads[-1] * block
            assert got.index(anchor) >= heads[-1] * block
            for probe in rng.sample(range(len(got)), 40):
                at = got[probe].end_lsn + rng.randint(-3, 3)
                if at >= lsn:
                    assert m.last_at_or_before(Lsn(at)) == full.last_at_or_before(Lsn(at))
                t = got[probe].timestamp + rng.randint(-3, 3)
                if t >= anchor.timestamp:
                    assert m.resolve_time(t, history_start=Lsn(0), history_start_time=None) \
                        == full.resolve_time(t, history_start=Lsn(0), history_start_time=None)
                xid = got[probe].xid
                commit = m.last_commit_of_xid(xid)
                assert commit == full.last_commit_of_xid(xid) or commit is None or \
                    commit.start_lsn >= held[0].start_lsn
        if heads[-1]:
            with pytest.raises(LsnOutOfRangeError, match="removed by retention"):
                writer.resolve_time(-(1 << 40), history_start=Lsn(0), history_start_time=None)
            assert writer.last_at_or_before(Lsn(got[0].end_lsn)) is None
        later.close()
    assert heads[-1] > 0 and heads == sorted(heads)
    assert os.stat(dir_ / "timemap.dat").st_blocks < allocated  # the holes were punched
    with (dir_ / "timemap.dat").open("rb") as f:
        assert f.read(16)[8:] == (2).to_bytes(4, "little") + heads[-1].to_bytes(4, "little")
    writer.close()
    reopened = TimeMap.open(dir_)  # the writer's open: starts at the head
    assert list(reopened.entries()) == got[heads[-1] * block:]
    reopened.append(TxEnd(Lsn(start + 1000), Lsn(start + 1100), ts, 1, EndKind.COMMIT, 0))
    reopened.sync()
    assert len(TimeMap.open(dir_, readonly=True)) == len(got) - heads[-1] * block + 1
    reopened.close()
    full.close()
    early.close()


def test_a_version_1_file_is_read_and_trimming_makes_it_version_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from strata.timemap import timemap as tm_mod

    monkeypatch.setattr(tm_mod, "BLOCK_ENTRIES", 4)
    entries = [_e(100 * n, 10 * n, xid=n) for n in range(1, 30)]
    (tmp_path / "timemap.dat").write_bytes(
        b"STRTMAP\x00" + (1).to_bytes(4, "little") + bytes(4)
        + b"".join(e.encode() for e in entries))
    tm = TimeMap.open(tmp_path)
    assert list(tm.entries()) == entries
    assert tm.trim_before(entries[13].end_lsn) == 3  # entry 13 is in block 3 (of 4 entries)
    tm.close()
    data = (tmp_path / "timemap.dat").read_bytes()
    assert data[8:16] == (2).to_bytes(4, "little") + (3).to_bytes(4, "little")
    assert list(TimeMap.open(tmp_path, readonly=True).entries()) == entries[12:]
    (tmp_path / "timemap.dat").write_bytes(data[:8] + (1).to_bytes(4, "little") + data[12:])
    with pytest.raises(CorruptionError, match="version 1"):  # version 1 has no head
        TimeMap.open(tmp_path, readonly=True)


def test_a_reader_that_missed_a_trim_gets_an_error_not_the_punched_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only map opened before the writer trimmed (and punched) blocks it
    has not cached: reading one raises "removed by retention" and the map takes
    the new head; a block damaged in the file raises CorruptionError."""
    from strata.timemap import timemap as tm_mod

    monkeypatch.setattr(tm_mod, "BLOCK_ENTRIES", 4)
    monkeypatch.setattr(tm_mod, "_CACHED_BLOCKS", 1)
    entries = [_e(100 * n, 10 * n, xid=n) for n in range(1, 601)]
    writer = TimeMap.open(tmp_path)
    for e in entries:
        writer.append(e)
    writer.sync()
    reader = TimeMap.open(tmp_path, readonly=True)
    assert reader.last_at_or_before(entries[10].end_lsn) == entries[10]
    assert writer.trim_before(entries[300].end_lsn) == 75  # blocks of 4 entries
    with pytest.raises(LsnOutOfRangeError, match="removed by retention"):
        reader.last_at_or_before(entries[20].end_lsn)  # block 5: a hole now
    assert reader.first() == entries[300] and len(reader) == 300
    assert reader.last_at_or_before(entries[400].end_lsn) == entries[400]
    raw = bytearray((tmp_path / "timemap.dat").read_bytes())
    raw[16 + 120 * 4 * ENTRY_SIZE + 3] ^= 0xFF  # block 120: held, not read yet
    (tmp_path / "timemap.dat").write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match="fails its CRCs"):
        reader.last_at_or_before(entries[481].end_lsn)
    writer.close()
    reader.close()
