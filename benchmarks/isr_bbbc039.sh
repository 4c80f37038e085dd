#!/usr/bin/env bash
# The ISR study on bbbc039 nuclei (leaderboards/isr_bbbc039.md): a weak UNet (configs/cpu_fields.yaml cut to 200
# steps, tag weak) as the predictor, each of its objects projected onto a convex or a star-shaped set (isr,
# isr_star: batched per-object fits). 3 seeds, the 48 official test images, shape shares per object.
#   BENCH_DATA_ROOT=../shared/data bash benchmarks/isr_bbbc039.sh [OUTPUT_ROOT]
set -euo pipefail
out=${1:-runs}
seeds=${SEEDS:-0 1 2}
shape="eval.extra_metrics=[shape_convex,shape_star]"
# the per-object recipe: ~120 small crops per image fitted at once; the cards' whole-mask recipe (300 steps of 2,048
# points, width 32) took ~49 s per image here, this one ~3 s (mean fit IoU to its object 0.88 vs 0.91;
# benchmarks/bench_isr_fit.py)
fit="--set method.params.steps=200 --set method.params.points=256 --set method.params.width=16 --set method.params.lr=0.05"
for s in $seeds; do
  bench sweep --methods unet --datasets bbbc039 --seeds "$s" --config configs/cpu_fields.yaml --set train.epochs=4 \
    --set tag=weak --set "$shape" --set output_root="$out" -q
  bench sweep --methods isr,isr_star --datasets bbbc039 --seeds "$s" --set tag=weak --set "$shape" \
    --set output_root="$out" --set method.params.predictor_run="$out/bbbc039/unet-weak/seed$s" $fit -q
done
bench leaderboard --dataset bbbc039 --output-root "$out" --name isr_bbbc039 --methods unet-weak,isr-weak,isr_star-weak \
  --metrics f1@0.50,pq,ap@0.50,iou,shape_convex,shape_star --format md,csv,html,tex --baseline unet-weak \
  --note "Runs: \`BENCH_DATA_ROOT=../shared/data bash benchmarks/isr_bbbc039.sh\` (the runs, then this command); 2 CPU cores. Predictor unet-weak: configs/cpu_fields.yaml for 200 steps; isr-weak / isr_star-weak: each predicted object (its box + 4 px) refit as a convex / star-shaped set, all objects of an image in one batched fit (200 Adamax steps of 256 pixels, lr 0.05, width 16); shape_*: share of the predicted objects that satisfy the constraint (digital tests). A label image cannot hold overlaps: where two refit objects claim a pixel the earlier keeps it, so an ISR object can lose its property there."
