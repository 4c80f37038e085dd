"""Shape-constrained implicit representations (bench/shapes.py): property tests that a broken constraint would
fail, for random weights and for weights fitted to a shape that violates the constraint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import shapes

GRID = (128, 128)


def _random(kind, seed):
    torch.manual_seed(seed)
    model = shapes.make(kind)
    with torch.no_grad():
        for p in model.parameters():  # away from the identity initialisations: a generic member of the family
            p.add_(0.3 * torch.randn_like(p))
        if hasattr(model, "project_"):
            model.project_()
        g = model(shapes.pixel_coords(GRID))
        # a constant shift keeps every constraint and gives a foreground of ~30% of the grid
        bias = torch.quantile(g, 0.3)
    return _Shifted(model, bias)


class _Shifted(torch.nn.Module):
    def __init__(self, inner, bias):
        super().__init__()
        self.inner, self.bias = inner, bias

    def forward(self, x):
        return self.inner(x) - self.bias

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


def _c_shape(shape=GRID):
    """A non-convex, non-star-shaped, asymmetric target: a thick C."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(yy - shape[0] / 2, xx - shape[1] / 2)
    ang = np.arctan2(yy - shape[0] / 2, xx - shape[1] / 2)
    return ((r > 25) & (r < 50) & (np.abs(ang) > 0.6)).astype(np.float32)


def _fitted(kind):
    model, mask = shapes.fit_projection(_c_shape(), kind, steps=150)
    assert mask.any() and not mask.all()
    return model


def _models(kind):
    return [_random(kind, s) for s in (0, 1, 2)] + [_fitted(kind)]


def _fg_points(model, n, rng):
    coords = shapes.pixel_coords(GRID)
    with torch.no_grad():
        fg = coords[model(coords) < 0]
    assert len(fg) > 10
    return fg[torch.as_tensor(rng.integers(0, len(fg), n))]


def test_convex_segments_between_foreground_points_stay_inside():
    rng = np.random.default_rng(0)
    for model in _models("convex"):
        a, b = _fg_points(model, 100_000, rng), _fg_points(model, 100_000, rng)
        t = torch.as_tensor(rng.random((100_000, 1)), dtype=torch.float32)
        with torch.no_grad():
            ga, gb, gm = model(a), model(b), model(a + t * (b - a))
        assert (gm <= torch.maximum(ga, gb) + 1e-5).all() and (gm < 1e-5).all()


def test_a_clamped_weight_is_what_makes_it_convex():
    """The check has teeth: with a negative hidden weight the same test finds a segment leaving the set."""
    torch.manual_seed(0)
    model = shapes.ICNN(2, 32, 3)
    found = False
    with torch.no_grad():
        for u in model.hid:
            u.copy_(-5 * torch.rand_like(u))
        x = torch.rand(20000, 2) * 2 - 1

        def g(z):  # the ICNN's own forward without the clamp
            h = torch.nn.functional.softplus(model.inp[0](z))
            for lin, u in zip(model.inp[1:], model.hid):
                h = torch.nn.functional.softplus(h @ u.T + lin(z))
            return -(h @ torch.rand(32)) + model.out_x(z)[..., 0]

        a, b = x[:10000], x[10000:]
        found = bool((g((a + b) / 2) > torch.maximum(g(a), g(b)) + 1e-5).any())
    assert found


def test_star_rays_from_the_centre_leave_the_foreground_once():
    for model in _models("star"):
        theta = torch.linspace(0, 2 * np.pi, 720)
        t = torch.linspace(0, 3, 600)
        d = torch.stack([theta.cos(), theta.sin()], -1)
        pts = model.centre.detach() + t[None, :, None] * d[:, None, :]
        with torch.no_grad():
            inside = (model(pts.reshape(-1, 2)) < 0).reshape(720, 600)
        changes = (inside[:, 1:] != inside[:, :-1]).sum(1)
        assert inside[:, 0].all() and (changes <= 1).all()


@pytest.mark.parametrize("kind", ["mirror", "rotational"])
def test_symmetric_points_agree(kind):
    x = torch.rand(100_000, 2) * 2 - 1
    for model in _models(kind):
        with torch.no_grad():
            if kind == "mirror":
                other = model.reflect(x)
            else:
                other = model.rotate(x, turns=1)
            assert torch.allclose(model(x), model(other), atol=1e-4)
            if kind == "rotational":
                assert torch.allclose(model(x), model(model.rotate(x, turns=3)), atol=1e-4)


