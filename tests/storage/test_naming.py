from __future__ import annotations

import pytest

from strata.key import MAX_KEY, MIN_KEY, Key
from strata.storage.naming import LayerKind, LayerName, is_layer_filename


def test_delta_name_round_trips_and_matches_style() -> None:
    n = LayerName.delta(MIN_KEY.to_bytes(), MAX_KEY.to_bytes(), 0x16B3748, 0x2000000)
    fn = n.filename()
    assert fn == ("0" * 36 + "-" + "FF" * 18 + "__" + "00000000016B3748-0000000002000000.delta")
    assert LayerName.parse(fn) == n
    assert is_layer_filename(fn)


def test_image_name_round_trips_with_one_lsn() -> None:
    k = Key.rel_block(1663, 5, 16384, 0, 7).to_bytes()
    n = LayerName.image(k, MAX_KEY.to_bytes(), 0xABC)
    assert n.filename().endswith("__0000000000000ABC.image")
    back = LayerName.parse(n.filename())
    assert back == n and back.kind == LayerKind.IMAGE and back.lsn_range.end == 0xABD


def test_names_sort_by_key_start_then_lsn() -> None:
    a = LayerName.delta(b"\0" * 18, b"\1" * 18, 1, 5).filename()
    b = LayerName.delta(b"\0" * 18, b"\1" * 18, 5, 9).filename()
    c = LayerName.delta(b"\1" * 18, b"\2" * 18, 1, 5).filename()
    assert sorted([c, b, a]) == [a, b, c]


@pytest.mark.parametrize("bad", ["MANIFEST", "x.delta", "LOCK", "layer-1-2-3.tmp",
                                 "0" * 36 + "-" + "0" * 36 + "__" + "0" * 16 + ".delta"])
def test_parse_rejects_non_layer_names(bad: str) -> None:
    assert not is_layer_filename(bad)
    with pytest.raises(ValueError):
        LayerName.parse(bad)
