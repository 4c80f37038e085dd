"""Instance matching against stardist.matching and cellpose.metrics.average_precision, plus its edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from _metrics_helpers import (
    bbbc039_mask_paths,
    ensure_torch_references,
    label_pairs,
    load_bbbc039_instances,
    load_stardist_mask2d,
    perturb_instances,
    sequential,
)
from bench.metrics import MetricContext, evaluate_image, instance_scores, match_instances, overlaps

THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
LOW_THRESHOLDS = (0.1, 0.25, 0.3, 0.4, 0.45)
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sd = pytest.importorskip("stardist.matching")


def assert_same_as_stardist(pred, gt, thresholds, iou_scores=True):
    """Identical TP/FP/FN (and n_true/n_pred) at every threshold; scores from the counts to 1e-9.

    stardist >= 0.9 computes the IoU in float32, so its SQ/PQ carry float32 rounding: they are compared at 2e-6,
    and the summed float64 IoU of stardist's own matched pairs is compared with ours at 1e-9 instead.
    Below t = 0.5 stardist breaks ties between maximum matchings with the IoU of sub-threshold assigned pairs
    too, so there only the counts must agree (iou_scores=False) and our summed IoU is at least stardist's.
    """
    ours = match_instances(pred, gt, thresholds)
    ov = overlaps(pred, gt)
    iou64 = {
        (int(ov.gt_ids[i]), int(ov.pred_ids[j])): v for i, j, v in zip(ov.pair_gt, ov.pair_pred, ov.iou)
    }
    ref = sd.matching(gt, pred, thresh=list(thresholds), report_matches=True)
    for m, r in zip(ours, ref):
        assert (m.tp, m.fp, m.fn) == (r.tp, r.fp, r.fn), f"t={m.thresh}: ours {(m.tp, m.fp, m.fn)} stardist {(r.tp, r.fp, r.fn)}"
        assert (m.n_true, m.n_pred) == (r.n_true, r.n_pred)
        if m.n_true + m.n_pred == 0:
            continue  # stardist gives 0 there, we give 1 (tested below)
        s = m.scores()
        for ours_key, ref_key in [("precision", "precision"), ("recall", "recall"), ("f1", "f1"), ("ap", "accuracy")]:
            assert s[ours_key] == pytest.approx(getattr(r, ref_key), abs=1e-9, rel=1e-9), (m.thresh, ours_key)
        ref_pairs = [r.matched_pairs[k] for k in r.matched_tps]
        ref_sum = sum(iou64[p] for p in ref_pairs)
        if not iou_scores:
            assert m.sum_iou >= ref_sum - 1e-9
            continue
        for ours_key, ref_key in [("pq", "panoptic_quality"), ("sq", "mean_matched_score")]:
            assert s[ours_key] == pytest.approx(getattr(r, ref_key), abs=1e-9, rel=2e-6), (m.thresh, ours_key)
        assert m.sum_iou == pytest.approx(ref_sum, abs=1e-9, rel=1e-9)


@HYP
@given(label_pairs())
def test_matching_equals_stardist_random_2d(pair):
    pred, gt = pair
    assert_same_as_stardist(pred, gt, THRESHOLDS)


@HYP
@given(label_pairs(ndim=3, min_size=4, max_size=10, max_objects=6))
def test_matching_equals_stardist_random_3d(pair):
    pred, gt = pair
    assert_same_as_stardist(pred, gt, THRESHOLDS)


@HYP
@given(label_pairs(max_objects=10))
def test_matching_counts_equal_stardist_below_half(pair):
    """t < 0.5: several candidates per object, solved by linear_sum_assignment like stardist."""
    pred, gt = pair
    assert_same_as_stardist(pred, gt, LOW_THRESHOLDS, iou_scores=False)


def test_matching_equals_stardist_real_bbbc039():
    for i, path in enumerate(bbbc039_mask_paths(2)):
        gt = load_bbbc039_instances(path)
        pred = perturb_instances(gt, seed=i)
        assert_same_as_stardist(pred, gt, THRESHOLDS)
        assert_same_as_stardist(pred, gt, (0.3,), iou_scores=False)


def test_matching_equals_stardist_real_stardist_mask():
    gt = load_stardist_mask2d()
    assert_same_as_stardist(gt, gt, THRESHOLDS)
    pred = perturb_instances(gt, seed=7)
    assert_same_as_stardist(pred, gt, THRESHOLDS)
    assert_same_as_stardist(pred, gt, (0.2,), iou_scores=False)


@pytest.fixture(scope="module")
def cellpose_metrics():
    ensure_torch_references()
    return pytest.importorskip("cellpose.metrics")


def test_average_precision_equals_cellpose(cellpose_metrics):
    """cellpose counts objects by the maximum label: compare on sequential labels."""
    cases = []
    rng = np.random.default_rng(0)
    for path in bbbc039_mask_paths(2):
        gt = load_bbbc039_instances(path)
        cases.append((sequential(perturb_instances(gt, int(rng.integers(1 << 30)))), sequential(gt)))
    gt = load_stardist_mask2d()
    cases.append((sequential(perturb_instances(gt, 3)), sequential(gt)))
    ths = list(THRESHOLDS)
    ap, tp, fp, fn = cellpose_metrics.average_precision([c[1] for c in cases], [c[0] for c in cases], threshold=ths)
    for k, (pred, gt) in enumerate(cases):
        for j, m in enumerate(match_instances(pred, gt, ths)):
            assert (m.tp, m.fp, m.fn) == (tp[k, j], fp[k, j], fn[k, j])
            assert m.scores()["ap"] == pytest.approx(ap[k, j], abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(label_pairs())
def test_average_precision_equals_cellpose_random(cellpose_metrics, pair):
    pred, gt = (sequential(a) for a in pair)
    if gt.max() == 0 or pred.max() == 0:
        return  # cellpose gives nan/0 there; our convention is tested below
    ap, tp, fp, fn = cellpose_metrics.average_precision([gt], [pred], threshold=list(THRESHOLDS))
    for j, m in enumerate(match_instances(pred, gt, THRESHOLDS)):
        assert (m.tp, m.fp, m.fn) == (tp[0, j], fp[0, j], fn[0, j])
        assert m.scores()["ap"] == pytest.approx(ap[0, j], abs=1e-9)


# ------------------------------------------------------------------------------------------------
# edge cases
# ------------------------------------------------------------------------------------------------


def test_iou_exactly_at_threshold_matches():
    """IoU == t matches (stardist compares scores >= thresh): 12/16 = 0.75 exactly."""
    gt = np.zeros((10, 10), np.int32)
    gt[1:5, 1:5] = 1
    pred = np.zeros_like(gt)
    pred[1:5, 1:4] = 3
    (m75, m80) = match_instances(pred, gt, (0.75, 0.8))
    assert m75.matched_iou.tolist() == [0.75]
    assert (m75.tp, m75.fp, m75.fn) == (1, 0, 0)
    assert (m80.tp, m80.fp, m80.fn) == (0, 1, 1)
    assert_same_as_stardist(pred, gt, (0.75, 0.8))


def test_iou_exactly_half_ties():
    """An object split into two exact halves: two candidates at IoU 0.5, one match (both directions)."""
    gt = np.zeros((6, 8), np.int32)
    gt[1:5, 0:8] = 1
    pred = np.zeros_like(gt)
    pred[1:5, 0:4] = 1
    pred[1:5, 4:8] = 2
    for a, b in ((pred, gt), (gt, pred)):
        m = match_instances(a, b, (0.5,))[0]
        assert m.tp == 1 and m.sum_iou == 0.5
        assert_same_as_stardist(a, b, (0.5, 0.55))


def test_below_half_prefers_more_matches_then_higher_iou():
    """t=0.3: the greedy best pair (1, 5) (IoU 24/56) would leave both others unmatched; the optimum takes two."""
    gt = np.zeros((4, 20), np.int32)
    gt[:, 0:10] = 1
    gt[:, 10:14] = 2
    pred = np.zeros_like(gt)
    pred[:, 4:14] = 5  # IoU with 1: 24/56, with 2: 16/40
    pred[:, 0:4] = 6  # IoU with 1: 16/40
    m = match_instances(pred, gt, (0.3,))[0]
    assert m.tp == 2 and m.sum_iou == pytest.approx(0.4 + 0.4)
    assert_same_as_stardist(pred, gt, (0.3,), iou_scores=False)


def test_empty_cases_flags_and_values():
    z = np.zeros((8, 8), np.int32)
    obj = z.copy()
    obj[2:5, 2:5] = 4
    ctx = MetricContext(task="instance")
    rows = {r["metric"]: r for r in evaluate_image(z, z, ctx)}
    assert rows["ap@0.50"]["value"] == 1.0 and rows["ap@0.50"]["flag"] == "both_empty"
    assert rows["pq"]["value"] == 1.0 and rows["map"]["value"] == 1.0 and rows["dice"]["value"] == 1.0
    rows = {r["metric"]: r for r in evaluate_image(obj, z, ctx)}
    assert rows["ap@0.50"]["value"] == 0.0 and rows["ap@0.50"]["flag"] == "empty_gt"
    assert rows["precision@0.50"]["value"] == 0.0 and rows["fp@0.50"]["value"] == 1
    rows = {r["metric"]: r for r in evaluate_image(z, obj, ctx)}
    assert rows["recall@0.50"]["value"] == 0.0 and rows["ap@0.50"]["flag"] == "empty_pred"
    assert rows["fn@0.50"]["value"] == 1 and rows["pq"]["value"] == 0.0
    assert instance_scores(0, 0, 0, 0.0)["ap"] == 1.0


def test_non_sequential_labels_and_dtypes():
    gt = np.zeros((12, 12), np.uint16)
    gt[0:5, 0:5] = 60000
    gt[6:12, 6:12] = 2
    pred = np.zeros((12, 12), np.int64)
    pred[0:5, 0:4] = 10**12
    pred[6:12, 5:12] = 1
    ov = overlaps(pred, gt)
    assert ov.gt_ids.tolist() == [2, 60000] and ov.pred_ids.tolist() == [1, 10**12]
    m = match_instances(pred, gt, (0.5,))[0]
    assert sorted(map(tuple, m.matched.tolist())) == [(2, 1), (60000, 10**12)]
    with pytest.raises(ValueError, match="non-negative"):
        overlaps(pred - 5, gt)
    for a, b in ((pred.astype(np.uint64) % 7, gt.astype(np.uint64)), (pred > 0, gt > 0)):
        assert_same_as_stardist(a.astype(np.int64) if a.dtype == bool else a, b.astype(np.int64), THRESHOLDS)
        assert match_instances(a, b, (0.5,))[0].tp == match_instances(a.astype(np.int64), b.astype(np.int64), (0.5,))[0].tp


@pytest.mark.parametrize("t", THRESHOLDS)
def test_iou_exactly_each_threshold(t):
    """IoU == t exactly (k/20) matches at t and not above, for every default threshold, as stardist and cellpose."""
    k = round(20 * t)
    gt = np.zeros((3, 22), np.int32)
    gt[1, 1:21] = 1
    pred = np.zeros_like(gt)
    pred[1, 1 : 1 + k] = 2
    m_at, m_above = match_instances(pred, gt, (t, t + 0.01))
    assert m_at.tp == 1 and m_above.tp == (1 if k == 20 else 0)
    assert_same_as_stardist(pred, gt, (t, t + 0.01))
