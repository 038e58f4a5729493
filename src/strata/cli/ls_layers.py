"""`strata ls-layers [--home DIR]`: list live layers: kind, key range, LSN range, size."""

from __future__ import annotations

import argparse
from typing import Any

from strata.cli._common import add_home, store_dir
from strata.errors import StrataError
from strata.lsn import Lsn
from strata.storage.manifest import load_manifest
from strata.storage.tools import level_name


def run(args: argparse.Namespace) -> int:
    d = store_dir(args)
    m = load_manifest(d)
    if m is None:
        raise StrataError(f"no layer store at {d}")
    print(f"{'kind':<9} {'key start':<36} {'key end':<36} {'lsn range':<27} {'size':>12}")
    for le in sorted(m.layers, key=lambda x: (x.name.lsn_start, x.name.key_start)):
        n = le.name
        lsns = str(Lsn(n.image_lsn)) if n.is_image else f"[{Lsn(n.lsn_start)}, {Lsn(n.lsn_end)})"
        print(f"{level_name(le.level):<9} {n.key_start.hex().upper():<36} "
              f"{n.key_end.hex().upper():<36} {lsns:<27} {le.size:>12}")
    print(f"{len(m.layers)} layers, {sum(le.size for le in m.layers)} bytes, "
          f"durable_lsn {Lsn(m.durable_lsn)}, retention_lsn {Lsn(m.retention_lsn)}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("ls-layers", help="list live layers")
    add_home(p)
    p.set_defaults(func=run)
