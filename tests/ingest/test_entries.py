"""`EntryColumns.insert` and `.take` (ingest's merge of its per-record puts into a
run's block entries) against lists of entries, with the compiled gather and the
pure-Python one."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from strata.ingest.entries import KEY_DTYPE, EntryColumns
from strata.storage import gather as gather_mod


def _columns(rnd: random.Random, n: int) -> EntryColumns:
    values = [os.urandom(rnd.choice([0, 1, 7, 60, 300])) for _ in range(n)]
    return EntryColumns.of([os.urandom(18) for _ in range(n)],
                           sorted(rnd.randrange(1 << 40) for _ in range(n)),
                           [rnd.randrange(5) for _ in range(n)], values)


@pytest.mark.parametrize("compiled", [True, False])
def test_insert_and_take_place_every_entry_where_the_lists_would(
        compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not compiled:
        monkeypatch.setattr(gather_mod, "_gather", None)
    else:
        assert gather_mod.COMPILED, "the compiled gather is not built"
    rnd = random.Random(3)
    for n, m in [(0, 0), (0, 4), (5, 0), (1, 1), (30, 12), (400, 130)]:
        a, b = _columns(rnd, n), _columns(rnd, m)
        at = sorted(rnd.randrange(n + 1) for _ in range(m))
        expect, ea, eb = [], a.entries(), b.entries()
        j = 0
        for i in range(n + 1):
            while j < m and at[j] == i:  # other's entry k goes before entry at[k]
                expect.append(eb[j])
                j += 1
            if i < n:
                expect.append(ea[i])
        got = a.insert(np.array(at, dtype=np.int64), b)
        assert got.entries() == expect
        assert got.keys.dtype == KEY_DTYPE and len(got.offsets) == n + m + 1
        order = list(range(n))
        rnd.shuffle(order)
        assert a.take(np.array(order, dtype=np.int64)).entries() == [ea[i] for i in order]
