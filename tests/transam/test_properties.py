"""Property tests: SLRU page values against a direct model, ClusterState encoding."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from strata.keyspace.cluster import ClusterState
from strata.keyspace.slru import delta_value, patch_op, xid_status_op
from strata.lsn import Lsn
from strata.pg.constants import BLCKSZ
from strata.pg.slru import (
    CLOG_XACTS_PER_PAGE,
    ZERO_PAGE,
    get_multixact_member,
    get_multixact_offset,
    member_page,
    multixact_create_writes,
    offsets_page,
)
from strata.reconstruct.slru import apply_value, reconstruct

u32 = st.integers(0, 0xFFFFFFFF)

status_op_st = st.tuples(st.just("status"), st.integers(0, 3),
                      st.lists(st.integers(0, CLOG_XACTS_PER_PAGE - 1), max_size=50))
patch_op_st = st.integers(0, BLCKSZ - 1).flatmap(
    lambda off: st.tuples(st.just("patch"), st.just(off),
                          st.binary(min_size=0, max_size=min(64, BLCKSZ - off))))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.one_of(status_op_st, patch_op_st), max_size=6), max_size=6),
       st.one_of(st.none(), st.binary(min_size=BLCKSZ, max_size=BLCKSZ)))
def test_delta_values_equal_direct_page_edits(deltas, base) -> None:  # type: ignore[no-untyped-def]
    model = bytearray(base if base is not None else ZERO_PAGE)
    values = []
    for ops in deltas:
        encoded = []
        for op in ops:
            if op[0] == "status":
                _, status, slots = op
                for slot in slots:
                    byteno, shift = slot // 4, (slot % 4) * 2
                    model[byteno] = (model[byteno] & ~(3 << shift)) | (status << shift)
                encoded.append(xid_status_op(status, slots))
            else:
                _, off, data = op
                model[off:off + len(data)] = data
                encoded.append(patch_op(off, data))
        values.append(delta_value(encoded))
    assert reconstruct(values, base) == (bytes(model) if values or base is not None else None)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 0xFFFFFFFF), u32,
       st.lists(st.tuples(u32, st.integers(0, 5)), min_size=1, max_size=40))
def test_multixact_writes_read_back_with_the_layout_helpers(multi, moff, members) -> None:  # type: ignore[no-untyped-def]
    pages: dict[tuple[int, int], bytes | None] = {}
    for w in multixact_create_writes(multi, moff, members):
        key = (int(w.kind), w.pageno)
        pages[key] = apply_value(pages.get(key), delta_value([patch_op(w.offset, w.data)]))
    page = pages[(1, offsets_page(multi))]
    assert page is not None and get_multixact_offset(page, multi) == moff
    offset = moff
    for xid, status in members:
        mpage = pages[(2, member_page(offset))]
        assert mpage is not None and get_multixact_member(mpage, offset) == (xid, status)
        offset = (offset + 1) & 0xFFFFFFFF


@settings(max_examples=200, deadline=None)
@given(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1), u32, u32, u32, u32, u32, u32,
       u32, st.booleans(), st.booleans(), st.integers(1, 0xFFFFFFFF))
def test_cluster_state_encoding_round_trips(lsn, nfx, noid, nmulti, noff, oxid, omulti, tli, redo_lo,
                                            fpw, signed, segsz) -> None:  # type: ignore[no-untyped-def]
    s = ClusterState(Lsn(lsn), nfx, noid, nmulti, noff, oxid, 1, omulti, 2, timeline=tli,
                     full_page_writes=fpw, char_signed=signed, wal_segment_size=segsz,
                     checkpoint_redo=Lsn(redo_lo))
    assert ClusterState.from_bytes(s.to_bytes()) == s


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40)), max_size=60),
       st.integers(0, 2**32 - 1), st.booleans())
def test_a_run_of_commit_values_equals_applying_them_one_by_one(ops, seed, mixed) -> None:  # type: ignore[no-untyped-def]
    """Runs of one-xid status values (a chain of commits: applied in one numpy step
    from 8 on) against the page edited one value at a time; slots repeat (the later
    status wins), and a run with one other value in it takes the general path."""
    base = random.Random(seed).randbytes(BLCKSZ)
    model = bytearray(base)
    values = []
    for status, slot in ops:
        byteno, shift = slot // 4, (slot % 4) * 2
        model[byteno] = (model[byteno] & ~(3 << shift)) | (status << shift)
        values.append(delta_value([xid_status_op(status, [slot])]))
    if mixed and values:
        model[7:9] = b"ab"
        values.insert(len(values) // 2, delta_value([patch_op(7, b"ab")]))
        ops_after = ops[len(ops) // 2:]
        for status, slot in ops_after:  # the values after the patch apply over it
            byteno, shift = slot // 4, (slot % 4) * 2
            if byteno in (7, 8):
                model[byteno] = (model[byteno] & ~(3 << shift)) | (status << shift)
    assert reconstruct(values, base) == bytes(model)
