"""The key space: what each key kind means and how its values are encoded.

What it is: the one owner of every value codec ingest writes and
reconstruct / historical read (keyspace/FORMAT.md has the byte tables and
invariants). Storage stores opaque values under 18-byte keys (`strata.key`);
this package gives them meaning, per key kind:

================  =========================================================
key kind          codec
================  =========================================================
REL_BLOCK         `relation.encode_record_delta` / `decode_delta` (a WAL record);
                  images are bare 8 KB pages
REL_SIZE          `relation.encode_rel_size` / `decode_rel_size`
DB_DIR            `relation.DB_DIR_PRESENT`
SLRU_PAGE         `slru` (tags IMAGE / DELTA / TRUNCATED, ops), stored by
                  `slru.slru_store_value`
RELMAP            the 524-byte pg_filenode.map as written by PostgreSQL
CLUSTER           `cluster.ClusterState.to_bytes` / `from_bytes`
AUX               `cluster.control_template_key`: the imported pg_control
================  =========================================================

Layering: imports the bottom layer (`key`, `lsn`, `errors`), `pg` (PostgreSQL
constants and layouts) and `storage.values` (the storage value kinds);
imported by ingest, reconstruct, historical and the tools, never the reverse.
"""
