"""``strata up``: PostgreSQL 18 + WAL ingest + the time-travel proxy, one command.

Without ``--source``: an embedded primary under ``<home>/primary`` (initdb and
the history import on the first run). With ``--source DSN``: attach to a
running PostgreSQL 18 primary (a role with the REPLICATION attribute; the
slot ``strata`` is created when missing), imported from a base backup on the
first run. Then WAL is ingested continuously and the proxy listens on
127.0.0.1:PORT (``--port``, default 55432). Prints how to connect; runs until
Ctrl-C or SIGTERM, then stops everything cleanly; a restart resumes where it
stopped. Details: `strata.daemon`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from strata.cli._common import HOME_HELP
from strata.daemon import Daemon, UpOptions
from strata.errors import ConfigError
from strata.home import check_server_can_reach, resolve_home
from strata.ingest.pipeline import FLUSH_INTERVAL
from strata.services.maintenance import Retention
from strata.storage.config import StorageConfig

DEFAULT_PROXY_PORT = 55432


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "up", help="start PostgreSQL 18 and stream its WAL into strata",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", help=HOME_HELP)
    p.add_argument("--port", type=int, default=DEFAULT_PROXY_PORT,
                   help=f"the proxy's port on 127.0.0.1 (default {DEFAULT_PROXY_PORT}; 0: any free port)")
    p.add_argument("--primary-port", type=int,
                   help="port of the embedded primary on 127.0.0.1 (default: a free port)")
    p.add_argument("--flush-interval", type=float, default=FLUSH_INTERVAL, metavar="SECONDS",
                   help="seconds between forced flushes of ingested WAL to layers; the end of a "
                        f"burst is flushed after 1 s without WAL (default {FLUSH_INTERVAL:g})")
    p.add_argument("--max-instances", type=int, default=4,
                   help="historical servers kept running at once (default 4)")
    p.add_argument("--instance-idle-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="stop a historical server unused this long (default 300)")
    p.add_argument("--historical", choices=("lazy", "materialize", "auto"), default="auto",
                   help="how historical servers are built: lazy (a FUSE data directory, "
                        "pages rebuilt on first read), materialize (every page written "
                        "first) or auto (lazy where FUSE works; the default)")
    p.add_argument("--retention", metavar="TIME|SIZE",
                   help="keep this much history: a time (7d, 12h, 30m) or a size of WAL "
                        "(10GB); older history is collected once image layers hold it "
                        "(default: keep everything)")
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
    if args.retention is not None:
        Retention.parse(args.retention)  # a bad value is refused before anything starts
    StorageConfig.from_env()  # so is a bad STRATA_STORAGE
    if args.source is not None and args.primary_port is not None:
        raise ConfigError("--primary-port is for the embedded primary; with --source the "
                          "primary is the one the DSN names")
    home = resolve_home(args.home)
    check_server_can_reach(home)
    opts = UpOptions(home=home, port=args.port, source=args.source,
                     verbose=args.verbose, progress_interval=args.progress_interval,
                     status_interval=args.status_interval, flush_interval=args.flush_interval,
                     max_instances=args.max_instances,
                     instance_idle_timeout=args.instance_idle_timeout,
                     primary_port=args.primary_port, historical=args.historical,
                     retention=args.retention)
    daemon = Daemon(opts, out=sys.stdout)
    restore = daemon.install_signal_handlers()
    try:
        return daemon.run()
    finally:
        restore()
