"""The SQL the proxy sends to servers for its own purposes, when a session moves
through time: the privilege check, timestamp input and output, carrying
session settings to a historical server, the creation point of a role or
database, and raising an error on a server.

Fed by: nothing. Feeds: `proxy.travel`. Owns: the texts; every query is
schema-qualified so a session's search_path cannot redirect it.
"""

from __future__ import annotations

from collections.abc import Mapping

from strata.proxy import sqlstate as ss
from strata.proxy.statements import TRAVEL_WAIT
from strata.runtime.primary import TRAVEL_ROLE


def may_travel_sql(role: str) -> str:
    """Whether `role` (an SQL expression: session_user, current_user) may time
    travel: a superuser or a member of TRAVEL_ROLE."""
    return ("SELECT r.rolsuper OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles t "
            f"WHERE t.rolname = '{TRAVEL_ROLE}' AND pg_catalog.pg_has_role(r.oid, t.oid, "
            f"'MEMBER')) FROM pg_catalog.pg_roles r WHERE r.rolname = {role}")


PRIVILEGE_SQL = may_travel_sql("session_user")  # the session's own login role
# Exact microseconds since the Unix epoch (extract returns numeric: no float
# rounding), the value as the session displays it, and the session TimeZone.
TIMESTAMP_SQL = (
    "SELECT CASE WHEN pg_catalog.isfinite(t) "
    "THEN (extract(epoch FROM t) * 1000000)::int8 END, t::text, "
    "pg_catalog.current_setting('TimeZone') FROM (SELECT $1::text::timestamptz AS t) s"
)
TIME_TEXT_SQL = "SELECT $1::text::timestamptz::text"
NOT_CARRIED = ("default_transaction_read_only", "transaction_read_only",
               "transaction_isolation", "transaction_deferrable", "in_hot_standby")
# Placeholder settings are not in pg_settings: strata.travel_wait is read by name.
SETTINGS_SQL = (
    "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' AND name NOT IN ("
    + ", ".join(f"'{n}'" for n in NOT_CARRIED) + ") "
    "UNION ALL SELECT 'role', pg_catalog.current_setting('role') "
    "WHERE pg_catalog.current_setting('role') <> 'none' "
    f"UNION ALL SELECT '{TRAVEL_WAIT}', pg_catalog.current_setting('{TRAVEL_WAIT}', true) "
    f"WHERE pg_catalog.current_setting('{TRAVEL_WAIT}', true) IS NOT NULL"
)
# Applies the settings and formats a time ($2, may be NULL) in the result.
APPLY_SQL = ("SELECT count(pg_catalog.set_config(key, value, false)), "
             "$2::text::timestamptz::text FROM pg_catalog.json_each_text($1::text::json)")
AUTHID_READABLE_SQL = "SELECT pg_catalog.has_table_privilege('pg_catalog.pg_authid', 'SELECT')"
CREATED_SQL = {
    "role": "SELECT xmin::text FROM pg_catalog.pg_authid WHERE rolname = $1",
    "database": "SELECT xmin::text FROM pg_catalog.pg_database WHERE datname = $1",
}


def raise_sql(fields: Mapping[str, str]) -> str:
    """A DO block raising `fields` on a server (hex-encoded: no quoting issues)."""
    def lit(s: str) -> str:
        return f"convert_from(decode('{s.encode('utf-8', 'surrogateescape').hex()}', 'hex'), 'UTF8')"
    opts = [f"ERRCODE = '{fields.get('C', ss.INTERNAL_ERROR)}'", f"MESSAGE = {lit(fields.get('M', ''))}"]
    if fields.get("D"):
        opts.append(f"DETAIL = {lit(fields['D'])}")
    if fields.get("H"):
        opts.append(f"HINT = {lit(fields['H'])}")
    return f"DO $strata$BEGIN RAISE EXCEPTION USING {', '.join(opts)}; END$strata$"
