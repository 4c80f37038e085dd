"""The metrics API: registration, evaluate_image, summarize (per-image means and pooled values)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from _metrics_helpers import bbbc039_mask_paths, load_bbbc039_instances, load_stardist_mask2d, perturb_instances
from bench.metrics import MetricContext, MetricValue, evaluate_image, summarize
from bench.registry import METRICS

THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
NAMES = ["ap", "bf1", "counts", "dice", "f1", "hd95", "iou", "map", "pq", "precision", "recall", "rq", "sq"]


def test_registered_names_tasks_and_one_line_descriptions():
    assert set(NAMES) <= set(METRICS.names())
    for n in NAMES:
        e = METRICS.entry(n)
        assert e.description and "\n" not in e.description
        assert set(e.extra["task"]) <= {"instance", "semantic"}
    assert set(METRICS.entry("hd95").extra["task"]) == {"semantic"}
    assert set(METRICS.entry("dice").extra["task"]) == {"semantic", "instance"}


def test_import_is_light():
    code = (
        "import sys, bench.metrics; from bench.registry import METRICS; METRICS.load(); "
        "print(sorted(m for m in ('torch','monai','torchmetrics','cellpose','stardist','pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _img():
    gt = np.zeros((24, 24), np.int32)
    gt[2:10, 2:10] = 1
    gt[12:20, 4:12] = 2
    gt[14:22, 14:22] = 3
    pred = np.zeros_like(gt)
    pred[2:10, 3:10] = 7
    pred[12:20, 4:9] = 8
    pred[0:3, 18:23] = 9
    return pred, gt


def test_instance_row_names():
    pred, gt = _img()
    rows = evaluate_image(pred, gt, MetricContext(task="instance"))
    names = [r["metric"] for r in rows]
    expected = (
        ["dice", "iou"]
        + [f"ap@{t:.2f}" for t in THRESHOLDS] + ["map"]
        + [f"f1@{t:.2f}" for t in THRESHOLDS]
        + [f"precision@{t:.2f}" for t in THRESHOLDS]
        + [f"recall@{t:.2f}" for t in THRESHOLDS]
        + ["pq", "sq", "rq", "seg", "seg_jsum", "seg_nref"]
    )
    assert names[: len(expected)] == expected
    counts = {f"{c}@{t:.2f}" for c in ("tp", "fp", "fn", "sum_iou") for t in THRESHOLDS} | {"n_true", "n_pred"}
    assert set(names[len(expected):]) == counts
    assert all(set(r) == {"metric", "class", "value", "flag"} for r in rows)


def test_semantic_row_names_and_class_names():
    pred, gt = _img()
    ctx = MetricContext(task="semantic", num_classes=4, class_names=["bg", "a", "b", "c"], spacing=(0.5, 0.5))
    rows = evaluate_image(np.minimum(pred, 3), gt, ctx)
    assert [(r["metric"], r["class"]) for r in rows] == [(m, c) for m in ("dice", "iou", "hd95", "bf1") for c in "abc"]
    ctx = MetricContext(task="semantic", num_classes=4, class_names=["a", "b", "c"])
    assert [r["class"] for r in evaluate_image(gt, gt, ctx, ["dice"])] == ["a", "b", "c"]


def test_metric_selection_keeps_counts():
    pred, gt = _img()
    rows = evaluate_image(pred, gt, MetricContext(task="instance"), metrics=["ap@0.75", "pq"])
    names = {r["metric"] for r in rows}
    assert {"ap@0.75", "pq", "tp@0.50", "fp@0.75", "sum_iou@0.95"} <= names
    assert "ap@0.50" not in names and "f1@0.75" not in names and "dice" not in names
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_image(pred, gt, MetricContext(task="instance"), metrics=["hd95"])


def test_errors():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        evaluate_image(np.zeros((4, 5), int), np.zeros((4, 6), int), MetricContext())
    with pytest.raises(ValueError, match="integer"):
        evaluate_image(np.zeros((4, 5)), np.zeros((4, 5)), MetricContext())
    with pytest.raises(ValueError, match="class indices"):
        evaluate_image(np.full((4, 5), 3), np.zeros((4, 5), int), MetricContext(task="semantic", num_classes=3))
    with pytest.raises(ValueError, match="spacing"):
        evaluate_image(np.zeros((4, 5), int), np.zeros((4, 5), int), MetricContext(spacing=(1.0, 1.0, 1.0)))


def test_boundary_tolerance_fraction_of_diagonal():
    from bench.metrics import tolerance_pixels

    assert tolerance_pixels(0.008, (480, 854)) == np.ceil(0.008 * np.hypot(480, 854))
    assert tolerance_pixels(2.0, (10, 10)) == 2.0


def test_several_boundary_tolerances_give_one_row_each():
    """eval.boundary_tolerance: [2, 0.0075] -> row bf1 at 2 px and row bf1@0.0075 at 0.75% of the diagonal, each
    equal to a single-tolerance evaluation; the summary keeps both apart and emits_key knows the new row."""
    from bench.config import EvalConfig
    from bench.metrics.base import emits_key

    gt = np.zeros((400, 300), int)
    gt[50:250, 60:200] = 1
    pred = np.zeros_like(gt)
    pred[56:256, 63:203] = 1  # boundaries 3-6 px apart: 2 px misses most of them, 0.75% of 500 px (4 px) some
    both = MetricContext(task="semantic", boundary_tolerance=[2, 0.0075])
    rows = {r["metric"]: r["value"] for r in evaluate_image(pred, gt, both, ["bf1"])}
    assert set(rows) == {"bf1", "bf1@0.0075"}
    for name, tol in (("bf1", 2.0), ("bf1@0.0075", 4.0)):
        single = evaluate_image(pred, gt, MetricContext(task="semantic", boundary_tolerance=tol), ["bf1"])
        assert rows[name] == pytest.approx(single[0]["value"])
    assert rows["bf1"] < rows["bf1@0.0075"] < 1
    table = pd.DataFrame([{"image": "a", **r} for r in evaluate_image(pred, gt, both)])
    s = summarize(table)
    assert s["bf1@0.0075"] == pytest.approx(rows["bf1@0.0075"]) and s["bf1"] == pytest.approx(rows["bf1"])
    assert emits_key("bf1@0.0075", "semantic")
    for bad in ([], [2, 2.0], [2, -1]):
        with pytest.raises(ValueError):
            EvalConfig(boundary_tolerance=bad)


def _table(pairs, ctx):
    rows = []
    for i, (pred, gt) in enumerate(pairs):
        rows += [{"image": f"im{i}", **r} for r in evaluate_image(pred, gt, ctx)]
    return pd.DataFrame(rows, columns=["image", "metric", "class", "value", "flag"])


def test_summarize_instance_means_and_pooled_equal_stardist():
    sd = pytest.importorskip("stardist.matching")
    pairs = []
    for i, path in enumerate(bbbc039_mask_paths(2)):
        gt = load_bbbc039_instances(path)
        pairs.append((perturb_instances(gt, seed=20 + i), gt))
    gt = load_stardist_mask2d()
    pairs.append((perturb_instances(gt, seed=3), gt))
    z = np.zeros((8, 8), np.int32)
    pairs.append((z, z))  # an empty image: counts nothing to the pooled values
    table = _table(pairs, MetricContext(task="instance"))
    s = summarize(table)
    ref = sd.matching_dataset([p[1] for p in pairs], [p[0] for p in pairs], thresh=list(THRESHOLDS), show_progress=False)
    for t, r in zip(THRESHOLDS, ref):
        k = f"{t:.2f}"
        assert s[f"ap@{k}_pooled"] == pytest.approx(r.accuracy, rel=1e-9)
        assert s[f"precision@{k}_pooled"] == pytest.approx(r.precision, rel=1e-9)
        assert s[f"recall@{k}_pooled"] == pytest.approx(r.recall, rel=1e-9)
        assert s[f"f1@{k}_pooled"] == pytest.approx(r.f1, rel=1e-9)
    assert s["pq_pooled"] == pytest.approx(ref[0].panoptic_quality, rel=2e-6)  # stardist: float32 IoU
    assert s["sq_pooled"] == pytest.approx(ref[0].mean_matched_score, rel=2e-6)
    assert s["rq_pooled"] == pytest.approx(ref[0].f1, rel=1e-9)
    assert s["map_pooled"] == pytest.approx(np.mean([r.accuracy for r in ref]), rel=1e-9)
    # per-image means: the empty image counts as 1
    per_image = [np.mean([r.accuracy for r in sd.matching(g, p, thresh=list(THRESHOLDS))]) for p, g in pairs[:3]]
    assert s["map"] == pytest.approx((sum(per_image) + 1.0) / 4, rel=1e-9)
    assert s["tp@0.50"] == pytest.approx(table[table.metric == "tp@0.50"].value.mean())


def test_summarize_per_class_keys():
    pred, gt = _img()
    ctx = MetricContext(task="semantic", num_classes=4, class_names=["bg", "a", "b", "c"])
    table = _table([(np.minimum(pred, 3), gt), (gt, gt)], ctx)
    s = summarize(table)
    for m in ("dice", "iou", "hd95", "bf1"):
        per = [s[f"{m}/{c}"] for c in "abc"]
        assert s[m] == pytest.approx(np.mean(per))
    assert s["dice/a"] == pytest.approx(table[(table.metric == "dice") & (table["class"] == "a")].value.mean())
    assert not any(k.endswith("_pooled") for k in s)


def test_plugin_metric_runs():
    from bench.registry import register_metric

    @register_metric("test_fg_fraction", description="fraction of foreground", task=("semantic",))
    def fg(pred, gt, ctx):
        return [MetricValue("test_fg_fraction", float((pred > 0).mean()))]

    try:
        rows = evaluate_image(np.ones((3, 3), int), np.ones((3, 3), int), MetricContext(task="semantic"))
        assert rows[-1] == {"metric": "test_fg_fraction", "class": "", "value": 1.0, "flag": ""}
    finally:
        METRICS.unregister("test_fg_fraction")
