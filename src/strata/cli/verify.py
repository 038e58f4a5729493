"""`strata verify [--home DIR]`: check the manifest and every layer's checksums.

Read-only: safe while strata runs. Exit status 0 when everything verifies, 1 otherwise.
"""

from __future__ import annotations

import argparse
from typing import Any

from strata.cli._common import add_home, store_dir
from strata.lsn import Lsn
from strata.storage.tools import verify_store


def run(args: argparse.Namespace) -> int:
    d = store_dir(args)
    rep = verify_store(d)
    m = rep.manifest
    if m is not None:
        print(f"manifest      generation {m.generation}, {len(m.layers)} layers, "
              f"durable_lsn {Lsn(m.durable_lsn)}, retention_lsn {Lsn(m.retention_lsn)}")
    print(f"layers ok     {rep.layers_ok}, entries {rep.entries}")
    for fn in rep.leftovers:
        print(f"leftover      {fn} (not in the manifest; removed when the store next opens)")
    for err in rep.errors:
        print(f"CORRUPT       {err}")
    if not rep.ok:
        print("verify FAILED: restore the damaged files from a copy, or move "
              f"{d} aside and re-import from the primary")
        return 1
    print("verify OK")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("verify", help="check the manifest and every layer checksum")
    add_home(p)
    p.set_defaults(func=run)
