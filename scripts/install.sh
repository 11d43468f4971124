#!/usr/bin/env bash
# Installs wanmoe and its dependencies. If no torch is importable, the CPU build is installed
# (pin 2.13.0); on a GPU machine install the CUDA torch of your choice first.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q "torch==2.13.0"
if [ -n "$extra" ]; then
  python3 -m pip install -q -e ".[$extra]"
else
  python3 -m pip install -q -e .
fi
