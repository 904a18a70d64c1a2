#!/usr/bin/env bash
# Issue 20 item 7: the largest configuration of benchmarks/text_vs_ar.py on one GPU in bf16, about 10 minutes on
# an H100 (estimated, not yet run): AR, masked, block 4 / 16, uniform and the recipe switches on KJV-27 windows of
# 256, width 384, depth 6, 6 heads (about 10.6 M parameters in attention + MLP), 1500 steps x 64 windows
# (24.6 M training tokens per model, about 6.8 epochs of the 3.6 M training characters).
# Prints the same table as the CPU run and writes benchmarks/results/text_vs_ar_gpu.{md,json}; name the card when
# you copy the table into docs/results.md. Needs the Debian package bible-kjv (or a cached kjv.txt) and the block
# diffusion code (model.block_size). Extra arguments are passed on (e.g. --steps 300 for a shorter check).
#
#     bash benchmarks/text_vs_ar_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
exec "$PYTHON" benchmarks/text_vs_ar.py --device cuda --precision bf16 \
    --dim 384 --depth 6 --heads 6 --seq-len 256 --batch-size 64 --steps 1500 --warmup 100 --lr 1e-3 --ema 0.999 \
    --eval-every 250 --val-windows 128 --val-t 2 --test-windows 0 --test-t 4 --eval-batch 128 \
    --temperatures 0.6 0.7 0.8 0.9 1.0 --num-samples 32 --sample-steps 256 --block-steps 4 \
    --cache-length 1024 --cache-batch 8 --recipes --stem text_vs_ar_gpu --work /tmp/text_vs_ar_gpu "$@"
