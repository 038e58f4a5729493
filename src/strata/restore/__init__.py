"""Bringing the past back: restore, the past inside live queries, diff, row history.

Built on the running daemon's proxy (`restore.endpoint`): the past is a
historical server at one LSN, the present is the primary. Modules:
`endpoint` (points and connections), `script` (pg_dump's plain script as
entries, renaming), `pgdump` (pg_dump at a point, streamed), `plan` (what a
restore will do), `apply` (entries into the present, one transaction),
`restore` (the command's engine), `guard` (a temporary database's guard),
`progress` (bar or lines).
"""
