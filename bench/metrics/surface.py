"""Boundary-based metrics on binary masks: HD95 (MONAI's definition) and boundary F1 (DAVIS's definition).

Both work on the bounding box of the two masks only (plus a margin), never on the full image: the boundaries
lie inside it, so distances between them are the same as on the full image.

Distances from each boundary voxel of A to the nearest boundary voxel of B are found by a shell search: integer
offsets sorted by physical length are tried in order on a dense lookup of B, so the first hit is the nearest
voxel (exact). A percentile only reads the smallest distances, so the search stops once enough voxels are
resolved; voxels still needed after a few hundred offsets go to a KD-tree (scipy.spatial.cKDTree).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

FLAG_BOTH_EMPTY = "both_empty"
FLAG_EMPTY_PRED = "empty_pred"
FLAG_EMPTY_GT = "empty_gt"

_MAX_SHELL_OFFSETS = 400  # the shell search tries at most about this many offsets


def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the True voxels, or None if there are none. Reduces the first axis first."""
    nd = mask.ndim
    idx = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if len(idx) == 0:
        return None
    box = [slice(int(idx[0]), int(idx[-1]) + 1)]
    sub = mask[box[0]]
    for ax in range(1, nd):
        idx = np.flatnonzero(sub.any(axis=tuple(i for i in range(nd) if i != ax)))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def _crop_pad(mask: np.ndarray, box: tuple[slice, ...], pad) -> np.ndarray:
    """mask[box] with `pad` zero voxels added on every side (an int, or one int per axis)."""
    pads = (int(pad),) * mask.ndim if np.isscalar(pad) else tuple(int(p) for p in pad)
    out = np.zeros(tuple(s.stop - s.start + 2 * p for s, p in zip(box, pads)), dtype=bool)
    out[tuple(slice(p, p + s.stop - s.start) for s, p in zip(box, pads))] = mask[box]
    return out


def cross_boundary(padded: np.ndarray) -> np.ndarray:
    """MONAI's edge: mask XOR binary_erosion(mask) with the cross structuring element and zeros outside.

    padded must carry at least one zero voxel on every side; the result has the same shape.
    """
    nd = padded.ndim
    core = (slice(1, -1),) * nd
    c = padded[core]
    inner = c.copy()
    for ax in range(nd):
        for d in (0, 2):
            sl = list(core)
            sl[ax] = slice(d, padded.shape[ax] - 2 + d)
            inner &= padded[tuple(sl)]
    out = np.zeros_like(padded)
    out[core] = c & ~inner
    return out


def davis_boundary(mask: np.ndarray) -> np.ndarray:
    """DAVIS's seg2bmap boundary: a pixel differs from its right, lower or lower-right neighbour (in-image ones).

    Generalised to n-D: a voxel differs from one of its forward neighbours (offsets in {0,1}^n minus 0) that lies
    inside the image. Pixels on both sides of an edge can be marked, as in DAVIS.
    """
    m = np.asarray(mask, dtype=bool)
    b = np.zeros_like(m)
    nd = m.ndim
    for code in range(1, 2**nd):
        off = [(code >> (nd - 1 - i)) & 1 for i in range(nd)]
        if any(o >= n for o, n in zip(off, m.shape)):
            continue
        src = tuple(slice(0, n - o) for o, n in zip(off, m.shape))
        dst = tuple(slice(o, n) for o, n in zip(off, m.shape))
        b[src] |= m[src] != m[dst]
    return b


