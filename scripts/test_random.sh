#!/usr/bin/env bash
# Runs the whole test suite RUNS times (default 5) in random order, each run with its own seed,
# and stops at the first failing run, printing the seed and the command that reproduces it.
#
#   scripts/test_random.sh [RUNS] [extra pytest arguments]
#   SEEDS="123 456" scripts/test_random.sh     # given seeds instead of fresh ones (RUNS = their count)
#
# Order: pytest-random-order, bucket "module": the modules run in a shuffled order and the tests
# of each module in a shuffled order (module-scoped fixtures are still built once per module).
# The test data does not change with the seed: tests/conftest.py seeds the global RNGs from each
# test's id, so a failure here comes from the order alone. See docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
[ $# -gt 0 ] && shift
python3 -c "import random_order" 2>/dev/null || bash scripts/install.sh test
if [ -n "${SEEDS:-}" ]; then
  read -r -a seeds <<< "$SEEDS"
else
  seeds=()
  for _ in $(seq 1 "$runs"); do seeds+=("$(( (RANDOM * 32768 + RANDOM) % 1000000 + 1 ))"); done
fi
n=${#seeds[@]}
i=0
for seed in "${seeds[@]}"; do
  i=$((i + 1))
  echo "=== random-order run $i/$n: --random-order-seed=$seed"
  rc=0
  python3 -m pytest -q -p no:cacheprovider --random-order-bucket=module \
    --random-order-seed="$seed" "$@" tests || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "=== run $i/$n FAILED (exit $rc) with --random-order-seed=$seed; reproduce with:"
    echo "    python3 -m pytest -p no:cacheprovider --random-order-bucket=module --random-order-seed=$seed $* tests"
    exit "$rc"
  fi
done
echo "=== $n random-order runs passed, seeds: ${seeds[*]}"
