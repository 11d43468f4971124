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

# The browser test (tests/e2e/test_web_browser.py) drives Debian's `chromium` through
# `chromium-driver` with Selenium (in the test extra). apt installs them when missing and we are
# root (as in CI); otherwise the test skips and names what is missing (under CI it fails).
if [ "$extra" = "test" ] && ! { command -v chromium && command -v chromedriver; } >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
             --no-install-recommends chromium chromium-driver >/dev/null; }; then
      echo "install.sh: apt-get could not install chromium chromium-driver" >&2
      if [ -n "${CI:-}" ]; then exit 1; fi
    fi
  else
    echo "install.sh: chromium / chromedriver are missing (as root: apt-get install chromium" \
         "chromium-driver); the browser test will skip" >&2
  fi
fi
