"""The layer store read from a restore-family command: which pages changed.

What it is: `StoreChanges`, the `restore.diff.ChangeSource` (and the page
reader of row history) over a read-only open of the home's layer store, and
`open_changes`, which makes one when the store can be read from another
process. A reader sees what the daemon has made durable; before it reads at a
point above that, it asks the writer to flush through the point (`flush`, the
ingest service's control request, given by the command) and waits for it.
Fed by: the home's layers (written by the daemon). Feeds: diff, history.
Owns: the translation of a relation to its key range (main fork).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from strata.errors import RestoreError, StrataError
from strata.key import Key, KeyRange
from strata.lsn import Lsn
from strata.pg.constants import ForkNumber

DURABLE_WAIT = 120.0  # seconds: a few of the daemon's flush intervals


Flush = Callable[[Lsn], object]  # ask the writer to make the store durable through an LSN


class StoreChanges:
    def __init__(self, reader: Any, flush: Flush | None = None,
                 timeout: float = DURABLE_WAIT) -> None:
        self.reader = reader
        self.flush = flush
        self.timeout = timeout

    def wait_durable(self, lsn: Lsn) -> None:
        """Make the reader's snapshot cover `lsn`: refresh, else ask the writer to
        flush through it, else wait for its periodic flush.

        Raises: RestoreError when `lsn` is not durable within the timeout."""
        if self.reader.durable_lsn >= lsn:
            return
        self.reader.refresh()
        if self.reader.durable_lsn < lsn and self.flush is not None:
            with contextlib.suppress(StrataError):  # no writer answers: wait, it may come
                self.flush(lsn)
            self.reader.refresh()
        deadline = time.monotonic() + self.timeout
        while self.reader.durable_lsn < lsn:
            if time.monotonic() > deadline:
                raise RestoreError(f"LSN {lsn} is not in the layer store yet (durable up to "
                                   f"{self.reader.durable_lsn}): is strata up running?")
            time.sleep(0.1)
            self.reader.refresh()

    def changed_pages(self, spc: int, db: int, filenode: int, after: Lsn,
                      upto: Lsn) -> dict[int, list[int]]:
        """Main-fork block -> LSNs of its changes in (after, upto]."""
        self.wait_durable(upto)
        rng = KeyRange.relation(spc, db, filenode, ForkNumber.MAIN)
        return {Key.from_bytes(k).blk: lsns
                for k, lsns in self.reader.changed_keys(rng, after, upto)}

    def changed_blocks(self, spc: int, db: int, filenode: int, after: Lsn,
                       upto: Lsn) -> list[int] | None:
        return sorted(self.changed_pages(spc, db, filenode, after, upto))

    def page(self, spc: int, db: int, filenode: int, blk: int, lsn: Lsn) -> bytes | None:
        self.wait_durable(lsn)
        return self.reader.get_page(Key.rel_block(spc, db, filenode, ForkNumber.MAIN, blk), lsn)

    def slru_changes(self, slru: int, pageno: int, upto: Lsn) -> list[int]:
        """LSNs at which an SLRU page (pg_xact, ...) changed, up to `upto`."""
        self.wait_durable(upto)
        key = Key.slru_page(slru, pageno)
        return [lsn for _, lsns in self.reader.changed_keys(KeyRange(key, key.next()), 0, upto)
                for lsn in lsns]

    def slru_page(self, slru: int, pageno: int, lsn: Lsn) -> bytes | None:
        self.wait_durable(lsn)
        return self.reader.get_page(Key.slru_page(slru, pageno), lsn)

    def next_full_xid(self, lsn: Lsn) -> int | None:
        """The cluster's next transaction id (with epoch) at `lsn`."""
        from strata.keyspace.cluster import ClusterState

        self.wait_durable(lsn)
        v = self.reader.get_page(Key.cluster(0), lsn)
        return None if v is None else ClusterState.from_bytes(v).next_full_xid

    def xid_start(self, full_xid: int, upto: Lsn) -> Lsn | None:
        """An LSN at or before the first WAL record of transaction `full_xid`:
        the first point where the cluster's next xid is past it (ingest moves
        it past every record's xid). None when that is before what the store
        keeps. Binary search over LSNs, one cluster-values read per step."""
        def past(lsn: int) -> bool:
            nxt = self.next_full_xid(Lsn(lsn))
            return nxt is not None and nxt > full_xid

        lo, hi = int(self.reader.retention_lsn), int(upto)
        if past(lo):
            return None
        if not past(hi):
            return Lsn(hi)
        while hi - lo > 1:  # invariant: not past(lo), past(hi)
            mid = (lo + hi) // 2
            if past(mid):
                hi = mid
            else:
                lo = mid
        return Lsn(hi)

    def close(self) -> None:
        self.reader.close()


def open_changes(layers: Path, flush: Flush | None = None) -> StoreChanges | None:
    """A read-only reader of the store in `layers` (`flush` asks its writer for
    durability), or None when there is no store there (then diffs compare
    tables in full)."""
    from strata.pagestore import PageStore
    from strata.reconstruct.reconstruct import reconstruct_value

    if not (layers / "MANIFEST").exists():
        return None
    return StoreChanges(PageStore.open_readonly(layers, reconstruct_value), flush)
