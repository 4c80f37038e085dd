"""Shared helpers of the metrics tests: data location, real masks, references, random label images."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA_ROOT = Path(os.environ.get("BENCH_DATA_ROOT") or Path(__file__).resolve().parents[2] / "shared" / "data")


def data_file(*parts: str) -> Path:
    p = DATA_ROOT.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found: {p} (set BENCH_DATA_ROOT)")
    return p


def bbbc039_mask_paths(n: int) -> list[Path]:
    d = data_file("bbbc039", "masks")
    paths = sorted(d.glob("*.png"))[:n]
    if not paths:
        pytest.skip(f"no BBBC039 masks in {d}")
    return paths


def load_bbbc039_instances(path: Path) -> np.ndarray:
    """Instance labels of a BBBC039 mask: each 4-connected component of one colour (channel 0) is a nucleus."""
    import imageio.v3 as iio
    from skimage.measure import label

    code = np.asarray(iio.imread(path))
    code = code[..., 0] if code.ndim == 3 else code
    out = np.zeros(code.shape, dtype=np.int32)
    offset = 0
    for colour in np.unique(code):
        if colour == 0:
            continue
        lab = label(code == colour, connectivity=1)
        fg = lab > 0
        out[fg] = lab[fg] + offset
        offset += int(lab.max())
    return out


def load_stardist_mask2d() -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(data_file("stardist", "mask2d.tif"))).astype(np.int32)


def perturb_instances(gt: np.ndarray, seed: int) -> np.ndarray:
    """A plausible prediction of a label image: objects dropped, merged, grown or shrunk, shifted, relabelled
    with gaps, plus false positives."""
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(seed)
    ids = np.unique(gt)
    ids = ids[ids > 0]
    lut = np.arange(int(gt.max()) + 1)
    if len(ids):
        lut[rng.choice(ids, size=max(1, len(ids) // 10), replace=False)] = 0  # misses
        if len(ids) > 3:  # merges: a few objects take a neighbour's id
            a = rng.choice(ids, size=max(1, len(ids) // 20), replace=False)
            lut[a] = lut[np.clip(a + 1, 0, len(lut) - 1)]
    pred = lut[gt]
    pred = expand_labels(pred, distance=int(rng.integers(0, 3)))
    shift = tuple(int(s) for s in rng.integers(-2, 3, size=gt.ndim))
    pred = np.roll(pred, shift, axis=tuple(range(gt.ndim)))
    # shrink some objects: remove the pixels whose label differs from a neighbour's
    if rng.random() < 0.5:
        edge = np.zeros(pred.shape, bool)
        for ax in range(pred.ndim):
            d = np.diff(pred, axis=ax) != 0
            sl = [slice(None)] * pred.ndim
            sl[ax] = slice(1, None)
            edge[tuple(sl)] |= d
        victims = rng.random(int(pred.max()) + 1) < 0.3
        pred[edge & victims[pred]] = 0
    # false positives
    nxt = int(pred.max()) + 1
    for _ in range(int(rng.integers(0, 6))):
        c = [int(rng.integers(0, n)) for n in gt.shape]
        r = int(rng.integers(2, 8))
        sl = tuple(slice(max(0, ci - r), ci + r) for ci in c)
        region = pred[sl]
        region[region == 0] = nxt
        nxt += 1
    # relabel with gaps and a permutation
    ids = np.unique(pred)
    ids = ids[ids > 0]
    new = np.zeros(int(pred.max()) + 1, dtype=np.int64)
    new[ids] = rng.permutation(len(ids)) * 3 + 7
    return new[pred].astype(np.int32)


def sequential(lab: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(lab)[0]


def ensure_torch_references() -> None:
    """Make torchvision importable (torchmetrics, cellpose need it) with the CPU torch here."""
    try:
        from bench._compat import ensure_torchvision
    except ImportError:  # pragma: no cover - before the core's _compat existed
        ensure_torchvision = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if ensure_torchvision is not None:
            ensure_torchvision()
        else:
            import torch

            try:
                import torchvision  # noqa: F401
            except Exception:
                for op in ("nms", "qnms"):
                    try:
                        torch.library.define(
                            f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
                        )
                    except Exception:
                        pass


# --------------------------------------------------------------------------------------------------
# hypothesis strategies
# --------------------------------------------------------------------------------------------------
try:
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    st = None


def _paint(shape, boxes, start_label=1, label_step=1):
    img = np.zeros(shape, dtype=np.int32)
    for i, box in enumerate(boxes):
        sl = tuple(slice(min(a, b), max(a, b) + 1) for a, b in box)
        img[sl] = start_label + i * label_step
    return img


if st is not None:

    @st.composite
    def label_pairs(draw, ndim: int = 2, min_size: int = 6, max_size: int = 28, max_objects: int = 8):
        """(pred, gt) label images of random boxes; pred is partly derived from gt (shifted/resized boxes) so that
        matches at every IoU happen, partly independent."""
        shape = tuple(draw(st.integers(min_size, max_size)) for _ in range(ndim))

        def box():
            return [tuple(draw(st.integers(0, n - 1)) for _ in range(2)) for n in shape]

        gt_boxes = draw(st.lists(st.builds(box), min_size=0, max_size=max_objects))
        pred_boxes = []
        for b in gt_boxes:
            kind = draw(st.sampled_from(["copy", "jitter", "jitter", "drop"]))
            if kind == "drop":
                continue
            if kind == "jitter":
                b = [
                    tuple(int(np.clip(v + draw(st.integers(-2, 2)), 0, n - 1)) for v in ab)
                    for ab, n in zip(b, shape)
                ]
            pred_boxes.append(b)
        pred_boxes += draw(st.lists(st.builds(box), min_size=0, max_size=3))
        order = draw(st.permutations(range(len(pred_boxes)))) if pred_boxes else []
        pred_boxes = [pred_boxes[i] for i in order]
        gt = _paint(shape, gt_boxes)
        pred = _paint(shape, pred_boxes, start_label=draw(st.integers(1, 50)), label_step=draw(st.integers(1, 3)))
        return pred, gt

    @st.composite
    def mask_pairs(draw, ndim: int = 2, min_size: int = 6, max_size: int = 32, max_boxes: int = 4, nonempty=True):
        """(pred, gt) binary masks made of a few boxes each."""
        shape = tuple(draw(st.integers(min_size, max_size)) for _ in range(ndim))

        def box():
            return [tuple(draw(st.integers(0, n - 1)) for _ in range(2)) for n in shape]

        lo = 1 if nonempty else 0
        gt = _paint(shape, draw(st.lists(st.builds(box), min_size=lo, max_size=max_boxes))) > 0
        pred = _paint(shape, draw(st.lists(st.builds(box), min_size=lo, max_size=max_boxes))) > 0
        return pred, gt

    @st.composite
    def class_maps(draw, num_classes: int = 3, ndim: int = 2, min_size: int = 6, max_size: int = 24):
        """(pred, gt) semantic class maps made of boxes of random classes."""
        shape = tuple(draw(st.integers(min_size, max_size)) for _ in range(ndim))

        def one():
            img = np.zeros(shape, dtype=np.int64)
            for _ in range(draw(st.integers(0, 6))):
                sl = tuple(
                    slice(min(a, b), max(a, b) + 1)
                    for a, b in ([tuple(draw(st.integers(0, n - 1)) for _ in range(2)) for n in shape])
                )
                img[sl] = draw(st.integers(0, num_classes - 1))
            return img

        return one(), one()
