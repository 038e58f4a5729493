"""Ingest: decoded WAL records -> (Key, value) puts for the store.

Modules: `transam` (pg_xact, pg_multixact, relation maps, control values) and
`cluster_state` (the control values at an LSN). Other record kinds (relation
pages and sizes) are ingested by their own modules.
"""
