"""The strata home: one directory per primary, its layout, and the one rule
that finds it.

What it is: `resolve_home` (used by every subcommand, so `strata up` and the
tools always agree on where history is), `HomeLayout` (the paths inside a
home) and `lock_home` (one daemon per home). The files' formats are in
`home.files` and home/FORMAT.md. Fed by: command-line options and the
environment. Feeds: the daemon, its services and every CLI command. Owns:
the layout below (each sub-directory's own format is documented beside the
code that writes it).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from strata.errors import ConfigError

ROOT_HOME = Path("/var/lib/strata")
USER_HOME = "~/.strata"


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """Where strata keeps a primary's history. The one rule, for every command:

    1. ``--home`` when given;
    2. else ``$STRATA_HOME`` when set;
    3. else ``/var/lib/strata`` when running as root (PostgreSQL runs as an
       unprivileged user who must reach the home, and root's own home is
       private), else ``~/.strata``.
    """
    explicit = home if home is not None else (os.environ.get("STRATA_HOME") or None)
    if explicit is not None:
        path = Path(explicit).expanduser().absolute()
    elif os.geteuid() == 0:
        path = ROOT_HOME
    else:
        path = Path(USER_HOME).expanduser().absolute()
    return path


def check_server_can_reach(path: Path) -> None:
    """For commands that run PostgreSQL in the home (`strata up`).

    Raises: ConfigError when running as root with a home the server user cannot
    reach (a directory on its path does not let others traverse it).
    """
    if os.geteuid() == 0 and not _traversable_by_others(path):
        raise ConfigError(
            f"strata home {path} is inside a directory other users cannot traverse; "
            "PostgreSQL runs as an unprivileged user and must reach it: choose another "
            f"--home (e.g. {ROOT_HOME}) or allow traversal (chmod o+x)")


def _traversable_by_others(path: Path) -> bool:
    """Every existing directory on the way to `path` lets other users through (o+x)."""
    for p in [path, *path.parents]:
        try:
            if p.exists() and not os.stat(p).st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


@dataclass(frozen=True, slots=True)
class HomeLayout:
    """The paths inside a home (home/FORMAT.md describes each)."""

    root: Path

    @property
    def primary_data(self) -> Path:
        return self.root / "primary" / "data"

    @property
    def layers(self) -> Path:
        return self.root / "layers"

    @property
    def timemap(self) -> Path:
        return self.root / "timemap"

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    @property
    def leases(self) -> Path:
        return self.root / "leases"

    @property
    def import_dir(self) -> Path:
        return self.root / "import"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def history_file(self) -> Path:
        return self.root / "history.json"

    @property
    def receiver_file(self) -> Path:
        return self.root / "receiver.json"

    @property
    def daemon_file(self) -> Path:
        return self.root / "state.json"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    @property
    def proxy_file(self) -> Path:
        return self.run / "proxy.json"

    @property
    def ingest_socket(self) -> Path:
        """The ingest service's control socket (services/ingest.py)."""
        return self.run / "ingest.sock"

    @property
    def lock_file(self) -> Path:
        return self.root / "lock"

    def has_store(self) -> bool:
        """Whether a layer store was ever created here (its MANIFEST exists)."""
        return (self.layers / "MANIFEST").exists()


def lock_home(layout: HomeLayout) -> IO[bytes]:
    """Take the home's lock (released when the returned file is closed or the
    process ends). Raises: ConfigError if another strata runs on this home."""
    layout.root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chmod(layout.root, 0o755)  # the server user traverses it to reach primary/
    f = layout.lock_file.open("ab")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        f.close()
        raise ConfigError(f"another strata is already running on {layout.root}") from e
    return f
