"""Peak memory of 3D runs against the number of training cases (the per-case disk cache keeps it flat).

Each measurement is one `bench run` in a fresh process with a fresh sample cache (so building the cache is
included); peak resident memory (ru_maxrss) is read when training ends (before the first validation, whose
whole-volume inference has its own, case-size-bound peak) and at the end of the run. The reference in the same
run ("in-memory") holds every training case in memory, as the core did before the per-case cache.

    BENCH_DATA_ROOT=../shared/data python benchmarks/bench_3d_memory.py [--quick]

Before the per-case cache, every training case was held in memory (normalised image + targets), so peak memory
grew by about one case's arrays per case: ~95 MB per BraTS case cropped to the brain (2 x float32 image,
int32 label, int64 target), ~40 MB per 10x512x512 tile of the Drosophila stack.
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
          "method.params.network.name=monai_unet",
          "method.params.network.options={_delete_: true, channels: [8, 16, 32, 64], num_res_units: 1}"]
CASES = {
    # dataset, settings, the two numbers of training cases
    "brats2015": (["dataset.splits.kind=random", "train.patch_size=[32,64,64]"], (1, 4)),
    "drosophila_vnc": (["train.patch_size=[8,128,128]"], (1, 3)),  # the card: 10-section blocks, 512x512 tiles
}


# the child process: run `bench run`, recording peak RSS when training ends (the first validation starts)
# and at the end; --in-memory holds every training case in memory, as the core did before the disk cache
CHILD = r"""
import json, resource, sys
import bench.loop, bench.pipeline
peak = {}
score = bench.loop.FitContext.score
def first_score(self, *a, **k):
    peak.setdefault("train_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return score(self, *a, **k)
bench.loop.FitContext.score = first_score
if sys.argv[1] == "in-memory":
    class InMemoryCase:
        def __init__(self, e):
            self.info, self.id, self.shape, self.spacing = e.info, e.id, e.shape, e.spacing
            self.arrays = {k: e.array(k, mmap=False) for k in e.keys}
            self._fg = e.foreground()
        def array(self, name, mmap=True):
            return self.arrays[name]
        def foreground(self):
            return self._fg
    cache_cases = bench.pipeline.cache_cases
    def in_memory(*a, **k):
        out = cache_cases(*a, **k)
        return [InMemoryCase(e) for e in out] if k.get("with_targets") else out
    bench.pipeline.cache_cases = in_memory
from bench.cli import app
try:
    app(sys.argv[2:], standalone_mode=False)
finally:
    peak["run_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("PEAK " + json.dumps(peak))
"""


def measure(dataset: str, sets: list[str], n_train: int, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, BENCH_CACHE_DIR=os.path.join(tmp, "cache"), MLFLOW_DISABLE_TELEMETRY="true")
        args = ["run", "-m", "unet", "-d", dataset, "-q", "--output-root", os.path.join(tmp, "runs")]
        for s in COMMON + sets + [f"train.max_train_images={n_train}"]:
            args += ["--set", s]
        t0 = time.time()
        out = subprocess.run([sys.executable, "-c", CHILD, mode, *args], env=env, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("PEAK ")]
        if out.returncode != 0 or not lines:
            raise SystemExit(f"bench run failed ({dataset}, {n_train} cases, {mode}):\n{out.stderr[-3000:]}")
        rec = json.loads(lines[-1][5:])
        return {"dataset": dataset, "train_cases": n_train, "mode": mode, "train_mb": rec["train_kb"] / 1024,
                "run_mb": rec["run_kb"] / 1024, "seconds": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="brats2015 only")
    args = ap.parse_args()
    for dataset, (sets, sizes) in CASES.items():
        if args.quick and dataset != "brats2015":
            continue
        for mode in ("disk-cache", "in-memory"):
            rows = [measure(dataset, sets, n, mode) for n in sizes]
            for r in rows:
                print(f"{dataset:15s} {mode:10s} {r['train_cases']} training case(s): peak when training ends "
                      f"{r['train_mb']:.0f} MB, peak of the run {r['run_mb']:.0f} MB, {r['seconds']:.0f} s", flush=True)
            a, b = rows
            print(f"{dataset:15s} {mode:10s} training peak growth {b['train_mb'] - a['train_mb']:+.0f} MB for "
                  f"{b['train_cases'] - a['train_cases']} more case(s)", flush=True)


if __name__ == "__main__":
    main()
