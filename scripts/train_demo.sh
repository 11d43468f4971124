#!/usr/bin/env bash
# Retrain the built-in demo model from scratch and install it into wanmoe/demo/assets/.
#
#   scripts/train_demo.sh [WORK_DIR]        (default WORK_DIR: ./demo_train)
#
# `wanmoe train` runs the demo-only trainer in wanmoe/demo/training/.
#
# Stages (each resumable: re-run the same command after an interruption; see docs/demo.md):
#   1. VAE: 600 steps on 9-frame 64x64 crops + 1400 on 17-frame 64x64 windows, then the
#      latent mean/std (2 torch threads)
#   2. caption tokenizer + encode 2000 training clips and 48 held-out clips (2 threads)
#   3. side by side, 1 thread each: the two DiT experts + umT5 (10000 optimiser steps,
#      alternating experts, then continued to 14000) | the decoder-only VAE fine-tune (500
#      steps; the encoder is frozen, so the DiT's latents stay valid), then the dense ablation
#      twin (10000, then 14000 steps)
#   4. export the two-expert model into the package, the ablation's validation losses, then
#      the held-out adherence tables of both models (60 prompts each)
set -euo pipefail
WORK="${1:-demo_train}"
cd "$(dirname "$0")/.."
T="nice -n 5 python -m wanmoe train"
# the two-expert run and the dense twin side by side, one core each; $1 = total steps,
# $2 = command run before the dense twin (on its core)
side_by_side() {
    $T dit --work "$WORK" --mode moe --dit-steps "$1" --threads 1 > "$WORK/dit_moe_$1.log" 2>&1 &
    local moe=$!
    { $2; $T dit --work "$WORK" --mode dense --dit-steps "$1" --threads 1; } \
        > "$WORK/dit_dense_$1.log" 2>&1 &
    local dense=$!
    wait $moe
    wait $dense
}
$T vae --work "$WORK" --vae-steps 2000 --decoder-steps 0 --threads 2
$T latents --work "$WORK" --clips 2000 --threads 2
side_by_side 10000 "$T decoder --work $WORK --decoder-steps 500 --threads 1"
# continued to 14000 steps (the cosine is re-laid over 14000 from the 10000-step state; this is
# how the shipped model was made: 10000 steps measured first, then continued)
side_by_side 14000 true

$T dit --work "$WORK" --mode moe --dit-steps 14000 --threads 2 --export wanmoe/demo/assets
$T ablation --work "$WORK" --dit-steps 14000 --threads 2
python -m wanmoe.demo.evaluate --n 60
python -m wanmoe.demo.evaluate --n 60 --checkpoint "$WORK/ablation_dense"
