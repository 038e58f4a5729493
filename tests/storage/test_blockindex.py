"""The block index (storage/blockindex.py) against the reference it replaced:
Python objects per block, `bisect` over the last keys and a walk over the first
keys. Keys with zero bytes at the end and bytes above 0x7f, bounds shorter and
longer than a key, and blocks whose key ranges touch (a key's entries straddle
blocks)."""

from __future__ import annotations

import bisect
import random

import pytest

from strata.key import KEY_SIZE
from strata.storage.blockindex import INDEX_ENTRY, INDEX_ENTRY_V3, NO_MAX_LSN, BlockIndex, BlockInfo

_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFF]


def _key(rnd: random.Random) -> bytes:
    return bytes(rnd.choice(_BYTES) for _ in range(KEY_SIZE))


def _index(rnd: random.Random, n: int) -> tuple[bytes, list[BlockInfo]]:
    keys = sorted(_key(rnd) for _ in range(2 * n))
    infos, off = [], 72
    for i in range(n):
        first, last = keys[2 * i], keys[2 * i + 1]
        if i and rnd.random() < 0.3:
            first = infos[-1].last_key  # the previous block's last key goes on here
        comp = rnd.randrange(1, 5000)
        lo, hi = sorted((rnd.getrandbits(12), rnd.getrandbits(12)))
        infos.append(BlockInfo(off, comp, comp * 3, rnd.randrange(1, 100), rnd.getrandbits(32),
                               first, rnd.getrandbits(40), max(first, last), rnd.getrandbits(40),
                               lo, hi))
        off += comp
    return b"".join(INDEX_ENTRY.pack(*b) for b in infos), infos


def _reference(infos: list[BlockInfo], start: bytes, end: bytes, *, inclusive: bool) -> range:
    last = [b.last_key for b in infos]
    i = j = bisect.bisect_left(last, start)
    while j < len(infos) and (infos[j].first_key <= end if inclusive
                              else infos[j].first_key < end):
        j += 1
    return range(i, j)


def test_searches_equal_bisect_over_python_bytes() -> None:
    rnd = random.Random(7)
    for _ in range(200):
        raw, infos = _index(rnd, rnd.randrange(0, 40))
        idx = BlockIndex(raw)
        assert len(idx) == len(infos) and list(idx) == infos
        assert [idx[i] for i in range(len(infos))] == infos
        for _ in range(30):
            a, b = sorted((_key(rnd), _key(rnd)))
            if rnd.random() < 0.2:  # bounds of other lengths
                a = a[:rnd.randrange(0, KEY_SIZE)]
                b = b + bytes([rnd.choice(_BYTES)]) * rnd.randrange(1, 3)
            assert idx.overlapping(a, b) == _reference(infos, a, b, inclusive=False), (a, b)
            k = rnd.choice(infos).first_key if infos and rnd.random() < 0.5 else _key(rnd)
            assert idx.holding(k) == _reference(infos, k, k, inclusive=True), k
        r = idx.overlapping(b"", b"\xff" * (KEY_SIZE + 1))
        assert r == range(len(infos))
        assert idx.comp_bytes(r) == sum(b.comp_len for b in infos)
        assert idx.total_entries() == sum(b.entries for b in infos)
        assert idx.misplaced(72, 72 + idx.comp_bytes(r)) is None


