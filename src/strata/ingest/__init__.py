"""Ingest: decoded WAL records -> (Key, value) puts for the store.

Modules: `pipeline` (stream in, batches to ingest, publish policy),
`walingest` (the one writer: relation pages, sizes, databases, time map; a
record or a `RecordBatch` at a time), `batched` (its numpy half), `entries`
(entries as columns, handed to the store in one call), `transam` (pg_xact,
pg_multixact, relation maps, control values), `cluster_state` (the control
values at an LSN) and `catalog` / `catalog_changes` (DDL decoded from catalog
rows).
"""
