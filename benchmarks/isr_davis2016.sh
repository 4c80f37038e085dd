#!/usr/bin/env bash
# The ISR study on davis2016 (leaderboards/isr_davis2016.md): a weak UNet (configs/cpu_davis.yaml: 24 training
# frames, 300 steps) as the predictor; its output projected onto convex, star-shaped and path-connected sets (the
# sequential mode: isr, isr_star, isr_connected); the joint mode (isr_joint: the same UNet and budget trained with the
# convex prior term) and its convex projection (isr, tag joint). 3 seeds; every row on the same 62 test frames.
# About an hour on 2 CPU cores.
#   BENCH_DATA_ROOT=../shared/data bash benchmarks/isr_davis2016.sh [OUTPUT_ROOT]
set -euo pipefail
out=${1:-runs}
seeds=${SEEDS:-0 1 2}
for s in $seeds; do
  bench sweep --methods unet,isr_joint --datasets davis2016 --seeds "$s" --config configs/cpu_davis.yaml \
    --set output_root="$out" -q
  bench sweep --methods isr,isr_star,isr_connected --datasets davis2016 --seeds "$s" --set output_root="$out" -q \
    --set method.params.predictor_run="$out/davis2016/unet/seed$s"
  bench sweep --methods isr --datasets davis2016 --seeds "$s" --set output_root="$out" --set tag=joint -q \
    --set method.params.predictor_run="$out/davis2016/isr_joint/seed$s"
done
bench leaderboard --dataset davis2016 --output-root "$out" --name isr_davis2016 \
  --methods unet,isr,isr_star,isr_connected,isr_joint,isr-joint \
  --metrics iou,dice,bf1,shape_convex,shape_star,shape_connected --format md,csv,html,tex --baseline unet \
  --reported leaderboards/reported/isr_davis2016.yaml \
  --note "Runs: \`BENCH_DATA_ROOT=../shared/data bash benchmarks/isr_davis2016.sh\` (the runs, then this command); 2 CPU cores. Predictor: unet, configs/cpu_davis.yaml (24 training frames, 300 steps of 4 x 256 x 256); isr / isr_star / isr_connected: its output projected onto a convex / star-shaped / path-connected set (300 Adamax steps, 2,048 pixels per step); isr_joint: the same UNet and budget trained with the convex prior term; isr-joint: its output projected onto convex sets. shape_*: share of test frames whose foreground satisfies the constraint (digital tests, bench/metrics/shape.py)."
