"""pgStrata: PostgreSQL 18 with versioned layer storage and Time Travel.

A sidecar to a stock PostgreSQL 18: WAL is streamed over a replication slot,
decoded, stored as immutable (Key, Lsn) entries in layer files, and pages are
rebuilt at any LSN to serve read-only historical servers behind a proxy.
See DESIGN.md (shared) and the README.
"""

__version__ = "0.1.0"
