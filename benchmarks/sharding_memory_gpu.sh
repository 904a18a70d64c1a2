#!/usr/bin/env bash
# Prepared GPU measurement for issue 24 item 4 (not run here: no GPU was available when it was written).
# Peak GPU memory of one AdamW step of the KJV transformer denoiser (BPE vocabulary 4096, 128 tokens, dim 1024,
# bf16 autocast) under DDP and FSDP, at the largest depth that fits (depth doubled from 8 until a step runs out of
# memory), on NPROC GPUs of one node (default: every visible GPU). Writes
# benchmarks/results/sharding_memory_cuda_${NPROC}gpu.{md,json}. With one GPU both modes hold the same state
# (FSDP over one process shards nothing): the comparison needs NPROC >= 2.
#
#   bash benchmarks/sharding_memory_gpu.sh            # all visible GPUs
#   NPROC=4 DIM=2048 bash benchmarks/sharding_memory_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-$(python -c "import torch; print(torch.cuda.device_count())")}
DIM=${DIM:-1024}
HEADS=${HEADS:-16}
DEPTH=${DEPTH:-8}
BATCH=${BATCH:-16}
PYTHONPATH=src python benchmarks/sharding_memory.py --device cuda --procs "$NPROC" --dim "$DIM" --heads "$HEADS" \
    --depth "$DEPTH" --batch "$BATCH" --bf16 --search --name "sharding_memory_cuda_${NPROC}gpu"
