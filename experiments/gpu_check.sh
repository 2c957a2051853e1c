#!/usr/bin/env bash
# GPU check (issue 6), at most about 5 minutes on one GPU: build the `small` pair ON the GPU, fit its
# cost clock there, train both policies briefly, export, and benchmark ar, grid and ltd in one run.
# Figures and the hardware land in $OUT (default runs/gpu-check); copy them to experiments/gpu/.
#
#   experiments/gpu_check.sh                      # on a machine with a CUDA GPU
#   PAIR=micro DEVICE=cpu experiments/gpu_check.sh   # the same flow on a CPU, in a few minutes
#   BLOCK=1 experiments/gpu_check.sh              # also the block drafter (issue 8): distil it on the
#                                                 # GPU, train policies on it, add grid_block/ltd_block
set -euo pipefail
cd "$(dirname "$0")/.."
PAIR=${PAIR:-small}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-float32}
OUT=${OUT:-runs/gpu-check}
LTD=${LTD:-ltd}
BLOCK=${BLOCK:-0}
DRAFTER_STEPS=${DRAFTER_STEPS:-1500}
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

METHODS=ar,grid,ltd
EXTRA=()
if [ "$BLOCK" = 1 ]; then
  stamp "block drafter: distil on $DEVICE, then policies on it"
  $LTD drafter train --pair "$PAIR" --device "$DEVICE" --steps "$DRAFTER_STEPS" | tee "$OUT/drafter.txt"
  sed -e "s/^name: .*/name: gpu-check-$PAIR-block/" -e "s/^drafting: {/drafting: {drafter: block, /" \
    -e "s/max_depth: 8/max_depth: 8/" "$OUT/spec.yaml" > "$OUT/spec-block.yaml"
  $LTD profile "$OUT/spec-block.yaml" | tee "$OUT/profile-block.txt"
  rm -rf "$OUT/run-block"
  $LTD train "$OUT/spec-block.yaml" --config experiments/gpu/ppo-gpu.yaml --run-dir "$OUT/run-block"
  $LTD export "$OUT/run-block" -o "$OUT/policy-block"
  METHODS=ar,grid,ltd,grid_block,ltd_block
  EXTRA=(--block-policy "$OUT/policy-block")
fi

stamp "benchmark"
$LTD bench --pair "$PAIR" --device "$DEVICE" --dtype "$DTYPE" --methods "$METHODS" --policy "$OUT/policy" \
  "${EXTRA[@]}" --limit 20 --validation 6 --json "$OUT/bench.json" | tee "$OUT/bench.txt"
stamp "done: $OUT"
