"""What attaching a WAL consumer costs the primary: pgbench TPS alone, with
pg_receivewal streaming, and with `strata up --source` attached.

Usage: python bench/bench_primary_tps.py [--scale 10] [--seconds 20] [--rounds 3]
       [--settle 600] [--strata-home-in /dev/shm] [--json out.json]
       [--against OTHER/src [--no-receivewal]]

One scratch primary (the settings `strata up --source` asks of a primary:
wal_level replica, a replication slot per consumer), pgbench -i at `--scale`,
then `--rounds` rounds of three `pgbench -c4 -j2 -T seconds` TPC-B runs,
alternated so the machine's noise spreads over all three:

* alone: nothing attached;
* pg_receivewal: PostgreSQL's own WAL receiver streaming from a slot into a
  directory (no fsync per message): the least any consumer of the stream
  costs the primary on this machine (its walsender, the client's reads);
* strata: `strata up --source` (ingest, maintenance and proxy services)
  attached from the start (its attach and import are not timed); stopped
  between its runs and resumed from its slot, as a restart would.

Settling: while strata is stopped (the other two runs of a round), its slot
keeps their WAL, so each strata run starts with two runs' worth of WAL to
ingest and, behind it, to compact and image: three runs' background work in
one run's window, which a consumer attached all along never has. So before
its timed run strata catches up (ingest, then maintenance idle: its process
under 0.02 CPU-s a second for two seconds, at most `--settle` seconds), and
after it, the same again: the CPU per transaction counts everything strata
spends on the window's WAL, the window's own background work and the work it
left behind (`--settle 0`: no settling, the run as before the twenty-second
session).

Reported: median TPS of each, the ratio to "alone", and the CPU-s per
transaction of the consumer's own processes. Issue 10's goal: strata >= 0.90.
Read it at scale 100 from `--seconds 300` rounds: maintenance images
pgbench_accounts about every 75 s of load there, so most 30-s rounds hold none
of that cost (BENCHMARKS.md, twenty-eighth session).

`--against OTHER/src`: the same measurement of a second code (the `src` of
another checkout, e.g. a `git worktree` of an older commit with its extensions
built: `python setup.py build_ext --inplace`), on a primary of its own at the
same scale (a strata home cannot move between codes: a newer layer format, one
slot name), the two codes taking turns round by round (this one first in odd
rounds): rounds in different hours of this VM differ by as much as +-20 %, so
only an alternated run tells two codes apart. The idle primary's processes
sleep meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_ingest import cpu_snapshot, proc_cpu
from bench_timetravel import (
    Strata,
    pgbench,
    pgbench_env,
    scratch,
    tps_of,
    wal_lsn,
)
from strata.runtime.cluster import SUPERUSER, Cluster


def cpu_of(pids: list[int]) -> float:
    return sum(c[1] for p in pids if (c := proc_cpu(p)) is not None)


def run_tpcb(c: Cluster, seconds: int) -> tuple[float, int]:
    """(TPS, transactions) of one run (pgbench truncates pgbench_history first: the
    count comes from its report)."""
    out = pgbench(c, c.port, "-c", "4", "-j", "2", "-T", str(seconds))
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    assert m is not None, out
    return tps_of(out), int(m.group(1))


def with_receivewal(c: Cluster, base: Path, seconds: int) -> tuple[float, float]:
    """TPS and the receiver's CPU-s per transaction."""
    d = base / "receivewal"
    d.mkdir(exist_ok=True)
    argv = [str(c.bins.path("pg_receivewal")), "-D", str(d), "-h", "127.0.0.1", "-p",
            str(c.port), "-U", SUPERUSER, "--slot", "bench_rx", "-n", "--no-sync"]
    proc = subprocess.Popen(argv, env=pgbench_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)  # connected and caught up
        if proc.poll() is not None:
            raise RuntimeError(f"pg_receivewal exited: {proc.stderr.read() if proc.stderr else ''}")
        cpu0 = cpu_of([proc.pid])
        tps, txns = run_tpcb(c, seconds)
        cpu = cpu_of([proc.pid]) - cpu0
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(d, ignore_errors=True)
    return tps, cpu / max(1, txns)


