"""Peak memory of 3D runs against the number of training cases (the per-case disk cache keeps it flat).

Each measurement is one `bench run` in a fresh process with a fresh sample cache (so building the cache is
included), and its peak resident memory is read from the kernel (ru_maxrss of that child alone).

    BENCH_DATA_ROOT=../shared/data python benchmarks/bench_3d_memory.py [--quick]

Before the per-case cache, every training case was held in memory (normalised image + targets), so peak memory
grew by about one case's arrays per case: ~95 MB per BraTS case cropped to the brain (2 x float32 image,
int32 label, int64 target), ~64 MB per 4-section block of the 1024x1024 Drosophila stack.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

COMMON = ["train.epochs=1", "train.steps_per_epoch=4", "train.val_max_images=1", "eval.max_images=1",
          "eval.overlays=0", "tracking.enabled=false",
          "method.params.network.options={channels: [8, 16, 32, 64], num_res_units: 1}"]
CASES = {
    # dataset, settings, the two numbers of training cases
    "brats2015": (["dataset.splits.kind=random", "train.patch_size=[32,64,64]"], (1, 4)),
    "drosophila_vnc": (["dataset.params.z_block=4", "dataset.params.yx_block=null", "dataset.params.test_z_blocks=[4]",
                        "dataset.params.val_z_blocks=[3]", "train.patch_size=[4,128,128]"], (1, 3)),
}


def measure(dataset: str, sets: list[str], n_train: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, BENCH_CACHE_DIR=os.path.join(tmp, "cache"), MLFLOW_DISABLE_TELEMETRY="true")
        cmd = [sys.executable, "-m", "bench", "run", "-m", "unet", "-d", dataset, "-q", "--output-root",
               os.path.join(tmp, "runs")]
        for s in COMMON + sets + [f"train.max_train_images={n_train}"]:
            cmd += ["--set", s]
        probe = ("import resource, subprocess, sys, json; rc = subprocess.run(sys.argv[1:]).returncode; "
                 "print(json.dumps({'rc': rc, 'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
        t0 = time.time()
        out = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, capture_output=True, text=True)
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        if rec["rc"] != 0:
            raise SystemExit(f"bench run failed ({dataset}, {n_train} cases):\n{out.stderr[-3000:]}")
        return {"dataset": dataset, "train_cases": n_train, "peak_mb": rec["maxrss_kb"] / 1024,
                "seconds": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="brats2015 only")
    args = ap.parse_args()
    rows = []
    for dataset, (sets, sizes) in CASES.items():
        if args.quick and dataset != "brats2015":
            continue
        for n in sizes:
            rows.append(measure(dataset, sets, n))
            r = rows[-1]
            print(f"{dataset:16s} {n} training case(s): peak {r['peak_mb']:.0f} MB, {r['seconds']:.0f} s", flush=True)
        a, b = rows[-2], rows[-1]
        print(f"{dataset:16s} peak growth {b['peak_mb'] - a['peak_mb']:+.0f} MB for "
              f"{b['train_cases'] - a['train_cases']} more case(s)", flush=True)


if __name__ == "__main__":
    main()
