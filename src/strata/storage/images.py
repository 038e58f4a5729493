"""Image layers: every key of a key range at one LSN, so reads stop replaying
the deltas below it.

Fed by: the maintenance worker / process, `strata compact --images`, and gc
(images at the retention horizon). Feeds: new image layers (read floors).
Owns: the image trigger (FORMAT.md section 7a): which key ranges get images,
and when.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from strata.errors import LsnOutOfRangeError, RedoError, UnsupportedRecordError
from strata.key import KEY_SIZE, Key
from strata.lsn import Lsn
from strata.storage import commit
from strata.storage.batch import KEY_ORDER, LSN_LIMIT, BatchBuilder, EntryBatch, key_order
from strata.storage.layerfile import LayerFile
from strata.storage.layermap import Layer, LayerMap, ReadStats, covers
from strata.storage.layerwriter import LayerWriter
from strata.storage.manifest import LayerEntry, Level
from strata.storage.naming import LayerName
from strata.storage.scan import SLOT_BYTES, Chains, WindowRedo, window_chains
from strata.storage.store import LayerStore
from strata.storage.values import PageImage, ValueKind

log = logging.getLogger(__name__)
_IMAGE = int(ValueKind.PAGE_IMAGE)


def floor_lsn(lm: LayerMap, start: bytes, end: bytes, upto: int) -> int:
    """Newest LSN c <= upto such that images at c..upto cover [start, end); -1 if none."""
    ranges: list[tuple[bytes, bytes]] = []
    imgs = [im.name for im in lm.images  # newest first
            if im.name.image_lsn <= upto and im.name.key_start < end
            and start < im.name.key_end]
    for i, n in enumerate(imgs):
        ranges.append((n.key_start, n.key_end))
        last_of_lsn = i + 1 == len(imgs) or imgs[i + 1].image_lsn != n.image_lsn
        if last_of_lsn and covers(start, end, ranges):
            return n.image_lsn
    return -1


def image_partitions(lm: LayerMap) -> list[tuple[bytes, bytes]]:
    """Key ranges image creation considers, disjoint and in key order: the L1
    layers' ranges cut at every L1 boundary (compactions cut their L1s at different
    keys; overlapping partitions would each count the deltas they share and image
    the overlap twice), else the L0 span."""
    l1 = {(d.name.key_start, d.name.key_end) for d in lm.deltas if d.entry.level == Level.L1}
    if l1:
        delta: dict[bytes, int] = {}  # +1 where an L1 range starts, -1 where one ends
        for a, z in l1:
            delta[a] = delta.get(a, 0) + 1
            delta[z] = delta.get(z, 0) - 1
        cuts = sorted(delta)
        inside = itertools.accumulate(delta[k] for k in cuts)  # ranges open after k
        return [(a, z) for (a, z), n in zip(itertools.pairwise(cuts), inside, strict=False)
                if n > 0]
    l0 = lm.l0()
    if l0:
        return [(min(d.name.key_start for d in l0), max(d.name.key_end for d in l0))]
    return []


def create_image_layers(store: LayerStore, lsn: int | None = None, threshold: int | None = None,
                        ranges: list[tuple[bytes, bytes]] | None = None,
                        record_threshold: int | None = None,
                        progress: Callable[[int, int], None] | None = None) -> list[LayerName]:
    """Write image layers at `lsn` (default durable_lsn) over every key range (an
    image partition) that is due for them (`images_due`, FORMAT.md section 7a).

    Neighbouring partitions that are due are imaged together, into image layers
    cut at target_file_bytes: partitions get finer with every compaction (a hot
    page with large records, such as a visibility map page, can end up alone in
    one), and one image layer per partition made hundreds of one-page files
    (1,000+ open files after 30 minutes of pgbench at scale 300). Partitions are
    disjoint, so an image over one never changes another's floor or rule.

    `threshold`: the layer-count rule alone, with this many layers (what `strata
    compact --images --threshold N` asks for; no byte or cap rule). Default: the
    store's policy (config.image_delta_threshold, image_bytes_ratio,
    image_layer_cap). `record_threshold` (default config.image_record_threshold):
    the per-key rule's limit. `progress(done, total)`: partitions imaged so far,
    of all. Returns: names of the new image layers.

    Raises: LsnOutOfRangeError if lsn is above durable_lsn or below retention_lsn.
    """
    with store.maint_lock:
        m = store.manifest
        at = m.durable_lsn if lsn is None else lsn
        if not m.retention_lsn <= at <= m.durable_lsn:
            raise LsnOutOfRangeError(
                f"image layers can only be made between retention_lsn {Lsn(m.retention_lsn)} "
                f"and durable_lsn {Lsn(m.durable_lsn)}, not at {Lsn(at)}",
                nearest=Lsn(m.durable_lsn))
        cfg = store.config
        rule = ImageRule(
            layers=cfg.image_delta_threshold if threshold is None else threshold,
            records=cfg.image_record_threshold if record_threshold is None else record_threshold,
            bytes_ratio=cfg.image_bytes_ratio if threshold is None else 0.0,
            cap=cfg.image_layer_cap if threshold is None else 0)
        made: list[LayerName] = []
        parts = image_partitions(store.view().layer_map) if ranges is None else ranges
        lm = store.view().layer_map
        runs: list[tuple[bytes, bytes, int]] = []  # due ranges, neighbours joined; parts
        for start, end in parts:
            floor = floor_lsn(lm, start, end, at)
            if floor == at or not images_due(lm, start, end, floor, at, rule):
                continue
            if runs and runs[-1][1] == start:  # one image layer over both (see above)
                runs[-1] = (runs[-1][0], end, runs[-1][2] + 1)
            else:
                runs.append((start, end, 1))
        done = 0
        for start, end, n in runs:
            if progress is not None:
                progress(done, len(parts))
            made += make_images(store, start, end, at)
            done += n
        if progress is not None:
            progress(len(parts), len(parts))
        return made


@dataclass(frozen=True)
class ImageRule:
    """The limits of `images_due` (FORMAT.md section 7a). `bytes_ratio` 0: no byte
    rule; `cap` 0: no cap."""

    layers: int
    records: int
    bytes_ratio: float
    cap: int


def images_due(lm: LayerMap, start: bytes, end: bytes, floor: int, at: int,
               rule: ImageRule) -> bool:
    """Whether the partition [start, end), whose newest full image is at `floor`
    (-1: none), gets images at `at`. The delta layers above the floor are those that
    overlap it and hold LSNs in (floor, at]; rules 1 and 2 count those of them that
    hold keys of it (`holds_keys`: an L0 with entries on both sides of an idle
    relation spans it by name, and its one block that does would count as bytes of
    the partition). Images are due when

    1. some key has more than `rule.records` deltas there to replay (`chain_bound`
       from the layer headers and block indexes; only when it says so, `longest_chain` counts
       exactly, reading the keys and kinds of those layers' blocks), or
    2. more than `rule.layers` delta layers are there and their blocks in the
       partition (a layer straddling the floor: its share above it) hold at
       least `rule.bytes_ratio` times the bytes of its newest
       images (`newest_image_bytes`; so image layers add about 1 / bytes_ratio of
       the delta bytes at most: the storage bound), unless those image bytes are 0
       (no image holds its keys yet) and every entry there is a page image
       (`replays_nothing`: a new index written as full-page images, whose image
       layer would repeat its pages and save a read nothing; an imaged table's
       waves of hint-bit page images still count), or
    3. more than `rule.cap` delta layers are there, keys of the partition or not (a
       point read probes the block index of each layer above its floor that spans
       its key: the fan-in stays bounded however small or absent the deltas are).

    Rules 3 and 2 read the layers' block indexes (`block_bytes`; besides, one
    block head a layer where a single block spans the partition, `holds_keys`, and
    block heads only when rule 2's byte test says due over a range no image holds
    yet, `replays_nothing`), so they are checked first: rule 1's exact count runs
    only when neither says so (with a backlog of layers above the floor it read
    every one of them whole, in every partition, to reach the answer rule 3 gives
    from their number)."""
    spanning = [d for d in lm.deltas
                if d.name.key_start < end and start < d.name.key_end
                and d.name.lsn_end - 1 > floor and d.name.lsn_start <= at]
    if 0 < rule.cap < len(spanning):
        log.debug("images due: %d layers above the floor %d", len(spanning), floor)
        return True
    above = [d for d in spanning if holds_keys(d, start, end)]
    if len(above) > rule.layers:
        if rule.bytes_ratio <= 0:
            log.debug("images due: %d layers above the floor %d", len(above), floor)
            return True
        image_bytes = newest_image_bytes(lm, start, end, at)
        delta_bytes = sum(block_bytes(d, start, end) * _share_above(d, floor) for d in above)
        if delta_bytes >= rule.bytes_ratio * image_bytes and (
                image_bytes or not replays_nothing(above, start, end, floor, at)):
            log.debug("images due: %d delta bytes, %d image bytes", delta_bytes, image_bytes)
            return True
    if (chain_bound(above, rule.records, start, end) > rule.records
            and longest_chain(above, start, end, floor, at) > rule.records):
        log.debug("images due: a chain of more than %d deltas", rule.records)
        return True
    return False


def chain_bound(deltas: list[Layer], limit: int, start: bytes, end: bytes) -> int:
    """Upper bound of any key of [start, end)'s delta entries in `deltas`: the sum,
    over the layers, of the smaller of its header's max_key_entries (the whole file's
    longest run) and its block index's bound for the blocks in the range
    (`BlockIndex.key_run_bound`: a partition of full-page images, far from the hot
    pages that set the header's maximum, bounds low without a block read). Stops once
    past `limit`, so old (v1) layers, whose header maximum is counted on first use by
    reading every block, are only counted when their index bound is not enough."""
    total = 0
    for d in sorted(deltas, key=lambda d: d.file.version < 2):
        f = d.file
        n = f.blocks.key_run_bound(f.blocks_in(start, end))
        if f.version >= 2 or total + n > limit:
            n = min(n, f.max_key_entries())
        total += n
        if total > limit:
            break
    return total


def holds_keys(layer: Layer, start: bytes, end: bytes) -> bool:
    """Whether the layer has an entry with a key in [start, end): from its block index
    alone, but for one block that spans the whole range (its head is read then).
    Raises: CorruptionError."""
    f = layer.file
    blocks = f.blocks_in(start, end)
    if len(blocks) != 1:  # two: the second's first key is in the range
        return len(blocks) > 1
    b = f.blocks[blocks[0]]
    if start <= b.first_key or b.last_key < end:  # that key is in the range
        return True
    return len(f.block_heads(start, end).kinds) > 0


def replays_nothing(deltas: list[Layer], start: bytes, end: bytes, floor: int,
                    at: int) -> bool:
    """Whether every entry of [start, end) in `deltas` with an LSN in (floor, at] is a
    page image or a tombstone: no read there replays a record (the blocks' heads are
    read, newest layer first, until a record turns up). Raises: CorruptionError."""
    for d in sorted(deltas, key=lambda d: -d.name.lsn_end):
        kinds = d.file.block_heads(start, end, floor + 1, at + 1).kinds
        if _COUNTED[kinds].any():
            return False
    return True


def block_bytes(layer: Layer, start: bytes, end: bytes) -> int:
    """Compressed bytes of the layer's blocks that may hold keys in [start, end), from
    its block index alone (no block is read)."""
    f = layer.file
    return f.blocks.comp_bytes(f.blocks_in(start, end))


def _share_above(d: Layer, floor: int) -> float:
    """The share of a delta layer's LSN range above `floor` (a compaction's L1 often
    straddles the image it is above: its bytes below the floor are not counted, on
    the estimate that bytes spread evenly over LSNs)."""
    lo, hi = d.name.lsn_start, d.name.lsn_end
    return 1.0 if floor < lo else max(0.0, (hi - 1 - floor) / max(hi - lo, 1))


def newest_image_bytes(lm: LayerMap, start: bytes, end: bytes, at: int) -> int:
    """What an image of [start, end) costs, estimated from the newest image layers at
    or below `at` over each part of it (block bytes from the indexes; a part no image
    covers, e.g. pages added since, counts 0)."""
    seen: list[tuple[bytes, bytes]] = []
    total = 0
    for im in lm.images:  # newest first
        a, z = max(start, im.name.key_start), min(end, im.name.key_end)
        if im.name.image_lsn > at or a >= z or covers(a, z, seen):
            continue
        total += block_bytes(im, a, z)
        seen.append((a, z))
        if covers(start, end, seen):
            break
    return total


_CHAIN_START = np.zeros(256, dtype=bool)  # kinds that end a key's chain below them
_CHAIN_START[[int(ValueKind.PAGE_IMAGE), int(ValueKind.TOMBSTONE),
              int(ValueKind.WAL_RECORD_INIT)]] = True
_COUNTED = np.ones(256, dtype=np.int64)  # kinds a read replays (a start it replays too)
_COUNTED[[int(ValueKind.PAGE_IMAGE), int(ValueKind.TOMBSTONE)]] = 0


def _chain_tails(keys: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per key of (key, lsn)-sorted rows: the key, the deltas a read at the end
    replays from these rows (those from its newest chain start on), and whether the
    rows hold a chain start (then older rows do not matter)."""
    n = len(keys)
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    idx = np.arange(n, dtype=np.int64)
    starts = _CHAIN_START[kinds]
    # a start's own row counts when a read replays it (will_init), not when it is the
    # base (image) or the end (tombstone) of the chain
    from_row = np.where(starts, idx + 1 - _COUNTED[kinds], -1)
    tail_from = np.maximum(np.maximum.reduceat(from_row, first), first)
    ends = np.r_[first[1:], n]
    return keys[first], ends - tail_from, np.logical_or.reduceat(starts, first)


