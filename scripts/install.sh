#!/usr/bin/env bash
# Installs wanmoe and its dependencies. If no torch is importable, the CPU build is installed
# (pin 2.13.0); on a GPU machine install the CUDA torch of your choice first.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q "torch==2.13.0"
# The test extra's scale-out tests start a real PostgreSQL server (tests/serve/pg_server.py):
# the Debian package, installed here when missing and we are root.
if [ "$extra" = "test" ] && ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null; }
fi
if [ -n "$extra" ]; then
  python3 -m pip install -q -e ".[$extra]"
else
  python3 -m pip install -q -e .
fi
