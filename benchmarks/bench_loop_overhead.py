"""Overhead of the training loop: `bench run` step throughput against a bare PyTorch loop.

Same network (the CPU preset's MONAI UNet), same loss function, same images and targets, same batch and patch
size, same threads. The harness side is a real `bench run` (per-case disk cache read memory-mapped, seeded
patches, augmentation, hooks, per-epoch checkpoint, history and MLflow logging), timed from one epoch's start
hook to the next, so data loading, hooks and the per-epoch checkpoint/history/tracking are all inside (the first
epoch is warm-up; the last, which validates, is left out). The bare side crops random patches from in-memory
arrays, flips and rotates them as the card's augmentation does, and runs forward / loss / backward / step.

Two figures, both printed:

- end to end: harness seconds per step / bare seconds per step, paired per round, median over rounds. On this
  shared 2-core VM the same bare loop drifts by +-10% from one round to the next, so this ratio is noisy.
- decomposed (robust to the drift): each side's time is split, within its own run, into the compute
  (forward/loss/backward/step, i.e. `train_step`) and the rest (the bare loop: crop + augment; the harness:
  loading patches from the cache, collation, hooks, bookkeeping). The loop's overhead is
  (harness rest - bare rest) / compute, medians over rounds.

    BENCH_DATA_ROOT=../shared/data python benchmarks/bench_loop_overhead.py [--steps 20] [--rounds 5]

Goal: an overhead of at most 3% on CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SETS = ["train.batch_size=8", "train.patch_size=[256,256]", "train.max_train_images=16", "train.val_every=1000",
        "train.val_max_images=1", "eval.max_images=1", "eval.overlays=0", "eval.save_predictions=false",
        "train.num_workers=0"]


def harness(steps: int, epochs: int, out: Path) -> dict:
    """Per step: total seconds and seconds inside train_step, over the epochs after the first."""
    from bench.config import resolve_config
    from bench.methods.unet import UNet
    from bench.runner import run

    cfg = resolve_config("unet", "bbbc039", overlay=[ROOT / "configs" / "net_monai_small.yaml"],
                         overrides=SETS + [f"train.steps_per_epoch={steps}", f"train.epochs={epochs}",
                                           f"output_root={out}"])
    stamps: list[float] = []
    compute: list[float] = []
    start, step = UNet.on_epoch_start, UNet.train_step

    def timed_step(self, batch):
        t0 = time.perf_counter()
        out = step(self, batch)
        compute.append(time.perf_counter() - t0)
        return out

    UNet.on_epoch_start = lambda self, epoch: (stamps.append(time.perf_counter()), start(self, epoch))[1]
    UNet.train_step = timed_step
    try:
        run(cfg, progress=False, evaluate_test=False)
    finally:
        UNet.on_epoch_start, UNet.train_step = start, step
    full = np.diff(stamps)[1:]  # epochs 1 .. E-2, each from its start to the next epoch's start
    inside = np.array(compute[steps: steps * (1 + len(full))])
    total = float(full.sum()) / (steps * len(full))
    comp = float(inside.mean())
    return {"total": total, "compute": comp, "rest": total - comp}


def bare(steps: int, seed: int = 0) -> dict:
    import torch

    from bench.config import resolve_config
    from bench.runner import build_method, dataset_splits, open_dataset

    cfg = resolve_config("unet", "bbbc039", overlay=[ROOT / "configs" / "net_monai_small.yaml"],
                         overrides=SETS + ["tracking.enabled=false"])
    torch.manual_seed(seed)
    method = build_method(cfg, torch.device("cpu"))
    net = method.networks["net"]
    reader = open_dataset(cfg)
    ids = dataset_splits(cfg, reader)["train"][:16]
    images, targets = [], []
    for i in ids:
        s = reader.load(i)
        images.append(method.normalize(s.image))
        targets.append(method.make_targets(s)["target"])
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    rng = np.random.default_rng(seed)
    p = 256
    net.train()

    def batch():
        xs, ys = [], []
        for _ in range(8):
            j = int(rng.integers(len(images)))
            h, w = images[j].shape[1:]
            y0, x0 = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
            x, y = images[j][:, y0:y0 + p, x0:x0 + p], targets[j][y0:y0 + p, x0:x0 + p]
            for ax in (-1, -2):  # the card's augmentation: flips and an in-plane rot90
                if rng.random() < 0.5:
                    x, y = np.flip(x, ax), np.flip(y, ax)
            k = int(rng.integers(4))
            x, y = np.rot90(x, k, axes=(-2, -1)), np.rot90(y, k, axes=(-2, -1))
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    def compute(x, y):
        opt.zero_grad(set_to_none=True)
        loss = method.loss(net(x), {"target": y})["loss"]
        loss.backward()
        opt.step()

    for _ in range(steps):  # warm-up: one epoch, as the harness's first epoch
        compute(*batch())
    t_data = t_comp = 0.0
    for _ in range(2 * steps):  # as many steps as the harness's two timed epochs
        t0 = time.perf_counter()
        x, y = batch()
        t1 = time.perf_counter()
        compute(x, y)
        t2 = time.perf_counter()
        t_data += t1 - t0
        t_comp += t2 - t1
    n = 2 * steps
    return {"total": (t_data + t_comp) / n, "compute": t_comp / n, "rest": t_data / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20, help="steps per epoch (harness) and per timed bare run")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores", flush=True)
    end_to_end, decomposed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BENCH_CACHE_DIR"] = str(Path(tmp) / "cache")
        for r in range(args.rounds):
            b = bare(args.steps, seed=r)
            h = harness(args.steps, 4, Path(tmp) / f"runs{r}")
            end_to_end.append(h["total"] / b["total"])
            decomposed.append((h["rest"] - b["rest"]) / h["compute"])
            print(f"round {r + 1}: harness {h['total'] * 1e3:.1f} ms/step (compute {h['compute'] * 1e3:.1f}, rest "
                  f"{h['rest'] * 1e3:.1f}), bare {b['total'] * 1e3:.1f} ms/step (compute {b['compute'] * 1e3:.1f}, "
                  f"data {b['rest'] * 1e3:.1f}): end to end {100 * (end_to_end[-1] - 1):+.1f}%, "
                  f"loop overhead {100 * decomposed[-1]:+.2f}% of compute", flush=True)
    e2e, dec = float(np.median(end_to_end)), float(np.median(decomposed))
    print(f"median over {args.rounds} rounds: end-to-end ratio {e2e:.3f} ({100 * (e2e - 1):+.1f}%, noisy here); "
          f"loop overhead (harness rest - bare rest) / compute = {100 * dec:+.2f}% (goal <= 3%)")


if __name__ == "__main__":
    sys.exit(main())
