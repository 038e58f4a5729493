"""page_ops against the semantics of PostgreSQL 18's bufpage.c."""

from __future__ import annotations

import pytest

from strata.errors import RedoError
from strata.reconstruct.redo import index_tuples as it
from strata.reconstruct.redo import page_ops as po


def _items(page: bytearray) -> list[tuple[int, int, int, int]]:
    return list(po.iter_line_pointers(page))


def test_page_init_sets_pointers_and_version() -> None:
    page = po.new_page(13)  # special size is MAXALIGNed to 16
    h = po.PageHeader.parse(page)
    assert (h.lower, h.upper, h.special) == (24, 8192 - 16, 8192 - 16)
    assert h.page_size == 8192 and h.layout_version == 4
    assert h.lsn == 0 and h.flags == 0
    assert page[24:] == bytes(8192 - 24)


def test_lsn_is_stored_high_word_first() -> None:
    page = po.new_page()
    po.page_set_lsn(page, 0x0000000A_12345678)
    assert page[0:8] == bytes.fromhex("0a000000" "78563412")
    assert po.page_get_lsn(page) == 0xA_12345678


def test_line_pointer_bitfields_little_endian() -> None:
    page = po.new_page()
    po.set_item_id(page, 1, 8000, po.LP_REDIRECT, 77)
    w = int.from_bytes(page[24:28], "little")
    assert w & 0x7FFF == 8000 and (w >> 15) & 3 == 2 and w >> 17 == 77
    assert po.item_id(page, 1) == (8000, po.LP_REDIRECT, 77)


def test_add_item_appends_from_the_top_maxaligned() -> None:
    page = po.new_page()
    assert po.page_add_item(page, b"a" * 10) == 1
    assert po.page_add_item(page, b"b" * 24) == 2
    assert _items(page) == [(1, 8192 - 16, 1, 10), (2, 8192 - 16 - 24, 1, 24)]
    assert po.get_item(page, 1) == b"a" * 10
    assert po.get_lower(page) == 32 and po.get_upper(page) == 8192 - 40


def test_add_item_in_the_middle_shuffles_line_pointers() -> None:
    page = po.new_page()
    po.page_add_item(page, b"x" * 8)
    po.page_add_item(page, b"y" * 8)
    assert po.page_add_item(page, b"z" * 8, 1) == 1
    assert [po.get_item(page, i) for i in (1, 2, 3)] == [b"z" * 8, b"x" * 8, b"y" * 8]


def test_add_item_overwrite_refuses_used_slot_and_fills_unused() -> None:
    page = po.new_page()
    po.page_add_item(page, b"x" * 8)
    po.page_add_item(page, b"y" * 8)
    assert po.page_add_item(page, b"q" * 8, 1, overwrite=True) == 0
    po.item_id_set_unused(page, 1)
    lower = po.get_lower(page)
    assert po.page_add_item(page, b"q" * 8, 1, overwrite=True) == 1
    assert po.get_lower(page) == lower  # no new line pointer
    assert po.get_item(page, 1) == b"q" * 8


def test_add_item_uses_first_free_slot_when_hinted_and_clears_stale_hint() -> None:
    page = po.new_page()
    for c in b"abc":
        po.page_add_item(page, bytes([c]) * 8)
    po.item_id_set_unused(page, 2)
    po.page_set_has_free_line_pointers(page)
    assert po.page_add_item(page, b"d" * 8) == 2
    # now no slot is free but the hint is set: it appends and clears the hint
    assert po.page_add_item(page, b"e" * 8) == 4
    assert not po.page_has_free_line_pointers(page)


def test_add_item_heap_limit_and_no_room() -> None:
    page = po.new_page()
    assert po.page_add_item(page, b"x" * 8200) == 0
    assert po.page_add_item(page, b"x", po.MAX_HEAP_TUPLES_PER_PAGE + 1) == 0


def _fragmented_page() -> bytearray:
    page = po.new_page()
    for i in range(1, 7):
        po.page_add_item(page, bytes([0x40 + i]) * (8 * i + 3))
    return page


