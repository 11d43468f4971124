#!/usr/bin/env bash
# Set-up command 2: install with test extras and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
# The default run keeps pytest's file order, so that two runs of the same tree run the same
# tests in the same order with the same data (tests/conftest.py seeds the global RNGs per test):
# a red CI run then reproduces by running it again. Random order is a separate check,
# scripts/test_random.sh, whose every run prints its seed; to replay one here, pass
# --random-order-bucket=module --random-order-seed=N (docs/testing.md).
python3 -m pytest -q -p no:cacheprovider "$@" tests
