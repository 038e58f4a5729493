"""Lazy historical data directories: detection, mounts, cleanup (the parent side).

Fed by the page store directory and an overlay that `skeleton` / `instance`
filled with the small files at X. Feeds `instance` (a mount point to start
PostgreSQL on) and `modes` (is lazy mode possible here, and why not).
Owns the FUSE processes it starts (`python -m strata.historical.lazyfs`, one
per mount point and LSN, taken from `FsSpares` started ahead) and their mounts: `LazyMount.unmount` ends both;
`cleanup_mounts` removes mounts a crash left under an instances root.

Binding: **pyfuse3** (libfuse 3, low-level inode API, trio). Measured with
``python bench/bench_fuse.py`` (a 32-64 MiB file served from memory, direct
I/O, this 2-core machine, shared and noisy; numbers in BENCHMARKS.md):

  ===========  ========  ==========  =========  ============  ========  =========
  binding      8K us/rq  128K MiB/s  128K us/rq  stat us      rand 1T   rand 4T
  ===========  ========  ==========  =========  ============  ========  =========
  pyfuse3      56        1,688       74          106           8.0k/s   10.0k/s
  mfusepy      29        1,173       107         62            10.3k/s  9.2k/s
  llfuse       (cached)  1,561       80          38            16.4k/s  18.6k/s
  ===========  ========  ==========  =========  ============  ========  =========

Why pyfuse3:
  * what a lazy data directory mostly serves is 128 KB reads (the kernel's
    readahead over a sequential scan, with the page cache kept between
    opens): pyfuse3 is the fastest there; per-8 KB-request overhead (30-60 us)
    is small next to rebuilding a page;
  * the low-level API names files by inode, so a read costs no path lookup
    (mfusepy's high-level API resolves a path string for every call) and we
    control entry/attribute cache timeouts and keep_cache per open;
  * it is libfuse 3, which install.sh installs (fuse3, libfuse3-dev); llfuse
    needs libfuse 2 headers (libfuse-dev installs and llfuse builds here,
    but it is in maintenance mode and its low-level API has no per-open
    direct_io: its 8 KB row is page-cached, not comparable);
  * concurrency: every binding is GIL-bound in its handlers (rand 4T vs 1T:
    x1.1-1.25 with 50 us of Python per read), so threads buy little; pyfuse3's
    single trio thread is simplest. Redo is spread over the cores by running
    one file-system process per mount (and materialize workers), not threads.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from strata.errors import InstanceError
from strata.lsn import Lsn
from strata.runtime import procfs
from strata.runtime.fdwait import wait_ready

log = logging.getLogger(__name__)

MOUNT_TYPE = "fuse.strata"
_PROBE = """
import sys, pyfuse3
pyfuse3.init(pyfuse3.Operations(), sys.argv[1], {"fsname=strata-probe", "allow_other"})
pyfuse3.close(unmount=True)
print("ok")
"""


def fusermount() -> str | None:
    return shutil.which("fusermount3")


@functools.cache
def lazy_available() -> tuple[bool, str]:
    """(True, how) when lazy mode works here: /dev/fuse, the pyfuse3 binding,
    fusermount3 and a test mount; else (False, why not). Cached per process."""
    if not os.path.exists("/dev/fuse"):
        return False, "/dev/fuse does not exist (no FUSE in this kernel or container)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return False, "/dev/fuse is not readable and writable by this user"
    try:
        import pyfuse3  # noqa: F401
    except ImportError as e:
        return False, f"the FUSE binding pyfuse3 is not installed ({e}); pip install 'pgstrata[lazy]'"
    if fusermount() is None:
        return False, "fusermount3 is not installed (Debian: apt-get install fuse3)"
    with tempfile.TemporaryDirectory(prefix="strata-fuse-probe-") as d:
        try:
            cp = subprocess.run([sys.executable, "-c", _PROBE, d], capture_output=True, text=True,
                                timeout=30)
        except subprocess.TimeoutExpired:
            subprocess.run([fusermount() or "fusermount3", "-u", "-z", d], capture_output=True)
            return False, "a test FUSE mount did not answer within 30 s"
        if cp.returncode != 0 or "ok" not in cp.stdout:
            err = (cp.stderr.strip().splitlines() or ["no output"])[-1]
            return False, f"a test FUSE mount failed: {err}"
    return True, "FUSE works here (/dev/fuse, pyfuse3, a test mount)"


def fuse_mounts(under: Path | None = None) -> list[Path]:
    """Mount points of our lazy file systems (type fuse.strata), optionally under a root."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3 or parts[2] != MOUNT_TYPE:
                continue
            mnt = Path(parts[1].replace("\\040", " "))
            if under is None or mnt.is_relative_to(under):
                out.append(mnt)
    return out


