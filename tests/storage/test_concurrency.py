"""One writer + many readers with the background flush/compaction workers running."""

from __future__ import annotations

import random
import threading
from pathlib import Path

from strata.key import KeyRange
from strata.pagestore import PageStore
from strata.storage.config import StorageConfig

from .conftest import append_redo, rk
from .test_crash import KEYS, entry_at, model_upto

CFG = StorageConfig(memtable_bytes=3000, block_bytes=600, target_file_bytes=5000,
                    l0_compaction_trigger=2, image_delta_threshold=2, cache_pages=256,
                    retention_lsn_distance=None)


def test_readers_see_exact_history_while_writer_flushes_and_compacts(tmp_path: Path) -> None:
    n = 3000
    model = model_upto(8 * n)
    ps = PageStore.open(tmp_path, append_redo, CFG)
    errors: list[BaseException] = []
    done = threading.Event()

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            while not done.is_set():
                top = int(ps.ingested_lsn)
                if top == 0:
                    continue
                lsn = rnd.randint(0, top)
                k = rnd.randrange(KEYS)
                assert ps.get_page(rk(k), lsn) == model.get(rk(k), lsn), (k, lsn)
                if rnd.random() < 0.05:
                    assert list(ps.scan(KeyRange.everything(), lsn)) == model.scan(lsn)
        except BaseException as e:
            errors.append(e)

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    for t in readers:
        t.start()
    try:
        for i in range(1, n + 1):
            k, v = entry_at(8 * i)
            ps.put(rk(k), 8 * i, v)
            ps.advance(8 * i)
        ps.flush()
        # maintenance from this thread too, racing the background worker and the readers
        ps.compact()
        ps.create_image_layers(threshold=0)
    finally:
        done.set()
        for t in readers:
            t.join()
    try:
        assert not errors, errors[0]
        mt = ps.metrics()
        assert mt.flushes >= 5 and mt.compactions >= 1 and mt.image_layers_created >= 1
        assert mt.gets > 100
        assert ps.durable_lsn == 8 * n
    finally:
        ps.close()
