"""Benchmark for bench.fields on BBBC039 (CPU).

    python benchmarks/bench_fields.py [--quick] [--data-root DIR] [--repeats N]

Prints
  (a) Poisson targets: per-cell scipy splu reference vs poisson_field, time per image, ratio, max |diff|
      (and diffusion_field time per image, for information);
  (b) post-processing of one 520x696 image: field_to_instances vs cellpose.dynamics.compute_masks fed a
      realistic flow field (cellpose's own masks_to_flows of the real mask, scaled like network output,
      cellprob +-5), ratio of the two;
  (c) classic_watershed F1@0.5 / PQ on the BBBC039 test split;
  (d) round trip: field_to_instances of the ground-truth Poisson / diffusion fields vs the test instances.
Timings are the minimum over --repeats runs. --quick uses fewer images (2 for (a), 12 for (c)/(d)).
The data root is --data-root, else $BENCH_DATA_ROOT, else <checkout>/../shared/data.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.fields import (  # noqa: E402
    POSTPROCESS_DEFAULTS,
    classic_watershed,
    diffusion_field,
    field_to_instances,
    poisson_field,
)


def load_labels(root: Path, stem: str) -> np.ndarray:
    """BBBC039 mask PNG -> instance labels, with the dataset reader's decoder."""
    import imageio.v3 as iio

    from bench.datasets.bbbc039 import decode_bbbc039_mask

    return decode_bbbc039_mask(iio.imread(root / "masks" / f"{stem}.png"))


