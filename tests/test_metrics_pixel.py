"""Dice/IoU and HD95 against MONAI, boundary F1 against the DAVIS definition, and their edge cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _metrics_helpers import (
    bbbc039_mask_paths,
    class_maps,
    data_file,
    ensure_torch_references,
    load_bbbc039_instances,
    mask_pairs,
    perturb_instances,
)
from bench.metrics import MetricContext, boundary_f1, davis_boundary, evaluate_image, hausdorff_distance

HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPACINGS_3D = st.sampled_from([(1.0, 1.0, 2.5), (2.5, 1.0, 1.0), (0.5, 1.3, 2.0), (1.0, 1.0, 1.0)])
SPACINGS_2D = st.sampled_from([(1.0, 1.0), (1.0, 3.0), (0.7, 0.4)])


@pytest.fixture(scope="module")
def monai():
    ensure_torch_references()
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")

    def onehot(lab, k):
        t = torch.from_numpy(np.asarray(lab, dtype=np.int64))
        return torch.nn.functional.one_hot(t, k).movedim(-1, 0)[None].float()

    class Ref:
        @staticmethod
        def dice_iou(pred, gt, k):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                d = metrics.DiceMetric(include_background=False, reduction="none")(onehot(pred, k), onehot(gt, k))
                j = metrics.MeanIoU(include_background=False, reduction="none")(onehot(pred, k), onehot(gt, k))
            return d[0].numpy().astype(float), j[0].numpy().astype(float)

        @staticmethod
        def hd95(pred_mask, gt_mask, spacing):
            """MONAI's HausdorffDistanceMetric(percentile=95): float32 distances and a float32 torch.quantile."""
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = metrics.HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
                v = m(onehot(pred_mask, 2), onehot(gt_mask, 2), spacing=[float(s) for s in spacing])
            return float(v[0, 0])

        @staticmethod
        def hd95_float64(pred_mask, gt_mask, spacing):
            """The same from MONAI's own edges and surface distances, with the percentile taken in float64 (MONAI's
            float32 quantile position alone is off by up to ~1e-5 relative when n is large)."""
            from monai.metrics.utils import get_edge_surface_distance

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, dists, _ = get_edge_surface_distance(
                    torch.from_numpy(np.asarray(pred_mask, bool)), torch.from_numpy(np.asarray(gt_mask, bool)),
                    spacing=[float(s) for s in spacing], symmetric=True,
                )
            return max(float(np.percentile(d.double().numpy(), 95)) for d in dists)

    def check_hd95(pred_mask, gt_mask, spacing, ours):
        """Equal to MONAI's definition at 1e-6 (distances from MONAI, percentile in float64), and to the
        HausdorffDistanceMetric value within its float32 arithmetic (1e-5)."""
        assert ours == pytest.approx(Ref.hd95_float64(pred_mask, gt_mask, spacing), rel=1e-6, abs=1e-6)
        assert ours == pytest.approx(Ref.hd95(pred_mask, gt_mask, spacing), rel=1e-5, abs=1e-5)

    Ref.check_hd95 = staticmethod(check_hd95)
    return Ref


# ------------------------------------------------------------------------------------------------
# Dice / IoU
# ------------------------------------------------------------------------------------------------


def _ours_per_class(pred, gt, k, metric):
    rows = evaluate_image(pred, gt, MetricContext(task="semantic", num_classes=k), metrics=[metric])
    return {r["class"]: r for r in rows}


@HYP
@given(class_maps(num_classes=4))
def test_dice_iou_equal_monai_2d(monai, maps):
    pred, gt = maps
    d_ref, j_ref = monai.dice_iou(pred, gt, 4)
    dice = _ours_per_class(pred, gt, 4, "dice")
    iou = _ours_per_class(pred, gt, 4, "iou")
    for c in (1, 2, 3):
        if not (gt == c).any():
            continue  # MONAI: NaN (ignore_empty); ours: edge cases below
        assert dice[str(c)]["value"] == pytest.approx(d_ref[c - 1], rel=1e-6, abs=1e-7)
        assert iou[str(c)]["value"] == pytest.approx(j_ref[c - 1], rel=1e-6, abs=1e-7)


