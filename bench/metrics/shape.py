"""Shape-constraint metrics: does a prediction satisfy the constraint an implicit representation (bench.shapes)
guarantees? One value per image: 1/0 per foreground class (semantic task), the share of objects that satisfy it
(instance task). Digital tests on the pixel grid, 2D only:

- ``shape_convex``: digital convexity, every pixel whose centre lies in the convex hull of the mask's pixel centres
  belongs to the mask (what the pixels {x : G(x) < 0} of a convex set satisfy exactly).
- ``shape_connected``: one 8-connected component.
- ``shape_star``: some pixel sees every boundary pixel of the mask: the segment to it, sampled every half pixel,
  stays within one pixel of the mask (digitising a star-shaped set can cut a ray by a pixel). Candidate centres:
  the centroid and the maxima of the distance transform, then up to 256 mask pixels spread over the mask (the
  kernel of a star-shaped set can lie off its centre).

Requested, not run by default (``eval.extra_metrics: [shape]``): the ISR study needs them, other studies do not.
An empty mask counts as satisfying every constraint (flagged ``empty_pred``).
"""

from __future__ import annotations

import numpy as np

from bench.metrics.base import FLAG_EMPTY_PRED, MetricContext, MetricValue
from bench.registry import register_metric

SHAPE_KINDS = ("convex", "connected", "star")


def is_digitally_convex(mask: np.ndarray) -> bool:
    from skimage.morphology import convex_hull_image

    mask = np.asarray(mask, bool)
    if mask.sum() <= 2:
        return True
    hull = convex_hull_image(mask, offset_coordinates=False)
    return not bool((hull & ~mask).any())


def is_connected(mask: np.ndarray) -> bool:
    from scipy import ndimage as ndi

    return ndi.label(np.asarray(mask, bool), structure=np.ones((3, 3)))[1] <= 1


def _sees_every_point(c: np.ndarray, targets: np.ndarray, near: np.ndarray) -> bool:
    """Whether the segments from pixel c to every target pixel, sampled every half pixel, stay in `near`."""
    length = np.sqrt(((targets - c) ** 2).sum(1)).max()
    t = np.linspace(0.0, 1.0, max(2, int(np.ceil(2 * length)) + 1))
    pts = np.rint(c[None, None] + t[None, :, None] * (targets - c)[:, None]).astype(int)  # (targets, samples, 2)
    return bool(near[pts[..., 0], pts[..., 1]].all())


def is_star_shaped(mask: np.ndarray, n_candidates: int = 8, n_search: int = 256) -> bool:
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    mask = np.asarray(mask, bool)
    if mask.sum() <= 2:
        return True
    if not is_connected(mask):
        return False
    near = ndi.binary_dilation(mask, np.ones((3, 3), bool))
    edge = np.argwhere(find_boundaries(mask, mode="inner"))
    dist = ndi.distance_transform_edt(mask)
    order = np.argsort(dist.ravel())[::-1][:n_candidates]
    candidates = [np.array(np.unravel_index(i, mask.shape)) for i in order]
    centroid = np.argwhere(mask).mean(0).round().astype(int)
    if mask[tuple(centroid)]:
        candidates.insert(0, centroid)
    # the kernel of a star-shaped set need not hold the centroid or the deepest pixels (a fitted star's centre
    # sits anywhere in it): then a search over up to n_search mask pixels, deepest first, each first tried
    # against a sample of the boundary so that most non-centres are rejected cheaply
    inside = np.argwhere(mask)
    inside = inside[np.unique(np.linspace(0, len(inside) - 1, min(n_search, len(inside))).astype(int))]
    inside = inside[np.argsort(dist[tuple(inside.T)])[::-1]]
    sample = edge[:: max(1, len(edge) // 64)]
    for c in candidates:
        if _sees_every_point(c, edge, near):
            return True
    for c in inside:
        if _sees_every_point(c, sample, near) and _sees_every_point(c, edge, near):
            return True
    return False


TESTS = {"convex": is_digitally_convex, "connected": is_connected, "star": is_star_shaped}


def _masks(pred: np.ndarray, ctx: MetricContext):
    """(class name, list of masks) per foreground class (semantic) or ('', every object's mask) (instance)."""
    from scipy import ndimage as ndi

    if ctx.task == "semantic":
        return [(name, [np.isin(pred, cls)]) for name, cls in ctx.evaluation_masks()]
    objs = []
    for k, box in enumerate(ndi.find_objects(pred), start=1):
        if box is not None:
            objs.append(np.pad(pred[box] == k, 1))
    return [("", objs)]


def _shape_metric(kind: str):
    def fn(pred: np.ndarray, gt: np.ndarray, ctx: MetricContext) -> list[MetricValue]:
        if np.ndim(pred) != 2:
            return []  # 2D tests only
        out = []
        for cls, masks in _masks(np.asarray(pred), ctx):
            masks = [m for m in masks if m.any()]
            if not masks:
                out.append(MetricValue(f"shape_{kind}", 1.0, cls, FLAG_EMPTY_PRED))
                continue
            out.append(MetricValue(f"shape_{kind}", float(np.mean([TESTS[kind](m) for m in masks])), cls))
        return out

    fn.__name__ = f"shape_{kind}_metric"
    return fn


for _kind in SHAPE_KINDS:
    register_metric(
        f"shape_{_kind}",
        description=f"1 when the prediction is {_kind} (digital test; instance task: share of objects), per "
                    "foreground class; requested by eval.extra_metrics",
        task=("semantic", "instance"),
        outputs=(f"shape_{_kind}",),
        on_request=True,
    )(_shape_metric(_kind))
