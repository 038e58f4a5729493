"""changed_keys: keys with entries in (after, upto], through memtables, L0 and L1
delta layers, image layers (never read as changes) and chain cuts, against a
plain record of every put."""

from __future__ import annotations

import random

from strata.key import Key
from strata.pagestore import PageStore
from strata.storage.changes import changed_keys
from strata.storage.values import PageImage, WalRecord
from tests.storage.conftest import rk


def _model(puts: list[tuple[Key, int]], start: Key, end: Key, after: int,
           upto: int) -> list[tuple[bytes, list[int]]]:
    out: dict[bytes, set[int]] = {}
    for k, lsn in puts:
        if start <= k < end and after < lsn <= upto:
            out.setdefault(k.to_bytes(), set()).add(lsn)
    return [(k, sorted(v)) for k, v in sorted(out.items())]


def _changed(ps: PageStore, start: Key, end: Key, after: int, upto: int
             ) -> list[tuple[bytes, list[int]]]:
    return list(changed_keys(ps.store.view(), start.to_bytes(), end.to_bytes(), after, upto))


def test_changed_keys_match_every_put_at_every_stage(open_store: PageStore) -> None:
    ps = open_store
    rnd = random.Random(13)
    puts: list[tuple[Key, int]] = []
    lsn = 100
    for step in range(6):
        for _ in range(40):
            lsn += rnd.randint(1, 20)
            k = rk(rnd.randrange(12), rel=16384 + rnd.randrange(2))
            v = PageImage(bytes([step]) * 8) if rnd.random() < 0.2 else WalRecord(b"r%d" % lsn)
            ps.put(k, lsn, v)
            puts.append((k, lsn))
        ps.advance(lsn)
        if step % 2 == 1:
            ps.flush()
        if step == 3:
            ps.compact()
            ps.create_image_layers(lsn)  # images are copies, never changes
        probes = [(0, lsn), (150, 400), (lsn - 50, lsn), (300, 301), (lsn, lsn + 10)]
        for after, upto in probes:
            for start, end in ((rk(0), rk(0, 16385)), (rk(3), rk(7)), (rk(0), rk(0, 16386))):
                assert _changed(ps, start, end, after, upto) == \
                    _model(puts, start, end, after, upto), (step, after, upto)


def test_an_empty_or_inverted_range_has_no_changes(open_store: PageStore) -> None:
    open_store.put(rk(1), 10, WalRecord(b"x"))
    open_store.advance(10)
    assert _changed(open_store, rk(0), rk(9), 10, 10) == []
    assert _changed(open_store, rk(0), rk(9), 20, 5) == []
    assert _changed(open_store, rk(0), rk(9), 9, 10) == [(rk(1).to_bytes(), [10])]
