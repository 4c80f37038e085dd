"""Instance metrics from the optimal IoU matching: AP/F1/precision/recall per threshold, mAP, PQ/SQ/RQ, counts."""

from __future__ import annotations

import numpy as np

from bench.metrics.base import (
    FLAG_BOTH_EMPTY,
    FLAG_EMPTY_GT,
    FLAG_EMPTY_PRED,
    PQ_THRESHOLD,
    MetricContext,
    MetricValue,
    at,
    cached,
    fmt_threshold,
)
from bench.metrics.matching import MatchCounts, Overlaps, match_instances, overlaps
from bench.registry import register_metric

_INSTANCE = ("instance",)


def count_thresholds(ctx: MetricContext) -> tuple[float, ...]:
    """Thresholds at which counts are reported: ctx.thresholds plus 0.5 (for PQ) if missing."""
    ts = tuple(ctx.thresholds)
    if fmt_threshold(PQ_THRESHOLD) not in {fmt_threshold(t) for t in ts}:
        ts = ts + (PQ_THRESHOLD,)
    return ts


def image_overlaps(pred: np.ndarray, gt: np.ndarray, ctx: MetricContext) -> Overlaps:
    """The sparse overlap table of the image, computed once per evaluate_image call."""
    return cached(ctx, "overlaps", lambda: overlaps(pred, gt))


def image_matching(pred: np.ndarray, gt: np.ndarray, ctx: MetricContext) -> tuple[dict[str, MatchCounts], str]:
    """Matching at every count threshold (keyed by the formatted threshold) and the image's emptiness flag."""

    def compute():
        ms = match_instances(pred, gt, count_thresholds(ctx), ov=image_overlaps(pred, gt, ctx))
        m0 = ms[0]
        if m0.n_true == 0 and m0.n_pred == 0:
            flag = FLAG_BOTH_EMPTY
        elif m0.n_true == 0:
            flag = FLAG_EMPTY_GT
        elif m0.n_pred == 0:
            flag = FLAG_EMPTY_PRED
        else:
            flag = ""
        return {fmt_threshold(m.thresh): m for m in ms}, flag

    return cached(ctx, "matching", compute)


def _per_threshold(score: str, family: str):
    def metric(pred: np.ndarray, gt: np.ndarray, ctx: MetricContext) -> list[MetricValue]:
        ms, flag = image_matching(pred, gt, ctx)
        return [MetricValue(at(family, t), ms[fmt_threshold(t)].scores()[score], "", flag) for t in ctx.thresholds]

    metric.__name__ = f"{family}_metric"
    return metric


ap_metric = register_metric(
    "ap",
    description="AP = TP/(TP+FP+FN) at each IoU threshold (ap@0.50 ... ap@0.95), optimal matching at IoU >= t",
    task=_INSTANCE,
    outputs=("ap",),
    headline=("ap@0.50",),
)(_per_threshold("ap", "ap"))
f1_metric = register_metric(
    "f1",
    description="F1 = 2TP/(2TP+FP+FN) at each IoU threshold (f1@0.50 ...)",
    task=_INSTANCE,
    outputs=("f1",),
    headline=("f1@0.50",),
)(_per_threshold("f1", "f1"))
precision_metric = register_metric(
    "precision",
    description="Precision TP/(TP+FP) at each IoU threshold (precision@0.50 ...)",
    task=_INSTANCE,
    outputs=("precision",),
)(_per_threshold("precision", "precision"))
recall_metric = register_metric(
    "recall",
    description="Recall TP/(TP+FN) at each IoU threshold (recall@0.50 ...)",
    task=_INSTANCE,
    outputs=("recall",),
)(_per_threshold("recall", "recall"))


