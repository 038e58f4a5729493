"""`storage.gather`: the compiled gather writes what the pure-Python reference
writes, with any number of sources, and both refuse a piece outside its source."""

from __future__ import annotations

import random

import numpy as np
import pytest

from strata.storage import gather as gather_mod
from strata.storage.gather import gather, gather_python


@pytest.mark.parametrize("nsrc", [1, 2, 9, 300])
def test_gather_compiled_and_python_agree(nsrc: int) -> None:
    assert gather_mod.COMPILED, "the compiled gather is not built"
    rnd = random.Random(nsrc)
    srcs = tuple(bytes(rnd.randrange(256) for _ in range(rnd.randrange(6, 400)))
                 for _ in range(nsrc))
    n = 2000
    src = np.array([rnd.randrange(nsrc) for _ in range(n)], dtype=np.uint32)
    starts = np.array([rnd.randrange(len(srcs[s]) - 5) for s in src], dtype=np.int64)
    lens = np.array([rnd.randrange(6) for _ in range(n)], dtype=np.int64)
    want = b"".join(srcs[s][a:a + k] for s, a, k in zip(src, starts, lens, strict=True))
    assert gather(srcs, src, starts, lens) == gather_python(srcs, src, starts, lens) == want
    assert gather(srcs, src.astype(np.uint8) if nsrc < 256 else src, starts, lens) == want
    for bad_starts, bad_lens in ((starts, lens + 400), (starts - 400, lens)):
        for fn in (gather, gather_python):
            with pytest.raises(ValueError, match="out of its source"):
                fn(srcs, src, bad_starts, bad_lens)
