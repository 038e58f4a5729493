"""The README's first command on the machine's own Python (issue 11): Debian's
/usr/bin/python3 refuses system-wide pip installs (PEP 668), so the install
must make and own a virtual environment and put `strata` on PATH."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _is_311_or_newer(python: Path) -> bool:
    cp = subprocess.run([str(python), "-c", "import sys; print(sys.version_info >= (3, 11))"],
                        capture_output=True, text=True, check=False)
    return cp.stdout.strip() == "True"


@pytest.mark.slow
@pytest.mark.skipif(not SYSTEM_PYTHON.exists() or not _is_311_or_newer(SYSTEM_PYTHON),
                    reason="no system Python 3.11+ on this machine")
def test_install_owns_a_venv_made_with_the_system_python(tmp_path: Path) -> None:
    venv, bin_dir = tmp_path / "venv", tmp_path / "bin"
    env = {**os.environ, "PYTHON": str(SYSTEM_PYTHON), "STRATA_VENV": str(venv),
           "STRATA_BIN_DIR": str(bin_dir)}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    cp = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], env=env,
                        capture_output=True, text=True, timeout=900, check=False)
    assert cp.returncode == 0, cp.stderr[-3000:]
    strata = bin_dir / "strata"
    assert strata.resolve() == (venv / "bin" / "strata").resolve()
    out = subprocess.run([str(strata), "--version"], capture_output=True, text=True,
                         env=env, check=False)
    assert out.returncode == 0 and out.stdout.startswith("strata "), out.stderr
    # the venv's interpreter is the system one, and strata imports from this clone
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import sys, strata; print(sys.base_prefix); print(strata.__file__)"],
                           capture_output=True, text=True, env=env, check=False)
    base, module = probe.stdout.split()
    assert base == "/usr" and Path(module).is_relative_to(ROOT / "src"), probe.stdout
    # idempotent: a second run changes nothing and succeeds
    again = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], env=env,
                           capture_output=True, text=True, timeout=900, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
