"""The time map: commit/abort timestamps -> LSNs, and time -> LSN resolution.

Fed by ingest (one entry per Transaction COMMIT/ABORT/COMMIT_PREPARED/
ABORT_PREPARED record); read by the proxy's history provider, `strata
timeline` and `strata status`. Owns `<home>/timemap/` (see FORMAT.md here).
Imports only the bottom layer.
"""