class _TailCache:
    """`_chain_tails` of all keys of a delta layer, of its entries in an LSN range
    (all of them when a count takes the layer whole; those above the floor of a
    layer straddling it): a layer file is immutable (`LayerFile.identity` names
    the file), so maintenance reads each one once per range, whatever partitions
    it is counted in (tails are per key: a partition's are a slice of them;
    partitions change with every compaction's cuts, and a cache per partition,
    which also left straddling layers out, read the older layers again and
    again). Bounded: at most `ROWS` keys held, least recently used dropped
    first."""

    ROWS = 1 << 20  # ~27 MB (18-byte key, 8-byte tail, 1-byte flag per row)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: OrderedDict[tuple[object, ...], tuple[np.ndarray, ...]] = OrderedDict()
        self._rows = 0

    def get(self, key: tuple[object, ...]) -> tuple[np.ndarray, ...] | None:
        with self._lock:
            hit = self._held.get(key)
            if hit is not None:
                self._held.move_to_end(key)
            return hit

    def put(self, key: tuple[object, ...], tails: tuple[np.ndarray, ...]) -> None:
        with self._lock:
            if key in self._held or len(tails[0]) > self.ROWS:
                return
            self._held[key] = tails
            self._rows += len(tails[0])
            while self._rows > self.ROWS:
                _, old = self._held.popitem(last=False)
                self._rows -= len(old[0])


