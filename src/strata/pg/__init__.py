"""PostgreSQL 18 knowledge without I/O: constants, layouts and algorithms shared
by layers that must agree byte for byte with the server.

- constants.py: page and WAL sizes, fork numbers, OIDs, WAL levels (pg_config.h,
  pg_control.h, relpath.h, ...); rmgrids.py: resource manager ids (rmgrlist.h);
  structs.py: the precompiled little-endian scalar structs;
- checksum.py: page checksums (checksum_impl.h); slru.py: pg_xact and
  pg_multixact pages (clog.c, multixact.c); transam.py: xid arithmetic
  (transam.h); xlogfile.py: WAL segment file names (xlog_internal.h);
  timestamp.py: TimestampTz (timestamp.h); catalog.py: system catalog rows
  (pg_class.h, pg_attribute.h, ...).

Imports nothing from strata but the bottom layer.
"""
