"""``strata up``: start (or attach to) a PostgreSQL 18 primary and follow its WAL.

Without ``--source``: an embedded primary under ``<home>/primary`` (initdb on
the first run), listening on 127.0.0.1 (``--port`` or a free port). With
``--source DSN``: attach to a running PostgreSQL 18 primary (a role with the
REPLICATION attribute; the slot ``strata`` is created when missing) and
stream only (the base-backup import arrives with issue 5). Runs until Ctrl-C
or SIGTERM, then stops streaming and the embedded primary cleanly. Details:
`strata.daemon`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from strata.daemon import Daemon, UpOptions, resolve_home
from strata.errors import ConfigError


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "up", help="start PostgreSQL 18 and stream its WAL into strata",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", help="strata's directory (default $STRATA_HOME or ~/.strata)")
    p.add_argument("--port", type=int,
                   help="port of the embedded primary on 127.0.0.1 (default: a free port)")
    p.add_argument("--source", metavar="DSN",
                   help="attach to this running PostgreSQL 18 primary instead")
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="one line per WAL record (like pg_waldump), and info logs")
    p.add_argument("--progress-interval", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between progress lines (default 10)")
    p.add_argument("--status-interval", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between standby status updates to the primary (default 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.source is not None and args.port is not None:
        raise ConfigError("--port sets the embedded primary's port; it has no meaning with "
                          "--source (the proxy port arrives with issue 5)")
    opts = UpOptions(home=resolve_home(args.home), port=args.port, source=args.source,
                     verbose=args.verbose, progress_interval=args.progress_interval,
                     status_interval=args.status_interval)
    daemon = Daemon(opts, out=sys.stdout)
    restore = daemon.install_signal_handlers()
    try:
        return daemon.run()
    finally:
        restore()