_TAILS = _TailCache()


def _layer_tails(d: Layer, start: bytes, end: bytes, floor: int, at: int
                 ) -> tuple[np.ndarray, ...]:
    """`_chain_tails` of delta layer `d`'s entries in [start, end) and (floor, at]:
    a slice of those of all its keys in that LSN range, from `_TAILS` (a layer
    straddling the floor, as a compaction's L1 over L0s from both sides of an
    image does, is held per floor: partitions imaged together share one)."""
    lo = floor + 1 if floor >= d.name.lsn_start else 0
    hi = at + 1 if at + 1 < d.name.lsn_end else LSN_LIMIT
    key = (d.file.identity, lo, hi)
    tails = _TAILS.get(key)
    if tails is None:
        tails = _read_tails(d, lo, hi)
        _TAILS.put(key, tails)
    keys = tails[0]
    a, b = np.searchsorted(keys, start, "left"), np.searchsorted(keys, end, "left")
    return tuple(t[a:b] for t in tails)


_PAST_EVERY_KEY = b"\xff" * (KEY_SIZE + 1)
_TAIL_WINDOW_BYTES = 4 << 20  # raw bytes of blocks whose heads are decoded together


def _read_tails(d: Layer, lo: int, hi: int) -> tuple[np.ndarray, ...]:
    """`_chain_tails` of all of delta layer `d`'s entries with lo <= lsn < hi, read
    from its blocks in windows of about `_TAIL_WINDOW_BYTES` (`LayerFile.block_heads`:
    the head frames alone, no value; a window's heads decoded together, blocks
    without an LSN in [lo, hi) not read; a key straddling two windows is cut
    between them by key, so no entry is taken twice)."""
    f = d.file
    cuts = [b"", *(f.blocks[i].first_key
                   for i in f.blocks.window_starts(_TAIL_WINDOW_BYTES)), _PAST_EVERY_KEY]
    ks, kinds = [], []
    for a, z in itertools.pairwise(cuts):
        h = f.block_heads(a, z, lo, hi)
        ks.append(h.order_keys())
        kinds.append(h.kinds)
    if ks and sum(map(len, ks)):
        return _chain_tails(np.concatenate(ks), np.concatenate(kinds))
    return (np.empty(0, dtype=KEY_ORDER), np.empty(0, dtype=np.int64), np.empty(0, dtype=bool))


