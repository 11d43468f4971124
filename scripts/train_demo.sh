#!/usr/bin/env bash
# Retrain the built-in demo model from scratch and install it into wanmoe/demo/assets/.
#
#   scripts/train_demo.sh [WORK_DIR]        (default WORK_DIR: ./demo_train)
#
# Stages (each resumable: re-run the same command after an interruption):
#   VAE (700 steps on 32x32x5 crops + 200 on 64x64x5) -> latent mean/std -> caption tokenizer
#   -> encode 600 training clips + 48 held-out clips -> two DiT experts + umT5 (2600 optimiser
#   steps in total, alternating experts)
#   -> export. Then the held-out evaluation table is printed. See docs/demo.md.
set -euo pipefail
WORK="${1:-demo_train}"
cd "$(dirname "$0")/.."
nice -n 5 python -m wanmoe train all --work "$WORK" --vae-steps 900 --clips 600 \
    --dit-steps 2600 --batch 16 --threads 1
nice -n 5 python -m wanmoe.demo.evaluate --n 60
