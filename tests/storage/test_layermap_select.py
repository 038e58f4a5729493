"""Which layers a read visits: the layer map's array pre-filter selects exactly what
testing every layer selects.

`LayerMap.floor_image`, `images_for_scan` and `deltas_for_scan` first narrow the
layers with numpy comparisons of their bounds (`_Bounds.candidates`), then apply
the read rules to the few left. The reference here applies the rules to every
layer, as the layer map did before. Keys are drawn from a few byte values, zeros
included (numpy's fixed-width bytes and trailing zero bytes), and bounds of other
lengths than a key take the fallback."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from strata.key import KEY_SIZE
from strata.storage.layermap import Layer, LayerMap, covers
from strata.storage.manifest import LayerEntry, Level
from strata.storage.naming import LayerName

BYTES = (0, 1, 2, 255)


def key(rnd: random.Random) -> bytes:
    return bytes(rnd.choice(BYTES) for _ in range(KEY_SIZE))


def key_range(rnd: random.Random) -> tuple[bytes, bytes]:
    while True:
        a, b = sorted((key(rnd), key(rnd)))
        if a < b:
            return a, b


def random_map(rnd: random.Random, n: int) -> LayerMap:
    layers = []
    for _ in range(n):
        ks, ke = key_range(rnd)
        lsn = rnd.randrange(0, 60)
        if rnd.random() < 0.5:
            name = LayerName.image(ks, ke, lsn)
            level = Level.IMAGE
        else:
            name = LayerName.delta(ks, ke, lsn, lsn + rnd.randrange(1, 30))
            level = Level.L1
        layers.append(Layer(LayerEntry(name, level, 1), None))  # type: ignore[arg-type]
    return LayerMap(tuple(layers))


def ref_floor_image(lm: LayerMap, k: bytes, lsn: int) -> Layer | None:
    for im in lm.images:
        n = im.name
        if n.image_lsn <= lsn and n.key_start <= k < n.key_end:
            return im
    return None


def clipped(layers: tuple[Layer, ...], start: bytes, end: bytes, lsn: int
            ) -> Iterator[tuple[Layer, bytes, bytes]]:
    """Every layer starting at or below `lsn` that overlaps [start, end), tested one by
    one, with its part of the range."""
    for la in layers:
        n = la.name
        if n.lsn_start <= lsn and n.key_start < end and start < n.key_end:
            yield la, max(start, n.key_start), min(end, n.key_end)


def ref_images_for_scan(lm: LayerMap, start: bytes, end: bytes, lsn: int) -> list[Layer]:
    out: list[Layer] = []
    for im, s, e in clipped(lm.images, start, end, lsn):
        if not covers(s, e, [(o.name.key_start, o.name.key_end) for o in out
                             if o.name.image_lsn > im.name.image_lsn]):
            out.append(im)
    return out


def ref_deltas_for_scan(lm: LayerMap, start: bytes, end: bytes, lsn: int,
                        images: list[Layer]) -> list[Layer]:
    return [d for d, s, e in clipped(lm.deltas, start, end, lsn)
            if not covers(s, e, [(im.name.key_start, im.name.key_end) for im in images
                                 if im.name.image_lsn >= d.name.lsn_end - 1])]


def bound(rnd: random.Random, k: bytes) -> bytes:
    """`k`, or now and then a bound of another length near it."""
    r = rnd.random()
    if r < 0.1:
        return k[: rnd.randrange(0, KEY_SIZE)]
    if r < 0.2:
        return k + bytes([rnd.choice(BYTES)])
    return k


@pytest.mark.parametrize("seed", range(30))
def test_the_prefilter_selects_what_testing_every_layer_selects(seed: int) -> None:
    rnd = random.Random(seed)
    lm = random_map(rnd, rnd.choice((0, 1, 5, 40, 200)))
    found: dict[str, Any] = {"floor": 0, "images": 0, "deltas": 0}
    for _ in range(200):
        lsn = rnd.randrange(-2, 95)
        k = bound(rnd, key(rnd))
        if lm.layers and rnd.random() < 0.3:  # a layer's own bound, where < and <= differ
            n = rnd.choice(lm.layers).name
            k = rnd.choice((n.key_start, n.key_end))
        got = lm.floor_image(k, lsn)
        assert got is ref_floor_image(lm, k, lsn)
        found["floor"] += got is not None
        s, e = key_range(rnd)
        s, e = bound(rnd, s), bound(rnd, e)
        imgs = lm.images_for_scan(s, e, lsn)
        assert imgs == ref_images_for_scan(lm, s, e, lsn)
        dels = lm.deltas_for_scan(s, e, lsn, imgs)
        assert dels == ref_deltas_for_scan(lm, s, e, lsn, imgs)
        found["images"] += len(imgs)
        found["deltas"] += len(dels)
    if len(lm.layers) >= 40:  # the cases were not all empty
        assert all(v > 0 for v in found.values()), found


def test_an_empty_map_and_an_lsn_below_everything_select_nothing() -> None:
    lm = LayerMap(())
    k = bytes(KEY_SIZE)
    assert lm.floor_image(k, 10) is None
    assert lm.images_for_scan(k, b"\xff" * KEY_SIZE, 10) == []
    rnd = random.Random(7)
    lm = random_map(rnd, 50)
    assert lm.images_for_scan(k, b"\xff" * KEY_SIZE, -1) == []
    assert lm.deltas_for_scan(k, b"\xff" * KEY_SIZE, -1, []) == []