def load_image(root: Path, stem: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(root / "images" / f"{stem}.tif")


# the per-cell sparse LU reference lives in the test suite; one copy serves both
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_fields import reference_poisson  # noqa: E402


def counts(gt: np.ndarray, pred: np.ndarray) -> dict:
    gt = gt.ravel().astype(np.int64)
    pred = pred.ravel().astype(np.int64)
    npred = int(pred.max())
    ag, ap = np.bincount(gt), np.bincount(pred, minlength=npred + 1)
    both = (gt > 0) & (pred > 0)
    pairs, inter = np.unique(gt[both] * (npred + 1) + pred[both], return_counts=True)
    g, p = pairs // (npred + 1), pairs % (npred + 1)
    iou = inter / (ag[g] + ap[p] - inter)
    ok = iou > 0.5
    tp = int(ok.sum())
    return {"tp": tp, "fp": int((ap[1:] > 0).sum()) - tp, "fn": int((ag[1:] > 0).sum()) - tp,
            "iou": float(iou[ok].sum())}


def f1_pq(c: dict) -> tuple[float, float]:
    den = c["tp"] + 0.5 * (c["fp"] + c["fn"])
    return (c["tp"] / den, c["iou"] / den) if den else (1.0, 1.0)


def summarize(per_image: list[dict]) -> str:
    pooled = {k: sum(c[k] for c in per_image) for k in ("tp", "fp", "fn", "iou")}
    pf1, ppq = f1_pq(pooled)
    mf1, mpq = np.mean([f1_pq(c) for c in per_image], axis=0)
    return (f"F1@0.5 pooled {pf1:.4f} mean {mf1:.4f} | PQ pooled {ppq:.4f} mean {mpq:.4f} "
            f"(TP {pooled['tp']} FP {pooled['fp']} FN {pooled['fn']}, {len(per_image)} images)")


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def import_cellpose_dynamics():
    """cellpose imports torchvision; a CUDA torchvision next to CPU torch misses its custom ops.
    Register stand-in schemas for the ops its import needs, then import (CPU only)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    for _ in range(20):
        try:
            import torchvision  # noqa: F401

            break
        except Exception as exc:  # noqa: BLE001
            m = re.search(r"operator (torchvision::\w+) does not exist", str(exc))
            if not m:
                raise
            for name in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
                del sys.modules[name]
            torch.library.define(m.group(1), "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    from cellpose import dynamics

    return dynamics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer images")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    root = Path(args.data_root or os.environ.get("BENCH_DATA_ROOT")
                or Path(__file__).resolve().parents[2] / "shared" / "data") / "bbbc039"
    if not (root / "metadata" / "test.txt").is_file():
        sys.exit(f"BBBC039 not found under {root}")
    stems = (root / "metadata" / "test.txt").read_text().split()
    n_timing = 2 if args.quick else 5
    n_eval = 12 if args.quick else len(stems)
    eval_stems = stems[:: max(1, len(stems) // n_eval)][:n_eval]
    print(f"python {platform.python_version()}, numpy {np.__version__}, cpu count {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.2f}; timings: min of {args.repeats} runs")

    # (a) Poisson targets ---------------------------------------------------------------------------------
    print("\n(a) Poisson targets: per-cell splu reference vs poisson_field")
    tot_ref = tot_ours = 0.0
    for stem in stems[:: max(1, len(stems) // n_timing)][:n_timing]:
        lab = load_labels(root, stem)
        t_ref = best_time(lambda: reference_poisson(lab), max(2, args.repeats // 2))
        t_ours = best_time(lambda: poisson_field(lab), args.repeats)
        t_diff = best_time(lambda: diffusion_field(lab), 1)
        diff = float(np.abs(poisson_field(lab) - reference_poisson(lab)).max())
        tot_ref += t_ref
        tot_ours += t_ours
        print(f"  {stem[:24]:24s} {int(lab.max()):4d} cells  ref {t_ref * 1e3:7.1f} ms  ours {t_ours * 1e3:6.1f} ms"
              f"  ratio {t_ref / t_ours:5.1f}x  max|diff| {diff:.1e}  (diffusion_field {t_diff * 1e3:6.0f} ms)")
    print(f"  total: ref {tot_ref * 1e3:.0f} ms, ours {tot_ours * 1e3:.0f} ms, speed-up {tot_ref / tot_ours:.1f}x")

    # (b) post-processing vs cellpose ---------------------------------------------------------------------
    print("\n(b) post-processing of one 520x696 image vs cellpose.dynamics.compute_masks (CPU)")
    lab = load_labels(root, stems[0])
    pfield, dfield = poisson_field(lab), diffusion_field(lab)
    t_p = best_time(lambda: field_to_instances(pfield), args.repeats)
    t_d = best_time(lambda: field_to_instances(dfield, **POSTPROCESS_DEFAULTS["diffusion"]), args.repeats)
    print(f"  field_to_instances: Poisson field {t_p * 1e3:.1f} ms, diffusion field {t_d * 1e3:.1f} ms "
          f"({lab.shape[0]}x{lab.shape[1]}, {int(lab.max())} cells)")
    try:
        import torch

        dyn = import_cellpose_dynamics()
        import cellpose

        flows = dyn.masks_to_flows_gpu(lab, device=torch.device("cpu"))
        flows = flows[0] if isinstance(flows, tuple) else flows
        d_p = (5.0 * np.asarray(flows)).astype(np.float32)  # network output scale: compute_masks divides by 5
        cellprob = np.where(lab > 0, 5.0, -5.0).astype(np.float32)
        res = dyn.compute_masks(d_p, cellprob, niter=200, device=torch.device("cpu"))
        masks = res[0] if isinstance(res, tuple) else res
        # torch's intra-op threads can thrash on a busy machine: time the default and 1 thread, keep the
        # faster (the conservative choice for the ratio)
        timings = {}
        default_threads = torch.get_num_threads()
        for threads in sorted({default_threads, 1}, reverse=True):
            torch.set_num_threads(threads)
            timings[threads] = best_time(
                lambda: dyn.compute_masks(d_p, cellprob, niter=200, device=torch.device("cpu")),
                max(2, args.repeats // 2))
        torch.set_num_threads(default_threads)
        t_cp = min(timings.values())
        shown = ", ".join(f"{k} thread(s) {v * 1e3:.0f} ms" for k, v in timings.items())
        print(f"  cellpose {getattr(cellpose, 'version', '')} compute_masks: {t_cp * 1e3:.0f} ms "
              f"({int(masks.max())} masks; {shown})")
        print(f"  ratio field_to_instances / compute_masks: Poisson {t_p / t_cp:.3f}, diffusion {t_d / t_cp:.3f}"
              f" (requirement <= 0.2)")
    except Exception as exc:  # noqa: BLE001
        print(f"  cellpose comparison skipped: {type(exc).__name__}: {exc}")

    # (c) classic watershed -------------------------------------------------------------------------------
    print("\n(c) classic_watershed (defaults) on the BBBC039 test split")
    per = []
    t0 = time.perf_counter()
    for stem in eval_stems:
        per.append(counts(load_labels(root, stem), classic_watershed(load_image(root, stem))))
    print(f"  {summarize(per)}; {1e3 * (time.perf_counter() - t0) / len(eval_stems):.0f} ms/image incl. I/O")

    # (d) ground-truth round trip -------------------------------------------------------------------------
    print("\n(d) round trip: field_to_instances(GT field) vs GT instances, BBBC039 test split")
    per_p, per_d, per_d05 = [], [], []
    for stem in eval_stems:
        lab = load_labels(root, stem)
        dfield = diffusion_field(lab)
        per_p.append(counts(lab, field_to_instances(poisson_field(lab))))
        per_d.append(counts(lab, field_to_instances(dfield, **POSTPROCESS_DEFAULTS["diffusion"])))
        per_d05.append(counts(lab, field_to_instances(dfield)))
    print(f"  Poisson   (eps 0.05, h 0.1):  {summarize(per_p)}")
    dflt = POSTPROCESS_DEFAULTS["diffusion"]
    print(f"  diffusion (eps {dflt['eps']}, h {dflt['h']}): {summarize(per_d)}")
    print(f"  diffusion (eps 0.05, h 0.1):  {summarize(per_d05)}  <- the Poisson defaults, for comparison")


if __name__ == "__main__":
    main()
