#!/usr/bin/env bash
# Install pgStrata and what it needs on a fresh machine (Debian/Ubuntu, Python 3.11+).
# Idempotent. As root it also installs the optional FUSE packages (lazy mode).
# Usage: bash scripts/install.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  need=""
  command -v fusermount3 >/dev/null 2>&1 || need="$need fuse3 libfuse3-dev"
  command -v useradd >/dev/null 2>&1 || need="$need passwd"
  if [ -n "$need" ]; then
    echo "installing system packages:$need" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null) \
      || echo "warning: could not install$need; lazy (FUSE) mode will fall back to materialize" >&2
  fi
fi

python3 -m pip install --disable-pip-version-check -q -e ".${extra}"
# The PostgreSQL 18 runtime and the OS user that runs it (created when root).
python3 -m strata.runtime.setup