@pytest.fixture(params=["compiled", "python"])
def repair(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a test with the compiled page operations (_pagec) and with the references."""
    if request.param == "python":
        monkeypatch.setattr(po, "_compiled_repair", None)
        monkeypatch.setattr(it, "_compiled_multi_delete", None)
    elif po.pagec is None:
        pytest.fail("the compiled page operations are not built (python setup.py build_ext --inplace)")


@pytest.mark.usefixtures("repair")
def test_repair_fragmentation_compacts_in_offset_order_and_trims_unused_tail() -> None:
    page = _fragmented_page()
    po.item_id_set_dead(page, 2)          # no storage
    po.item_id_set_unused(page, 4)
    po.item_id_set_unused(page, 6)
    po.item_id_set_redirect(page, 5, 3)
    before = {i: po.get_item(page, i) for i in (1, 3)}
    po.page_repair_fragmentation(page)
    # 6 was the last and is unused: trimmed; 4 stays unused -> hint set
    assert po.page_get_max_offset(page) == 5
    assert po.page_has_free_line_pointers(page)
    assert po.get_item(page, 1) == before[1] and po.get_item(page, 3) == before[3]
    # packed from pd_special down in descending original offset: item 1 first
    assert po.item_offset(page, 1) == 8192 - po.maxalign(11)
    assert po.item_offset(page, 3) == 8192 - po.maxalign(11) - po.maxalign(27)
    assert po.get_upper(page) == po.item_offset(page, 3)
    assert po.item_id(page, 5) == (3, po.LP_REDIRECT, 0)


@pytest.mark.usefixtures("repair")
def test_repair_fragmentation_unsorted_items_are_packed_in_line_pointer_order() -> None:
    page = po.new_page()
    po.page_add_item(page, b"A" * 16)
    po.page_add_item(page, b"B" * 16)
    po.page_add_item(page, b"C" * 16)
    # swap where items 1 and 3 point (unsorted line pointer order)
    o1, o3 = po.item_offset(page, 1), po.item_offset(page, 3)
    po.item_id_set_normal(page, 1, o3, 16)
    po.item_id_set_normal(page, 3, o1, 16)
    po.item_id_set_unused(page, 2)
    po.page_repair_fragmentation(page)
    # compactify_tuples does not sort: lp 1 goes to the top, then lp 3
    assert po.item_offset(page, 1) == 8192 - 16 and po.get_item(page, 1) == b"C" * 16
    assert po.item_offset(page, 3) == 8192 - 32 and po.get_item(page, 3) == b"A" * 16


@pytest.mark.usefixtures("repair")
def test_repair_fragmentation_rejects_corrupt_pointers_and_leaves_the_page() -> None:
    page = po.new_page()
    po.set_lower(page, 9000)
    with pytest.raises(RedoError, match="corrupted page pointers"):
        po.page_repair_fragmentation(page)
    page = po.new_page()
    po.page_add_item(page, b"A" * 16)
    po.page_add_item(page, b"B" * 16)
    po.item_id_set_normal(page, 2, 100, 16)  # below pd_upper
    before = bytes(page)
    with pytest.raises(RedoError, match="corrupted line pointer: 100"):
        po.page_repair_fragmentation(page)
    assert bytes(page) == before


def test_truncate_line_pointer_array_keeps_first_and_sets_hint() -> None:
    page = _fragmented_page()
    for i in (2, 5, 6):
        po.item_id_set_unused(page, i)
    po.page_truncate_line_pointer_array(page)
    assert po.page_get_max_offset(page) == 4
    assert po.page_has_free_line_pointers(page)  # 2 is still unused
    page2 = po.new_page()
    po.page_add_item(page2, b"x" * 8)
    po.item_id_set_unused(page2, 1)
    po.page_truncate_line_pointer_array(page2)
    assert po.page_get_max_offset(page2) == 1  # never removes the first one


def test_free_space_variants() -> None:
    page = po.new_page()
    assert po.page_get_free_space(page) == 8192 - 24 - 4
    assert po.page_get_exact_free_space(page) == 8192 - 24
    assert po.page_get_free_space_for_multiple_tuples(page, 3) == 8192 - 24 - 12
    assert po.page_get_heap_free_space(page) == 8192 - 24 - 4


def test_index_tuple_delete_closes_both_gaps() -> None:
    page = _fragmented_page()
    items = {i: po.get_item(page, i) for i in range(1, 7)}
    upper = po.get_upper(page)
    it.page_index_tuple_delete(page, 3)
    assert po.page_get_max_offset(page) == 5
    assert [po.get_item(page, i) for i in range(1, 6)] == [items[i] for i in (1, 2, 4, 5, 6)]
    assert po.get_upper(page) == upper + po.maxalign(27)
    # items above the deleted one did not move, those below moved up
    assert po.item_offset(page, 1) == 8192 - 16


@pytest.mark.usefixtures("repair")
def test_index_multi_delete_renumbers_and_compacts() -> None:
    page = _fragmented_page()
    items = {i: po.get_item(page, i) for i in range(1, 7)}
    it.page_index_multi_delete(page, [1, 3, 5])
    assert [po.get_item(page, i) for i in range(1, 4)] == [items[2], items[4], items[6]]
    assert po.item_offset(page, 1) == 8192 - po.maxalign(19)
    assert po.get_upper(page) == 8192 - sum(po.maxalign(8 * i + 3) for i in (2, 4, 6))
    before = bytes(page)
    with pytest.raises(RedoError, match="incorrect index offsets supplied"):
        it.page_index_multi_delete(page, [1, 2, 9])
    assert bytes(page) == before


@pytest.mark.parametrize("seed", range(30))
def test_compiled_index_multi_delete_equals_the_python_reference(seed: int) -> None:
    """Random index pages (items in insertion order, some moved by earlier deletes),
    random ascending sets of more than two items: `_pagec` leaves exactly the
    bytes `page_index_multi_delete_python` leaves."""
    import random

    if it._compiled_multi_delete is None:
        pytest.fail("the compiled page operations are not built (python setup.py build_ext --inplace)")
    rnd = random.Random(seed)
    page = po.new_page()
    for i in range(rnd.randrange(4, 200)):
        if po.page_add_item(page, bytes([i % 251 + 1]) * (8 * rnd.randrange(1, 6))) == 0:
            break
    it.page_index_tuple_delete(page, rnd.randrange(1, po.page_get_max_offset(page) + 1))
    nline = po.page_get_max_offset(page)
    itemnos = sorted(rnd.sample(range(1, nline + 1), rnd.randrange(3, nline + 1)))
    want = bytearray(page)
    it.page_index_multi_delete_python(want, itemnos)
    assert it._compiled_multi_delete(page, itemnos) is None
    assert page == want


def test_index_multi_delete_two_items_uses_single_deletes() -> None:
    a, b = _fragmented_page(), _fragmented_page()
    it.page_index_multi_delete(a, [2, 5])
    it.page_index_tuple_delete(b, 5)
    it.page_index_tuple_delete(b, 2)
    assert a == b


def test_index_tuple_delete_no_compact_leaves_unused_pointer() -> None:
    page = _fragmented_page()
    item4 = po.get_item(page, 4)
    it.page_index_tuple_delete_no_compact(page, 2)
    assert po.page_get_max_offset(page) == 6
    assert po.item_id(page, 2) == (0, po.LP_UNUSED, 0)
    assert po.get_item(page, 4) == item4
    it.page_index_tuple_delete_no_compact(page, 6)
    assert po.page_get_max_offset(page) == 5


def test_index_tuple_overwrite_grow_and_shrink() -> None:
    page = _fragmented_page()
    items = {i: po.get_item(page, i) for i in range(1, 7)}
    assert it.page_index_tuple_overwrite(page, 2, b"N" * 40)
    assert po.get_item(page, 2) == b"N" * 40
    assert all(po.get_item(page, i) == items[i] for i in (1, 3, 4, 5, 6))
    assert it.page_index_tuple_overwrite(page, 2, b"s" * 3)
    assert po.get_item(page, 2) == b"s" * 3
    assert all(po.get_item(page, i) == items[i] for i in (1, 3, 4, 5, 6))
    assert not it.page_index_tuple_overwrite(page, 1, b"x" * 9000)


def test_temp_page_copy_special_keeps_only_special() -> None:
    page = po.new_page(16)
    po.page_add_item(page, b"x" * 8)
    page[-16:] = b"S" * 16
    tmp = po.page_get_temp_page_copy_special(page)
    assert tmp[-16:] == b"S" * 16 and po.page_get_max_offset(tmp) == 0


def test_checksum_of_known_page_pure_python_equals_numpy() -> None:
    from strata.pg.checksum import checksum_page_py

    page = _fragmented_page()
    po.page_set_lsn(page, 0x1234_5678_9ABC)
    c1 = po.pg_checksum_page(page, 7)
    assert c1 == checksum_page_py(bytes(page), 7)
    assert po.pg_checksum_page(page, 8) != c1


@pytest.mark.parametrize("seed", range(40))
def test_compiled_repair_fragmentation_equals_the_python_reference(seed: int) -> None:
    """Random heap pages after random prunes (dead, unused, redirected items,
    unused ones with stale offsets; line pointers swapped so items are not in
    offset order): `_pagec` leaves exactly the bytes the reference leaves."""
    import random

    rnd = random.Random(seed)
    page = po.new_page()
    n = rnd.randrange(1, 120)
    for i in range(n):
        if po.page_add_item(page, bytes([i % 251 + 1]) * rnd.randrange(1, 90)) == 0:
            break
    nline = po.page_get_max_offset(page)
    if seed % 5 == 0 and nline > 2:  # items out of offset order
        a, b = rnd.sample(range(1, nline + 1), 2)
        (oa, _fa, la), (ob, _fb, lb) = po.item_id(page, a), po.item_id(page, b)
        po.item_id_set_normal(page, a, ob, lb)
        po.item_id_set_normal(page, b, oa, la)
    for i in range(1, nline + 1):
        r = rnd.random()
        if r < 0.1:
            po.item_id_set_unused(page, i)
        elif r < 0.2:  # unused, its old offset and length still in the word
            off, _flags, ln = po.item_id(page, i)
            po.set_item_id(page, i, off, po.LP_UNUSED, ln)
        elif r < 0.3:
            po.item_id_set_dead(page, i)
        elif r < 0.35:
            po.item_id_set_redirect(page, i, rnd.randrange(1, nline + 1))
    if seed % 3 == 0:  # everything after the first unused: a trimmed tail
        for i in range(max(1, nline - rnd.randrange(0, 4)), nline + 1):
            po.item_id_set_unused(page, i)
    if po._compiled_repair is None:
        pytest.fail("the compiled page operations are not built (python setup.py build_ext --inplace)")
    want = bytearray(page)
    po.repair_fragmentation_python(want)
    assert po._compiled_repair(page) is None
    assert page == want