@register_metric(
    "map",
    description="Mean of ap@t over the IoU thresholds (0.50:0.05:0.95 by default)",
    task=_INSTANCE,
    outputs=("map",),
    headline=("map",),
)
def map_metric(pred: np.ndarray, gt: np.ndarray, ctx: MetricContext) -> list[MetricValue]:
    ms, flag = image_matching(pred, gt, ctx)
    v = float(np.mean([ms[fmt_threshold(t)].scores()["ap"] for t in ctx.thresholds]))
    return [MetricValue("map", v, "", flag)]


def _pq_part(part: str):
    def metric(pred: np.ndarray, gt: np.ndarray, ctx: MetricContext) -> list[MetricValue]:
        ms, flag = image_matching(pred, gt, ctx)
        return [MetricValue(part, ms[fmt_threshold(PQ_THRESHOLD)].scores()[part], "", flag)]

    metric.__name__ = f"{part}_metric"
    return metric


pq_metric = register_metric(
    "pq",
    description="Panoptic quality SQ x RQ of the foreground objects at IoU >= 0.5",
    task=_INSTANCE,
    outputs=("pq",),
    headline=("pq",),
)(_pq_part("pq"))
sq_metric = register_metric(
    "sq",
    description="Segmentation quality: mean IoU of the matches at IoU >= 0.5",
    task=_INSTANCE,
    outputs=("sq",),
    headline=("sq",),
)(_pq_part("sq"))
rq_metric = register_metric(
    "rq",
    description="Recognition quality: F1 at IoU >= 0.5",
    task=_INSTANCE,
    outputs=("rq",),
    headline=("rq",),
)(_pq_part("rq"))


@register_metric(
    "counts",
    description="Per-image tp@t, fp@t, fn@t, sum_iou@t, n_true, n_pred (source of the pooled summaries)",
    task=_INSTANCE,
    outputs=("tp", "fp", "fn", "sum_iou", "n_true", "n_pred"),
)
def counts_metric(pred: np.ndarray, gt: np.ndarray, ctx: MetricContext) -> list[MetricValue]:
    ms, flag = image_matching(pred, gt, ctx)
    out = []
    for t in count_thresholds(ctx):
        m = ms[fmt_threshold(t)]
        out += [
            MetricValue(at("tp", t), m.tp, "", flag),
            MetricValue(at("fp", t), m.fp, "", flag),
            MetricValue(at("fn", t), m.fn, "", flag),
            MetricValue(at("sum_iou", t), m.sum_iou, "", flag),
        ]
    m = next(iter(ms.values()))
    out += [MetricValue("n_true", m.n_true, "", flag), MetricValue("n_pred", m.n_pred, "", flag)]
    return out


def seg_jaccards(ov: Overlaps) -> np.ndarray:
    """CTC SEG per reference object: the Jaccard index with the predicted object that covers more than half of
    it (|R & S| > 0.5 |R|; at most one such S exists), 0 when there is none."""
    j = np.zeros(ov.n_true)
    hit = ov.inter * 2 > ov.gt_area[ov.pair_gt]
    j[ov.pair_gt[hit]] = ov.iou[hit]
    return j


@register_metric(
    "seg",
    description="Cell Tracking Challenge SEG: per reference object the Jaccard index with the predicted object "
                "covering > 50% of it (0 if none), mean over the reference objects; seg_pooled over all objects "
                "of all images (the challenge's score). Valid on partially annotated references",
    task=_INSTANCE,
    outputs=("seg", "seg_jsum", "seg_nref"),
    headline=("seg",),
    partial_annotation=True,
    pooled={"seg": ("seg_jsum", "seg_nref")},
)
def seg_metric(pred: np.ndarray, gt: np.ndarray, ctx: MetricContext) -> list[MetricValue]:
    """No reference object: no 'seg' row (a mean over no objects), only seg_nref = 0 for the pooled score."""
    j = seg_jaccards(image_overlaps(pred, gt, ctx))
    rows = [MetricValue("seg_jsum", float(j.sum())), MetricValue("seg_nref", float(len(j)))]
    if len(j):
        rows.insert(0, MetricValue("seg", float(j.mean())))
    return rows
