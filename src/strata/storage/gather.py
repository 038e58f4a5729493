"""Many byte ranges of many buffers, copied back to back into one bytes object:
how the columnar data path assembles values (layer blocks from merged batches,
ingest's entry columns) without a Python step per value.

Compiled (`strata.storage._gather`, built by the install when a C compiler is
there); `gather_python` is the reference, and both give the same bytes
(tests/storage/test_gather.py). Pure: owns nothing.
"""

from __future__ import annotations

import logging

import numpy as np

try:
    from strata.storage import _gather  # type: ignore[attr-defined]
except ImportError:  # no compiler at install time: the reference runs
    _gather = None
    logging.getLogger(__name__).warning(
        "the compiled gather (strata.storage._gather) is not built: gathering values "
        "in pure Python (slower)")

COMPILED = _gather is not None


def gather(sources: tuple[bytes, ...], src: np.ndarray, starts: np.ndarray,
           lens: np.ndarray) -> bytes:
    """Piece k is ``sources[src[k]][starts[k]:starts[k] + lens[k]]``: the pieces
    back to back (any number of sources; src, starts and lens are integer arrays
    of one element per piece).

    Raises: ValueError when a piece lies outside its source."""
    if _gather is not None:
        return _gather.gather(sources, np.ascontiguousarray(src, dtype=np.uint32),  # type: ignore[no-any-return]
                              np.ascontiguousarray(starts, dtype=np.int64),
                              np.ascontiguousarray(lens, dtype=np.int64))
    return gather_python(sources, src, starts, lens)


def gather_python(sources: tuple[bytes, ...], src: np.ndarray, starts: np.ndarray,
                  lens: np.ndarray) -> bytes:
    """`gather` in pure Python (the reference)."""
    views = [memoryview(s) for s in sources]
    out: list[memoryview] = []
    for i, a, n in zip(src.tolist(), starts.tolist(), lens.tolist(), strict=True):
        if a < 0 or n < 0 or a + n > len(views[i]):
            raise ValueError(f"gather: piece {len(out)} out of its source")
        out.append(views[i][a:a + n])
    return b"".join(out)
