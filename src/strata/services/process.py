"""What every strata service process shares: its output, its signals, its death.

What it is: `ServiceOutput` (lines for the user that survive a closed stdout),
`die_with_parent` (a service never outlives the supervisor that started it,
even one killed with SIGKILL: Linux's PR_SET_PDEATHSIG), `run_service` (SIGTERM
and SIGHUP stop the service cleanly; a failure ends the process with a clear
message and exit status 1), and `ServiceProcess`, the supervisor's handle on
one child. Fed by: the service mains (`services.ingest`, `services.proxy`,
`services.maintenance`) and the supervisor (`strata.daemon`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO

from strata.errors import StrataError
from strata.progress import write_line

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


class ServiceOutput:
    """Lines for the user. A closed stdout (the reader of a pipe went away, as `tee`
    does on Ctrl-C) must never stop a shutdown: it silences the output instead,
    and fd 1 is pointed at /dev/null so nothing else trips on it."""

    def __init__(self, out: IO[str] | None) -> None:
        self.out = out

    def say(self, text: str) -> None:
        if self.out is None:
            return
        try:
            write_line(self.out, text)
        except (BrokenPipeError, OSError, ValueError):
            self.out = None
            silence_stdout()


def silence_stdout() -> None:
    """Point fd 1 at /dev/null (after EPIPE): later writes and the interpreter's
    final flush then succeed quietly."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies; if the
    parent is already gone, stop now."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent or parent == 1:
        os.kill(os.getpid(), sig)


def run_service(name: str, run: Callable[[], None], stop: Callable[[], None]) -> int:
    """Run a service's main loop: SIGTERM/SIGHUP call `stop` (run then returns);
    a failure is logged with a readable message and gives exit status 1."""
    def handler(signum: int, frame: object) -> None:
        log.info("%s: signal %d: stopping", name, signum)
        # `stop` may take a lock the interrupted code holds (Event.set does): call
        # it from a thread of its own, never from inside the handler
        threading.Thread(target=stop, name=f"{name}-stop", daemon=True).start()

    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, handler)
    logging.basicConfig(level=os.environ.get("STRATA_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {name}: %(name)s: %(message)s")
    try:
        run()
    except StrataError as e:
        ServiceOutput(sys.stderr).say(f"strata: {name}: error: {e}")
        return 1
    except Exception:
        log.exception("%s failed", name)
        return 1
    return 0


def service_env() -> dict[str, str]:
    """The environment of a service child: this process's, with its log level
    (`strata -v up`: INFO) as STRATA_LOG_LEVEL unless the user set one, so the
    services' info lines (a SET's phases, a server's start) show with -v too."""
    env = dict(os.environ)
    level = logging.getLogger().getEffectiveLevel()
    if "STRATA_LOG_LEVEL" not in env and level < logging.WARNING:
        env["STRATA_LOG_LEVEL"] = logging.getLevelName(level)
    return env


class ServiceProcess:
    """The supervisor's handle on one service child process."""

    def __init__(self, name: str, argv: Sequence[str], nice: int = 0) -> None:
        self.name = name
        self.argv = list(argv)
        self.nice = nice  # added to the supervisor's own nice value at each start
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts: list[float] = []

    def start(self) -> None:
        self.starts.append(time.monotonic())
        # stdout/stderr are inherited: the user sees the services' lines.
        # A session of its own: a terminal's signals (Ctrl-C, hang-up) reach only
        # the supervisor, which stops the children in order; a child also dies
        # with the supervisor (die_with_parent).
        self.proc = subprocess.Popen([sys.executable, "-m", f"strata.services.{self.name}",
                                      *self.argv], stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=service_env())
        if self.nice:
            # before `start` returns: whoever sees the child sees its priority
            prio = min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.nice)
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, prio)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exited(self) -> int | None:
        """The exit status if the child has ended, else None."""
        return self.proc.poll() if self.proc is not None else None

    def restarts_within(self, seconds: float) -> int:
        now = time.monotonic()
        return sum(1 for t in self.starts[1:] if now - t <= seconds)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> bool:
        """True if the child ended within `timeout` s (else it is killed)."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            return False
