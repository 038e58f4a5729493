"""Stored-format samples (version 1) still decode to what they were made from."""

from __future__ import annotations

from pathlib import Path

from strata.keyspace.cluster import ClusterState
from strata.lsn import Lsn
from strata.pg.slru import XidStatus, clog_get_status
from strata.reconstruct.slru import apply_value

DATA = Path(__file__).resolve().parent.parent / "data" / "transam"


def test_cluster_state_v1_sample_decodes_and_reencodes_identically() -> None:
    raw = (DATA / "cluster_state_v1.bin").read_bytes()
    s = ClusterState.from_bytes(raw)
    assert s.lsn == Lsn.parse("0/5000028") == s.checkpoint_redo
    assert (s.next_xid_epoch, s.next_xid, s.next_oid) == (0, 35989, 16422)
    assert (s.next_multi, s.next_multi_offset) == (2202, 4404)
    assert (s.oldest_xid, s.oldest_xid_db, s.oldest_multi, s.oldest_multi_db) == (744, 1, 1, 1)
    assert (s.timeline, s.prev_timeline, s.wal_segment_size, s.wal_level) == (1, 1, 16 << 20, 1)
    assert (s.max_connections, s.max_prepared_xacts, s.max_locks_per_xact) == (90, 10, 64)
    assert s.full_page_writes and s.char_signed and not s.wal_log_hints
    assert s.to_bytes() == raw


def test_slru_delta_v1_sample_applies_as_documented() -> None:
    raw = (DATA / "slru_delta_v1.bin").read_bytes()
    page = apply_value(None, raw)
    assert page is not None
    assert [clog_get_status(page, x) for x in (2, 3, 4, 5, 6)] == [0, 1, 1, 1, 0]
    assert clog_get_status(page, 32767) == XidStatus.ABORTED
    assert page[100:102] == b"\xaa\xbb"
    # bytes 0 and 1 (slots 3..5), 8191 (slot 32767), 100 and 101 (the patch)
    assert [i for i, b in enumerate(page) if b] == [0, 1, 100, 101, 8191]