def unmount(path: Path) -> bool:
    """Unmount `path` (lazily when busy). True when it is no longer mounted."""
    fm = fusermount() or "fusermount3"
    cp = subprocess.run([fm, "-u", str(path)], capture_output=True, text=True)
    if cp.returncode != 0 and path in fuse_mounts():
        subprocess.run([fm, "-u", "-z", str(path)], capture_output=True, text=True)
    return path not in fuse_mounts()


def cleanup_mounts(root: Path) -> list[Path]:
    """Unmount every lazy file system left under `root` (after a crash); the daemon
    calls it at start. Returns the mount points removed."""
    root = Path(root).resolve()
    gone = []
    for mnt in fuse_mounts(root):
        if unmount(mnt):
            log.info("removed a stale lazy mount %s", mnt)
            gone.append(mnt)
        else:
            log.warning("could not unmount the stale lazy mount %s", mnt)
    return gone


def kill_spares(root: Path) -> list[int]:
    """SIGKILL the file system processes started for `root` (`spawn_fs(owner=root)`)
    that still run once its mounts are gone: spares, which hold no mount. A spare
    left by a killed proxy service may never see its stdin close (busy opening the
    store, or stopped), so it would outlive strata. Returns their pids."""
    tags = {f"--for\0{p}\0".encode() for p in (Path(root), Path(root).resolve())}
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"strata.historical.lazyfs\0--wait-args\0" in cmd and any(t in cmd for t in tags):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(d.name), signal.SIGKILL)
                found.append(int(d.name))
    if found:
        log.warning("killed %d spare lazy file system(s) left for %s", len(found), root)
    return found


@dataclass
class LazyMount:
    """One lazy file system process and its mount point."""

    mountpoint: Path
    overlay: Path
    lsn: Lsn
    proc: subprocess.Popen[bytes]
    logfile: Path

    @classmethod
    def start(cls, store_dir: Path, lsn: Lsn, mountpoint: Path, overlay: Path, *,
              logfile: Path, invalid_index_ams: Sequence[str] = (), timeout: float = 60,
              spares: FsSpares | None = None) -> LazyMount:
        """Start the file system process (a spare from `spares` when there is one)
        and wait until `mountpoint` is mounted.

        Raises: InstanceError with the process's reason (the process is stopped).
        """
        argv = ["--store", str(store_dir), "--lsn", str(lsn), "--overlay", str(overlay),
                "--mount", str(mountpoint), "--log", str(logfile)]
        if invalid_index_ams:
            argv += ["--invalid-index-ams", ",".join(invalid_index_ams)]
        proc = spares.take() if spares is not None else spawn_fs()
        assert proc.stdin is not None and proc.stdout is not None
        m = cls(mountpoint, overlay, Lsn(lsn), proc, logfile)
        try:
            proc.stdin.write(json.dumps(argv).encode() + b"\n")
            proc.stdin.close()
            msg = _read_line(proc.stdout.fileno(), timeout)
        except OSError as e:  # the spare died
            msg = f"error: {e}"
        finally:
            proc.stdout.close()
        if msg != "ok":
            m.unmount()
            raise InstanceError(f"the lazy file system at {lsn} did not start: "
                                f"{msg or 'no answer'}.\n{m.log_tail()}")
        set_readahead(mountpoint, READAHEAD_KB)
        return m

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def unmount(self, timeout: float = 30) -> None:
        """Unmount and end the process (never raises; what fails is logged)."""
        if self.mountpoint in fuse_mounts() and not unmount(self.mountpoint):
            log.warning("could not unmount %s", self.mountpoint)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self.mountpoint in fuse_mounts():  # the process died without unmounting
            unmount(self.mountpoint)


READAHEAD_KB = 1024


def set_readahead(mountpoint: Path, kb: int) -> int | None:
    """The kernel's readahead on the FUSE mount at `mountpoint` set to `kb` KiB (its
    backing device's read_ahead_kb); returns what it is then (None: unknown).

    A sequential scan of a lazy file is served in reads of the readahead's size:
    at the kernel's 128 KiB, the file system's loop answers ~10,700 reads for a
    1.3 GB table; at 1 MiB ~3,600, and a cold count(*) at scale 100 took 10-22 %
    less time (BENCHMARKS.md, twelfth session). The mount's own answer to FUSE_INIT
    caps readahead at what the kernel proposed (128 KiB), so this is set after
    it: a stat of the mount point returns only once the file system has answered
    it. Needs root (sysfs); without it the kernel's default stays (logged)."""
    try:
        st = os.stat(mountpoint)
        knob = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
                    "/read_ahead_kb")
        with contextlib.suppress(OSError):
            knob.write_text(str(kb))
        now = int(knob.read_text())
    except (OSError, ValueError) as e:
        log.info("readahead of %s left as it is: %s", mountpoint, e)
        return None
    if now != kb:
        log.info("readahead of %s is %d KiB (%d KiB could not be set)", mountpoint, now, kb)
    return now


