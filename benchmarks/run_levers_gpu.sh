#!/usr/bin/env bash
# The lever sweep of benchmarks/levers.py on a CUDA machine in one go: one process per target, sharing the card,
# each running every lever in order (most important first), writing OUT/<target>/levers.jsonl as it goes, so
# a run stopped by its time limit keeps what finished. Then the summary table.
# Data: $SIAMRDM_DATA, else runs/device/algonauts2019 (a carried copy), else ../shared/algonauts2019.
# DEVICE (default cuda), TARGETS (default all four) and EXTRA (more levers.py options: a dry run's --epochs 2
# --image-size 64) may be set.
set -u
cd "$(dirname "$0")/.."
RESULTS=${OUT:-runs/levers/gpu}
LIMIT=${LIMIT:-420}
LEVERS=${LEVERS:-default,train_stages_1,train_stages_2,train_stages_all,seeds3,tta,views_8}
DEVICE=${DEVICE:-cuda}
TARGETS=${TARGETS:-EVC,IT,MEG_early,MEG_late}
mkdir -p "$RESULTS"
export OMP_NUM_THREADS=4
. benchmarks/device_env.sh
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$RESULTS/machine.txt"
for target in ${TARGETS//,/ }; do
  timeout "$LIMIT" python benchmarks/levers.py --targets "$target" --levers "$LEVERS" --device "$DEVICE" ${EXTRA:-} \
    --out "$RESULTS/$target" > "$RESULTS/$target.log" 2>&1 &
done
wait
cat "$RESULTS"/*/levers.jsonl > "$RESULTS/levers.jsonl" 2>/dev/null
cat "$RESULTS"/*.log | grep -v -i warn
python benchmarks/levers.py --summarize "$RESULTS/levers.jsonl"