def test_lsn_bounds_keep_exactly_the_blocks_that_may_hold_wanted_lsns() -> None:
    """v4: `within_lsns` keeps a block iff some LSN in [min_lsn, max_lsn] lies in
    [lo, hi); a v3 index (no bounds) keeps every block, and reads back as v3 did.
    Half the ranges are a few blocks long (a point read's: tested without numpy)."""
    rnd = random.Random(11)
    for _ in range(100):
        raw, infos = _index(rnd, rnd.randrange(0, 40))
        idx = BlockIndex(raw)
        for _ in range(20):
            a = rnd.randrange(0, len(infos) + 1)
            z = rnd.randrange(a, len(infos) + 1) if rnd.random() < 0.5 else a + rnd.randrange(6)
            blocks = range(a, min(z, len(infos)))
            lo, hi = sorted((rnd.getrandbits(12), rnd.getrandbits(12)))
            if blocks and rnd.random() < 0.3:  # a block's own bounds, where < and <= differ
                lo, hi = sorted((infos[rnd.choice(blocks)].max_lsn,
                                 infos[rnd.choice(blocks)].min_lsn))
            if rnd.random() < 0.1:
                lo, hi = 0, 1 << 64  # the bounds a read with no LSN limits passes
            want = [i for i in blocks if infos[i].max_lsn >= lo and infos[i].min_lsn < hi]
            assert list(idx.within_lsns(blocks, lo, hi)) == want
    old = [b._replace(min_lsn=0, max_lsn=NO_MAX_LSN) for b in infos]
    v3 = BlockIndex(b"".join(INDEX_ENTRY_V3.pack(*b[:9]) for b in old), 3)
    assert list(v3) == old and len(v3) == len(infos)
    assert v3.within_lsns(range(len(infos)), 5, 6) == range(len(infos))


def test_misplaced_names_the_first_block_out_of_place() -> None:
    raw, infos = _index(random.Random(3), 6)
    end = infos[-1].offset + infos[-1].comp_len
    moved = [b._replace(offset=b.offset + 1) if i == 3 else b for i, b in enumerate(infos)]
    idx = BlockIndex(b"".join(INDEX_ENTRY.pack(*b) for b in moved))
    assert idx.misplaced(72, end) == 3
    assert BlockIndex(raw).misplaced(72, end - 1) == 5  # the last one runs past the end
    assert BlockIndex(raw).misplaced(73, end) == 0


@pytest.mark.parametrize("seed", range(20))
def test_window_starts_cut_where_the_raw_bytes_before_a_block_pass_a_multiple(
        seed: int) -> None:
    rnd = random.Random(seed)
    raw, infos = _index(rnd, rnd.randrange(1, 60))
    window = rnd.choice([1, 3000, 20000, 1 << 30])
    want, before, seen = [], 0, 0
    for i, b in enumerate(infos):  # the reference: a loop over the blocks
        if i and before // window != seen:
            want.append(i)
        seen = before // window
        before += b.raw_len
    got = BlockIndex(raw).window_starts(window)
    assert got == want


def test_out_of_range_and_torn_indexes_are_refused() -> None:
    raw, _ = _index(random.Random(5), 3)
    idx = BlockIndex(raw)
    assert idx[-1] == idx[2]
    with pytest.raises(IndexError):
        idx[3]
    with pytest.raises(ValueError, match="whole records"):
        BlockIndex(raw[:-1])


@pytest.mark.parametrize("seed", range(40))
def test_key_run_bound_is_never_below_a_keys_entries_in_the_blocks(seed: int) -> None:
    """Sorted keys with repeats cut into blocks of random sizes (a key's entries
    straddle blocks, some blocks hold one key alone): over any range of blocks, the
    bound is at least every key's entries there, and exactly the most entries of the
    blocks any one key touches (what the index can know)."""
    rnd = random.Random(seed)
    pool = sorted({_key(rnd) for _ in range(rnd.randint(1, 8))})
    rows = sorted(rnd.choices(pool, k=rnd.randint(1, 300)))
    blocks: list[list[bytes]] = []
    i = 0
    while i < len(rows):
        n = rnd.choice([1, 2, 5, 40])
        blocks.append(rows[i:i + n])
        i += n
    raw = b"".join(INDEX_ENTRY.pack(0, 1, 1, len(b), 0, b[0], 0, b[-1], 0, 0, 0, 0, 0) for b in blocks)
    index = BlockIndex(raw)
    for _ in range(20):
        a = rnd.randint(0, len(blocks))
        z = rnd.randint(a, len(blocks))
        got = index.key_run_bound(range(a, z))
        here = [k for b in blocks[a:z] for k in b]
        assert got >= max((here.count(k) for k in set(here)), default=0)
        assert got == max((sum(len(b) for b in blocks[a:z] if k in b) for k in set(here)),
                          default=0)
