"""`strata compact [--home DIR] [--images]`: merge L0 layers into L1 layers now, and
optionally write image layers where delta chains are long.

Takes the store's writer lock: run it while strata itself is stopped. Progress
goes to stderr (a bar on a terminal, lines otherwise); the result to stdout.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from strata.cli._common import add_home, store_dir
from strata.pagestore import PageStore
from strata.progress import make_progress
from strata.reconstruct.reconstruct import reconstruct_value


def run(args: argparse.Namespace) -> int:
    ps = PageStore.open(store_dir(args), reconstruct_value, background=False)
    try:
        with make_progress(sys.stderr, "compact") as progress:
            progress.stage("merging the L0 layers")
            progress.start(None, "entries")
            made = ps.compact(force=True, progress=progress.update)
            if args.images:
                progress.stage("image layers where chains are long")
                progress.start(None, "key ranges")
                imgs = ps.create_image_layers(threshold=args.threshold, progress=progress.update)
        print(f"compact_l0: {len(made)} L1 layers written")
        if args.images:
            print(f"create_image_layers: {len(imgs)} image layers written at {ps.durable_lsn}")
    finally:
        ps.close()
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("compact", help="compact L0 layers into L1 (and images)")
    add_home(p)
    p.add_argument("--images", action="store_true", help="also create image layers")
    p.add_argument("--threshold", type=int, default=None,
                   help="delta layers above the newest image that trigger an image")
    p.set_defaults(func=run)
