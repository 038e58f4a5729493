"""``strata detach-past --schema NAME [--db DB]``: end an attachment made by
``strata attach-past``: its schema of foreign tables and its foreign server
(with user mappings) are dropped, then the lease that kept the historical
server up. Details: `strata.restore.attach`.
"""

from __future__ import annotations

import argparse

from strata.cli._common import add_home


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("detach-past", help="drop a past schema attached by attach-past",
                       description=__doc__)
    p.add_argument("--schema", required=True, metavar="NAME", help="the attached schema")
    p.add_argument("--db", default="postgres", help="the database (default postgres)")
    add_home(p)
    p.add_argument("--user", default=None, help="role (default: the primary's superuser)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from strata.errors import ConfigError
    from strata.home import resolve_home
    from strata.restore.attach import detach_past
    from strata.restore.endpoint import Endpoint

    ep = Endpoint.of_home(resolve_home(args.home), args.user, "strata detach-past")
    if not detach_past(ep, args.schema, args.db):
        raise ConfigError(f"nothing is attached as schema {args.schema} in {args.db}")
    print(f"detached schema {args.schema} from {args.db}")
    return 0
