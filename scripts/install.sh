#!/usr/bin/env bash
# Install pgStrata and what it needs on a fresh machine (Debian/Ubuntu, Python 3.11+).
#
# The install owns a virtual environment (Debian's own Python refuses
# system-wide pip installs, PEP 668): $STRATA_VENV, default .venv in this
# clone, made with $PYTHON (default: the first python3 on PATH; the system's
# /usr/bin/python3 and a pyenv one both work). `strata` is then linked into
# $STRATA_BIN_DIR (default /usr/local/bin as root, else ~/.local/bin).
# As root it also installs the system packages it needs (python3-venv,
# python3-dev, FUSE for the lazy historical mode) and creates the OS user
# that runs PostgreSQL. Idempotent.
#
# Usage: bash scripts/install.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
root_dir=$(pwd)
extras="lazy" plain=""
[ "${1:-}" = "--test" ] && extras="lazy,test" plain="[test]"
PYTHON=${PYTHON:-python3}
VENV=${STRATA_VENV:-$root_dir/.venv}
if [ "$(id -u)" = "0" ]; then BIN_DIR=${STRATA_BIN_DIR:-/usr/local/bin}
else BIN_DIR=${STRATA_BIN_DIR:-$HOME/.local/bin}; fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: $PYTHON is not Python 3.11 or newer (set PYTHON=/path/to/python3.11+)" >&2
  exit 1
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  need=""
  # a Debian python3 needs python3-venv for `-m venv` and the headers to build extensions
  if [ "$("$PYTHON" -c 'import sys; print(sys.prefix)')" = "/usr" ]; then
    "$PYTHON" -c 'import ensurepip' 2>/dev/null || need="$need python3-venv"
    [ -e "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] \
      || need="$need python3-dev"
  fi
  command -v fusermount3 >/dev/null 2>&1 || need="$need fuse3"
  # pyfuse3 (the `lazy` extra) builds from source against libfuse 3
  [ -e /usr/include/fuse3/fuse_lowlevel.h ] || need="$need libfuse3-dev"
  command -v pkg-config >/dev/null 2>&1 || need="$need pkg-config"
  command -v gcc >/dev/null 2>&1 || need="$need gcc"
  command -v useradd >/dev/null 2>&1 || need="$need passwd"
  if [ -n "$need" ]; then
    echo "installing system packages:$need" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null) \
      || echo "warning: could not install$need" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating the virtual environment $VENV with $("$PYTHON" --version 2>&1)" >&2
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --disable-pip-version-check -q --upgrade pip setuptools wheel
"$PY" -m pip install --disable-pip-version-check -q -e ".[${extras}]" \
  || { echo "warning: the lazy (FUSE) extra did not install; historical servers will be materialized" >&2
       "$PY" -m pip install --disable-pip-version-check -q -e ".${plain}"; }
# The PostgreSQL 18 runtime and the OS user that runs it (created when root).
"$PY" -m strata.runtime.setup

mkdir -p "$BIN_DIR"
ln -sf "$VENV/bin/strata" "$BIN_DIR/strata"
case ":$PATH:" in
  *":$BIN_DIR:"*) ;;
  *) echo "note: add $BIN_DIR to PATH to run strata (or use $VENV/bin/strata)" >&2 ;;
esac
echo "strata installed: $BIN_DIR/strata -> $VENV/bin/strata" >&2
