"""PQ/SQ/RQ against torchmetrics PanopticQuality (away from IoU == 0.5 exactly) and stardist's panoptic_quality."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings

from _metrics_helpers import (
    bbbc039_mask_paths,
    ensure_torch_references,
    label_pairs,
    load_bbbc039_instances,
    perturb_instances,
)
from bench.metrics import match_instances, overlaps, panoptic_quality


@pytest.fixture(scope="module")
def tm_pq():
    ensure_torch_references()
    pytest.importorskip("torchmetrics")
    import torch
    from torchmetrics.detection import PanopticQuality

    def run(pairs):
        """Pooled PQ, SQ, RQ of class 1 (things) over (pred, gt) pairs; background is stuff class 0."""
        metric = PanopticQuality(things={1}, stuffs={0}, return_sq_and_rq=True, return_per_class=True)
        for pred, gt in pairs:
            def enc(lab):
                lab = torch.from_numpy(lab.astype(np.int64))
                return torch.stack([(lab > 0).long(), lab], dim=-1)[None]

            metric.update(enc(pred), enc(gt))
        out = metric.compute()  # (num_classes, 3): things first
        return [float(v) for v in out[0]]

    return run


def _no_half_ties(pred, gt):
    return not np.any(overlaps(pred, gt).iou == 0.5)


def _ours_pooled(pairs):
    tp = fp = fn = 0
    s = 0.0
    for pred, gt in pairs:
        m = match_instances(pred, gt, (0.5,))[0]
        tp, fp, fn, s = tp + m.tp, fp + m.fp, fn + m.fn, s + m.sum_iou
    sq = s / tp if tp else 0.0
    rq = tp / (tp + fp / 2 + fn / 2) if tp else 0.0
    return sq * rq, sq, rq


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_pairs(max_objects=6))
def test_pq_equals_torchmetrics_random(tm_pq, pair):
    pred, gt = pair
    assume(gt.max() > 0 and pred.max() > 0 and _no_half_ties(pred, gt))
    ref = tm_pq([(pred, gt)])
    ours = panoptic_quality(pred, gt)
    assert [ours["pq"], ours["sq"], ours["rq"]] == pytest.approx(ref, abs=1e-6)


def test_pq_equals_torchmetrics_real_pooled(tm_pq):
    pairs = []
    for i, path in enumerate(bbbc039_mask_paths(2)):
        gt = load_bbbc039_instances(path)[:256, :256]
        pred = perturb_instances(gt, seed=10 + i)
        assert _no_half_ties(pred, gt)
        pairs.append((pred, gt))
    assert list(_ours_pooled(pairs)) == pytest.approx(tm_pq(pairs), abs=1e-6)


def test_pq_differs_from_torchmetrics_only_at_exact_half(tm_pq):
    """IoU == 0.5: a match for us and stardist (IoU >= 0.5), not for torchmetrics (IoU > 0.5)."""
    gt = np.zeros((6, 10), np.int32)
    gt[1:5, 1:9] = 1
    pred = np.zeros_like(gt)
    pred[1:5, 1:5] = 1  # 16 / 32
    ours = panoptic_quality(pred, gt)
    assert ours["tp"] == 1 and ours["pq"] == pytest.approx(0.5 * 1.0)
    assert tm_pq([(pred, gt)])[0] == 0.0


def test_pq_equals_stardist():
    sd = pytest.importorskip("stardist.matching")
    gt = load_bbbc039_instances(bbbc039_mask_paths(1)[0])
    pred = perturb_instances(gt, seed=5)
    ref = sd.matching(gt, pred, thresh=0.5)
    ours = panoptic_quality(pred, gt)
    assert ours["pq"] == pytest.approx(ref.panoptic_quality, rel=2e-6)  # stardist's IoU is float32
    assert ours["sq"] == pytest.approx(ref.mean_matched_score, rel=2e-6)
    assert ours["rq"] == pytest.approx(ref.f1, rel=1e-12)
    assert ours["pq"] == pytest.approx(ours["sq"] * ours["rq"], rel=1e-12)
