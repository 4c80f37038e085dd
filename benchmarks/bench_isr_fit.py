"""ISR projection time per image on BBBC039 (CPU): every object of a weak predictor's output refit as a convex /
star-shaped set, one fit after another (`bench.shapes.fit_projection`, the isr card's settings before batching)
against all objects of the image at once (`fit_projection_batch`), in the same run. The goal of issue 13 is under
2 s per image for the projection on CPU.

    python benchmarks/bench_isr_fit.py [--images 3] [--steps 300 --points 2048 --width 32 --lr 0.02]

The predictor is the training-free classic watershed (its objects have the shapes and sizes of real nuclei output).
Prints per constraint and mode: seconds per image, objects per image, the mean IoU of each fit to the object it
refits, and the share of fits that satisfy the constraint's pixel check. The data root is --data-root, else
$BENCH_DATA_ROOT, else <checkout>/../shared/data.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def object_crops(pred: np.ndarray, margin: int = 4) -> list[np.ndarray]:
    from scipy import ndimage as ndi

    out = []
    for k, box in enumerate(ndi.find_objects(pred), start=1):
        if box is None:
            continue
        box = tuple(slice(max(0, b.start - margin), min(n, b.stop + margin)) for b, n in zip(box, pred.shape))
        out.append((pred[box] == k).astype(np.float32))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--points", type=int, default=2048)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--kinds", default="convex,star")
    ap.add_argument("--skip-sequential", action="store_true", help="only the batched fits")
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()

    import torch

    from bench.config import resolve_config
    from bench.fields import classic_watershed
    from bench.runner import dataset_splits, open_dataset
    from bench.shapes import fit_projection, fit_projection_batch

    if args.data_root:
        os.environ["BENCH_DATA_ROOT"] = args.data_root
    os.environ.setdefault("BENCH_DATA_ROOT", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    cfg = resolve_config("classic_watershed", "bbbc039", overrides=["output_root=/tmp/bench_isr_fit"])
    reader = open_dataset(cfg)
    ids = dataset_splits(cfg, reader, persist=False)["test"][: args.images]
    from bench.pipeline import normalize

    crops = []
    for sid in ids:
        s = reader.load(sid)
        crops.append(object_crops(classic_watershed(normalize(s.image, cfg.dataset.normalize).mean(0))))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}; {len(ids)} BBBC039 test images, {np.mean([len(c) for c in crops]):.0f} objects "
          f"per image; steps {args.steps}, points {args.points}, width {args.width}, lr {args.lr}")
    kw = dict(steps=args.steps, points=args.points, lr=args.lr, width=args.width)
    for kind in args.kinds.split(","):
        modes = [("batched", lambda objs: fit_projection_batch(objs, kind, **kw))]
        if not args.skip_sequential:
            modes.insert(0, ("one by one", lambda objs: [fit_projection(o, kind, **kw)[1] for o in objs]))
        times = {}
        for name, fit in modes:
            t0 = time.perf_counter()
            ious = []
            for objs in crops:
                masks = fit(objs)
                ious += [(m & (o > 0)).sum() / max(1, (m | (o > 0)).sum()) for m, o in zip(masks, objs)]
            times[name] = (time.perf_counter() - t0) / len(crops)
            print(f"{kind:8s} {name:10s}: {times[name]:7.2f} s/image, mean IoU of a fit to its object "
                  f"{np.mean(ious):.3f}")
        if len(times) == 2:
            print(f"{kind:8s} speed-up of the batched fit: {times['one by one'] / times['batched']:.1f}x")


if __name__ == "__main__":
    main()