@HYP
@given(class_maps(num_classes=3, ndim=3, min_size=3, max_size=10))
def test_dice_iou_equal_monai_3d(monai, maps):
    pred, gt = maps
    d_ref, j_ref = monai.dice_iou(pred, gt, 3)
    dice = _ours_per_class(pred, gt, 3, "dice")
    iou = _ours_per_class(pred, gt, 3, "iou")
    for c in (1, 2):
        if (gt == c).any():
            assert dice[str(c)]["value"] == pytest.approx(d_ref[c - 1], rel=1e-6, abs=1e-7)
            assert iou[str(c)]["value"] == pytest.approx(j_ref[c - 1], rel=1e-6, abs=1e-7)


def test_dice_real_bbbc039_instance_foreground(monai):
    gt = load_bbbc039_instances(bbbc039_mask_paths(1)[0])
    pred = perturb_instances(gt, seed=1)
    rows = {r["metric"]: r["value"] for r in evaluate_image(pred, gt, MetricContext(task="instance"), ["dice", "iou"])}
    d_ref, j_ref = monai.dice_iou(pred > 0, gt > 0, 2)
    assert rows["dice"] == pytest.approx(d_ref[0], rel=1e-6)
    assert rows["iou"] == pytest.approx(j_ref[0], rel=1e-6)


@pytest.mark.parametrize("shape", [(8, 9), (4, 5, 6)])
def test_dice_iou_edge_cases(shape):
    z = np.zeros(shape, np.int64)
    one = z.copy()
    one[(slice(1, 3),) * len(shape)] = 1
    ctx = MetricContext(task="semantic", num_classes=2)
    for pred, gt, value, flag in [(z, z, 1.0, "both_empty"), (one, z, 0.0, "empty_gt"), (z, one, 0.0, "empty_pred")]:
        rows = evaluate_image(pred, gt, ctx, ["dice", "iou"])
        assert [(r["metric"], r["value"], r["flag"]) for r in rows] == [("dice", value, flag), ("iou", value, flag)]


# ------------------------------------------------------------------------------------------------
# HD95
# ------------------------------------------------------------------------------------------------


@HYP
@given(mask_pairs(ndim=2, max_size=40), SPACINGS_2D)
def test_hd95_equals_monai_2d(monai, masks, spacing):
    pred, gt = masks
    ours, flag = hausdorff_distance(pred, gt, spacing)
    assert flag == ""
    monai.check_hd95(pred, gt, spacing, ours)


@HYP
@given(mask_pairs(ndim=3, min_size=3, max_size=14, max_boxes=3), SPACINGS_3D)
def test_hd95_equals_monai_3d_anisotropic(monai, masks, spacing):
    pred, gt = masks
    ours, _ = hausdorff_distance(pred, gt, spacing)
    monai.check_hd95(pred, gt, spacing, ours)


def test_hd95_equals_monai_3d_far_apart(monai):
    """Surfaces far apart: the KD-tree fallback of the shell search."""
    gt = np.zeros((20, 30, 40), bool)
    gt[2:6, 3:9, 2:10] = True
    pred = np.zeros_like(gt)
    pred[12:19, 20:28, 25:39] = True
    pred[3:5, 4:6, 3:5] = True
    for spacing in [(1.0, 1.0, 1.0), (2.5, 1.0, 1.0)]:
        monai.check_hd95(pred, gt, spacing, hausdorff_distance(pred, gt, spacing)[0])


def test_hd95_equals_monai_real(monai):
    gt = load_bbbc039_instances(bbbc039_mask_paths(1)[0]) > 0
    pred = perturb_instances(gt.astype(np.int32) * np.arange(gt.size).reshape(gt.shape), seed=2) > 0
    ours = evaluate_image(pred.astype(np.int64), gt.astype(np.int64), MetricContext(task="semantic", spacing=(0.5, 0.5)), ["hd95"])
    monai.check_hd95(pred, gt, (0.5, 0.5), ours[0]["value"])
    import tifffile

    lab = np.asarray(tifffile.imread(data_file("stardist", "mask3d.tif")))
    gt3 = lab > 0
    pred3 = np.roll(perturb_instances(lab.astype(np.int32), seed=3) > 0, 1, axis=0)
    sp = (2.0, 1.0, 1.0)
    monai.check_hd95(pred3, gt3, sp, hausdorff_distance(pred3, gt3, sp)[0])


