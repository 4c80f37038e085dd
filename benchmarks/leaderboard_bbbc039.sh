#!/usr/bin/env bash
# Regenerates leaderboards/bbbc039.{md,csv,html,tex} from real runs under the budget policy: every trained method
# gets the budget of configs/cpu_fields.yaml (1,000 steps of 16 x 128 x 128, one MONAI UNet backbone), 3 seeds;
# the leaderboard marks a row whose validation curve was still rising. About 60 minutes on 2 CPU cores.
#   BENCH_DATA_ROOT=../shared/data bash benchmarks/leaderboard_bbbc039.sh [OUTPUT_ROOT]
set -euo pipefail
out=${1:-runs}
bench sweep --methods classic_watershed --datasets bbbc039 --seeds 0,1,2 --set output_root="$out" -q
bench sweep --methods unet,poisson,diffusion --datasets bbbc039 --seeds 0,1,2 --set output_root="$out" -q \
  --config configs/cpu_fields.yaml