def longest_chain(above: list[Layer], start: bytes, end: bytes, floor: int, at: int) -> int:
    """Exactly: the most deltas a read at `at` of one key of [start, end) replays from
    the layers `above` (entries in (floor, at]; a key's chain goes down to its newest
    image, tombstone or will_init record). Reads the keys and kinds of those layers'
    blocks in the range, one layer at a time, each layer it takes whole only once
    (`_TAILS`) (what `chain_bound` over-counts: maxima of different keys, runs a
    newer image already ends)."""
    seg_keys, seg_tails, seg_starts, seg_age = [], [], [], []
    for age, d in enumerate(sorted(above, key=lambda d: d.name.lsn_end)):  # oldest first
        k, t, st = _layer_tails(d, start, end, floor, at)
        if not len(k):
            continue
        seg_keys.append(k)
        seg_tails.append(t)
        seg_starts.append(st)
        seg_age.append(np.full(len(k), age, dtype=np.int64))
    if not seg_keys:
        return 0
    keys = np.concatenate(seg_keys)
    order = key_order(keys, np.concatenate(seg_age))  # by key, then oldest first
    keys, tails = keys[order], np.concatenate(seg_tails)[order]
    starts = np.concatenate(seg_starts)[order].astype(np.int64)
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    group = np.repeat(np.arange(len(first)), np.diff(np.r_[first, len(keys)]))
    # a segment counts unless a newer segment of its key holds a chain start
    later = np.cumsum(starts[::-1])[::-1] - starts  # starts after each row, any key
    group_end = np.r_[first[1:], len(keys)]
    after_group = np.r_[np.cumsum(starts[::-1])[::-1], 0][group_end]
    counted = np.where(later - after_group[group] == 0, tails, 0)
    return int(np.add.reduceat(counted, first).max())