def test_hd95_edge_cases():
    z = np.zeros((10, 20, 30), bool)
    one = z.copy()
    one[2:4, 2:4, 2:4] = True
    sp = (2.0, 1.0, 0.5)
    diag = float(np.sqrt(20.0**2 + 20.0**2 + 15.0**2))
    assert hausdorff_distance(z, z, sp) == (0.0, "both_empty")
    assert hausdorff_distance(one, z, sp) == (pytest.approx(diag), "empty_gt")
    assert hausdorff_distance(z, one, sp) == (pytest.approx(diag), "empty_pred")
    assert hausdorff_distance(one, one, sp) == (0.0, "")
    rows = evaluate_image(one.astype(np.int64), z.astype(np.int64), MetricContext(task="semantic", spacing=sp), ["hd95"])
    assert rows[0]["flag"] == "empty_gt" and np.isfinite(rows[0]["value"])


def test_hd95_mask_touching_border(monai):
    """MONAI erodes with zeros outside the image: a full mask has its border as boundary."""
    gt = np.ones((12, 15), bool)
    pred = np.zeros_like(gt)
    pred[3:9, 4:10] = True
    for a, b in ((pred, gt), (gt, pred)):
        monai.check_hd95(a, b, (1.0, 2.0), hausdorff_distance(a, b, (1.0, 2.0))[0])


# ------------------------------------------------------------------------------------------------
# boundary F1
# ------------------------------------------------------------------------------------------------


