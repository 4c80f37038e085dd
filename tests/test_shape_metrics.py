"""Shape-constraint metrics (bench/metrics/shape.py) and the ISR joint mode (bench/methods/isr_joint.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.metrics import MetricContext, evaluate_image
from bench.metrics.shape import is_connected, is_digitally_convex, is_star_shaped

yy, xx = np.mgrid[:100, :120]
DISC = (yy - 50) ** 2 + (xx - 60) ** 2 < 30**2
RING = DISC & ~((yy - 50) ** 2 + (xx - 60) ** 2 < 15**2)
C_SHAPE = RING.copy()
C_SHAPE[40:60, 60:] = False
PLUS = np.zeros((100, 100), bool)
PLUS[45:55, 10:90] = True
PLUS[10:90, 45:55] = True
TWO = np.zeros((60, 60), bool)
TWO[5:20, 5:20] = TWO[30:50, 30:50] = True

# a T with its stem off-centre: star-shaped about the stem's column inside the bar only; its centroid lies
# beside the stem and its distance-transform maxima run along the bar's midline, so the test must search beyond
# those candidates
TEE = np.zeros((100, 100), bool)
TEE[10:30, 10:90] = True
TEE[30:95, 14:20] = True

CASES = {  # mask: (convex, star-shaped, connected)
    "tee_off_centre_kernel": (TEE, (False, True, True)),
    "disc": (DISC, (True, True, True)),
    "plus": (PLUS, (False, True, True)),
    "ring": (RING, (False, False, True)),
    "c_shape": (C_SHAPE, (False, False, True)),
    "two_squares": (TWO, (False, False, False)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_digital_tests_tell_the_shapes_apart(name):
    mask, (convex, star, connected) = CASES[name]
    assert (is_digitally_convex(mask), is_star_shaped(mask), is_connected(mask)) == (convex, star, connected)


def test_one_pixel_dent_breaks_convexity():
    dented = DISC.copy()
    dented[21, 60] = False  # the middle of the top row (15 pixels wide): its neighbours stay
    assert is_digitally_convex(DISC) and not is_digitally_convex(dented)


def test_fitted_representations_satisfy_their_own_test():
    """The pixels {G < 0} of each fitted representation pass the digital test of its constraint."""
    from bench.shapes import fit_projection_batch

    for kind, test in (("convex", is_digitally_convex), ("star", is_star_shaped), ("connected", is_connected)):
        for mask in fit_projection_batch([C_SHAPE.astype(np.float32), PLUS.astype(np.float32)], kind, steps=30,
                                         points=512, width=16):
            assert mask.any() and test(mask), kind


def test_metrics_are_on_request_per_class_and_per_object():
    ctx = MetricContext(task="semantic")
    assert not any(r["metric"].startswith("shape_") for r in evaluate_image(PLUS.astype(int), PLUS.astype(int), ctx))
    rows = {r["metric"]: r["value"] for r in evaluate_image(PLUS.astype(int), DISC[:100, :100].astype(int), ctx,
                                                              ["shape_convex", "shape_star", "shape_connected"])}
    assert rows == {"shape_convex": 0.0, "shape_star": 1.0, "shape_connected": 1.0}
    # instance task: the share of objects; 3 objects of which 1 is a ring
    lab = np.zeros((100, 300), np.int32)
    lab[:, :120][DISC] = 1
    lab[:, 150:250][PLUS] = 2
    lab[:60, 250:][:, :50][TWO[:, :50]] = 3  # two squares with one id: not connected
    rows = {r["metric"]: r["value"] for r in evaluate_image(lab, lab, MetricContext(task="instance"),
                                                              ["shape_convex", "shape_connected"])}
    assert rows["shape_convex"] == pytest.approx(1 / 3) and rows["shape_connected"] == pytest.approx(2 / 3)
    empty = evaluate_image(np.zeros((8, 8), int), np.zeros((8, 8), int), ctx, ["shape_convex"])
    assert empty[0]["value"] == 1.0 and empty[0]["flag"] == "empty_pred"


def test_extra_metrics_join_the_default_set_and_a_typo_fails_at_config_time():
    from bench.config import ConfigError, resolve_config
    from bench.runner import eval_metrics

    cfg = resolve_config("unet", "bbbc039_fg", overrides=["eval.extra_metrics=[shape_convex]"])
    assert eval_metrics(cfg) == ["dice", "iou", "hd95", "bf1", "shape_convex"]
    assert eval_metrics(resolve_config("unet", "bbbc039_fg")) is None
    with pytest.raises((ConfigError, ValueError), match="eval.extra_metrics.*shape_konvex"):
        resolve_config("unet", "bbbc039_fg", overrides=["eval.extra_metrics=[shape_konvex]"])


# ------------------------------------------------------------------------------------------------
# isr_joint


def _joint(tmp_path, **params):
    from bench.config import resolve_config
    from bench.runner import build_method

    sets = [f"output_root={tmp_path}", "tracking.enabled=false", "method.params.network.name=monai_unet",
            "method.params.network.options={_delete_: true, channels: [4, 8], num_res_units: 0}"]
    sets += [f"method.params.{k}={v}" for k, v in params.items()]
    cfg = resolve_config("isr_joint", "davis2016", overrides=sets)
    return build_method(cfg, torch.device("cpu"))


def test_joint_prior_reaches_the_gradient_and_pulls_towards_the_constrained_fit(tmp_path):
    torch.manual_seed(0)
    m = _joint(tmp_path, inner_steps=20, points=256)
    net = m.networks["net"]
    x = torch.randn(2, 3, 32, 32)
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[:, 8:24, 8:24] = 1
    batch = {"image": x, "target": target}

    def grads(alpha):
        m.params.alpha = alpha
        net.zero_grad()
        terms = m.loss(net(x), batch)
        terms["loss"].backward()
        return terms, torch.cat([p.grad.ravel() for p in net.parameters()])

    t0, g0 = grads(0.0)
    t1, g1 = grads(1.0)
    assert "prior" not in t0 and float(t1["prior"].detach()) > 0
    assert not torch.allclose(g0, g1)  # the prior term changes the network's gradient
    # the prior's target is the constrained refit of the prediction: a convex set where it is confident
    fit = m.constrained_fit(torch.sigmoid(torch.from_numpy(np.stack([C_SHAPE[:64, :64]] * 2).astype(np.float32)) * 8 - 4))
    assert fit.shape == (2, 64, 64) and is_digitally_convex(fit[0] > 0.5)


def test_joint_refuses_instance_data(tmp_path):
    from bench.config import resolve_config
    from bench.runner import build_method

    cfg = resolve_config("isr_joint", "bbbc039", overrides=[f"output_root={tmp_path}", "tracking.enabled=false"])
    with pytest.raises(ValueError, match="one foreground class"):
        build_method(cfg, torch.device("cpu"))


def test_a_large_mask_is_fitted_small_and_rendered_at_full_size():
    from bench.methods.isr import ISRParams, ISRProjection

    yy, xx = np.mgrid[:120, :300]
    mask = (yy - 60) ** 2 / 40**2 + (xx - 150) ** 2 / 100**2 < 1
    mask[58:62, 150:] = False  # a slit: not convex
    isr = ISRProjection.__new__(ISRProjection)  # the projection step alone, without a predictor run
    isr.params = ISRParams(fit_size=64, steps=300, points=512, width=16)
    out = isr._project(mask)
    assert out.shape == mask.shape and is_digitally_convex(out)
    assert not is_digitally_convex(mask) and (out & mask).sum() / (out | mask).sum() > 0.7  # full-size fits: 0.77
