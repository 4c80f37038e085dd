"""Built-in targets: the scalar fields of the field-regression paper and the mask-style representations."""

from __future__ import annotations

import numpy as np

from . import register_target


@register_target("poisson", description="per-cell Poisson field (Δu = -1, u = 0 outside), scaled to [0, 1]",
                 version="fields-1", uses_spacing=True)
def poisson(label: np.ndarray, spacing=None) -> np.ndarray:
    from ..fields import poisson_field

    return poisson_field(label, spacing=spacing).astype(np.float32)


@register_target("diffusion", description="per-cell steady-state diffusion from the centroid, scaled to [0, 1]",
                 version="fields-1", uses_spacing=True)
def diffusion(label: np.ndarray, spacing=None, tol: float = 0.01) -> np.ndarray:
    from ..fields import diffusion_field

    return diffusion_field(label, spacing=spacing, tol=tol).astype(np.float32)


@register_target("distance", description="per-cell Euclidean distance to the nearest pixel outside the cell "
                 "(background or another cell), scaled to [0, 1] per cell", version="2", uses_spacing=True)
def distance(label: np.ndarray, spacing=None) -> np.ndarray:
    from scipy import ndimage as ndi

    lab = np.asarray(label)
    out = np.zeros(lab.shape, np.float32)
    # per cell in its padded bounding box, so a cell's rim is 1 pixel from its neighbour, never 0 (a rim at 0 would
    # be background to the threshold and is lost by every prediction, as a 0.68 AP@0.5 round trip on BBBC039 showed)
    for k, box in enumerate(ndi.find_objects(lab), start=1):
        if box is None:
            continue
        box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
        cell = lab[box] == k
        padded = np.pad(cell, 1)
        d = ndi.distance_transform_edt(padded, sampling=spacing)[(slice(1, -1),) * lab.ndim]
        peak = d[cell].max()
        out[box][cell] = d[cell] / peak
    return out


@register_target("three_class", description="0 background, 1 interior, 2 inner boundary of each instance",
                 version="1")
def three_class(label: np.ndarray, width: int = 2) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    out = (label > 0).astype(np.int64)
    boundary = find_boundaries(label, mode="inner")
    if width > 1:
        boundary = ndi.binary_dilation(boundary, iterations=width - 1) & (label > 0)
    out[boundary] = 2
    return out


@register_target("binary", description="foreground (any instance or non-background class) as 1", version="1",
                 cacheable=False)
def binary(label: np.ndarray) -> np.ndarray:
    return (np.asarray(label) > 0).astype(np.int64)


@register_target("classes", description="the label itself as class indices (semantic tasks)", version="1",
                 cacheable=False)
def classes(label: np.ndarray) -> np.ndarray:
    return np.asarray(label).astype(np.int64)


@register_target("cellpose_flows", description="Cellpose's flows: unit vectors of the heat diffusion from each "
                 "cell's centre (y, x), and the cell probability (cellpose.dynamics.masks_to_flows_gpu)",
                 version="cellpose-4")
def cellpose_flows(label: np.ndarray) -> np.ndarray:
    """(3, H, W) float32: flow y, flow x (unit length inside cells, 0 outside), foreground (0/1)."""
    lab = np.asarray(label)
    if lab.ndim != 2:
        raise ValueError(f"cellpose_flows is defined here for 2D labels, got shape {lab.shape}")
    import torch

    from .._compat import ensure_torchvision

    ensure_torchvision()  # cellpose imports torchvision
    from cellpose.dynamics import masks_to_flows_gpu
    from skimage.segmentation import relabel_sequential

    seq = relabel_sequential(lab.astype(np.int64))[0]  # cellpose's flows assume ids 1..K
    flows = masks_to_flows_gpu(seq, device=torch.device("cpu"))[0]
    return np.concatenate([flows, (seq > 0)[None]], 0).astype(np.float32)


@register_target("stardist", description="StarDist's object probability (normalised inner distance) and the "
                 "distances to the boundary along n_rays rays (stardist.star_dist, edt_prob)", version="stardist-1")
def stardist(label: np.ndarray, n_rays: int = 32) -> np.ndarray:
    """(1 + n_rays, H, W) float32: the probability, then the ray distances in pixels."""
    lab = np.asarray(label)
    if lab.ndim != 2:
        raise ValueError(f"the stardist target is defined here for 2D labels, got shape {lab.shape}")
    from stardist import edt_prob, star_dist

    seq = lab.astype(np.int32)
    dist = star_dist(seq, n_rays, mode="cpp")  # (H, W, n_rays)
    return np.concatenate([edt_prob(seq)[None], np.moveaxis(dist, -1, 0)], 0).astype(np.float32)
