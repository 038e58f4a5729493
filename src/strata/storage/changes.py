"""Which keys changed in an LSN range: the layer map read for differences.

What it is: `changed_keys(view, start, end, after, upto)`: every key in
[start, end) with at least one stored entry whose LSN is in (after, upto],
with those LSNs, in key order. Read from the memtables and from the delta
layers whose LSN range overlaps the range; image layers are never read (an
image is a copy of a key's value at an LSN, not a change). An entry is a
change: every entry is stored at the LSN of the record that made it, also
when a flush replaced a delta by the page it produces.
Fed by: a `ReadView` (the writer's, or a reader's snapshot). Feeds: diff and
row history (`restore/`). Owns: nothing. Cost: the entries of [start, end)
in the overlapping delta layers and memtables, never the keys that did not
change elsewhere.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from strata.storage.layermap import ReadView
from strata.storage.values import Entry


def changed_keys(view: ReadView, start: bytes, end: bytes, after: int,
                 upto: int) -> Iterator[tuple[bytes, list[int]]]:
    """(key, ascending LSNs of its entries in (after, upto]) per changed key."""
    if upto <= after:
        return
    lo, hi = after + 1, upto + 1  # scans take [lo, hi)
    sources: list[Iterable[Entry]] = []
    for d in view.layer_map.deltas:
        n = d.name
        if n.lsn_start < hi and lo < n.lsn_end and n.key_start < end and start < n.key_end:
            sources.append(d.file.scan(start, end, lo, hi))
    sources += [fm.scan(start, end, lo, hi) for fm in view.frozen]
    sources.append(view.active.scan(start, end, lo, hi))
    cur: bytes | None = None
    lsns: list[int] = []
    for key, lsn in heapq.merge(*[((e.key, e.lsn) for e in s) for s in sources]):
        if key != cur:
            if cur is not None:
                yield cur, lsns
            cur, lsns = key, []
        if not lsns or lsns[-1] != lsn:  # one entry seen in two sources during a flush
            lsns.append(lsn)
    if cur is not None:
        yield cur, lsns