def davis_seg2bmap(seg):
    """DAVIS's _seg2bmap (davis2017-evaluation), same width/height."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def davis_f_measure(fg, gt, bound_th):
    """DAVIS's f_measure with skimage's binary dilation by a disk."""
    from scipy.ndimage import binary_dilation
    from skimage.morphology import disk

    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(fg.shape))
    fg_b, gt_b = davis_seg2bmap(fg), davis_seg2bmap(gt)
    fg_dil = binary_dilation(fg_b, disk(int(bound_pix)))
    gt_dil = binary_dilation(gt_b, disk(int(bound_pix)))
    n_fg, n_gt = fg_b.sum(), gt_b.sum()
    if n_fg == 0 and n_gt > 0:
        p, r = 1, 0
    elif n_fg > 0 and n_gt == 0:
        p, r = 0, 1
    elif n_fg == 0 and n_gt == 0:
        p, r = 1, 1
    else:
        p, r = (fg_b & gt_dil).sum() / n_fg, (gt_b & fg_dil).sum() / n_gt
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


@HYP
@given(mask_pairs(ndim=2, max_size=36, nonempty=False), st.sampled_from([1, 2, 3, 0.05, 0.1]))
def test_bf1_equals_davis(masks, tol):
    pred, gt = masks
    f, _, _, _ = boundary_f1(pred, gt, tol)
    assert f == pytest.approx(davis_f_measure(pred, gt, tol), abs=1e-12)
    assert np.array_equal(davis_boundary(pred), davis_seg2bmap(pred))


def test_bf1_equals_davis_real():
    gt = load_bbbc039_instances(bbbc039_mask_paths(1)[0]) > 0
    pred = np.roll(gt, (2, -1), axis=(0, 1))
    for tol in (2, 0.008, 25):  # 25 px takes the distance-transform path
        assert boundary_f1(pred, gt, tol)[0] == pytest.approx(davis_f_measure(pred, gt, tol), abs=1e-12)


def test_bf1_edge_cases_and_classes():
    z = np.zeros((16, 16), np.int64)
    cls = z.copy()
    cls[2:6, 2:6] = 1
    cls[8:12, 8:14] = 2
    assert boundary_f1(z > 0, z > 0)[::3] == (1.0, "both_empty")
    assert boundary_f1(cls > 0, z > 0)[::3] == (0.0, "empty_gt")
    assert boundary_f1(z > 0, cls > 0)[::3] == (0.0, "empty_pred")
    ctx = MetricContext(task="semantic", num_classes=3, class_names=["bg", "a", "b"], boundary_tolerance=1)
    rows = evaluate_image(np.where(cls == 2, 0, cls), cls, ctx, ["bf1"])
    assert [(r["class"], r["value"], r["flag"]) for r in rows] == [("a", 1.0, ""), ("b", 0.0, "empty_pred")]
    # 3D: boundaries of a shifted cube match within the tolerance
    a = np.zeros((8, 8, 8), bool)
    a[2:5, 2:5, 2:5] = True
    assert boundary_f1(a, np.roll(a, 1, axis=2), 1)[0] == 1.0
    assert boundary_f1(a, np.roll(a, 3, axis=2), 1)[0] < 1.0


@settings(max_examples=20, deadline=None)
@given(class_maps(num_classes=12, max_size=16))
def test_dice_many_classes_matches_direct_count(maps):
    """More than 8 classes take the confusion-matrix path."""
    pred, gt = maps
    rows = _ours_per_class(pred, gt, 12, "dice")
    for c in range(1, 12):
        a, b = gt == c, pred == c
        want = 1.0 if not a.any() and not b.any() else 2 * (a & b).sum() / (a.sum() + b.sum())
        assert rows[str(c)]["value"] == pytest.approx(want, abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(mask_pairs(ndim=3, min_size=4, max_size=14, max_boxes=3), st.sampled_from([1, 2, 7, 9]))
def test_bf1_3d_equals_brute_force(masks, tol):
    """3D boundary F1 (shell search for small tolerances, distance transform for large ones) vs all-pairs distances."""
    from scipy.spatial.distance import cdist

    pred, gt = masks
    bp, bg = np.argwhere(davis_boundary(pred)), np.argwhere(davis_boundary(gt))
    f, p, r, _ = boundary_f1(pred, gt, tol)
    if len(bp) == 0 or len(bg) == 0:
        return
    d = cdist(bp, bg)
    assert p == pytest.approx((d.min(axis=1) <= tol).mean(), abs=1e-12)
    assert r == pytest.approx((d.min(axis=0) <= tol).mean(), abs=1e-12)


def test_regions_score_unions_of_classes_by_hand():
    """BraTS-style regions: WT = classes 1-3, TC = 2-3, ET = 3. A voxel predicted 2 where the reference says 1 is
    wrong for its class but right for WT, so region Dice differs from class Dice."""
    gt = np.zeros((8, 8), np.int64)
    gt[1:7, 1:7] = 1  # 36 voxels of WT
    gt[2:6, 2:6] = 2  # 16 of TC
    gt[3:5, 3:5] = 3  # 4 of ET
    pred = gt.copy()
    pred[1, 1:7] = 2  # 6 edema voxels called core: WT unchanged, TC gains 6 false positives
    pred[3:5, 3:5] = 2  # ET missed (called core): TC unchanged, ET empty
    ctx = MetricContext(task="semantic", num_classes=4, class_names=["bg", "ed", "core", "et"],
                        regions={"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]})
    got = {(r["metric"], r["class"]): r["value"] for r in evaluate_image(pred, gt, ctx, ["dice", "iou", "hd95"])}
    assert got[("dice", "WT")] == 1.0 and got[("iou", "WT")] == 1.0 and got[("hd95", "WT")] == 0.0
    assert got[("dice", "TC")] == pytest.approx(2 * 16 / (16 + 22))
    assert got[("iou", "TC")] == pytest.approx(16 / 22)
    assert got[("dice", "ET")] == 0.0  # the reference has ET, the prediction none
    assert {c for (_, c) in got} == {"WT", "TC", "ET"}  # regions replace the single classes
    with pytest.raises(ValueError, match="region 'XX'"):
        MetricContext(task="semantic", num_classes=4, regions={"XX": [4]})


def test_a_bad_region_in_the_config_fails_at_config_time():
    from bench.config import resolve_config

    cfg = resolve_config("unet3d", "brats2015")
    assert cfg.eval.regions == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    with pytest.raises(Exception, match=r"eval.regions: region 'ET'"):
        resolve_config("unet3d", "brats2015", overrides=["eval.regions={ET: [7]}"])
