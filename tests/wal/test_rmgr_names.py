"""Resource-manager and record-type names as pg_waldump 18 prints them."""

from __future__ import annotations

import pytest

from strata.wal import rmgr


def test_builtin_rmgr_ids_and_names_follow_rmgrlist() -> None:
    assert len(rmgr.RMGR_NAMES) == 22
    assert rmgr.rmgr_name(rmgr.RM_XLOG_ID) == "XLOG"
    assert rmgr.rmgr_name(rmgr.RM_HEAP2_ID) == "Heap2"
    assert rmgr.rmgr_name(rmgr.RM_REPLORIGIN_ID) == "ReplicationOrigin"
    assert rmgr.rmgr_name(rmgr.RM_LOGICALMSG_ID) == "LogicalMessage"
    assert rmgr.rmgr_name(200) == "custom200"
    assert rmgr.rmgr_is_valid(21) and not rmgr.rmgr_is_valid(22) and rmgr.rmgr_is_valid(128)
    with pytest.raises(ValueError):
        rmgr.rmgr_name(50)


@pytest.mark.parametrize(("rmid", "info", "name"), [
    (10, 0x80, "INSERT+INIT"), (10, 0x40, "HOT_UPDATE"), (10, 0xC0, "HOT_UPDATE+INIT"),
    (10, 0x50, "HEAP_CONFIRM"), (10, 0x01, "INSERT"),  # low flag bits are ignored
    (9, 0xD0, "MULTI_INSERT+INIT"), (9, 0x00, "REWRITE"), (9, 0x20, "PRUNE_VACUUM_SCAN"),
    (1, 0x00, "COMMIT"), (1, 0x80, "COMMIT"), (1, 0x60, "INVALIDATION"),
    (0, 0x10, "CHECKPOINT_ONLINE"), (0, 0xD0, "OVERWRITE_CONTRECORD"), (0, 0xE0, "CHECKPOINT_REDO"),
    (11, 0x00, "INSERT_LEAF"), (11, 0xE0, "META_CLEANUP"), (17, 0x90, "INSERT+INIT"),
    (20, 0x00, "Generic"), (20, 0x70, "Generic"), (21, 0x00, "MESSAGE"),
    (0, 0xC0, "UNKNOWN (c0)"), (9, 0x80, "UNKNOWN (80)"), (2, 0x00, "UNKNOWN (0)"),
    (19, 0x01, "UNKNOWN (0)"),  # ReplicationOrigin identifies on the raw info byte
    (18, 0x10, "TRUNCATE"), (200, 0x10, "UNKNOWN (10)"),
])
def test_record_type_names_match_rm_identify(rmid: int, info: int, name: str) -> None:
    assert rmgr.record_type_name(rmid, info) == name


def test_stats_names_use_the_record_id_nibble() -> None:
    assert rmgr.stats_type_name(1, 0) == "COMMIT"
    assert rmgr.stats_type_name(10, 0x8) == "INSERT+INIT"
    assert rmgr.stats_type_name(0, 0xC) == "UNKNOWN (c0)"
