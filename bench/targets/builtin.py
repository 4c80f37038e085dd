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


@register_target("distance", description="per-cell Euclidean distance to the background, scaled to [0, 1] per cell",
                 version="1", uses_spacing=True)
def distance(label: np.ndarray, spacing=None) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    lab = np.asarray(label)
    # touching cells: the boundary between them counts as background, so each cell has its own peak
    inside = (lab > 0) & ~find_boundaries(lab, mode="inner")
    dist = ndi.distance_transform_edt(inside, sampling=spacing).astype(np.float32)
    out = np.zeros(lab.shape, np.float32)
    if lab.max(initial=0) == 0:
        return out
    peak = ndi.maximum(dist, lab, index=np.arange(lab.max() + 1))
    peak = np.asarray(peak, np.float32)
    peak[peak == 0] = 1.0
    fg = lab > 0
    out[fg] = dist[fg] / peak[lab[fg]]
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
