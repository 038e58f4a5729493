"""The small array helpers of ingest.batched against numpy's own forms."""

from __future__ import annotations

import numpy as np
import pytest

from strata.ingest.batched import changes, member

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("seed", range(8))
def test_member_equals_isin_for_a_sorted_set(seed: int) -> None:
    rnd = np.random.default_rng(seed)
    x = rnd.integers(0, 60, int(rnd.integers(0, 400)))
    s = np.sort(rnd.integers(0, 60, int(rnd.integers(0, 30))))  # repeats allowed
    assert np.array_equal(member(x, s), np.isin(x, s))
    assert np.array_equal(member(x.astype(np.uint32), s.astype(np.uint32)), np.isin(x, s))


@pytest.mark.parametrize("seed", range(8))
def test_changes_marks_the_first_row_and_every_row_unlike_the_one_before(seed: int) -> None:
    rnd = np.random.default_rng(seed)
    n = int(rnd.integers(1, 300))
    a, b = rnd.integers(0, 3, n), rnd.integers(0, 2, n)
    want = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])]
    assert np.array_equal(changes(a, b), want)
    assert np.array_equal(changes(a), np.r_[True, a[1:] != a[:-1]])
    assert len(changes(a[:0])) == 0
