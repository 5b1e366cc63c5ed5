#!/usr/bin/env bash
# Issue 5 on a CUDA machine, in one go (about 5-8 minutes on an H200): naive against factorised training epochs
# for AlexNet and EfficientNet-Lite0, the head epoch at 100 to 30,000 images, and the `paper` preset's schedule
# end to end (stopped after PAPER_SECONDS and extrapolated if not finished).
# JSON results and logs go to $OUT if set, else runs/bench/gpu. Each part has its own time limit, so one
# failure or overrun does not lose the others.
# Data: $SIAMRDM_DATA, else runs/device/algonauts2019 (a carried copy), else ../shared/algonauts2019.
set -u
cd "$(dirname "$0")/.."
RESULTS=${OUT:-runs/bench/gpu}
mkdir -p "$RESULTS"
. benchmarks/device_env.sh
PAPER_SECONDS=${PAPER_SECONDS:-120}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  lscpu | grep -E 'Model name|^CPU\(s\)'
  python -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
  echo "SIAMRDM_DATA=${SIAMRDM_DATA:-<none>}"
} > "$RESULTS/machine.txt" 2>&1
cat "$RESULTS/machine.txt"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1

part() {  # part NAME SECONDS ARGS...: one `siamrdm bench` run with its own limit, JSON in NAME.json
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" python -m siamrdm bench --device cuda --json --out "$RESULTS/$name.json" "$@" \
    > /dev/null 2> "$RESULTS/$name.log"
  echo "$name: exit $? after $((SECONDS - start)) s"
}

if [ -n "${SIAMRDM_DATA:-}" ]; then
  # Full naive epochs on the GPU (no sampling): --naive-batches 0.
  part alexnet 80 --backbone alexnet --weights random --naive-batches 0 --rounds 3 --head-sizes none
  part efficientnet 120 --backbone efficientnet_lite0 --naive-batches 0 --rounds 3 --head-sizes none
else
  echo "no Algonauts data found: skipping the naive/factorised and paper-schedule parts"
fi
part head 120 --no-training --head-sizes 100,1000,3000,10000,30000
if [ -n "${SIAMRDM_DATA:-}" ]; then
  part paper $((PAPER_SECONDS + 60)) --no-training --head-sizes none --paper --paper-time-limit "$PAPER_SECONDS"
fi

python - "$RESULTS" <<'PY'
import json, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    r = json.loads(path.read_text())
    if "speedup" in r:
        print(f"{path.stem}: naive {r['naive_s_per_epoch']:.2f} s, factorised {r['factorised_s_per_epoch']:.3f} s, "
              f"speedup {r['speedup']:.1f}x, breakdown {r['factorised_breakdown_s']}")
    for h in r.get("head_scaling", []):
        print(f"head {h['images']}: {h['seconds']:.2f} s, {h['pairs_per_s'] / 1e6:.1f} M pairs/s, "
              f"{h.get('peak_cuda_mb', 0):.0f} MB GPU")
    if "paper_schedule" in r:
        print("paper:", json.dumps(r["paper_schedule"]))
PY
