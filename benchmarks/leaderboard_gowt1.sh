#!/usr/bin/env bash
# Regenerates leaderboards/ctc_fluo_n2dh_gowt1.{md,csv,html,tex} from real runs: the CPU preset of
# configs/cpu_fields.yaml (one budget for every trained method), 3 seeds, trained with the ignore regions of the
# partially annotated frames; Table 1 of the scalar-field paper as reported rows. About 60 minutes on 2 CPU cores.
#   BENCH_DATA_ROOT=../shared/data bash benchmarks/leaderboard_gowt1.sh [OUTPUT_ROOT]
set -euo pipefail
out=${1:-runs}
bench sweep --methods classic_watershed --datasets ctc_fluo_n2dh_gowt1 --seeds 0,1,2 --set output_root="$out" -q
bench sweep --methods unet,poisson,diffusion --datasets ctc_fluo_n2dh_gowt1 --seeds 0,1,2 --set output_root="$out" -q \
  --config configs/cpu_fields.yaml
