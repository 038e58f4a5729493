"""`strata dump-layer FILE`: print a layer file's header, blocks, entries, index, footer."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from strata.storage.tools import dump_layer


def run(args: argparse.Namespace) -> int:
    for line in dump_layer(Path(args.file), max_entries=args.max_entries):
        print(line)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("dump-layer", help="print every part of a layer file")
    p.add_argument("file", help="a .delta or .image layer file")
    p.add_argument("--max-entries", type=int, default=None, help="entries to print (default all)")
    p.set_defaults(func=run)
