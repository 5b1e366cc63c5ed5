#!/usr/bin/env bash
# Cross-set design sweep on a GPU machine, four targets in parallel, results in $OUT/<target>/sweep.jsonl.
# Expects the data in $SIAMRDM_DATA and siamrdm importable (PYTHONPATH=src). Stops after SWEEP_SECONDS.
set -u
OUT=${OUT:-runs/sweep}
export OMP_NUM_THREADS=4 PYTHONUNBUFFERED=1
budget=${SWEEP_SECONDS:-330}
for t in EVC IT MEG_early MEG_late; do
  mkdir -p "$OUT/$t"
  timeout "$budget" bash -c "
    s='python benchmarks/cross_set_sweep.py --targets $t --out $OUT/$t'
    \$s --lrs 1e-3,3e-3 --rescales minmax,rank --seeds 0 --epochs 80
    \$s --lrs 1e-3 --epochs 10 --unfrozen 60
    \$s --lrs 1e-3 --stages blocks4,blocks6 --epochs 80
    \$s --lrs 1e-3,3e-3 --rescales minmax,rank --seeds 1 --epochs 80
  " > "$OUT/$t/log.txt" 2>&1 &
done
wait
tail -n 4 "$OUT"/*/log.txt
