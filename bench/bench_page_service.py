"""Page service choice (issue 9, item 1): read-only opens of the store in the
reader's process vs a minimal GetPage protocol over a unix socket to the writer.

What it measures, for each way, from a process other than the writer's while
the writer ingests (puts + flushes, as ingest does; `--idle` to stop that):
GetPage@LSN latency p50 / p99 (our page cache off, so every read walks the
layers) and range-scan throughput (MB of page values per second, a full key
range at one LSN, as materialize and readahead do).

- read-only open: `PageStore.open_readonly` in the reader process; reads run
  there (redo too, spread over as many reader processes as there are cores).
- socket: the writer process runs a thread answering requests on a unix socket
  (request: op u8 | key 18 | lsn u64, scan adds an end key; response: u32 length
  then the value, a scan streams key 18 | u32 length | value and ends with a
  length of 0xFFFFFFFF). Reads, and redo with them, run in the writer's process,
  sharing its GIL with ingest. Redo here is trivial (append), which favours the
  socket: real redo would cost the writer far more.

Decision rule (printed at the end): read-only opens win unless they are clearly
worse, i.e. choose the socket protocol only if its GetPage p99 is below 2/3 of
the read-only p99, or its scan MB/s above 1.5x the read-only scan MB/s. The
margin exists because read-only opens have the structural advantages the design
asks for (redo never in the ingest process, no server to supervise, reads scale
with reader processes); a socket must beat them clearly to be worth it.

Run alone on a quiet machine: python bench/bench_page_service.py [--keys N] [--reads N]
[--idle] [--think-ms MS]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import random
import shutil
import socket
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from strata.key import Key, KeyRange
from strata.pagestore import PageReader, PageStore
from strata.storage.config import StorageConfig
from strata.storage.values import PageImage, WalRecord

OP_GET, OP_SCAN = 1, 2
REQ = struct.Struct(">B18sQ")
SCAN_END = struct.Struct(">18s")
LEN = struct.Struct(">I")
END_OF_SCAN = 0xFFFFFFFF
CFG = StorageConfig(cache_pages=0, memtable_bytes=8 << 20, maintenance_cpu_fraction=1.0)


def redo(key: Key, base: bytes | None, records: list[WalRecord]) -> bytes:
    return (base or b"") + b"".join(r.data for r in records)


def key(i: int) -> Key:
    return Key.rel_block(1663, 5, 16384, 0, i)


def build(d: Path, keys: int) -> int:
    """Images for every key, then chains of 1-10 deltas over four flushes,
    compacted, one more flush on top. Returns: the LSN the readers read at."""
    rnd = random.Random(1)
    with PageStore.open(d, redo, CFG, background=False) as ps:
        lsn = 8
        for i in range(keys):
            ps.put(key(i), lsn, PageImage(rnd.randbytes(4096) + bytes(4096)))
        ps.advance(lsn)
        ps.flush()
        ps.create_image_layers(threshold=0)
        for _ in range(4):
            for i in range(keys):
                if rnd.random() < 0.7:
                    lsn += 8
                    ps.put(key(i), lsn, WalRecord(rnd.randbytes(rnd.randint(100, 300))))
            ps.advance(lsn)
            ps.flush()
        ps.compact()
        return int(ps.durable_lsn)


def serve(ps: PageStore, path: str, ready: threading.Event) -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    ready.set()
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(ps, conn), daemon=True).start()


def recv_exact(f: Any, n: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise EOFError
    return bytes(b)


def handle(ps: PageStore, conn: socket.socket) -> None:
    f = conn.makefile("rwb")
    try:
        while True:
            op, kb, lsn = REQ.unpack(recv_exact(f, REQ.size))
            if op == OP_GET:
                v = ps.get_page(Key.from_bytes(kb), lsn) or b""
                f.write(LEN.pack(len(v)) + v)
            else:
                (end,) = SCAN_END.unpack(recv_exact(f, SCAN_END.size))
                for k, v in ps.scan(KeyRange(Key.from_bytes(kb), Key.from_bytes(end)), lsn):
                    f.write(k.to_bytes() + LEN.pack(len(v)) + v)
                f.write(b"\0" * 18 + LEN.pack(END_OF_SCAN))
            f.flush()
    except (EOFError, ConnectionError):
        conn.close()


def writer(d: str, sock: str, ready: Any, stop: Any, idle: bool, start_lsn: int) -> None:
    """The writer process: socket server thread + ingest until `stop`."""
    ps = PageStore.open(d, redo, CFG, maintenance=False)
    up = threading.Event()
    threading.Thread(target=serve, args=(ps, sock, up), daemon=True).start()
    up.wait()
    ready.set()
    rnd = random.Random(2)
    lsn = max(start_lsn, int(ps.durable_lsn))
    payload = [WalRecord(rnd.randbytes(200)) for _ in range(64)]
    while not stop.is_set():
        if idle:
            stop.wait(0.1)
            continue
        for _ in range(200):  # a record-sized batch, then advance, as ingest does
            lsn += 8
            ps.put(Key.rel_block(1663, 5, 16385, 0, rnd.randrange(5000)), lsn, payload[lsn % 64])
        ps.advance(lsn)
        if rnd.random() < 0.05:
            ps.flush()
    ps.close()


class SocketReader:
    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.f = self.s.makefile("rwb")

    def get_page(self, k: Key, lsn: int) -> bytes | None:
        self.f.write(REQ.pack(OP_GET, k.to_bytes(), lsn))
        self.f.flush()
        (n,) = LEN.unpack(recv_exact(self.f, 4))
        return recv_exact(self.f, n) if n else None

    def scan_bytes(self, kr: KeyRange, lsn: int) -> int:
        self.f.write(REQ.pack(OP_SCAN, kr.start.to_bytes(), lsn) + kr.end.to_bytes())
        self.f.flush()
        total = 0
        while True:
            head = recv_exact(self.f, 22)
            (n,) = LEN.unpack_from(head, 18)
            if n == END_OF_SCAN:
                return total
            total += len(recv_exact(self.f, n))


def measure(kind: str, d: str, sock: str, lsn: int, keys: int, reads: int, think: float,
            out: Any) -> None:
    rnd = random.Random(3)
    order = [key(rnd.randrange(keys)) for _ in range(reads)]
    kr = KeyRange(key(0), key(keys))
    r: PageReader | SocketReader
    if kind == "read-only open":
        ro = PageStore.open_readonly(d, redo, CFG)
        r = ro
        def scan_bytes() -> int:
            return sum(len(v) for _, v in ro.scan(kr, lsn))
    else:
        sr = SocketReader(sock)
        r = sr
        def scan_bytes() -> int:
            return sr.scan_bytes(kr, lsn)
    for k in order[:200]:  # warm-up (files, connection)
        r.get_page(k, lsn)
    gc.freeze()  # what is alive now is never garbage: keep collections short
    lat = []
    for k in order:
        t = time.perf_counter()
        r.get_page(k, lsn)
        lat.append(time.perf_counter() - t)
        if think:
            # a reader (a historical server) does its own work between two reads; a
            # process that never sleeps is preempted by the scheduler, which would
            # measure the machine's load, not the read
            time.sleep(think)
    t = time.perf_counter()
    nbytes = scan_bytes()
    scan_s = time.perf_counter() - t
    q = statistics.quantiles(lat, n=100)
    out.put({"kind": kind, "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3,
             "scan_mb_s": nbytes / scan_s / 1e6, "scan_mb": nbytes / 1e6})


def decide(ro: dict[str, float], so: dict[str, float]) -> str:
    if so["p99_ms"] < ro["p99_ms"] * 2 / 3 or so["scan_mb_s"] > ro["scan_mb_s"] * 1.5:
        return "socket protocol (read-only opens are clearly slower)"
    return "read-only opens (the socket is not clearly faster)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=5000)
    ap.add_argument("--reads", type=int, default=5000)
    ap.add_argument("--idle", action="store_true", help="the writer does not ingest meanwhile")
    ap.add_argument("--think-ms", type=float, default=0.2,
                    help="pause between two reads of the reader (0: back to back)")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    root = Path(tempfile.mkdtemp(prefix="strata-bench-ps-"))
    d, sock = root / "layers", str(root / "getpage.sock")
    stop, ready = ctx.Event(), ctx.Event()
    w = None
    try:
        lsn = build(d, args.keys)
        w = ctx.Process(target=writer, args=(str(d), sock, ready, stop, args.idle, lsn + 8))
        w.start()
        ready.wait()
        results = []
        for kind in ("read-only open", "socket"):
            q = ctx.Queue()
            p = ctx.Process(target=measure, args=(kind, str(d), sock, lsn, args.keys,
                                                  args.reads, args.think_ms / 1e3, q))
            p.start()
            results.append(q.get())
            p.join()
    finally:
        stop.set()
        if w is not None:
            w.join()
        shutil.rmtree(root, ignore_errors=True)
    print(f"GetPage@LSN and scans from another process; writer "
          f"{'idle' if args.idle else 'ingesting'}; {args.keys} keys, {args.reads} reads")
    print("| way | GetPage p50 ms | GetPage p99 ms | scan MB/s |")
    print("|-----|----------------|----------------|-----------|")
    for r in results:
        print(f"| {r['kind']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['scan_mb_s']:.1f} |")
    print(f"decision: {decide(results[0], results[1])}")


if __name__ == "__main__":
    main()
