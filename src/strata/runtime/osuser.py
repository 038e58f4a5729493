"""The unprivileged OS user that runs PostgreSQL when we are root.

PostgreSQL refuses to run as root. When ``os.geteuid() == 0`` every server
binary runs as `SERVER_USER` (default ``strata``, override with
``STRATA_OS_USER``), created here with ``useradd --system`` when missing.
When we are not root, binaries run as ourselves.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from strata.errors import RuntimeSetupError

SERVER_USER = os.environ.get("STRATA_OS_USER", "strata")


@dataclass(frozen=True, slots=True)
class OsUser:
    name: str
    uid: int
    gid: int
    home: str


@cache
def server_user() -> OsUser | None:
    """The user to run PostgreSQL as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(SERVER_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        try:
            subprocess.run(
                [useradd, "--system", "--user-group", "--no-create-home",
                 "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVER_USER],
                check=True, capture_output=True, text=True,
            )
        except (OSError, subprocess.CalledProcessError) as e:
            err = getattr(e, "stderr", "") or str(e)
            raise RuntimeSetupError(
                f"cannot create the OS user {SERVER_USER!r} that runs PostgreSQL: {err.strip()}"
            ) from e
        pw = pwd.getpwnam(SERVER_USER)
    return OsUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def give_to_server_user(path: Path, *, recursive: bool = True, mode: int | None = 0o700) -> None:
    """Make `path` owned by the server user (no-op when not root)."""
    user = server_user()
    if mode is not None:
        os.chmod(path, mode)
    if user is None:
        return
    os.chown(path, user.uid, user.gid)
    if recursive and path.is_dir():
        for root, dirs, files in os.walk(path):
            for n in dirs + files:
                with contextlib.suppress(FileNotFoundError):
                    os.chown(os.path.join(root, n), user.uid, user.gid, follow_symlinks=False)


def make_private_dir(path: Path) -> Path:
    """Create a directory (and parents) the server user owns, mode 0700.

    Parents that we create are left traversable (0755) so the user can reach it.
    """
    for parent in reversed(path.parents):
        if not parent.exists():
            parent.mkdir()
            os.chmod(parent, 0o755)
    path.mkdir(exist_ok=True)
    give_to_server_user(path, recursive=False)
    return path


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8"
    env["LANG"] = "C.UTF-8"
    user = server_user()
    if user is not None:
        env["HOME"] = "/tmp"
        env["USER"] = env["LOGNAME"] = user.name
    if extra:
        env.update(extra)
    return env


def as_user_kwargs() -> dict[str, Any]:
    """Popen arguments that run the child as the server user (none when not root)."""
    user = server_user()
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": [], "umask": 0o077}


def run_as_server(
    argv: Sequence[str | Path], *, check: bool = True, timeout: float | None = 300,
    env: Mapping[str, str] | None = None, cwd: str | Path | None = "/",
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program as the server user; output captured as text.

    Raises: RuntimeSetupError with the program's stderr when `check` and it fails.
    """
    try:
        cp = subprocess.run(
            [str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
            env=server_env(env), cwd=cwd, **as_user_kwargs(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeSetupError(f"running {Path(str(argv[0])).name} failed: {e}") from e
    if check and cp.returncode != 0:
        raise RuntimeSetupError(
            f"{Path(str(argv[0])).name} exited with {cp.returncode}: "
            f"{(cp.stderr or cp.stdout).strip()[-2000:]}"
        )
    return cp


