#!/usr/bin/env bash
# Issue 13 on one CUDA card in one go, the `paper` preset at the GPU's speed: at most 9.5 minutes by its time
# limits (90 + 230 + 240 s), about 7 expected on an H100; give the device call timeout_s 590.
#   1. before: one unfrozen epoch of the code at $BEFORE_COMMIT (CPU augmentation, numpy validation every epoch)
#   2. after: the body's floor (fp32; bf16 + channels-last), one unfrozen epoch per lever and all together, and
#      the cross-set scores of float32 against the fast settings (4 targets x 2 directions, same seed)
#   3. `siamrdm challenge --preset paper` end to end with the fast settings (stopped after CHALLENGE_SECONDS);
#      the default settings' end-to-end time is estimated from the epoch times (8 curves x 1015 epochs would
#      take far longer than one device session)
# Every figure is printed with the card's name; JSON, logs and summary.txt go to $OUT (else runs/bench/gpu).
# DRY=1 runs the same steps at tiny sizes on the CPU (AlexNet with random weights, few images, 2 epochs): a check
# that the script works end to end, not a measurement. PARTS=issue5 runs the earlier naive/factorised, head and
# paper-schedule benchmarks instead (PARTS=fastpath,issue5 both; they need about 8 more minutes).
# PARTS=endtoend (issue 36): `challenge --preset paper` end to end, every fit in its own process (--jobs 8;
# stopped after PAPER_CHALLENGE_SECONDS), then the lever protocol's frozen / K = 1 / K = 2 / whole-body comparison
# at 224 px (benchmarks/run_levers_gpu.sh, one process per target, each stopped after LEVER_SECONDS).
# Data: $SIAMRDM_DATA, else runs/device/algonauts2019 (a carried copy), else ../shared/algonauts2019.
# The code before: runs/device/before/src (carry runs/device); made here with git when missing.
set -u
cd "$(dirname "$0")/.."
RESULTS=${OUT:-runs/bench/gpu}
mkdir -p "$RESULTS"
. benchmarks/device_env.sh
BEFORE_COMMIT=${BEFORE_COMMIT:-8631aa4}
CHALLENGE_SECONDS=${CHALLENGE_SECONDS:-240}
PAPER_SECONDS=${PAPER_SECONDS:-120}
PARTS=${PARTS:-fastpath}
PAPER_CHALLENGE_SECONDS=${PAPER_CHALLENGE_SECONDS:-300}
LEVER_SECONDS=${LEVER_SECONDS:-240}
LEVER_FLAGS=""
FAST_FLAGS="--precision bf16 --channels-last --validate-every 10 --jobs 8"
if [ "${DRY:-0}" = 1 ]; then
  DEVICE=cpu BENCH_FLAGS="--dry" FAST_FLAGS="--precision bf16 --channels-last --validate-every 2 --jobs 2"
  CHALLENGE_FLAGS="--backbone alexnet --weights random --image-size 128 --frozen-epochs 1 --unfrozen-epochs 2 --targets EVC,IT"
  LEVER_FLAGS="--epochs 2 --image-size 64"
  CARD="CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1) (dry run, tiny sizes)"
else
  DEVICE=cuda BENCH_FLAGS="" CHALLENGE_FLAGS=""
  CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
fi

{
  date -u
  echo "card: $CARD"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  lscpu | grep -E 'Model name|^CPU\(s\)'
  python -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
  echo "SIAMRDM_DATA=${SIAMRDM_DATA:-<none>}"
} > "$RESULTS/machine.txt" 2>&1
cat "$RESULTS/machine.txt"
: > "$RESULTS/summary.txt"
say() { echo "[$CARD] $*" | tee -a "$RESULTS/summary.txt"; }

paper_challenge() {  # paper_challenge NAME SECONDS FLAGS...: `challenge --preset paper` in $RESULTS/NAME, timed
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  rm -rf "$RESULTS/$name"
  timeout "$limit" python -m siamrdm challenge --preset paper $CHALLENGE_FLAGS "$@" \
    --device "$DEVICE" --quiet --out "$RESULTS/$name" > "$RESULTS/$name.log" 2>&1
  local code=$?
  if [ $code = 0 ]; then
    say "challenge --preset paper $*: finished in $((SECONDS - start)) s (wall, process start included)"
    grep '^validation siamese' "$RESULTS/$name.log" | sed "s/^/[$CARD] /" | tee -a "$RESULTS/summary.txt"
  else
    say "challenge --preset paper $*: exit $code, not finished after $((SECONDS - start)) s"
  fi
}

