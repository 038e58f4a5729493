"""PostgreSQL 18 knowledge without I/O: algorithms and layouts shared by
layers that must agree byte for byte with the server (checksums today).

Imports nothing from strata but the bottom layer.
"""
