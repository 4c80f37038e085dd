#!/usr/bin/env bash
# Regenerates leaderboards/metaldam.{md,csv,html,tex} (+ the realism figures) from real runs on the CPU
# preset: sim2real (phase-field + CycleGAN + UNet, no real label), sim2real_notranslate (the ablation without the
# CycleGAN), unet supervised on the real MetalDAM labels (configs/cpu_metaldam.yaml: the same network, crops and
# 1,000-step schedule as sim2real's final loop) and the Otsu floor; 3 seeds per trained row, scored on the same 6
# real test images merged to two phases; the paper's row as reported. About an hour on 2 CPU cores.
#   BENCH_DATA_ROOT=../shared/data bash benchmarks/leaderboard_metaldam.sh [OUTPUT_ROOT]
set -euo pipefail
out=${1:-runs}
seeds=${SEEDS:-0,1,2}
bench sweep --methods otsu_threshold --datasets metaldam_2phase --seeds 0 --set output_root="$out" -q
bench sweep --methods sim2real,sim2real_notranslate --datasets metaldam_2phase --seeds "$seeds" \
  --set preset=cpu --set output_root="$out" -q
bench sweep --methods unet --datasets metaldam_2phase --seeds "$seeds" --config configs/cpu_metaldam.yaml \
  --set output_root="$out" -q
bench leaderboard --dataset metaldam_2phase --output-root "$out" \
  --methods sim2real,sim2real_notranslate,unet,otsu_threshold --metrics iou,bf1,bf1@0.0075,dice,hd95 \
  --format md,csv,html,tex --baseline sim2real_notranslate --reported leaderboards/reported/metaldam.yaml --name metaldam \
  --note "Runs: \`BENCH_DATA_ROOT=../shared/data bash benchmarks/leaderboard_metaldam.sh\` (the sweeps, then this command); 2 CPU cores; sim2real rows: \`--set preset=cpu\` (CycleGAN 1,000 steps on 128-px crops, then the UNet 1,000 steps x 8 x 128 px on translated synthetic images, no real label); unet: the same network and schedule on the real train labels (configs/cpu_metaldam.yaml); scores on the 6 real test images, bright phase (class 1) as foreground; bf1 at 2 px, bf1@0.0075 at 0.75% of the diagonal."
# the realism figures of the first seed (real vs raw synthetic vs translated) beside the table
first=${REALISM_SEED:-${seeds%%,*}}
for f in realism_tsne.png realism_entropy.png realism_crops.png realism.json; do
  cp "$out/metaldam_2phase/sim2real/seed$first/stages/realism/$f" "leaderboards/metaldam_${f}"
done
