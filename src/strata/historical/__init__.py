"""Historical compute: an LSN -> a running, read-only, stock PostgreSQL 18.

Fed by a `ClusterView` (what a data directory at LSN X is made of: the page
store for live history, a cleanly stopped data directory for imports) and, in
other processes, the page store read-only (`reader`). `modes` is the one
factory (lazy | materialize | auto): `lazy` + `lazyfs` + `lazyview` serve the
data directory over FUSE, pages rebuilt on first read; `materialize` /
`parallel` write every page; `served` / `catalog_patch` say what both show;
`checkpoint` writes pg_control at X and its shutdown checkpoint; `skeleton`
prepares directories ahead; `instance` starts a hot standby on them, `pool`
keeps running instances by LSN, `pitr` is the native-PITR oracle for tests.
Feeds the proxy and `strata status`. Owns the instance directories and mounts.
"""
