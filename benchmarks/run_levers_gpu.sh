#!/usr/bin/env bash
# The lever sweep of benchmarks/levers.py on a CUDA machine in one go: one process per target, sharing the card,
# each running every lever in order (most important first), writing OUT/<target>/levers.jsonl as it goes, so
# a run stopped by its time limit keeps what finished. Then the summary table.
# Data: $SIAMRDM_DATA, else runs/device/algonauts2019 (a carried copy), else ../shared/algonauts2019.
set -u
cd "$(dirname "$0")/.."
RESULTS=${OUT:-runs/levers/gpu}
LIMIT=${LIMIT:-420}
LEVERS=${LEVERS:-base,prior_layer,prior_layer_seeds3,prior_layer_tta_seeds3,seeds3,tta,prior_nnls,head_pairwise,prior_layer_lr3e-4,rescale_rank,weight_decay_0.3}
mkdir -p "$RESULTS"
export OMP_NUM_THREADS=4
. benchmarks/device_env.sh
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$RESULTS/machine.txt"
for target in EVC IT MEG_early MEG_late; do
  timeout "$LIMIT" python benchmarks/levers.py --targets "$target" --levers "$LEVERS" --device cuda \
    --out "$RESULTS/$target" > "$RESULTS/$target.log" 2>&1 &
done
wait
cat "$RESULTS"/*/levers.jsonl > "$RESULTS/levers.jsonl" 2>/dev/null
cat "$RESULTS"/*.log | grep -v -i warn
python benchmarks/levers.py --summarize "$RESULTS/levers.jsonl"