fastpath() {
  # 1. before: the old code's only path, same script (it uses only what both checkouts have).
  if [ ! -d runs/device/before/src ] && git rev-parse -q --verify "$BEFORE_COMMIT^{commit}" > /dev/null 2>&1; then
    mkdir -p runs/device/before && git archive "$BEFORE_COMMIT" src | tar -x -C runs/device/before
  fi
  if [ -d runs/device/before/src ]; then
    local start=$SECONDS
    PYTHONPATH="$PWD/runs/device/before/src:$PYTHONPATH" timeout 90 python benchmarks/fast_path.py $BENCH_FLAGS \
      --device "$DEVICE" --out "$RESULTS" --parts epochs --levers fp32 --label before --epochs 10 --warmup 2 \
      2>&1 | tee "$RESULTS/before.log" | grep --line-buffered '^\[' | tee -a "$RESULTS/summary.txt"
    say "before: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
  else
    say "before: no runs/device/before/src and no git history here: the before figures are skipped"
  fi
  # 2. after: floor, levers, accuracy.
  local start=$SECONDS
  timeout 230 python benchmarks/fast_path.py $BENCH_FLAGS --device "$DEVICE" --out "$RESULTS" \
    --parts ops,floor,epochs,accuracy --epochs 10 --warmup 2 --accuracy-epochs 50 \
    2>&1 | tee "$RESULTS/after.log" | grep --line-buffered '^\[' | tee -a "$RESULTS/summary.txt"
  say "after: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
  # 3. the challenge end to end with the fast settings.
  paper_challenge challenge-fast "$CHALLENGE_SECONDS" $FAST_FLAGS
  python - "$RESULTS" "$CARD" <<'PY' | tee -a "$RESULTS/summary.txt"
import json, sys
from pathlib import Path
out, card = Path(sys.argv[1]), sys.argv[2]
def load(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None
floor, before, after = load("floor"), load("epochs-before"), load("epochs-after")
body = floor["body"]["fp32"]["body_s_per_epoch"] if floor else None
rows = ([("before (fp32, CPU augmentation, numpy validation)", before["levers"]["fp32"])] if before else []) + \
       ([(f"after: {k}", v) for k, v in after["levers"].items()] if after else [])
for name, r in rows:
    ratio = f", {r['final_epoch_s'] / body:.1f}x the fp32 body pass (the floor)" if body else ""
    print(f"[{card}] {name}: final-fit epoch {r['final_epoch_s'] * 1e3:.1f} ms{ratio}; curve epoch "
          f"{r['curve_epoch_s'] * 1e3:.1f} ms")
for name, r in (("before", before and before["levers"]["fp32"]), ("after fp32", after and after["levers"]["fp32"])):
    if r:  # the default challenge: 8 curves of 1015 epochs one after another, then 4 final fits (at most 1015)
        low, high = 8 * 1015 * r["curve_epoch_s"], 8 * 1015 * r["curve_epoch_s"] + 4 * 1015 * r["final_epoch_s"]
        print(f"[{card}] challenge --preset paper, default settings ({name}), estimated from the epoch times: "
              f"{low / 60:.0f}-{high / 60:.0f} min (not run)")
PY
}

issue5() {  # the naive/factorised, head-scaling and paper-schedule runs of issue 5 (BENCHMARKS.md, H200 section)
  part() {  # part NAME SECONDS ARGS...: one `benchmarks/bench_training.py` run with its own limit, JSON in NAME.json
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" python benchmarks/bench_training.py --device "$DEVICE" --json --out "$RESULTS/$name.json" "$@" \
      > /dev/null 2> "$RESULTS/$name.log"
    say "$name: exit $? after $((SECONDS - start)) s"
  }
  part alexnet 80 --backbone alexnet --weights random --naive-batches 0 --rounds 3 --head-sizes none
  part efficientnet 120 --backbone efficientnet_lite0 --naive-batches 0 --rounds 3 --head-sizes none
  part head 120 --no-training --head-sizes 100,1000,3000,10000,30000
  part paper $((PAPER_SECONDS + 60)) --no-training --head-sizes none --paper --paper-time-limit "$PAPER_SECONDS"
  python benchmarks/summarize.py "$RESULTS" | tee -a "$RESULTS/summary.txt"
}

endtoend() {  # issue 36: the paper preset end to end, and what training the body adds, at 224 px
  paper_challenge challenge-paper "$PAPER_CHALLENGE_SECONDS" --jobs 8
  local start=$SECONDS
  OUT="$RESULTS/train-stages" DEVICE="$DEVICE" LIMIT="$LEVER_SECONDS" EXTRA="$LEVER_FLAGS" \
    LEVERS=default,train_stages_1,train_stages_2,train_stages_all bash benchmarks/run_levers_gpu.sh \
    > "$RESULTS/train-stages.log" 2>&1
  say "train stages (levers at 224 px): exit $? after $((SECONDS - start)) s"
  grep '^|' "$RESULTS/train-stages.log" | sed "s/^/[$CARD] /" | tee -a "$RESULTS/summary.txt"
}

for p in ${PARTS//,/ }; do "$p"; done
