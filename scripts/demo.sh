#!/usr/bin/env bash
# Set-up command 1: install wanmoe and run the main job. With no checkpoint given it uses the
# built-in demo model on the CPU and writes demo.mp4 (+ a PNG strip of its frames).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
prompt="${1:-a red circle moves to the right on a dark blue background}"
shift || true
python3 -m wanmoe generate "$prompt" --out demo.mp4 --save-strip demo.png --device cpu "$@"
