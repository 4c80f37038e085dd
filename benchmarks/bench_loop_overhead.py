"""Overhead of the training loop: `bench run` step throughput against a bare PyTorch loop.

Same network (the CPU preset's MONAI UNet), same loss function, same images and targets, same batch and patch
size, same threads. The harness side is a real `bench run` (per-case disk cache read memory-mapped, seeded
patches, augmentation, hooks, per-epoch checkpoint, history and MLflow logging); its time is the wall time of
its training epochs after the first (warm-up) one, measured from one epoch's start hook to the next, so it
includes data loading, hooks and the per-epoch checkpoint, history and tracking (the last epoch, which
validates, is left out). The bare side crops random patches from in-memory arrays, flips them, and runs
forward / loss / backward / step, nothing else. Rounds alternate to share the machine's drift.

    BENCH_DATA_ROOT=../shared/data python benchmarks/bench_loop_overhead.py [--steps 20] [--rounds 3]

Prints the overhead ratio (harness seconds per step / bare seconds per step - 1); goal: at most 3% on CPU.
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


def harness(steps: int, epochs: int, out: Path) -> tuple[float, int]:
    """Seconds per step of the epochs after the first, measured end to end (epoch start to epoch end)."""
    import pandas as pd

    from bench.config import resolve_config
    from bench.runner import run

    cfg = resolve_config("unet", "bbbc039", overlay=[ROOT / "configs" / "net_monai_small.yaml"],
                         overrides=SETS + [f"train.steps_per_epoch={steps}", f"train.epochs={epochs}",
                                           f"output_root={out}"])
    stamps: list[float] = []
    from bench.methods.unet import UNet

    orig = UNet.on_epoch_start
    UNet.on_epoch_start = lambda self, epoch: (stamps.append(time.perf_counter()), orig(self, epoch))[1]
    try:
        run(cfg, progress=False, evaluate_test=False)
    finally:
        UNet.on_epoch_start = orig
    hist = pd.read_csv(cfg.run_dir() / "history.csv")
    # epoch k's full cost (batches + validation/checkpoint/history/tracking) = stamp[k+1] - stamp[k]
    full = np.diff(stamps)  # epochs 1..E-1 measured start to next start
    return float(np.mean(full[1:]) / steps) if len(full) > 1 else float(hist["seconds"].iloc[-1] / steps), steps


def bare(steps: int, seed: int = 0) -> float:
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
            if rng.random() < 0.5:
                x, y = x[..., ::-1], y[..., ::-1]
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    def step():
        x, y = batch()
        opt.zero_grad(set_to_none=True)
        loss = method.loss(net(x), {"target": y})["loss"]
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20, help="steps per epoch (harness) and per timed bare run")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores", flush=True)
    h_all, b_all = [], []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BENCH_CACHE_DIR"] = str(Path(tmp) / "cache")
        for r in range(args.rounds):
            b = bare(args.steps, seed=r)
            h, _ = harness(args.steps, 4, Path(tmp) / f"runs{r}")
            b_all.append(b)
            h_all.append(h)
            print(f"round {r + 1}: harness {h * 1000:.1f} ms/step, bare {b * 1000:.1f} ms/step, "
                  f"overhead {100 * (h / b - 1):+.1f}%", flush=True)
    h, b = float(np.median(h_all)), float(np.median(b_all))
    print(f"median: harness {h * 1000:.1f} ms/step, bare loop {b * 1000:.1f} ms/step: "
          f"overhead ratio {h / b:.3f} ({100 * (h / b - 1):+.1f}%; goal <= +3%)")


if __name__ == "__main__":
    sys.exit(main())
