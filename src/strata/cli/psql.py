"""``strata psql [--home DIR] [psql args]``: the bundled psql on the running strata.

Connects to what ``<home>/state.json`` names as the target (written by
``strata up``): the primary today, the proxy once it exists. Extra arguments
go to psql unchanged (``strata psql -c 'SELECT 1'``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from strata.errors import ConfigError
from strata.home import HomeLayout, resolve_home
from strata.home.files import DaemonState, load_daemon_state
from strata.runtime.pgbin import find_pg_binaries


def register(subparsers: Any) -> None:
    # Every argument but a leading --home belongs to psql (``strata psql -c ...``), so
    # this parser has no option syntax of its own ("+" never starts a psql argument).
    p: argparse.ArgumentParser = subparsers.add_parser(
        "psql", help="open psql on the running strata ([--home DIR] [psql args])",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        prefix_chars="+", add_help=False)
    p.add_argument("psql_args", nargs=argparse.REMAINDER, help="[--home DIR] then psql's")
    p.set_defaults(func=run)


def split_home(argv: list[str]) -> tuple[str | None, list[str]]:
    """A leading ``--home DIR`` / ``--home=DIR`` (and a ``--`` after it) from psql's args."""
    home: str | None = None
    if argv and argv[0] == "--home":
        if len(argv) < 2:
            raise ConfigError("--home needs a directory")
        home, argv = argv[1], argv[2:]
    elif argv and argv[0].startswith("--home="):
        home, argv = argv[0].split("=", 1)[1], argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    return home, argv


def psql_argv(state: DaemonState, extra: list[str]) -> list[str]:
    """The psql command line for a daemon state (home/FORMAT.md)."""
    psql = str(find_pg_binaries().path("psql"))
    return [psql, "-h", state.target_host, "-p", str(state.target_port),
            "-U", state.target_user, "-d", state.target_dbname, *extra]


def run(args: argparse.Namespace) -> int:
    home_arg, extra = split_home(list(args.psql_args))
    home = resolve_home(home_arg)
    state = load_daemon_state(HomeLayout(home).daemon_file)
    if state is None:
        raise ConfigError(f"strata is not running on {home} (start it with `strata up "
                          f"--home {home}`)")
    argv = psql_argv(state, extra)
    if state.passfile:
        os.environ["PGPASSFILE"] = state.passfile
    os.execv(argv[0], argv)
    return 127  # not reached
