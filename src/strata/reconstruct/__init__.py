"""Reconstruction: (Key, Lsn) -> page, by applying WAL records to 8 KB pages.

What it is: the redo engine (`reconstruct.redo`: one module per resource
manager plus `page_ops`), PostgreSQL's masking rules (`reconstruct.mask`) and
the wal_consistency_checking oracle (`reconstruct.check`). Fed by decoded
records (`strata.wal.record.DecodedRecord`) and page images; feeds the page
store's GetPage@LSN and the `strata redo-check` command.

Entry points: `redo_block(record, block_id, page)`, `redo_block_inplace`
(chains without copies) and `redo_blocks(record, pages)`, re-exported from
`strata.reconstruct.redo`.
"""

from __future__ import annotations

from strata.reconstruct.redo import redo_block, redo_block_inplace, redo_blocks, register

__all__ = ["redo_block", "redo_block_inplace", "redo_blocks", "register"]
