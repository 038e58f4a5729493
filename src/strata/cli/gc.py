"""`strata gc [--home DIR] (--horizon LSN | --keep BYTES)`: raise the retention horizon
and remove layers no read at or above it needs (images are written at the horizon
first where needed). Takes the store's writer lock: run it while strata is stopped.
"""

from __future__ import annotations

import argparse
from typing import Any

from strata.cli._common import add_home, store_dir
from strata.errors import ConfigError
from strata.lsn import Lsn
from strata.pagestore import PageStore
from strata.reconstruct.reconstruct import reconstruct_value


def run(args: argparse.Namespace) -> int:
    ps = PageStore.open(store_dir(args), reconstruct_value, background=False)
    try:
        if args.horizon is not None:
            try:
                horizon = int(Lsn.parse(args.horizon))
            except ValueError as e:
                raise ConfigError(str(e)) from e
        elif args.keep is not None:
            horizon = max(0, int(ps.durable_lsn) - args.keep)
        else:
            raise ConfigError("say where history may end: --horizon LSN or --keep BYTES")
        removed = ps.set_retention_lsn(horizon)
        print(f"gc: retention_lsn {ps.retention_lsn}, {len(removed)} layers removed")
        for n in removed:
            print(f"  removed {n}")
    finally:
        ps.close()
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("gc", help="remove history below a retention horizon")
    add_home(p)
    p.add_argument("--horizon", default=None, help="oldest LSN to keep readable (X/Y)")
    p.add_argument("--keep", type=int, default=None, help="keep this many bytes of LSN history")
    p.set_defaults(func=run)