def make_images(store: LayerStore, start: bytes, end: bytes, at: int) -> list[LayerName]:
    """Write and commit image layers holding every key of [start, end) at `at`.

    Column-wise per scan window: a block of a floor image layer whose keys have no
    entry above it is copied whole, its values frame as it is on disk
    (`scan.unchanged_blocks`); keys whose value at `at` is an image already (the
    floor image, or an image entry with nothing above it) are copied as a block of
    rows; only the others cost redo (`_window_images`: one `WindowRedo.into` call a
    window, one key at a time for the chains it leaves). A key redo cannot rebuild
    is left out and the image layers end before it and restart after it.

    Raises: MaintenanceStopped (nothing committed, no file left) once a stop is
    requested; EditConflict if `at` left [retention_lsn, durable_lsn] meanwhile."""
    view = store.view()
    stats = ReadStats()
    cfg = store.config
    out = _ImageOutput(store, start, at)
    try:
        for w in window_chains(view, start, end, at, stats, copy_blocks=True):
            store.checkpoint()
            rows, skipped = (_window_images(store, w.chains, at, stats)
                             if w.chains is not None else (EntryBatch.empty(), []))
            out.emit(rows, skipped, w.copies, cfg.target_file_bytes)
        outputs = out.close(end)
        store.checkpoint()
    except BaseException:
        out.abort()
        raise
    commit.commit(store, commit.Edit("image", add=tuple(outputs)))
    store.count(image_layers_created=len(outputs),
                bytes_imaged=sum(o.entry.size for o in outputs),
                image_blocks_copied=out.copied)
    return [o.entry.name for o in outputs]


def _window_images(store: LayerStore, ch: Chains, at: int,
                   stats: ReadStats) -> tuple[EntryBatch, list[bytes]]:
    """The image rows (at `at`) of every key present in a window, in key order, and
    the keys left out because redo cannot rebuild them. Chains with records are built
    in one `WindowRedo.into` call where the store's redo is one; `__call__` builds
    the chains it leaves, one key at a time."""
    b = ch.batch
    present = ch.present()
    single = present & (ch.stop - ch.first == 1) & (b.kinds[ch.first] == _IMAGE)
    copied = b.take(ch.first[single]).with_lsn(at)
    rest = np.flatnonzero(present & ~single)
    in_slots, rest = _built_in_slots(store, ch, rest, at)
    built = BatchBuilder()
    skipped: list[bytes] = []
    for g in rest.tolist():
        store.checkpoint()
        kb = b.key_at(int(ch.first[g]))
        key = Key.from_bytes(kb)
        try:
            page = ch.value(g, key, store.redo, stats)
        except (UnsupportedRecordError, RedoError) as e:
            # This key cannot be rebuilt (e.g. an access method with no redo yet):
            # leave it out of every image layer, so its reads keep using its deltas
            # (Invariant: an image layer holds every key of its range at its LSN).
            if not skipped:
                log.info("image layers at %s skip %s: %s", Lsn(at), key, e)
            skipped.append(kb)
            continue
        if page is not None:
            built.add(kb, at, PageImage(page))
    both = EntryBatch.concat([copied, in_slots, built.build()])
    return both.take(key_order(both.keys)), skipped


