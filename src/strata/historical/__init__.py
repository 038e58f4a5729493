"""Historical compute: an LSN -> a running, read-only, stock PostgreSQL 18.

Fed by a `SnapshotSource` (what a data directory at LSN X is made of: the page
store for live history, a cleanly stopped data directory for imports).
`materialize` writes the files, `instance` starts a hot standby on them,
`pool` keeps running instances by LSN, `pitr` is the native-PITR oracle for
tests. Feeds the proxy and `strata status`. Owns the instance directories.
"""
