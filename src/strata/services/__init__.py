"""strata's processes, one per kind of work (DESIGN.md, "Process model").

`ingest` (the one writer of the store and time map), `maintenance`
(compaction, images, gc), `proxy` (client sessions, the history service and
the historical servers), each run as ``python -m strata.services.<name>`` by
the supervisor (`strata.daemon`); `control` is how they ask each other
things, `process` what they share.
"""
