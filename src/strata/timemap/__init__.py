"""The time map: commit/abort timestamps -> LSNs, time -> LSN resolution, and
the DDL log (what each catalog-changing transaction did).

Fed by ingest (one time map entry per Transaction COMMIT/ABORT/
COMMIT_PREPARED/ABORT_PREPARED record; one DDL log entry per committed
transaction whose catalog rows say it ran DDL); read by the proxy's history
provider, `strata timeline` and `strata status`. Owns `<home>/timemap/`
(see FORMAT.md here). Imports only the bottom layer.
"""