def _built_in_slots(store: LayerStore, ch: Chains, rest: np.ndarray,
                    at: int) -> tuple[EntryBatch, np.ndarray]:
    """The image rows at `at` of the chains `rest` of `ch` that the store's redo builds
    in one `into` call (one SLOT_BYTES slot each), and the chains it left. Memory: a
    slot per chain, about the window's own bytes (a window is ~WINDOW_BYTES of
    blocks, and a chain `into` can build starts from a page among them)."""
    redo = store.redo
    if not len(rest) or not isinstance(redo, WindowRedo):
        return EntryBatch.empty(), rest
    store.checkpoint()
    dst = bytearray(len(rest) * SLOT_BYTES)
    done = redo.into(dst, SLOT_BYTES, ch.batch, ch.first[rest], ch.stop[rest],
                     np.arange(len(rest), dtype=np.int64))
    slots = np.flatnonzero(done).astype(np.int64)
    n = len(slots)
    rows = EntryBatch(ch.batch.keys[ch.first[rest[slots]]], np.full(n, at, np.int64),
                      np.full(n, _IMAGE, np.uint8), slots * SLOT_BYTES,
                      (slots + 1) * SLOT_BYTES, (bytes(dst),))
    return rows, rest[~done]


class _ImageOutput:
    """The image layer files of one make_images: cut at ~target_file_bytes and around
    skipped keys."""

    def __init__(self, store: LayerStore, start: bytes, at: int) -> None:
        self.store, self.at, self.cur = store, at, start
        self.copied = 0  # blocks copied whole
        self.outputs: list[commit.NewLayer] = []
        self.w = self._writer()

    def _writer(self) -> LayerWriter:
        # two frames a block: the next image over these keys can copy a block whose
        # keys did not change, values frame and all (LayerWriter.copy_image_block)
        cfg = self.store.config
        return LayerWriter(self.store.directory, block_bytes=cfg.block_bytes,
                           zstd_level=cfg.zstd_level, owner=self.store.role.value)

    def _finish(self, ke: bytes) -> None:
        name = LayerName.image(self.cur, ke, self.at)
        sealed = self.w.seal(name)
        self.outputs.append(commit.NewLayer(LayerEntry(name, Level.IMAGE, sealed.size), sealed))
        self.w = self._writer()

    def add(self, rows: EntryBatch, target: int) -> None:
        if len(rows) and self.w.raw_bytes >= target:
            first = rows.key_at(0)
            self._finish(first)
            self.cur = first
        self.w.add_batch(rows)

    def emit(self, rows: EntryBatch, skipped: list[bytes],
             copies: list[tuple[LayerFile, int]], target: int) -> None:
        """A window's image rows (key order), keys left out and blocks copied whole
        (none of them a key of `rows`), written in key order."""
        marks: list[tuple[bytes, tuple[LayerFile, int] | None]] = [
            *((kb, None) for kb in skipped),
            *((f.blocks[i].first_key, (f, i)) for f, i in copies)]
        for kb, block in sorted(marks, key=lambda m: m[0]):
            a = rows.key_slice(kb, kb)[0]
            self.add(rows.slice(0, a), target)
            if block is None:
                self.skip(kb)
            else:
                self.copy(*block, target)
            rows = rows.slice(a, len(rows))
        self.add(rows, target)

    def copy(self, f: LayerFile, i: int, target: int) -> None:
        first = f.blocks[i].first_key
        if self.w.raw_bytes >= target:
            self._finish(first)
            self.cur = first
        head, values = f.image_block_parts(i)
        self.w.copy_image_block(head, values, self.at)
        self.copied += 1

    def skip(self, kb: bytes) -> None:
        if self.cur < kb:
            self._finish(kb)
        self.cur = Key.from_bytes(kb).next().to_bytes()

    def close(self, end: bytes) -> list[commit.NewLayer]:
        if self.cur < end:
            self._finish(end)
        self.w.abort()
        return self.outputs

    def abort(self) -> None:
        self.w.abort()
        commit.Edit("image", add=tuple(self.outputs)).abort()
