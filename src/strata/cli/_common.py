"""What every subcommand shares: the ``--home`` option and where it leads.

Every subcommand finds its home with `strata.home.resolve_home`, so `strata up`
and the tools always look in the same place.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from strata.errors import ConfigError
from strata.home import HomeLayout, resolve_home
from strata.lsn import Lsn

HOME_HELP = ("strata home (default: $STRATA_HOME, else /var/lib/strata as root, "
             "else ~/.strata)")


def add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", help=HOME_HELP)


def layout(args: argparse.Namespace) -> HomeLayout:
    return HomeLayout(resolve_home(args.home))


def store_dir(args: argparse.Namespace) -> Path:
    """The home's layer store. Raises: ConfigError "no store here" when there is
    none (a missing store is not a damaged one)."""
    lay = layout(args)
    if not lay.has_store():
        raise ConfigError(f"no store here: {lay.layers} holds no layer store (has `strata up` "
                          f"run with --home {lay.root}?)")
    return lay.layers


def flush_through(lay: HomeLayout) -> Callable[[Lsn], Lsn]:
    """A reader's way to make the home's store durable through an LSN: ask the
    running ingest service (`strata up`) to flush it."""
    from strata.services.control import ask_flush

    return lambda lsn: ask_flush(lay.ingest_socket, lsn)
