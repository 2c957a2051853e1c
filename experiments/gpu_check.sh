#!/usr/bin/env bash
# GPU check (issue 6), at most about 5 minutes on one GPU: build the `small` pair ON the GPU, fit its
# cost clock there, train both policies briefly, export, and benchmark ar, grid and ltd in one run.
# Figures and the hardware land in $OUT (default runs/gpu-check); copy them to experiments/gpu/.
#
#   experiments/gpu_check.sh                      # on a machine with a CUDA GPU
#   PAIR=micro DEVICE=cpu experiments/gpu_check.sh   # the same flow on a CPU, in a few minutes
set -euo pipefail
cd "$(dirname "$0")/.."
PAIR=${PAIR:-small}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-float32}
OUT=${OUT:-runs/gpu-check}
LTD=${LTD:-ltd}
mkdir -p "$OUT"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi";
  python -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, platform.processor())"; } \
  > "$OUT/hardware.txt"
stamp "hardware: $(head -1 "$OUT/hardware.txt")"

stamp "building pair $PAIR on $DEVICE"
$LTD pair build --preset "$PAIR" --rebuild --device "$DEVICE" | tee "$OUT/pair.txt"

cat > "$OUT/spec.yaml" <<SPEC
name: gpu-check-$PAIR
pair: $PAIR
device: $DEVICE
dtype: $DTYPE
workload: {prompts: heldout, split: train, max_prompt_tokens: 96, max_new_tokens: 64}
drafting: {top_k: 4, max_depth: 8, widths: [1, 2, 4, 8, 16, 32, 48, 64]}
clock: cost
SPEC
stamp "fitting the cost clock on $DEVICE"
$LTD profile "$OUT/spec.yaml" | tee "$OUT/profile.txt"

stamp "training (short)"
rm -rf "$OUT/run"
$LTD train "$OUT/spec.yaml" --config experiments/gpu/ppo-gpu.yaml --run-dir "$OUT/run"
$LTD export "$OUT/run" -o "$OUT/policy"

stamp "benchmark"
$LTD bench --pair "$PAIR" --device "$DEVICE" --dtype "$DTYPE" --methods ar,grid,ltd --policy "$OUT/policy" \
  --limit 20 --validation 6 --json "$OUT/bench.json" | tee "$OUT/bench.txt"
stamp "done: $OUT"
