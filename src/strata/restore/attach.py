"""The past inside live queries: a schema of foreign tables over a historical server.

What it is: `attach_past` and `detach_past`. Attaching creates, in one
transaction on a live database, a postgres_fdw foreign server that reaches
the proxy with the startup option ``-c strata.travel_lsn=X`` (X resolved
once from ``--at``), a user mapping for the attaching role, and a schema
holding ``IMPORT FOREIGN SCHEMA`` of the past schema; then a lease
(`restore.leases`) keeps the historical server at X running. After that
``INSERT INTO orders SELECT * FROM past.orders WHERE id = 42`` or a join of
the present with the past is ordinary SQL.
Fed by: `cli/attach_past.py`. Feeds: the live database's catalog, the lease
directory. Owns: the naming and the rules:

- lifetime: the foreign server names an LSN, not a process; while its lease
  exists the daemon keeps that server up, and a historical server at X is
  rebuilt on demand anyway (e.g. after `strata up` restarts). `detach-past`
  drops the schema and the server (with its user mappings), then the lease;
- privileges: only roles that may time travel (superusers and members of
  ``strata_time_travel``) may attach, and the proxy checks every connection
  the foreign server makes, so a role that may not time travel gets 42501
  from the past even with a user mapping. Others need USAGE on the schema,
  SELECT on its tables and a user mapping of their own;
- the past is read-only: writes to its foreign tables get 25006.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strata.errors import RestoreError
from strata.proxy.travel_sql import may_travel_sql
from strata.restore.endpoint import Endpoint, Point, pg_error, resolve_point
from strata.restore.leases import LEASE_DIR, Lease, remove_lease, write_lease
from strata.restore.plan import truncate_name
from strata.restore.script import quote_ident
from strata.runtime.primary import TRAVEL_ROLE

MAY_TRAVEL_SQL = may_travel_sql("current_user")  # the role attaching (after SET ROLE)
SERVER_PREFIX = "strata_past_"


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def server_name(schema: str) -> str:
    """The foreign server of an attached schema."""
    return truncate_name(SERVER_PREFIX + schema)


def password_for(passfile: str | None, user: str) -> str | None:
    """The password libpq would use for `user`: $PGPASSWORD, else the first
    matching line of the libpq password file (``host:port:db:user:password``)."""
    if os.environ.get("PGPASSWORD"):
        return os.environ["PGPASSWORD"]
    if not passfile or not Path(passfile).exists():
        return None
    for line in Path(passfile).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields: list[str] = []
        cur, esc = "", False
        for ch in line:
            if esc:
                cur, esc = cur + ch, False
            elif ch == "\\":
                esc = True
            elif ch == ":" and len(fields) < 4:
                fields.append(cur)
                cur = ""
            else:
                cur += ch
        fields.append(cur)
        if len(fields) == 5 and fields[3] in ("*", user):
            return fields[4]
    return None


@dataclass(frozen=True, slots=True)
class Attached:
    schema: str
    server: str
    database: str
    point: Point
    tables: int


def _may_travel(conn: Any, user: str) -> None:
    row = conn.execute(MAY_TRAVEL_SQL).fetchone()
    if not row or not row[0]:
        raise RestoreError(f"role {user} may not time travel: it must be a superuser or a "
                           f"member of {TRAVEL_ROLE}")


def attach_past(ep: Endpoint, at: str, schema: str, db: str = "postgres",
                remote_schema: str = "public") -> Attached:
    """Attach the past schema `remote_schema` of `db` at `at` as `schema`.

    Raises: RestoreError (nothing is created) when the role may not time
    travel, `schema` or its server exists, or the import fails."""
    point = resolve_point(ep, at, db)
    server = server_name(schema)
    leases = ep.home / LEASE_DIR
    conn = ep.connect(db, autocommit=False)
    try:
        _may_travel(conn, ep.user)
        if conn.execute("SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = %s",
                        (schema,)).fetchone()[0]:
            raise RestoreError(f"schema {schema} already exists in database {db}")
        if conn.execute("SELECT count(*) FROM pg_catalog.pg_foreign_server WHERE srvname = %s",
                        (server,)).fetchone()[0]:
            raise RestoreError(f"foreign server {server} already exists in database {db}")
        for sql in _attach_sql(ep, db, point, schema, server, remote_schema):
            conn.execute(sql)
        tables = conn.execute("SELECT count(*) FROM pg_catalog.pg_foreign_table ft JOIN "
                              "pg_catalog.pg_class c ON c.oid = ft.ftrelid JOIN "
                              "pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                              "WHERE n.nspname = %s", (schema,)).fetchone()[0]
        write_lease(leases, Lease(point.lsn, db, schema, server, str(point)))
        try:
            conn.commit()
        except BaseException:
            remove_lease(leases, db, schema)
            raise
    except Exception as e:
        conn.rollback()
        if getattr(e, "sqlstate", None):
            raise RestoreError(f"attaching the past of {db} at {point} as {schema} failed: "
                               f"{pg_error(e)}") from e
        raise
    finally:
        conn.close()
    return Attached(schema, server, db, point, int(tables))


def _attach_sql(ep: Endpoint, db: str, point: Point, schema: str, server: str,
                remote_schema: str) -> list[str]:
    options = (f"host {literal(ep.host)}, port {literal(str(ep.port))}, dbname {literal(db)}, "
               f"options {literal(f'-c strata.travel_lsn={point.lsn}')}, "
               f"application_name {literal('strata past ' + schema)}")
    mapping = f"user {literal(ep.user)}"
    password = password_for(ep.passfile, ep.user)
    if password is not None:
        mapping += f", password {literal(password)}"
    else:
        mapping += ", password_required 'false'"
    s, srv = quote_ident(schema), quote_ident(server)
    return [
        "CREATE EXTENSION IF NOT EXISTS postgres_fdw",
        f"CREATE SERVER {srv} FOREIGN DATA WRAPPER postgres_fdw OPTIONS ({options})",
        f"COMMENT ON SERVER {srv} IS {literal(f'strata: the past at {point}')}",
        f"CREATE USER MAPPING FOR CURRENT_USER SERVER {srv} OPTIONS ({mapping})",
        f"CREATE SCHEMA {s}",
        f"COMMENT ON SCHEMA {s} IS "
        f"{literal(f'strata: schema {remote_schema} of {db} as it was at {point}')}",
        f"IMPORT FOREIGN SCHEMA {quote_ident(remote_schema)} FROM SERVER {srv} INTO {s}",
    ]


def detach_past(ep: Endpoint, schema: str, db: str = "postgres") -> bool:
    """Drop the attached schema and its server, then the lease.

    Raises: RestoreError when `schema` holds anything but foreign tables of
    its strata server (it is then not ours to drop). Returns: False when
    nothing was attached under that name."""
    server = server_name(schema)
    conn = ep.connect(db, autocommit=False)
    try:
        others = conn.execute(
            "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON "
            "n.oid = c.relnamespace LEFT JOIN pg_catalog.pg_foreign_table ft ON ft.ftrelid = "
            "c.oid LEFT JOIN pg_catalog.pg_foreign_server s ON s.oid = ft.ftserver WHERE "
            "n.nspname = %s AND s.srvname IS DISTINCT FROM %s", (schema, server)).fetchone()[0]
        if others:
            raise RestoreError(f"schema {schema} holds objects other than the foreign tables of "
                               f"{server}: drop them first (it is not dropped)")
        found = False
        if conn.execute("SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = %s",
                        (schema,)).fetchone()[0]:
            conn.execute(f"DROP SCHEMA {quote_ident(schema)} CASCADE")
            found = True
        if conn.execute("SELECT count(*) FROM pg_catalog.pg_foreign_server WHERE srvname = %s",
                        (server,)).fetchone()[0]:
            conn.execute(f"DROP SERVER {quote_ident(server)} CASCADE")
            found = True
        conn.commit()
    except Exception as e:
        conn.rollback()
        if getattr(e, "sqlstate", None):
            raise RestoreError(f"detaching {schema} from {db} failed: {pg_error(e)}") from e
        raise
    finally:
        conn.close()
    return remove_lease(ep.home / LEASE_DIR, db, schema) or found
