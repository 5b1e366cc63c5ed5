#!/usr/bin/env bash
# Issue 5 on CPU (the figures in BENCHMARKS.md; about 10 minutes on 2 quiet cores): naive against factorised
# training epochs for AlexNet (random weights: the pretrained ones cannot be downloaded offline, and timing does not
# depend on them) and EfficientNet-Lite0, then the head epoch at 100 to 10,000 images (AlexNet-shaped features).
# JSON results go to $OUT if set, else runs/bench/cpu.
set -eu
cd "$(dirname "$0")/.."
RESULTS=${OUT:-runs/bench/cpu}
mkdir -p "$RESULTS"
export SIAMRDM_DATA=${SIAMRDM_DATA:-../shared/algonauts2019}
# Idle OpenMP threads sleep instead of spinning: on cores shared with other work, spinning made 2-thread torch
# ops 1.5-15x slower (BENCHMARKS.md). Set OMP_WAIT_POLICY=ACTIVE to time torch's default.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
{ lscpu | grep -E 'Model name|^CPU\(s\)|L2|L3'; uptime; } | tee "$RESULTS/machine.txt"
python benchmarks/bench_training.py --backbone alexnet --weights random --head-sizes none --out "$RESULTS/alexnet.json"
python benchmarks/bench_training.py --backbone efficientnet_lite0 --head-sizes none --out "$RESULTS/efficientnet.json"
# EfficientNet on CPU is memory-bound: smaller body chunks stay in cache (BENCHMARKS.md, body chunk).
python benchmarks/bench_training.py --backbone efficientnet_lite0 --body-chunk 16 --head-sizes none --out "$RESULTS/efficientnet-chunk16.json"
python benchmarks/bench_training.py --no-training --head-sizes 100,1000,3000,10000 --out "$RESULTS/head.json"
