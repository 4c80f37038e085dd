"""Pixel metrics (Dice, IoU) and boundary metrics (HD95, boundary F1), per class and per image."""

from __future__ import annotations

import numpy as np

from bench.metrics.base import (
    FLAG_BOTH_EMPTY,
    FLAG_EMPTY_GT,
    FLAG_EMPTY_PRED,
    MetricContext,
    MetricValue,
    cached,
    fmt_tolerance,
)
from bench.metrics.surface import boundary_f1, hausdorff_distance, tolerance_pixels
from bench.registry import register_metric


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """cm[i, j] = number of pixels with gt class i and predicted class j (one bincount over the image)."""
    p = np.asarray(pred).reshape(-1)
    g = np.asarray(gt).reshape(-1)
    for name, a in (("pred", p), ("gt", g)):
        if a.size and (int(a.min()) < 0 or int(a.max()) >= num_classes):
            raise ValueError(
                f"{name} holds class indices outside 0..{num_classes - 1} (min {a.min()}, max {a.max()}); "
                "set num_classes in the metric context"
            )
    dt = np.int16 if num_classes * num_classes < 2**15 else np.int64
    code = g.astype(dt) * dt(num_classes) + p.astype(dt)
    return np.bincount(code, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_counts(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class c in 0..num_classes-1: (|pred==c & gt==c|, |gt==c|, |pred==c|).

    Few classes: one boolean pass per class (cheaper than a bincount over a big volume); many: the confusion matrix.
    """
    if num_classes > 8:
        cm = confusion_matrix(pred, gt, num_classes)
        return np.diag(cm).astype(np.int64), cm.sum(axis=1), cm.sum(axis=0)
    p = np.asarray(pred)
    g = np.asarray(gt)
    for name, a in (("pred", p), ("gt", g)):
        if a.size and (int(a.min()) < 0 or int(a.max()) >= num_classes):
            raise ValueError(
                f"{name} holds class indices outside 0..{num_classes - 1} (min {a.min()}, max {a.max()}); "
                "set num_classes in the metric context"
            )
    inter = np.zeros(num_classes, np.int64)
    n_gt = np.zeros(num_classes, np.int64)
    n_pred = np.zeros(num_classes, np.int64)
    for c in range(1, num_classes):
        gm = g == c
        pm = p == c
        n_gt[c] = np.count_nonzero(gm)
        n_pred[c] = np.count_nonzero(pm)
        inter[c] = np.count_nonzero(gm & pm) if n_gt[c] and n_pred[c] else 0
    n_gt[0] = g.size - n_gt.sum()
    n_pred[0] = p.size - n_pred.sum()
    return inter, n_gt, n_pred


def _classes(pred: np.ndarray, gt: np.ndarray, ctx: MetricContext):
    """Per-class counts and the (index, name) of the classes to report: foreground for instance, 1.. for semantic."""
    if ctx.task == "instance":
        counts = cached(ctx, "fg_counts", lambda: class_counts(np.asarray(pred) > 0, np.asarray(gt) > 0, 2))
        return counts, [(1, "")]
    if ctx.regions:  # each region's union of classes as a binary mask: counts[.][k] is region k's
        def region_counts():
            per = [class_counts(*_present(pred, gt, cls), 2) for cls in ctx.regions.values()]
            return tuple(np.array([0, *(c[i][1] for c in per)]) for i in range(3))

        counts = cached(ctx, "region_counts", region_counts)
        return counts, [(k + 1, name) for k, name in enumerate(ctx.regions)]
    counts = cached(ctx, "class_counts", lambda: class_counts(pred, gt, ctx.num_classes))
    return counts, [(c, ctx.class_name(c)) for c in ctx.foreground_classes()]


def overlap_scores(inter: float, n_gt: float, n_pred: float) -> tuple[float, float, str]:
    """(dice, iou, flag) from counts. Both empty: 1; reference empty and prediction not (or the reverse): 0."""
    if n_gt == 0 and n_pred == 0:
        return 1.0, 1.0, FLAG_BOTH_EMPTY
    if n_gt == 0:
        return 0.0, 0.0, FLAG_EMPTY_GT
    if n_pred == 0:
        return 0.0, 0.0, FLAG_EMPTY_PRED
    return 2.0 * inter / (n_gt + n_pred), inter / (n_gt + n_pred - inter), ""


def _overlap_metric(pred, gt, ctx: MetricContext, which: int, name: str) -> list[MetricValue]:
    (inter, n_gt, n_pred), classes = _classes(pred, gt, ctx)
    out = []
    for c, cname in classes:
        s = overlap_scores(float(inter[c]), float(n_gt[c]), float(n_pred[c]))
        out.append(MetricValue(name, s[which], cname, s[2]))
    return out


@register_metric(
    "dice",
    description="Dice 2|A&B|/(|A|+|B|) per foreground class (instance task: foreground); both empty = 1",
    task=("semantic", "instance"),
    outputs=("dice",),
    headline={"semantic": ("dice",)},
)
def dice_metric(pred: np.ndarray, gt: np.ndarray, ctx: MetricContext) -> list[MetricValue]:
    return _overlap_metric(pred, gt, ctx, 0, "dice")


@register_metric(
    "iou",
    description="IoU (Jaccard) |A&B|/|A or B| per foreground class (instance task: foreground); both empty = 1",
    task=("semantic", "instance"),
    outputs=("iou",),
    headline={"semantic": ("iou",)},
)
def iou_metric(pred: np.ndarray, gt: np.ndarray, ctx: MetricContext) -> list[MetricValue]:
    return _overlap_metric(pred, gt, ctx, 1, "iou")


def _present(pred, gt, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Masks of a class (or of a union of classes: a region) in the prediction and the reference."""
    if len(classes) == 1:
        return np.asarray(pred) == classes[0], np.asarray(gt) == classes[0]
    return np.isin(pred, classes), np.isin(gt, classes)


@register_metric(
    "hd95",
    description="95th-percentile symmetric Hausdorff distance per foreground class in physical units (MONAI)",
    task=("semantic",),
    outputs=("hd95",),
    higher_is_better=False,
    headline=("hd95",),
)
def hd95_metric(pred: np.ndarray, gt: np.ndarray, ctx: MetricContext) -> list[MetricValue]:
    spacing = ctx.spacing_for(np.ndim(pred))
    out = []
    for cname, cls in ctx.evaluation_masks():
        pm, gm = _present(pred, gt, cls)
        v, flag = hausdorff_distance(pm, gm, spacing, 95.0)
        out.append(MetricValue("hd95", v, cname, flag))
    return out


@register_metric(
    "bf1",
    description="Boundary F1 (DAVIS boundaries, tolerance boundary_tolerance; bf1@t at each further tolerance t) "
    "per foreground class",
    task=("semantic",),
    outputs=("bf1",),
    headline=("bf1",),
)
def bf1_metric(pred: np.ndarray, gt: np.ndarray, ctx: MetricContext) -> list[MetricValue]:
    rows = [("bf1", ctx.boundary_tolerance)]
    rows += [(f"bf1@{fmt_tolerance(t)}", t) for t in ctx.extra_boundary_tolerances]
    out = []
    for cname, cls in ctx.evaluation_masks():
        pm, gm = _present(pred, gt, cls)
        for name, t in rows:
            f, _, _, flag = boundary_f1(pm, gm, tolerance_pixels(t, np.shape(pred)))
            out.append(MetricValue(name, f, cname, flag))
    return out
