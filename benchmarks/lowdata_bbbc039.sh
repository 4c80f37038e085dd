#!/usr/bin/env bash
# Regenerates leaderboards/lowdata_bbbc039.md (+ .csv, _paired.csv, .png, .provenance.json) from real runs:
# pde_unet, its unconstrained twin pde_unet_zero and the plain unet at 4 nested training fractions x 3 seeds,
# the RD-only / PF-only / 100x-weight variants at the smallest fraction, and a cross-domain run per method
# (trained on all of bbbc039_fg, scored on the complete-annotation GOWT1 frames). Finished runs are skipped.
# About 50 s per run on 2 CPU cores (45 runs: ~40 minutes from scratch).
#   BENCH_DATA_ROOT=../shared/data bash benchmarks/lowdata_bbbc039.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-.venv/bin/bench}
"$BENCH" learning-curve --methods pde_unet,pde_unet_zero,unet --dataset bbbc039_fg \
  --fractions 0.1,0.25,0.5,1 --seeds 0,1,2 --extra-methods pde_unet_rd,pde_unet_pf,pde_unet_strong \
  --pair pde_unet,pde_unet_zero --cross-domain gowt1_complete_fg --metrics dice,iou,bf1,hd95 \
  --config configs/cpu_lowdata.yaml --out leaderboards --name lowdata_bbbc039 \
  --note leaderboards/lowdata_bbbc039.reading.md -q "$@"
