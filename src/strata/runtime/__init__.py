"""Running PostgreSQL 18: binaries, OS user, clusters, slots.

Feeds: every layer that starts a server (daemon, historical, tests). Owns no
data format. Imports only the bottom layer (lsn, key, errors, config).
"""
