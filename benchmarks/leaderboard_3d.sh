#!/usr/bin/env bash
# The 3D leaderboards of issue 12 (leaderboards/brats2015.md, leaderboards/drosophila_vnc.md): pde3d_unet (full and
# the loss-only ablation), 3D UNet, V-Net and Swin UNETR over one recipe (configs/cpu_3d.yaml: each card's CPU
# widths, 64^3 patches, 400 steps), plus pde3d_unet and unet3d trained on noisy labels (30% of the training
# objects eroded, dilated or dropped; test labels untouched).
#   brats2015: 3-fold cross-validation over the 6 cases (splits.kind=crossval: each fold tests 2 cases, validates
#     on 1, trains on 3), so every row rests on all 6 cases, each scored once.
#   drosophila_vnc: the official z-block split (4 test tiles of 10 x 512 x 512); patches 32 x 128 x 128 (the 10
#     sections padded: Swin UNETR needs sides divisible by 32).
# PARALLEL=1 runs every row (and fold) at once as its own process (a GPU machine with many cores); by default one
# after another. SETS="key=value ..." adds overrides to every run (tracking.enabled=false where MLflow is missing).
# NO_LEADERBOARD=1 only runs. ROWS="unet3d,pde3d_unet noisy30,..." runs (and tabulates) only those rows (e.g. the
# BasicUNet-family rows on a CPU, where V-Net and Swin UNETR take hours); NOTE="..." is added to the table's note.
#   BENCH_DATA_ROOT=../shared/data bash benchmarks/leaderboard_3d.sh brats2015|drosophila_vnc [OUTPUT_ROOT]
set -euo pipefail
ds=$1
out=${2:-runs}
case $ds in
  brats2015)
    split=(--set dataset.splits.kind=crossval --set dataset.splits.folds=3)
    folds="0 1 2"
    metrics=dice/WT,dice/TC,dice/ET,hd95/WT,hd95/TC,hd95/ET,dice,hd95
    what="64^3 patches; 3-fold cross-validation over the 6 cases (each fold: 3 train, 1 val, 2 test), pooled: every row rests on the 6 cases, each scored once; regions WT/TC/ET (eval.regions), HD95 in mm" ;;
  drosophila_vnc)
    split=(--set "train.patch_size=[32,128,128]")
    folds=""
    metrics=dice,iou,hd95,bf1
    what="official z-block split: 4 test tiles (sections 10-19, 512 x 512 each); patches 32 x 128 x 128; HD95 in nm" ;;
  *) echo "usage: $0 brats2015|drosophila_vnc [OUTPUT_ROOT]" >&2; exit 2 ;;
esac
rows=("pde3d_unet" "pde3d_unet_loss" "unet3d" "vnet" "swin_unetr" "pde3d_unet noisy30" "unet3d noisy30")
if [ -n "${ROWS:-}" ]; then
  IFS=, read -r -a picked <<< "$ROWS"
  rows=()
  for row in "${picked[@]}"; do [ -n "${row// /}" ] && rows+=("$row"); done
fi
labels=$(for row in "${rows[@]}"; do read -r m t <<< "$row"; printf '%s,' "$m${t:+-$t}"; done)
baseline=()  # the paired comparison against unet3d, when its row is in the table
case ",$labels" in *,unet3d,*) baseline=(--baseline unet3d) ;; esac
run_row() {  # method [tag] [fold list]
  local method=$1 tag=${2:-} fold=${3:-}
  local sets=(--set output_root="$out")
  [ -n "$tag" ] && sets+=(--set tag="$tag" --set train.label_noise.rate=0.3)
  for s in ${SETS:-}; do sets+=(--set "$s"); done
  [ -n "$fold" ] && sets+=(--folds "$fold")
  bench sweep --methods "$method" --datasets "$ds" --seeds 0 "${split[@]}" --config configs/cpu_3d.yaml \
    "${sets[@]}" -q
}
mkdir -p "$out"
pids=()
for row in "${rows[@]}"; do
  read -r method tag <<< "$row"
  if [ -n "${PARALLEL:-}" ]; then
    for f in ${folds:-all}; do
      [ "$f" = all ] && f=""
      run_row "$method" "$tag" "$f" > "$out/$ds-$method${tag:+-$tag}${f:+-fold$f}.log" 2>&1 & pids+=($!)
    done
  else
    run_row "$method" "$tag" "${folds// /,}"
  fi
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ -n "${NO_LEADERBOARD:-}" ] && exit $status
bench leaderboard --dataset "$ds" --output-root "$out" \
  --methods "${labels%,}" \
  --metrics "$metrics" --format md,csv,html,tex "${baseline[@]}" \
  --note "Runs: \`${ROWS:+ROWS=\"$ROWS\" }BENCH_DATA_ROOT=../shared/data bash benchmarks/leaderboard_3d.sh $ds\` (the runs, then this command). Recipe configs/cpu_3d.yaml for every row (each card's CPU widths; AdamW, cosine, 400 steps of batch 2, flips/rot90/intensity); $what. *-noisy30: trained with train.label_noise.rate=0.3 (training objects eroded, dilated or dropped, seeded); test labels untouched.${NOTE:+ $NOTE}"
exit $status