def settle(s: Strata, timeout: float) -> float:
    """Seconds until strata's maintenance process is idle (under 0.02 CPU-s in each
    of two one-second looks), at most `timeout`."""
    t0 = time.monotonic()
    quiet = 0
    last = cpu_snapshot(s.proc.pid)
    while quiet < 2 and time.monotonic() - t0 < timeout:
        time.sleep(1.0)
        now = cpu_snapshot(s.proc.pid)
        busy = sum(cpu - last.get(pid, (name, 0.0))[1]
                   for pid, (name, cpu) in now.items() if name == "maintenance")
        quiet = quiet + 1 if busy < 0.02 else 0
        last = now
    return time.monotonic() - t0


def with_strata(c: Cluster, base: Path, seconds: int, profile: Path | None = None,
                settle_s: float = 0.0) -> tuple[float, float, dict[str, float]]:
    """TPS, strata's CPU-s per transaction, and that split per service (ingest,
    maintenance, proxy, daemon...). With `profile`, py-spy records each service
    (speedscope files `<profile>-<service>.json`) over the run. `settle_s`: wait
    (at most that long) for maintenance to be idle before the run and after it."""
    s = Strata(base, c.dsn())
    spies: list[subprocess.Popen[bytes]] = []
    try:
        s.wait_ready()
        s.wait_ingested(wal_lsn(c))
        if settle_s:
            print(f"  settled before in {settle(s, settle_s):.0f} s", flush=True)
        before = cpu_snapshot(s.proc.pid)
        if profile is not None:
            for pid, (name, _cpu) in before.items():
                spies.append(subprocess.Popen(
                    ["py-spy", "record", "-p", str(pid), "-r", "200", "-d", str(seconds),
                     "-f", "speedscope", "-o", f"{profile}-{name}-{pid}.json"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        tps, txns = run_tpcb(c, seconds)
        s.wait_ingested(wal_lsn(c))
        if settle_s:
            print(f"  settled after in {settle(s, settle_s):.0f} s", flush=True)
        after = cpu_snapshot(s.proc.pid)
        for spy in spies:
            spy.wait(60)
    finally:
        s.stop()
    per: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        per[name] = per.get(name, 0.0) + (cpu - before.get(pid, (name, 0.0))[1]) / max(1, txns)
    return tps, sum(per.values()), per


@dataclass
class Side:
    """One code measured: its primary, its scratch directory (strata's home in it)
    and, for `--against`, the `src` directory its strata runs import."""

    name: str
    src: Path | None
    base: Path
    c: Cluster
    rounds: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def code_of(side: Side) -> Iterator[None]:
    """strata started inside imports `side`'s code (its children inherit PYTHONPATH)."""
    old = os.environ.get("PYTHONPATH")
    if side.src is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(side.src), old) if x)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def new_side(name: str, src: Path | None, scale: int, home_in: Path | None,
             elsewhere: list[Path]) -> Side:
    """A primary at `scale` with the slot pg_receivewal uses, strata attached once
    (attach and import untimed) and stopped."""
    base = scratch()
    c = Cluster(datadir=base / "primary" / "data")
    side = Side(name, src, base, c)
    c.initdb(settings={"wal_level": "replica", "max_wal_senders": 10,
                       "max_replication_slots": 10})
    c.start()
    if home_in is not None:
        home = Path(tempfile.mkdtemp(prefix="strata-home-", dir=home_in))
        os.chmod(home, 0o755)
        elsewhere.append(home)
        (base / "home").symlink_to(home, target_is_directory=True)
    pgbench(c, c.port, "-i", "-q", "-s", str(scale))
    c.sql("SELECT pg_create_physical_replication_slot('bench_rx')")
    with code_of(side):
        first = Strata(base, c.dsn())
    first.wait_ready()
    first.wait_ingested(wal_lsn(c))
    first.stop()
    return side


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--settle", type=float, default=600,
                    help="seconds to wait at most for strata's maintenance to be idle before "
                         "and after its timed run (0: no settling)")
    ap.add_argument("--strata-home-in", type=Path,
                    help="put strata's home (its layer store) in this directory, e.g. a tmpfs "
                         "such as /dev/shm: strata's CPU without its disk writes, to tell the "
                         "two costs to the primary apart (the primary stays in the scratch dir)")
    ap.add_argument("--profile", type=Path,
                    help="py-spy each strata service in the last round (files "
                         "PROFILE-<service>-<pid>.json; with --against, that code's "
                         "PROFILE-against-<service>-<pid>.json)")
    ap.add_argument("--against", type=Path,
                    help="also measure the code whose package is in this src directory (a "
                         "worktree with its extensions built), on a primary of its own, the "
                         "two codes alternated round by round")
    ap.add_argument("--no-receivewal", action="store_true",
                    help="leave out the pg_receivewal runs (an A/B of two codes is shorter)")
    args = ap.parse_args()
    res: dict[str, Any] = {"load_start": os.getloadavg(), "scale": args.scale,
                           "seconds": args.seconds, "settle": args.settle,
                           "strata_home_in": str(args.strata_home_in or "scratch")}
    elsewhere: list[Path] = []
    sides: list[Side] = []
    try:
        sides.append(new_side("this", None, args.scale, args.strata_home_in, elsewhere))
        if args.against is not None:
            sides.append(new_side(f"against {args.against}", args.against.resolve(), args.scale,
                                  args.strata_home_in, elsewhere))
        for i in range(args.rounds):
            for side in sides if i % 2 == 0 else sides[::-1]:
                c = side.c
                alone, _ = run_tpcb(c, args.seconds)
                rx, rx_cpu = ((0.0, 0.0) if args.no_receivewal
                              else with_receivewal(c, side.base, args.seconds))
                profile = None
                if args.profile is not None and i == args.rounds - 1:
                    # files PROFILE[-against]-<service>-<pid>.json: the two codes apart
                    profile = (args.profile if side.src is None
                               else args.profile.with_name(args.profile.name + "-against"))
                with code_of(side):
                    st, st_cpu, per = with_strata(c, side.base, args.seconds, profile,
                                                  args.settle)
                side.rounds.append({"alone": alone, "receivewal": rx,
                                    "receivewal_cpu_per_txn": rx_cpu, "strata": st,
                                    "strata_cpu_per_txn": st_cpu,
                                    "strata_cpu_per_txn_by_service": per,
                                    "load": os.getloadavg()})
                rx_said = ("" if args.no_receivewal
                           else f", pg_receivewal {rx:.0f} ({rx / alone:.2f}, "
                                f"{rx_cpu * 1e6:.0f} us a txn)")
                print(f"round {i + 1}, {side.name}: alone {alone:.0f} tps{rx_said}, strata "
                      f"{st:.0f} ({st / alone:.2f}, {st_cpu * 1e6:.0f} us a txn: "
                      + ", ".join(f"{k} {v * 1e6:.0f}" for k, v in sorted(per.items())) + ")",
                      flush=True)
    finally:
        for side in sides:
            side.c.stop("immediate")
            if not os.environ.get("BENCH_KEEP"):
                shutil.rmtree(side.base, ignore_errors=True)
        if not os.environ.get("BENCH_KEEP"):
            for d in elsewhere:
                shutil.rmtree(d, ignore_errors=True)
    res["load_end"] = os.getloadavg()
    res["rounds"] = sides[0].rounds
    if len(sides) > 1:
        res["against"] = {"src": str(args.against), "rounds": sides[1].rounds}
    for side in sides:
        rounds = side.rounds

        def med(k: str, rounds: list[dict[str, Any]] = rounds) -> float:
            return statistics.median(r[k] for r in rounds)

        print(f"\n{side.name}:\n| consumer | TPS (median of {len(rounds)}) | / alone | "
              "consumer CPU us per txn |")
        print("|---|---:|---:|---:|")
        print(f"| none | {med('alone'):.0f} | 1.00 | - |")
        if not args.no_receivewal:
            print(f"| pg_receivewal | {med('receivewal'):.0f} | "
                  f"{med('receivewal') / med('alone'):.2f} | "
                  f"{med('receivewal_cpu_per_txn') * 1e6:.0f} |")
        print(f"| strata up | {med('strata'):.0f} | {med('strata') / med('alone'):.2f} | "
              f"{med('strata_cpu_per_txn') * 1e6:.0f} |")
    print(f"\nload average start {res['load_start']}, end {res['load_end']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
