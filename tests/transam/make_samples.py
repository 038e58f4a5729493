"""Regenerate tests/data/transam/: main-data samples from real PostgreSQL 18 WAL.

Run:  python -m tests.transam.make_samples   (needs the embedded PG 18; ~30 s)

It starts a scratch primary, runs tests/transam/workload.py plus a few rare
records (tablespace, restore point, WAL switch, full_page_writes off/on, a
parameter change, a base backup's BACKUP_END, a vacuum truncation, DROP TABLE),
decodes the WAL with strata's decoder, and for each record type of the transam
resource managers keeps one or a few records' main data as ``<name>.bin``. Every
sample's header fields (lsn, end_lsn, xl_xid, xl_info, xl_rmid) and the
description line ``pg_waldump`` printed for that LSN (TZ=UTC) go into
``manifest.json``: the tests parse each sample and check it against that line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from strata.runtime.cluster import Cluster
from strata.runtime.osuser import give_to_server_user, make_private_dir, run_as_server
from strata.wal.record import DecodedRecord
from strata.wal.rmgr import RMGR_NAMES, record_type_name
from strata.wal.segments import iter_records
from tests.conftest import _scratch, make_cluster
from tests.transam import workload

OUT = Path(__file__).resolve().parent.parent / "data" / "transam"
TRANSAM_RMGRS = {0, 1, 2, 3, 4, 5, 6, 7, 8}
MAX_SAMPLE = 4096


def _rare(cluster, base: Path) -> None:  # type: ignore[no-untyped-def]
    c = cluster.sql
    ts_dir = base / "ts1"
    ts_dir.mkdir()
    give_to_server_user(ts_dir, recursive=False, mode=0o700)
    c(f"CREATE TABLESPACE ts1 LOCATION '{ts_dir}'")
    c("DROP TABLESPACE ts1")
    c("CREATE TABLE trunc_me AS SELECT g FROM generate_series(1, 20000) g")
    c("DELETE FROM trunc_me")
    c("VACUUM trunc_me")  # Storage TRUNCATE
    c("DROP TABLE trunc_me")  # COMMIT with dropped relations and stats
    c("VACUUM tx")  # in-place catalog updates without an xid: Standby INVALIDATIONS
    c("SELECT pg_create_restore_point('strata sample point')")
    with cluster.connect() as conn:  # BACKUP_END (start and stop in one session)
        conn.execute("SELECT pg_backup_start('strata', true)")
        conn.execute("SELECT * FROM pg_backup_stop(false)")
    c("CREATE TABLE sw (i int)")
    c("SELECT pg_switch_wal()")
    c("ALTER SYSTEM SET full_page_writes = off")
    c("SELECT pg_reload_conf()")
    c("SELECT pg_sleep(0.5)")
    c("CHECKPOINT")
    c("ALTER SYSTEM SET full_page_writes = on")
    c("SELECT pg_reload_conf()")
    c("SELECT pg_sleep(0.5)")
    c("CHECKPOINT")
    c("ALTER SYSTEM SET max_connections = 90")
    cluster.restart()  # PARAMETER_CHANGE at startup


def _logical(cluster) -> None:  # type: ignore[no-untyped-def]
    """wal_level=logical: commit records with a GID, Transaction INVALIDATION;
    a replication origin session: a commit with an origin (unaligned tail)."""
    c = cluster.sql
    c("ALTER SYSTEM SET wal_level = logical")
    cluster.restart()
    with cluster.connect(autocommit=False) as conn:
        conn.execute("INSERT INTO tx VALUES (400000, 4)")
        conn.execute("PREPARE TRANSACTION 'gid_logical'")
    c("COMMIT PREPARED 'gid_logical'")
    with cluster.connect(autocommit=False) as conn:
        conn.execute("CREATE TABLE inval_a (i int)")
        conn.execute("ALTER TABLE inval_a ADD COLUMN j int")
        conn.commit()
    c("SELECT pg_replication_origin_create('strata_origin')")
    with cluster.connect(autocommit=False) as conn:
        conn.execute("SELECT pg_replication_origin_session_setup('strata_origin')")
        conn.execute("SELECT pg_replication_origin_xact_setup('0/12345678', "
                     "'2026-01-02 03:04:05.678901+00')")
        conn.execute("INSERT INTO tx VALUES (400001, 4)")
        conn.commit()
        conn.execute("SELECT pg_replication_origin_session_reset()")
        conn.commit()


def _promoted_standby(cluster, base: Path) -> Cluster:  # type: ignore[no-untyped-def]
    """A standby from pg_basebackup, promoted: its WAL holds END_OF_RECOVERY (timeline 2)."""
    sb_base = base / "standby"
    sb_base.mkdir()
    sb_base.chmod(0o755)
    sb = Cluster(datadir=sb_base / "data")
    make_private_dir(sb.datadir)
    run_as_server([cluster.bins.path("pg_basebackup"), "-h", "127.0.0.1", "-p", str(cluster.port),
                   "-U", "postgres", "-D", sb.datadir, "-R", "-X", "stream", "-c", "fast"])
    sb.start()
    run_as_server([sb.bins.path("pg_ctl"), "-D", sb.datadir, "-w", "promote"])
    sb.sql("CREATE TABLE after_promotion (i int)")
    sb.stop()
    return sb


def _waldump_desc(cluster, start: int, tli: int = 1) -> dict[int, str]:  # type: ignore[no-untyped-def]
    env = {**os.environ, "TZ": "UTC"}
    cp = subprocess.run([str(cluster.bins.path("pg_waldump")), "-p", str(cluster.wal_dir()),
                         "-t", str(tli), "-s", f"{start >> 32:X}/{start & 0xFFFFFFFF:X}"],
                        capture_output=True, text=True, env=env, check=False)
    out = {}
    for line in cp.stdout.splitlines():
        m = re.search(r"lsn: ([0-9A-F]+)/([0-9A-F]+), prev [^,]+, desc: (.*)$", line)
        if m:
            out[(int(m.group(1), 16) << 32) | int(m.group(2), 16)] = m.group(3)
    return out


def _wanted(rec: DecodedRecord, have: dict[str, list[DecodedRecord]]) -> str | None:
    """Which sample name this record would fill (None: not wanted)."""
    if rec.xl_rmid not in TRANSAM_RMGRS or len(rec.main_data) > MAX_SAMPLE:
        return None
    tname = record_type_name(rec.xl_rmid, rec.xl_info)
    if tname in ("FPI", "FPI_FOR_HINT"):
        return None
    name = f"{RMGR_NAMES[rec.xl_rmid]}_{tname}".lower().replace("/", "_")
    if rec.xl_rmid == 1 and tname in ("COMMIT", "ABORT"):
        xinfo = int.from_bytes(rec.main_data[8:12], "little") if rec.xl_info & 0x80 else 0
        parts = [p for flag, p in ((0x02, "subxacts"), (0x04, "rels"), (0x08, "invals"),
                                   (0x100, "stats"), (0x20, "origin")) if xinfo & flag]
        name += "_" + ("_".join(parts) if parts else "plain")
    elif rec.xl_rmid == 1 and tname in ("COMMIT_PREPARED", "ABORT_PREPARED"):
        xinfo = int.from_bytes(rec.main_data[8:12], "little")
        if xinfo & 0x80:
            name += "_gid"
    return None if name in have else name


def main() -> None:
    base = _scratch("samples-")
    cluster = make_cluster(base / "primary")
    try:
        workload.prepare(cluster)
        lsn_text = cluster.sql("SELECT pg_current_wal_lsn()::text")[0][0]
        hi, lo = lsn_text.split("/")
        start = (int(hi, 16) << 32) | int(lo, 16)
        cluster.sql("CHECKPOINT")
        cluster.restart()
        workload.run(cluster)
        _rare(cluster, base)
        _logical(cluster)
        cluster.sql("SELECT pg_switch_wal()")
        standby = _promoted_standby(cluster, base)
        cluster.stop()
        desc = _waldump_desc(cluster, start)
        have: dict[str, list[DecodedRecord]] = {}
        for rec in iter_records(cluster.wal_dir(), start):
            name = _wanted(rec, have)
            if name is not None and int(rec.lsn) in desc:
                have[name] = [rec]
        # END_OF_RECOVERY: on timeline 2 of the promoted standby
        switch = (standby.wal_dir() / "00000002.history").read_text().split()[1]
        hi, lo = switch.split("/")
        sb_desc = _waldump_desc(standby, (int(hi, 16) << 32) | int(lo, 16), tli=2)
        eor = [lsn for lsn, d in sb_desc.items() if d.startswith("END_OF_RECOVERY")]
        assert eor, "the promoted standby wrote no END_OF_RECOVERY"
        for rec in iter_records(standby.wal_dir(), eor[0]):
            name = _wanted(rec, have)
            if name is not None and int(rec.lsn) in sb_desc:
                have[name] = [rec]
                desc[int(rec.lsn)] = sb_desc[int(rec.lsn)]
        OUT.mkdir(parents=True, exist_ok=True)
        # only this script's own outputs go; README and format samples stay
        for old in json.loads((OUT / "manifest.json").read_text()) if (OUT / "manifest.json").exists() else []:
            (OUT / old["file"]).unlink(missing_ok=True)
        manifest = []
        for name, (rec,) in sorted(have.items()):
            (OUT / f"{name}.bin").write_bytes(rec.main_data)
            manifest.append({"file": f"{name}.bin", "lsn": str(rec.lsn), "end_lsn": str(rec.end_lsn),
                             "xl_rmid": rec.xl_rmid, "xl_info": rec.xl_info, "xl_xid": rec.xl_xid,
                             "type": record_type_name(rec.xl_rmid, rec.xl_info),
                             "waldump_desc": desc[int(rec.lsn)]})
        (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        (OUT / "pg_controldata.txt").write_text(workload.pg_controldata(cluster))
        print(f"wrote {len(manifest)} samples to {OUT}")
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
