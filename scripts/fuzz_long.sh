#!/usr/bin/env bash
# Long fuzz run of the checkpoint readers (tests/fuzz), beyond the bounded CI run.
#   WANMOE_FUZZ_EXAMPLES  multiplier of every fuzz test's example count (default here: 50,
#                         about 130,000 mutated files; the CI run is 1, about 2,700 files)
#   WANMOE_FUZZ_SEED      set to draw a fresh random stream instead of the fixed CI one
#                         (hypothesis prints a reproduction blob for any failure)
#   WANMOE_FUZZ_CASE_SECONDS  per-file time limit (default 5)
# Extra arguments go to pytest, e.g. `-k gguf` or `-x`.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANMOE_FUZZ_EXAMPLES="${WANMOE_FUZZ_EXAMPLES:-50}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pytest -q -p no:cacheprovider "$@" tests/fuzz