def spawn_fs(owner: Path | None = None, store_dir: Path | None = None
             ) -> subprocess.Popen[bytes]:
    """A file system process that imports what it needs and waits for its arguments
    (`owner`, e.g. the instances root, is in its command line: ps tells whose it is).
    With `store_dir`, it opens that store read-only while it waits (once it has
    waited `lazyfs.PREOPEN_AFTER` s: not while a query that just took the previous
    spare needs the cores), and refreshes that open when its turn comes."""
    tag = ["--for", str(owner)] if owner is not None else []
    if store_dir is not None:
        tag += ["--open", str(store_dir)]
    return subprocess.Popen([sys.executable, "-m", "strata.historical.lazyfs", "--wait-args",
                             *tag],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)


REPLENISH_AFTER = 2.0  # s after a take before its replacement spare may start
REPLENISH_QUIET = 0.1  # cores: the taken file system's CPU under which its point is quiet
REPLENISH_CHECK = 0.25  # s between looks at that CPU
REPLENISH_MAX_WAIT = 20.0  # s after a take: the replacement starts then, quiet or not
SPARE_EXIT_WAIT = 0.5  # s a closed spare gets to exit by itself before it is killed


class FsSpares:
    """`size` file system processes started ahead (Python start and imports are most
    of a mount's cost). A spare that gets no arguments exits when stdin closes.

    The replacement of a spare taken starts once the point it serves is quiet, not
    at once: its interpreter start, imports and store open (~0.3 CPU-s) would take
    a core from the server starting on the spare just taken (py-spy of a first SET
    at scale 100), and from the first query's reads (a cold full scan at scale 100
    lost 0.24-0.39 CPU-s to it). So it waits `replenish_after` s, then until the
    taken file system uses less than `REPLENISH_QUIET` of a core over
    `REPLENISH_CHECK` s (its query's reads are done; the file system's own CPU,
    which it spends on every read, says so whatever else the machine runs), or
    gone, and never longer than `max_wait` s after the take. (It then lands on the
    point's next query if that comes at once: a warm scan right after the cold one
    at scale 100 took 0.45 s instead of 0.37. Running spares at niceness 10 until
    taken did not help either way.)"""

    def __init__(self, size: int = 1, owner: Path | None = None,
                 store_dir: Path | None = None, replenish_after: float = REPLENISH_AFTER,
                 max_wait: float = REPLENISH_MAX_WAIT) -> None:
        self.size = size
        self.owner = owner
        self.store_dir = store_dir
        self.replenish_after = replenish_after
        self.max_wait = max_wait
        self._lock = threading.Lock()
        self._closed = False
        self._closing = threading.Event()
        self._replacer: threading.Thread | None = None
        self._spares: list[subprocess.Popen[bytes]] = [self._spawn() for _ in range(size)]

    def _spawn(self) -> subprocess.Popen[bytes]:
        return spawn_fs(self.owner, self.store_dir)

    def take(self) -> subprocess.Popen[bytes]:
        with self._lock:
            alive = [p for p in self._spares if p.poll() is None]
            proc = alive.pop(0) if alive else self._spawn()
            self._spares = alive
            if self._replacer is None and not self._closed:
                self._replacer = threading.Thread(target=self._replace_when_quiet,
                                               args=(proc.pid,), name="fs-spares",
                                               daemon=True)
                self._replacer.start()
        return proc

    def _replace_when_quiet(self, pid: int) -> None:
        deadline = self._now() + self.max_wait
        if self._pause(min(self.replenish_after, self.max_wait)):
            return
        used, at = procfs.cpu_seconds(pid), self._now()
        while used is not None and at < deadline:
            if self._pause(min(REPLENISH_CHECK, max(0.0, deadline - at))):
                return
            now, t = procfs.cpu_seconds(pid), self._now()
            if now is None or (now - used) < REPLENISH_QUIET * (t - at):
                break
            used, at = now, t
        self._replenish()

    def _now(self) -> float:
        return time.monotonic()

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds`; True when the pool was closed meanwhile."""
        return self._closing.wait(seconds)

    def _replenish(self) -> None:
        with self._lock:
            self._replacer = None
            if self._closed:
                return
            alive = [p for p in self._spares if p.poll() is None]
            self._spares = [*alive, *(self._spawn() for _ in range(self.size - len(alive)))]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._closing.set()  # the replacement's wait ends without starting one
            self._replacer = None
            spares, self._spares = self._spares, []
        for p in spares:
            if p.stdin is not None:
                with contextlib.suppress(OSError):
                    p.stdin.close()
        deadline = time.monotonic() + SPARE_EXIT_WAIT  # for all of them together
        for p in spares:
            # a spare sees stdin close only between steps (not while it opens the
            # store); it has no mount, so one still busy is simply killed: the
            # service's stop must fit in the daemon's grace period
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


def _read_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _ = wait_ready([fd], timeout=left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()
