"""The layer store: memtable -> L0 delta layers -> L1 (compaction), image
layers, manifest, layer map, GetPage@LSN, retention/gc.

Knows nothing of PostgreSQL: keys are opaque 18-byte `strata.key.Key`s and
values opaque bytes rebuilt through a redo callback it is given. Never imports
strata.pg, strata.wal, strata.ingest or strata.reconstruct. The facade the
rest of the system uses is `strata.pagestore.PageStore`; formats are in
FORMAT.md beside this file.
"""

from strata.storage.config import StorageConfig
from strata.storage.values import TOMBSTONE, PageImage, Tombstone, Value, ValueKind, WalRecord

__all__ = ["TOMBSTONE", "PageImage", "StorageConfig", "Tombstone", "Value", "ValueKind", "WalRecord"]