def test_path_connected_foreground_is_one_component_and_the_flow_inverts():
    from scipy import ndimage as ndi

    x = torch.rand(10_000, 2) * 2 - 1
    for model in _models("connected"):
        with torch.no_grad():
            assert torch.allclose(model.unwarp(model.warp(x)), x, atol=1e-4)
        mask = shapes.render(model, (256, 256))
        n = ndi.label(mask, structure=np.ones((3, 3)))[1]
        assert mask.any() and n == 1


def test_projection_is_close_to_an_allowed_target_and_fast():
    import time

    yy, xx = np.mgrid[:128, :128]
    ellipse = (((yy - 60) / 30.0) ** 2 + ((xx - 70) / 45.0) ** 2 < 1).astype(np.float32)  # convex and star-shaped
    for kind in ("convex", "star"):
        t0 = time.perf_counter()
        _, mask = shapes.fit_projection(ellipse, kind, steps=300)
        seconds = time.perf_counter() - t0
        iou = (mask & (ellipse > 0)).sum() / (mask | (ellipse > 0)).sum()
        assert iou > 0.8, (kind, iou)  # the class-ratio weighting (as the poster) grows the mask slightly
        assert seconds < 60  # generous on a loaded CI machine (the 2 s goal is a benchmark's figure, not a test's)
    with pytest.raises(ValueError, match="unknown shape constraint 'round'"):
        shapes.make("round")


def test_the_forward_clamp_alone_keeps_stored_negative_weights_convex():
    """Weights an optimiser made negative, never projected: the forward's clamp must still give a convex G."""
    torch.manual_seed(1)
    model = shapes.ICNN(2, 32, 3)
    with torch.no_grad():
        for u in model.hid:
            u.copy_(-torch.rand_like(u))
        model.out_z.copy_(-torch.rand_like(model.out_z))
        a, b = torch.rand(50_000, 2) * 2 - 1, torch.rand(50_000, 2) * 2 - 1
        t = torch.rand(50_000, 1)
        assert (model(a + t * (b - a)) <= torch.maximum(model(a), model(b)) + 1e-5).all()


def _nonconvex_blobs(n=6, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = rng.integers(24, 48, 2)
        yy, xx = np.mgrid[:h, :w]
        m = (((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 < 1).astype(np.float32)
        m[: h // 3, : w // 3] = 1  # a corner block: neither convex nor star-shaped about the centre
        out.append(m)
    return out


def _is_convex_mask(mask):
    """Up to pixelisation: skimage's hull takes pixel corners, so a digital convex set misses ~0.2-0.3 hull pixels
    per boundary pixel; these non-convex blobs miss 0.8-1.2."""
    from skimage.morphology import convex_hull_image
    from skimage.segmentation import find_boundaries

    hull = convex_hull_image(mask)
    return (hull & ~mask).sum() <= 0.4 * find_boundaries(mask, mode="inner").sum()


@pytest.mark.parametrize("kind", ["convex", "star", "connected"])
def test_batched_fits_keep_every_constraint_and_follow_their_own_maps(kind):
    from scipy import ndimage as ndi

    probs = _nonconvex_blobs()
    masks = shapes.fit_projection_batch(probs, kind, steps=60, points=256, lr=0.05, width=16)
    assert [m.shape for m in masks] == [p.shape for p in probs]
    for m, p in zip(masks, probs):
        iou = (m & (p > 0)).sum() / max(1, (m | (p > 0)).sum())
        assert iou > 0.6  # each fit follows its own map, not a neighbour's
        assert ndi.label(m, structure=np.ones((3, 3)))[1] == 1
        if kind == "convex":
            assert _is_convex_mask(m)
    if kind == "convex":  # the inputs were not convex: the projection changed them
        assert not any(_is_convex_mask(p > 0) for p in probs)


def test_a_batched_fit_does_not_depend_on_the_other_maps():
    probs = _nonconvex_blobs(4)
    alone = shapes.fit_projection_batch(probs[:1], "star", steps=40, points=256, lr=0.05, width=16, seed=3)[0]
    together = shapes.fit_projection_batch(probs, "star", steps=40, points=256, lr=0.05, width=16, seed=3)[0]
    # the same init and the same per-map losses; only the random pixel draws differ (shared generator)
    assert (alone ^ together).sum() <= 0.1 * alone.sum()


def test_warm_start_begins_at_the_maps_disc():
    yy, xx = np.mgrid[:64, :64]
    disc = (((yy - 20) ** 2 + (xx - 40) ** 2) < 12 ** 2).astype(np.float32)
    for kind in ("convex", "star", "connected"):
        model = shapes.make(kind)
        shapes.init_from_map(model, disc)
        mask = shapes.render(model, disc.shape)
        iou = (mask & (disc > 0)).sum() / (mask | (disc > 0)).sum()
        assert iou > 0.75, (kind, iou)
