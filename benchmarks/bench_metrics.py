"""Speed and agreement of bench.metrics against the reference implementations, in one process.

    python benchmarks/bench_metrics.py            # full sizes, the targets of the metrics issue
    python benchmarks/bench_metrics.py --quick    # small sizes (a smoke test, targets not checked)

Each case runs the reference and ours on the same inputs, checks the results agree and prints the time ratio.
Exit status: 1 if a result differs (or, with --enforce-targets, a speed target is missed), else 0.

Cases (full size):
- matching at 9 IoU thresholds 0.50..0.90, 2048x2048 label image, ~4,000 objects: stardist.matching (target >= 30x),
  identical TP/FP/FN; cellpose.metrics.average_precision (no target), identical TP/FP/FN.
- PQ on 512x512 with ~300 objects: torchmetrics PanopticQuality (target >= 100x), equal PQ/SQ/RQ.
- HD95 on a 256^3 sphere of radius 60, spacing (1, 1, 2.5): MONAI HausdorffDistanceMetric(percentile=95)
  (target >= 3x), equal values (MONAI works in float32: compared at 1e-5 relative).
- Dice on the same volume: MONAI DiceMetric (no target).
Times are the best of a few repeats; references get one warm-up call (numba/torch start-up is not counted).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.metrics import (  # noqa: E402
    MetricContext,
    evaluate_image,
    hausdorff_distance,
    match_instances,
    panoptic_quality,
)

warnings.filterwarnings("ignore")


def ensure_torchvision() -> None:
    try:
        from bench._compat import ensure_torchvision as fix
    except ImportError:
        return
    fix()


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def peak_mib(fn) -> float:
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------


def label_image(size: int, n_objects: int, seed: int) -> np.ndarray:
    """Touching round objects: random seeds grown by up to ~0.6 of the mean spacing."""
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.int32)
    ys, xs = rng.integers(0, size, n_objects), rng.integers(0, size, n_objects)
    img[ys, xs] = np.arange(1, n_objects + 1)
    radius = 0.6 * size / np.sqrt(n_objects)
    return expand_labels(img, distance=radius)


def prediction(gt: np.ndarray, seed: int) -> np.ndarray:
    """gt with objects missed and merged, grown or shrunk, shifted, relabelled, plus false positives."""
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(seed)
    n = int(gt.max())
    lut = np.arange(n + 1)
    lut[rng.choice(np.arange(1, n + 1), n // 20, replace=False)] = 0
    merge = rng.choice(np.arange(1, n), n // 30, replace=False)
    lut[merge] = lut[merge + 1]
    pred = lut[gt]
    pred = np.roll(pred, (1, -2), axis=(0, 1))
    grow = expand_labels(pred, 2)
    edge = np.zeros(pred.shape, bool)
    edge[1:] |= pred[1:] != pred[:-1]
    edge[:, 1:] |= pred[:, 1:] != pred[:, :-1]
    shrink = np.where(edge, 0, pred)
    choice = rng.integers(0, 3, n + 1)  # per object: keep, grow, shrink
    pred = np.where(choice[grow] == 1, grow, np.where(choice[pred] == 2, shrink, pred))
    ids = np.unique(pred)
    ids = ids[ids > 0]
    new = np.zeros(int(pred.max()) + 1, np.int32)
    new[ids] = rng.permutation(len(ids)) + 1
    pred = new[pred]
    k = int(pred.max())
    for i in range(max(1, n // 50)):  # false positives in the background
        y, x = rng.integers(0, gt.shape[0] - 8), rng.integers(0, gt.shape[1] - 8)
        box = pred[y : y + 6, x : x + 6]
        box[box == 0] = k + 1 + i
    return pred


def sphere(size: int, radius: float, center, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Voxel sphere (radius in voxels along each axis)."""
    z, y, x = np.ogrid[:size, :size, :size]
    return ((z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= radius**2).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------------

ROWS: list[dict] = []


def report(case, reference, t_ref, t_ours, same, target=None, note=""):
    ratio = t_ref / t_ours if t_ours > 0 else float("inf")
    ROWS.append(dict(case=case, reference=reference, t_ref=t_ref, t_ours=t_ours, ratio=ratio, same=same,
                     target=target, met=None if target is None else ratio >= target, note=note))


def case_matching(size, n_obj, repeat):
    gt = label_image(size, n_obj, seed=1)
    pred = prediction(gt, seed=2)
    ths = [round(0.5 + 0.05 * i, 2) for i in range(9)]  # 0.50 .. 0.90
    n_true, n_pred = len(np.unique(gt)) - 1, len(np.unique(pred)) - 1
    desc = f"{size}x{size}, {n_true} gt / {n_pred} pred objects"
    t_ours, ours = best_time(lambda: match_instances(pred, gt, ths), max(repeat, 3))
    mem = peak_mib(lambda: match_instances(pred, gt, ths))
    note = f"ours peak {mem:.0f} MiB (images {2 * gt.nbytes / 2**20:.0f} MiB)"
    ours_counts = [(m.tp, m.fp, m.fn) for m in ours]
    try:
        import stardist.matching as sd
    except ImportError:
        print("stardist not installed: matching case skipped")
    else:
        sd.matching(gt[:64, :64], pred[:64, :64], thresh=ths)  # numba warm-up
        t_ref, ref = best_time(lambda: sd.matching(gt, pred, thresh=ths), repeat)
        same = ours_counts == [(int(r.tp), int(r.fp), int(r.fn)) for r in ref]
        report(f"matching@9 thresholds ({desc})", "stardist.matching", t_ref, t_ours, same, 30, note)
    try:
        ensure_torchvision()
        from cellpose import metrics as cpm
        from skimage.segmentation import relabel_sequential
    except ImportError:
        print("cellpose not installed: average_precision case skipped")
    else:
        g, p = relabel_sequential(gt)[0], relabel_sequential(pred)[0]  # cellpose needs sequential labels
        cpm.average_precision(g[:64, :64], p[:64, :64], threshold=ths)
        t_ref, (ap, tp, fp, fn) = best_time(lambda: cpm.average_precision(g, p, threshold=ths), repeat)
        same = ours_counts == [(int(a), int(b), int(c)) for a, b, c in zip(tp, fp, fn)]
        report(f"AP@9 thresholds ({desc})", "cellpose average_precision", t_ref, t_ours, same, None, note)


def case_pq(size, n_obj, repeat):
    try:
        ensure_torchvision()
        import torch
        from torchmetrics.detection import PanopticQuality
    except ImportError:
        print("torchmetrics not installed: PQ case skipped")
        return
    gt = label_image(size, n_obj, seed=3)
    pred = prediction(gt, seed=4)

    def enc(lab):
        t = torch.from_numpy(lab.astype(np.int64))
        return torch.stack([(t > 0).long(), t], dim=-1)[None]

    P, G = enc(pred), enc(gt)

    def ref():
        m = PanopticQuality(things={1}, stuffs={0}, return_sq_and_rq=True, return_per_class=True)
        m.update(P, G)
        return [float(v) for v in m.compute()[0]]

    ref()
    t_ref, r = best_time(ref, repeat)
    t_ours, o = best_time(lambda: panoptic_quality(pred, gt), max(repeat, 5))
    ours = [o["pq"], o["sq"], o["rq"]]
    same = bool(np.allclose(ours, r, rtol=1e-6, atol=1e-9))
    report(f"PQ ({size}x{size}, {len(np.unique(gt)) - 1} objects)", "torchmetrics PanopticQuality", t_ref, t_ours,
           same, 100, f"PQ ours {ours[0]:.6f} ref {r[0]:.6f}")


def case_hd95(size, radius, repeat):
    try:
        ensure_torchvision()
        import torch
        from monai.metrics import DiceMetric, HausdorffDistanceMetric
    except ImportError:
        print("MONAI not installed: HD95 case skipped")
        return
    spacing = (1.0, 1.0, 2.5)
    c = size / 2
    gt = sphere(size, radius, (c, c, c))
    pred = sphere(size, radius * 0.95, (c + 2, c - 1, c + 3))

    def onehot(v):
        return torch.from_numpy(np.stack([v == 0, v == 1])[None].astype(np.float32))

    P, G = onehot(pred), onehot(gt)
    hd = HausdorffDistanceMetric(include_background=False, percentile=95)
    hd(P, G, spacing=list(spacing))
    t_ref, r = best_time(lambda: float(hd(P, G, spacing=list(spacing))[0, 0]), repeat)
    t_ours, o = best_time(lambda: hausdorff_distance(pred == 1, gt == 1, spacing)[0], max(repeat, 3))
    mem = peak_mib(lambda: hausdorff_distance(pred == 1, gt == 1, spacing))
    same = abs(o - r) <= 1e-5 * max(1.0, abs(r))
    report(f"HD95 ({size}^3 sphere r={radius}, spacing {spacing})", "MONAI HausdorffDistanceMetric", t_ref, t_ours,
           same, 3, f"ours {o:.6f} ref {r:.6f}; ours peak {mem:.0f} MiB")

    dm = DiceMetric(include_background=False)
    dm(P, G)
    t_ref, r = best_time(lambda: float(dm(P, G)[0, 0]), repeat)
    ctx = MetricContext(task="semantic", num_classes=2, spacing=spacing)
    t_ours, o = best_time(lambda: evaluate_image(pred, gt, ctx, ["dice"])[0]["value"], max(repeat, 3))
    report(f"Dice ({size}^3)", "MONAI DiceMetric", t_ref, t_ours, abs(o - r) <= 1e-6 * abs(r), None,
           f"ours {o:.8f} ref {r:.8f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small inputs (smoke test); speed targets not checked")
    ap.add_argument("--repeat", type=int, default=None, help="timing repeats of the references (default 2, quick 1)")
    ap.add_argument("--enforce-targets", action="store_true", help="also exit 1 when a speed target is missed")
    args = ap.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 2)
    if args.quick:
        case_matching(512, 250, repeat)
        case_pq(256, 75, repeat)
        case_hd95(96, 24, repeat)
    else:
        case_matching(2048, 4000, repeat)
        case_pq(512, 300, repeat)
        case_hd95(256, 60, repeat)

    print()
    print(f"{'case':62s} {'reference':30s} {'ref s':>8s} {'ours s':>8s} {'ratio':>8s} {'target':>7s} {'same':>5s}  note")
    for r in ROWS:
        tgt = "-" if r["target"] is None else f">={r['target']}x" + ("" if args.quick else (" ok" if r["met"] else " MISS"))
        print(f"{r['case']:62s} {r['reference']:30s} {r['t_ref']:8.3f} {r['t_ours']:8.4f} {r['ratio']:7.1f}x "
              f"{tgt:>7s} {'yes' if r['same'] else 'NO':>5s}  {r['note']}")
    bad = [r for r in ROWS if not r["same"]]
    missed = [r for r in ROWS if r["met"] is False] if not args.quick else []
    if bad:
        print(f"\nFAIL: {len(bad)} result(s) differ from the reference")
    if missed:
        print(f"\n{'FAIL' if args.enforce_targets else 'note'}: {len(missed)} speed target(s) missed")
    return 1 if bad or (missed and args.enforce_targets) else 0


if __name__ == "__main__":
    sys.exit(main())
