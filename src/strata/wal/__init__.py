"""WAL in, records out: sources (stream, files), reader, decoder, rmgr parsers.

Feeds ingest and `strata waldump`. The receiver is the only module here that
does I/O against a server; the reader and decoder are sans-IO. `batch` holds
many decoded records as columns (`WalReader.read_batch`); its hot path is
compiled (`_walbatch.c`, optional: pure Python when not built).
"""
