"""`strata compact [--home DIR] [--images]`: merge L0 layers into L1 layers now, and
optionally write image layers where delta chains are long.

Takes the store's writer lock: run it while strata itself is stopped.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from strata.cli.verify import default_home
from strata.errors import RedoError
from strata.key import Key
from strata.pagestore import PageStore
from strata.storage.layermap import Redo
from strata.storage.tools import layers_dir
from strata.storage.values import WalRecord

REDO_MODULE = "strata.reconstruct.reconstruct"
REDO_FUNCTION = "reconstruct_value"


def resolve_redo() -> Redo:
    """The redo callback the daemon gives the store
    (`strata.reconstruct.reconstruct.reconstruct_value(key, base, records)`); if it cannot
    be imported, a redo that refuses loudly (compaction itself never needs redo; only
    image creation does)."""
    try:
        fn = getattr(importlib.import_module(REDO_MODULE), REDO_FUNCTION, None)
    except ImportError:
        fn = None
    if fn is not None:
        return fn  # type: ignore[no-any-return]

    def no_redo(key: Key, base: bytes | None, records: list[WalRecord]) -> bytes:
        raise RedoError(f"cannot rebuild {key}: no redo engine ({REDO_MODULE}.{REDO_FUNCTION}) "
                        "is available in this installation")
    return no_redo


def run(args: argparse.Namespace) -> int:
    ps = PageStore.open(layers_dir(args.home), resolve_redo(), background=False)
    try:
        made = ps.compact(force=True)
        print(f"compact_l0: {len(made)} L1 layers written")
        if args.images:
            imgs = ps.create_image_layers(threshold=args.threshold)
            print(f"create_image_layers: {len(imgs)} image layers written at {ps.durable_lsn}")
    finally:
        ps.close()
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("compact", help="compact L0 layers into L1 (and images)")
    p.add_argument("--home", default=default_home(), help="strata home (default $STRATA_HOME or ~/.strata)")
    p.add_argument("--images", action="store_true", help="also create image layers")
    p.add_argument("--threshold", type=int, default=None,
                   help="delta layers above the newest image that trigger an image")
    p.set_defaults(func=run)
