#!/usr/bin/env bash
# Regenerates leaderboards/representations_bbbc039.{md,csv,html,tex}: every instance representation on one backbone
# and one budget (configs/cpu_fields.yaml, 1,500 steps, 3 seeds, post-processing calibrated on val), each beside its
# round-trip ceiling (bench ceiling), paired against poisson. Runs already in OUTPUT_ROOT with the same config are
# reused (poisson, diffusion and unet are the rows of leaderboard_bbbc039.sh). About 2 hours on 2 CPU cores for the
# four new representations.
#   BENCH_DATA_ROOT=../shared/data bash benchmarks/leaderboard_representations_bbbc039.sh [OUTPUT_ROOT]
set -euo pipefail
out=${1:-runs}
epochs=${EPOCHS:-30}  # bbbc039's published budget: 30 x 50 = 1,500 steps
reps=poisson,diffusion,distance,cellpose_flows,stardist,unet,binary_cc
for m in ${reps//,/ }; do
  bench ceiling -m "$m" -d bbbc039 --output-root "$out" -q
done
bench sweep --methods "$reps" --datasets bbbc039 --seeds 0,1,2 --set output_root="$out" -q \
  --config configs/cpu_fields.yaml --set train.epochs="$epochs"
bench leaderboard --dataset bbbc039 --name representations_bbbc039 --output-root "$out" --methods "$reps" \
  --metrics ap@0.50,f1@0.50,pq,map --format md,csv,html,tex --baseline poisson \
  --note "Runs: \`BENCH_DATA_ROOT=../shared/data bash benchmarks/leaderboard_representations_bbbc039.sh\`; every representation trained with configs/cpu_fields.yaml (one MONAI residual UNet, $((epochs * 50)) steps, the same flips and rotations) on 2 CPU cores, post-processing calibrated on val; definitions in docs/representations.md."
