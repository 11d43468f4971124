#!/usr/bin/env bash
# Set-up command 2: install with test extras and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
python3 -m pytest -q -p no:cacheprovider "$@" tests