@lru_cache(maxsize=64)
def _offsets(spacing: tuple[float, ...], radius: float, max_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets with physical length <= radius, sorted by length, at most max_count of them (cut at a whole
    length so that a length is never split)."""
    rng = [np.arange(-math.floor(radius / s + 1e-9), math.floor(radius / s + 1e-9) + 1) for s in spacing]
    grid = np.stack([g.ravel() for g in np.meshgrid(*rng, indexing="ij")], axis=1)
    d = np.sqrt(((grid * np.asarray(spacing)) ** 2).sum(axis=1))
    keep = d <= radius + 1e-12 * max(radius, 1.0)
    grid, d = grid[keep], d[keep]
    order = np.lexsort((np.arange(len(d)), d))
    grid, d = grid[order], d[order]
    if len(d) > max_count:
        cut = int(np.searchsorted(d, d[max_count], side="left"))
        grid, d = grid[:cut], d[:cut]
    return grid, d


def _shell_radius(spacing: tuple[float, ...], count: int) -> float:
    """Radius whose ball holds about `count` voxels."""
    nd = len(spacing)
    vol = float(np.prod(spacing))
    unit = math.pi if nd == 2 else 4.0 / 3.0 * math.pi
    return (count * vol / unit) ** (1.0 / nd)


def _strides(shape: tuple[int, ...]) -> np.ndarray:
    return np.array([int(np.prod(shape[i + 1 :])) for i in range(len(shape))], dtype=np.int64)


def _shell_search(
    src_idx: np.ndarray, target_flat: np.ndarray, strides: np.ndarray, offs: np.ndarray, dists: np.ndarray,
    need: int | None = None, give_up: bool = True,
) -> tuple[np.ndarray, np.ndarray, float]:
    """For each linear index in src_idx, the length of the first offset that lands on a True of target_flat.

    Returns (distance per source, inf where unresolved; indices of the unresolved sources; a lower bound of
    their distances). Stops once `need` sources are resolved. target_flat must be padded so that every offset
    stays inside the array.
    """
    out = np.full(len(src_idx), np.inf)
    ids = np.arange(len(src_idx))
    idx = src_idx
    lin = offs @ strides
    n0 = len(idx)
    need = n0 if need is None else need
    i, block = 0, 4
    while i < len(lin) and len(idx) and n0 - len(idx) < need:
        ob = lin[i : i + block]
        hits = target_flat[idx[:, None] + ob[None, :]]
        first = hits.argmax(axis=1)  # the first hit, or 0 when there is none
        found = hits[np.arange(len(idx)), first]
        if found.any():
            out[ids[found]] = dists[i : i + block][first[found]]
            keep = ~found
            idx = idx[keep]
            ids = ids[keep]
        i += len(ob)
        block = min(block * 2, 64)
        # far-apart surfaces: stop early, the KD-tree is cheaper for them
        if give_up and i >= 64 and len(idx) > 0.9 * n0:
            break
    # every offset shorter than dists[i] was tried: the unresolved sources are at least that far
    bound = float(dists[i]) if i < len(dists) else (float(dists[-1]) if len(dists) else 0.0)
    return out, ids, bound


def _directed_distances(
    src_idx: np.ndarray, tgt_idx: np.ndarray, tgt_flat: np.ndarray, shape: tuple[int, ...],
    spacing: tuple[float, ...], offs: np.ndarray, dists: np.ndarray, need: int | None = None,
) -> np.ndarray:
    """Distance from each source voxel (linear index into `shape`) to the nearest target voxel.

    With `need`, only the `need` smallest distances are guaranteed exact: the others may be set to a value larger
    than all of those (enough for a percentile that only reads the `need` smallest)."""
    out, left, bound = _shell_search(src_idx, tgt_flat, _strides(shape), offs, dists, need)
    if len(left) == 0:
        return out
    if need is not None and len(src_idx) - len(left) >= need:
        resolved_max = float(np.max(out[np.isfinite(out)], initial=0.0))
        out[left] = np.nextafter(max(bound, resolved_max), np.inf)
        return out
    from scipy.spatial import cKDTree

    sp = np.asarray(spacing, dtype=np.float64)
    tpts = np.stack(np.unravel_index(tgt_idx, shape), axis=1) * sp
    spts = np.stack(np.unravel_index(src_idx[left], shape), axis=1) * sp
    out[left] = cKDTree(tpts, balanced_tree=False, compact_nodes=False).query(spts, k=1)[0]
    return out


def _prepare(pm: np.ndarray, gm: np.ndarray, spacing: tuple[float, ...]):
    """Boundaries of both masks on their common bounding box, padded for the shell search; None if one is empty."""
    bp, bg = _bbox(pm), _bbox(gm)
    if bp is None or bg is None:
        return None
    box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(bp, bg))
    offs, dists = _offsets(spacing, _shell_radius(spacing, _MAX_SHELL_OFFSETS), _MAX_SHELL_OFFSETS)
    pads = tuple(1 + int(np.abs(offs[:, i]).max()) for i in range(pm.ndim))
    ep = cross_boundary(_crop_pad(pm, box, pads))
    eg = cross_boundary(_crop_pad(gm, box, pads))
    return ep, eg, offs, dists


def image_diagonal(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """Length of the image diagonal in physical units: sqrt(sum((n_i * spacing_i)^2))."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Directed distances (pred boundary -> gt boundary, gt boundary -> pred boundary), MONAI's edges and Euclidean
    distances with voxel spacing. None when either mask is empty."""
    pm = np.asarray(pred, dtype=bool)
    gm = np.asarray(gt, dtype=bool)
    if pm.shape != gm.shape:
        raise ValueError(f"pred and gt must have the same shape, got pred {pm.shape} and gt {gm.shape}")
    spacing = tuple(float(s) for s in (spacing or (1.0,) * pm.ndim))
    prep = _prepare(pm, gm, spacing)
    if prep is None:
        return None
    ep, eg, offs, dists = prep
    ip, ig = np.flatnonzero(ep), np.flatnonzero(eg)
    return (
        _directed_distances(ip, ig, eg.reshape(-1), ep.shape, spacing, offs, dists),
        _directed_distances(ig, ip, ep.reshape(-1), ep.shape, spacing, offs, dists),
    )


def _percentile_need(n: int, q: float) -> int:
    """How many of the smallest values np.percentile(x, q) (linear interpolation) reads."""
    return min(n, int(math.floor(q / 100.0 * (n - 1))) + 2)


def hausdorff_distance(
    pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...] | None = None, percentile: float | None = 95.0
) -> tuple[float, str]:
    """Symmetric percentile Hausdorff distance of two binary masks, and a flag.

    Equals MONAI's ``HausdorffDistanceMetric(percentile=...)``/``compute_hausdorff_distance`` on non-empty masks:
    boundary = mask XOR its binary erosion, the larger of the two directed percentiles (linear interpolation;
    percentile None = maximum). Both masks empty: (0.0, "both_empty"). Exactly one empty: the image diagonal in
    physical units, flagged "empty_pred" or "empty_gt" (MONAI returns inf or NaN there).
    """
    pm = np.asarray(pred, dtype=bool)
    gm = np.asarray(gt, dtype=bool)
    if pm.shape != gm.shape:
        raise ValueError(f"pred and gt must have the same shape, got pred {pm.shape} and gt {gm.shape}")
    if percentile is not None and not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    spacing = tuple(float(s) for s in (spacing or (1.0,) * pm.ndim))
    prep = _prepare(pm, gm, spacing)
    if prep is None:
        empty_p, empty_g = not pm.any(), not gm.any()
        if empty_p and empty_g:
            return 0.0, FLAG_BOTH_EMPTY
        return image_diagonal(pm.shape, spacing), FLAG_EMPTY_PRED if empty_p else FLAG_EMPTY_GT
    ep, eg, offs, dists = prep
    ip, ig = np.flatnonzero(ep), np.flatnonzero(eg)
    vals = []
    for src, tgt, tflat in ((ip, ig, eg.reshape(-1)), (ig, ip, ep.reshape(-1))):
        need = None if percentile is None else _percentile_need(len(src), percentile)
        d = _directed_distances(src, tgt, tflat, ep.shape, spacing, offs, dists, need)
        vals.append(d.max() if percentile is None else np.percentile(d, percentile))
    return float(max(vals)), ""


def tolerance_pixels(tolerance: float, shape: tuple[int, ...]) -> float:
    """Boundary tolerance in pixels: a value in (0, 1) is a fraction of the image diagonal, rounded up (DAVIS)."""
    if tolerance < 0:
        raise ValueError(f"boundary tolerance must be >= 0, got {tolerance}")
    if 0 < tolerance < 1:
        return float(math.ceil(tolerance * math.sqrt(sum(n * n for n in shape))))
    return float(tolerance)


def _within(src: np.ndarray, tgt: np.ndarray, radius: float) -> int:
    """Number of True voxels of src with a True voxel of tgt at Euclidean distance <= radius (pixel units)."""
    nd = src.ndim
    box_s, box_t = _bbox(src), _bbox(tgt)
    if box_s is None or box_t is None:
        return 0
    box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(box_s, box_t))
    ball = (math.pi if nd == 2 else 4.0 / 3.0 * math.pi) * (radius + 1) ** nd  # about the number of offsets
    if ball <= 4 * _MAX_SHELL_OFFSETS:
        offs, dists = _offsets((1.0,) * nd, radius, 10**9)
        pad = int(math.floor(radius + 1e-9))
        S = _crop_pad(src, box, pad)
        T = _crop_pad(tgt, box, pad)
        strides = np.array([int(np.prod(S.shape[i + 1 :])) for i in range(nd)], dtype=np.int64)
        d, _, _ = _shell_search(np.flatnonzero(S), T.reshape(-1), strides, offs, dists, give_up=False)
        return int(np.count_nonzero(np.isfinite(d)))
    from scipy.ndimage import distance_transform_edt

    S = _crop_pad(src, box, 0)
    T = _crop_pad(tgt, box, 0)
    dist = distance_transform_edt(~T)
    return int(np.count_nonzero(dist[S] <= radius))


def boundary_f1(pred: np.ndarray, gt: np.ndarray, tolerance: float = 2.0) -> tuple[float, float, float, str]:
    """DAVIS boundary F-measure of two binary masks: (f1, precision, recall, flag).

    Boundaries as DAVIS's seg2bmap; a boundary pixel is matched when the other boundary has a pixel within
    `tolerance` pixels (Euclidean, i.e. DAVIS's dilation by a disk). Both boundaries empty: 1; one empty: 0.
    """
    pm = np.asarray(pred, dtype=bool)
    gm = np.asarray(gt, dtype=bool)
    if pm.shape != gm.shape:
        raise ValueError(f"pred and gt must have the same shape, got pred {pm.shape} and gt {gm.shape}")
    r = tolerance_pixels(tolerance, pm.shape)
    bp = davis_boundary(pm)
    bg = davis_boundary(gm)
    n_p, n_g = int(np.count_nonzero(bp)), int(np.count_nonzero(bg))
    if n_p == 0 and n_g == 0:
        return 1.0, 1.0, 1.0, FLAG_BOTH_EMPTY
    if n_p == 0:
        return 0.0, 1.0, 0.0, FLAG_EMPTY_PRED
    if n_g == 0:
        return 0.0, 0.0, 1.0, FLAG_EMPTY_GT
    precision = _within(bp, bg, r) / n_p
    recall = _within(bg, bp, r) / n_g
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return f, precision, recall, ""
