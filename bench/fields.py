"""Physics-field targets and their post-processing (Ruiz Vargas et al., "Single tensor cell segmentation
using scalar field representations").

A label image (2D or 3D integer instance ids, 0 = background) is turned into one scalar field in [0, 1]:

* :func:`poisson_field`: per cell, the solution of the discrete Poisson equation ``Δu = -1`` with ``u = 0``
  outside the cell, scaled by the cell's maximum.
* :func:`diffusion_field`: per cell, unit heat injected at a source pixel and spread by repeated masked
  3x3 (3x3x3) averaging until the normalised field stops changing, then min-max scaled.

:func:`field_to_instances` inverts a (predicted) field back to instances with markers from the field's
h-maxima and a watershed; :func:`classic_watershed` is the training-free baseline; :func:`cached_field`
stores targets on disk. Definitions, the centroid rule, the solver and the cache are in ``docs/fields.md``.

Pure numpy / scipy / scikit-image: nothing here imports torch.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.linalg import lapack
from scipy.sparse.linalg import splu

__all__ = [
    "FIELDS_VERSION",
    "FIELD_KINDS",
    "POSTPROCESS_DEFAULTS",
    "poisson_field",
    "diffusion_field",
    "diffusion_sources",
    "field_to_instances",
    "h_maxima_markers",
    "classic_watershed",
    "cache_key",
    "cached_field",
]

#: Bumped whenever a field's definition or numerics change; part of every cache key.
FIELDS_VERSION = "1"

#: Cells whose banded system would need a half-bandwidth above this are solved with a sparse LU instead
#: (the banded Cholesky costs n * kd**2; it wins for 2D cells, large 3D cells go to the sparse path).
BANDED_MAX_KD = 128

#: Recommended post-processing per field kind (see docs/fields.md for how they were chosen).
POSTPROCESS_DEFAULTS: dict[str, dict[str, float]] = {
    "poisson": {"eps": 0.05, "h": 0.1},
    "diffusion": {"eps": 0.002, "h": 0.1},
}


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


def _as_labels(labels: Any) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels must be an integer (or bool) array, got dtype {lab.dtype}")
    if lab.ndim < 1:
        raise ValueError("labels must have at least one dimension")
    if lab.size and lab.min() < 0:
        raise ValueError("labels must be non-negative (0 = background)")
    return lab


def _compact_ids(lab: np.ndarray) -> np.ndarray:
    """The labels, unchanged unless the largest id is far above the pixel count (``ndi.find_objects`` and
    per-id tables are sized by it); then the ids are remapped to 1..K (intp). Gaps in the ids are fine."""
    if lab.size == 0:
        return lab.astype(np.intp)
    top = int(lab.max())
    if top <= 4 * lab.size + 1024:
        return lab
    uniq, inv = np.unique(lab, return_inverse=True)
    if uniq[0] != 0:  # no background pixel at all: ids become 1..K
        inv = inv + 1
    return inv.reshape(lab.shape).astype(np.intp)


def _spacing(spacing: Any, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.ndim == 0:
        sp = np.full(ndim, float(sp))
    if sp.shape != (ndim,):
        raise ValueError(f"spacing must have {ndim} entries, got {tuple(np.shape(spacing))}")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be positive and finite, got {sp.tolist()}")
    return sp


def _c_strides(shape: tuple[int, ...]) -> np.ndarray:
    """Element strides of a C-ordered array of this shape."""
    st = np.ones(len(shape), dtype=np.int64)
    for d in range(len(shape) - 2, -1, -1):
        st[d] = st[d + 1] * shape[d + 1]
    return st


def _extents(objs: list) -> tuple[np.ndarray, np.ndarray]:
    """Bounding-box extents (K, ndim) and a presence flag per id from ``ndi.find_objects``."""
    ndim = len(next(o for o in objs if o is not None))
    ext = np.zeros((len(objs), ndim), dtype=np.int64)
    present = np.zeros(len(objs), dtype=bool)
    for k, o in enumerate(objs):
        if o is not None:
            present[k] = True
            ext[k] = [s.stop - s.start for s in o]
    return ext, present


# ----------------------------------------------------------------------------------------------------------
# Poisson field
# ----------------------------------------------------------------------------------------------------------


def poisson_field(labels: np.ndarray, spacing: Any = None, scaled: bool = True) -> np.ndarray:
    """Per-cell solution of ``Δu = -1`` with ``u = 0`` outside the cell, scaled to [0, 1] per label id
    (``scaled=False``: the solution itself).

    The Laplacian is the 2*ndim+1-point stencil on the pixel grid (5-point in 2D, 7-point in 3D) with
    weights ``1 / spacing[d]**2``; every neighbour that is not a pixel of the same label id (background,
    another cell, a hole, outside the image) is a Dirichlet zero. Each label id is then divided by its
    maximum, so every cell peaks at exactly 1 (a one-pixel cell is 1); background is 0.

    Pixels of one id that are not connected through the stencil (4-connectivity in 2D, 6 in 3D) form
    independent blocks of the same linear system, i.e. every component is solved as its own region; the
    normalisation is by the maximum over the whole id (so a smaller component may peak below 1).

    Exact direct solver (see docs/fields.md): red-black elimination (the stencil only couples pixels of
    opposite checkerboard colour, so the odd pixels are eliminated exactly, leaving a Schur complement on
    the even pixels), then, per cell, the even pixels are ordered line by line (along the shorter of the
    two diagonal directions in 2D; in 3D with the longest axis slowest), which makes each cell's matrix
    banded with a half-bandwidth about its cross-section; all cells with the same half-bandwidth ``kd`` form one symmetric positive definite banded
    system solved by one LAPACK ``dpbsv`` (Cholesky). Cells with ``kd > BANDED_MAX_KD`` (large 3D cells)
    use a sparse LU with a minimum-degree ordering. The odd pixels are then recovered from their own
    equations. Returns float32.
    """
    lab = _as_labels(labels)
    sp = _spacing(spacing, lab.ndim)
    if lab.size == 0 or not lab.any():
        return np.zeros(lab.shape, dtype=np.float32)
    ndim = lab.ndim
    lab = _compact_ids(lab)
    if int(lab.max()) < 2**31 - 1:
        lab = lab.astype(np.int32, copy=False)
    labp = np.pad(lab, 2)  # a zero frame: neighbours up to two steps away never leave the array
    pshape = labp.shape
    flat = labp.reshape(-1)
    pst = [int(v) for v in _c_strides(pshape)]
    w = 1.0 / sp**2
    diag = 2.0 * float(w.sum())
    fidx = np.flatnonzero(flat)
    coords = np.unravel_index(fidx, pshape)
    parity = coords[0] & 1
    for d in range(1, ndim):
        parity = parity ^ (coords[d] & 1)
    even = parity == 0
    pe = fidx[even]
    po = fidx[~even]
    ide = flat[pe]
    ido = flat[po]
    n = pe.size

    # -- order the even pixels cell by cell, line by line; rank = position of each even pixel ------------
    if n == 0:  # only odd pixels (e.g. isolated single pixels): nothing couples, every u is 1 / diag
        order = np.zeros(0, dtype=np.intp)
    else:
        order = _line_order(pshape, tuple(c[even] for c in coords), ide)
    rank = np.empty(n, dtype=np.intp)
    rank[order] = np.arange(n)
    pos = np.empty(flat.size, dtype=np.intp)  # read only where a neighbour is an even pixel of the same id
    pos[pe] = rank

    # -- Schur complement on the even pixels: S = D - B^T D^-1 B, rhs = 1 - B^T D^-1 1 ------------------
    s_diag = np.full(n, diag)
    rhs = np.ones(n)
    nb_ok = {}
    for d in range(ndim):
        nb_ok[(d, -1)] = flat[pe - pst[d]] == ide
        nb_ok[(d, 1)] = flat[pe + pst[d]] == ide
        both = nb_ok[(d, -1)].astype(np.float64) + nb_ok[(d, 1)]  # in-cell neighbours along this axis
        s_diag -= (w[d] ** 2 / diag) * both
        rhs += (w[d] / diag) * both
    los, offs, vals = [], [], []

    def couple(ok: np.ndarray, step: int, value) -> None:
        i = rank[ok]
        j = pos[pe[ok] + step]
        los.append(np.minimum(i, j))
        offs.append(np.abs(j - i))
        vals.append(np.broadcast_to(value, i.shape))

    for d in range(ndim):  # two steps along one axis, through the odd pixel in between
        couple(nb_ok[(d, 1)] & (flat[pe + 2 * pst[d]] == ide), 2 * pst[d], -w[d] ** 2 / diag)
    for a in range(ndim):  # one step along each of two axes, through either odd corner
        for b in range(a + 1, ndim):
            for s in (-1, 1):
                od = pst[a] + s * pst[b]
                v = (nb_ok[(a, 1)].astype(np.float64) + nb_ok[(b, s)]) * (flat[pe + od] == ide)
                ok = v > 0
                couple(ok, od, -(w[a] * w[b] / diag) * v[ok])
    if n:
        x = _solve_banded_cells(ide[order], np.concatenate(los), np.concatenate(offs), np.concatenate(vals),
                                s_diag[order], rhs[order])
    else:
        x = np.zeros(0)
    u_img = np.zeros(flat.size, dtype=np.float64)
    u_img[pe] = x[rank]

    # -- odd pixels from their own equations -----------------------------------------------------------------
    acc = np.ones(po.size)
    for d in range(ndim):
        for s in (-1, 1):
            q = po + s * pst[d]
            acc += (w[d] * (flat[q] == ido)) * u_img[q]
    u_img[po] = acc / diag

    # -- per-id scaling ----------------------------------------------------------------------------------------
    ids = flat[fidx]
    u = u_img[fidx]
    peak = np.zeros(int(ids.max()) + 1)
    np.maximum.at(peak, ids, u)
    out = np.zeros(lab.shape, dtype=np.float32)
    ost = _c_strides(lab.shape)
    oidx = (coords[0] - 2) * int(ost[0])
    for d in range(1, ndim):
        oidx += (coords[d] - 2) * int(ost[d])
    out.reshape(-1)[oidx] = u / peak[ids] if scaled else u
    return out


def _line_order(shape: tuple[int, ...], coords: tuple[np.ndarray, ...], ids: np.ndarray) -> np.ndarray:
    """Permutation putting the pixels cell by cell (ascending id) and, inside a cell, line by line: in 2D
    along the diagonal family (r + c or r - c constant) with fewer pixels per line, in nD (!= 2) in C order
    with the cell's longest axis slowest."""
    ndim = len(shape)
    n = ids.size
    top = int(ids.max())

    def ext(values: np.ndarray) -> np.ndarray:
        lo = np.full(top + 1, np.iinfo(np.int64).max, dtype=np.int64)
        hi = np.full(top + 1, np.iinfo(np.int64).min, dtype=np.int64)
        np.minimum.at(lo, ids, values)
        np.maximum.at(hi, ids, values)
        return hi - lo + 1

    if ndim == 2:
        # Diagonal lines: the Schur stencil of the even pixels reaches only the next diagonal, and a
        # diagonal holds at most min(height, width) even pixels of a box (~D/sqrt(2) of a disc), so they beat
        # rows and columns (whose stencil reaches two rows on). Per cell, take the shorter diagonal family.
        r, c = (a.astype(np.int64) for a in coords)
        anti, main = r + c, r - c + shape[1]
        use_main = (ext(anti) < ext(main))[ids]  # r - c lines are short when r + c spreads widely
        key = np.where(use_main, main, anti) * (shape[0] + 1) + r
        key_span = (shape[0] + shape[1] + 1) * (shape[0] + 1)
    else:
        cs = [a.astype(np.int64) for a in coords]
        size = int(np.prod(shape))
        slow = np.argmax(np.stack([ext(a) for a in cs]), axis=0)[ids]  # the longest axis runs slowest
        st = _c_strides(shape)
        rest = np.zeros(n, dtype=np.int64)
        for d in range(ndim):
            rest += np.where(slow == d, 0, cs[d] * st[d])
        key = np.choose(slow, cs) * size + rest
        key_span = int(max(shape)) * size
    if top * float(key_span) >= 2.0**62:  # pragma: no cover - astronomically large inputs
        raise ValueError("label image too large for the Poisson solver's sort key")
    return np.argsort(ids.astype(np.int64) * key_span + key)


_SCRATCH = threading.local()


def _zeroed_scratch(size: int) -> np.ndarray:
    """A zeroed float64 work array, reusing this thread's buffer (no page faults on repeated calls)."""
    if size > 1 << 23:  # above 64 MiB: not worth keeping around
        return np.zeros(size, dtype=np.float64)
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < size:
        buf = np.zeros(max(size, 1 << 16), dtype=np.float64)
        _SCRATCH.buf = buf
        return buf[:size]
    view = buf[:size]
    view.fill(0.0)
    return view


def _solve_banded_cells(fid, lo, off, val, d, b) -> np.ndarray:
    """Solve a block-diagonal SPD system whose unknowns are already ordered cell by cell (``fid``: the id of
    each unknown, non-decreasing). ``d``/``b``: diagonal and right-hand side; couplings ``val`` between
    unknowns ``lo`` and ``lo + off`` (same cell). Returns the solution in the same order."""
    n = fid.size
    starts = np.flatnonzero(np.r_[True, fid[1:] != fid[:-1]])
    counts = np.diff(np.r_[starts, n])
    nseg = starts.size
    seg = np.repeat(np.arange(nseg), counts)
    seg_lo = seg[lo]
    kd_seg = np.zeros(nseg, dtype=np.int64)
    np.maximum.at(kd_seg, seg_lo, off)

    # -- cells of equal bandwidth become one contiguous banded system; all bands share one buffer ----------
    seg_order = np.argsort(kd_seg, kind="stable")
    new_start = np.empty(nseg, dtype=np.int64)
    new_start[seg_order] = np.r_[0, np.cumsum(counts[seg_order])[:-1]]
    kd_sorted = kd_seg[seg_order]
    bounds = np.flatnonzero(np.r_[True, kd_sorted[1:] != kd_sorted[:-1], True])
    ngroup = bounds.size - 1
    g_kd = kd_sorted[bounds[:-1]]
    g_a = new_start[seg_order[bounds[:-1]]]
    g_b = np.r_[g_a[1:], n]
    g_banded = (g_kd > 0) & (g_kd <= BANDED_MAX_KD)
    g_size = np.where(g_banded, (g_kd + 1) * (g_b - g_a), 0)
    g_off = np.r_[0, np.cumsum(g_size)[:-1]]
    seg_group = np.empty(nseg, dtype=np.int64)
    seg_group[seg_order] = np.repeat(np.arange(ngroup), np.diff(bounds))

    shift = new_start - starts  # new position = old position + shift of its cell
    newpos = np.arange(n, dtype=np.int64) + shift[seg]
    d_new = np.empty(n)
    d_new[newpos] = d
    b_new = np.empty(n)
    b_new[newpos] = b
    gp = seg_group[seg]
    col = g_off[gp] + (newpos - g_a[gp]) * (g_kd[gp] + 1)  # start of each unknown's column in buf
    buf = _zeroed_scratch(int(g_size.sum()))
    pg = seg_group[seg_lo]
    if g_banded.all():
        buf[col] = d
        buf[col[lo] + off] = val
    else:
        band_px = g_banded[gp]
        buf[col[band_px]] = d[band_px]
        band_pair = g_banded[pg]
        buf[col[lo[band_pair]] + off[band_pair]] = val[band_pair]

    x = np.empty(n, dtype=np.float64)
    for g in range(ngroup):
        kd, a, bb = int(g_kd[g]), int(g_a[g]), int(g_b[g])
        if kd == 0:  # unknowns without couplings
            x[a:bb] = b_new[a:bb] / d_new[a:bb]
        elif g_banded[g]:
            ab = buf[int(g_off[g]): int(g_off[g] + g_size[g])].reshape((kd + 1, bb - a), order="F")
            _, sol, info = lapack.dpbsv(ab, b_new[a:bb], lower=1, overwrite_ab=1)
            if info != 0:  # pragma: no cover - the matrix is SPD by construction
                raise np.linalg.LinAlgError(f"banded Cholesky failed (info={info})")
            x[a:bb] = sol
    big = ~g_banded & (g_kd > 0)
    if big.any():  # the largest kd come last, so these groups are contiguous
        a0 = int(g_a[big].min())
        m = n - a0
        sel = ~g_banded[pg] & (g_kd[pg] > 0)
        rr = newpos[lo[sel]] - a0
        cc = rr + off[sel]
        mat = sparse.csc_matrix(
            (np.concatenate([d_new[a0:], val[sel], val[sel]]),
             (np.concatenate([np.arange(m), rr, cc]), np.concatenate([np.arange(m), cc, rr]))),
            shape=(m, m))
        x[a0:] = splu(mat, permc_spec="MMD_AT_PLUS_A").solve(b_new[a0:].copy())
    return x[newpos]


# ----------------------------------------------------------------------------------------------------------
# Diffusion field
# ----------------------------------------------------------------------------------------------------------

_WIDTH_LADDER = np.array([3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024])


def _bucket_size(n: int) -> int:
    k = int(np.searchsorted(_WIDTH_LADDER, n))
    if k < _WIDTH_LADDER.size:
        return int(_WIDTH_LADDER[k])
    return int(2 ** int(np.ceil(np.log2(n))))


def _components(lab: np.ndarray) -> np.ndarray:
    """Connected components of equal non-zero id under the full (3^ndim - 1) neighbourhood."""
    from skimage.measure import label as sk_label

    return sk_label(lab, background=0, connectivity=lab.ndim).astype(np.intp, copy=False)


def _sources(comp: np.ndarray, objs: list, spacing: np.ndarray) -> np.ndarray:
    """Source pixel (K, ndim) of every component: rounded centroid, else the farthest-from-boundary pixel."""
    k = len(objs)
    coords = np.nonzero(comp)
    cid = comp[coords] - 1
    counts = np.bincount(cid, minlength=k).astype(np.float64)
    src = np.empty((k, comp.ndim), dtype=np.int64)
    for d in range(comp.ndim):
        centroid = np.bincount(cid, weights=coords[d], minlength=k) / counts
        src[:, d] = np.floor(centroid + 0.5).astype(np.int64)  # nearest pixel, halves round up
    inside = comp[tuple(src.T)] == np.arange(1, k + 1)
    for c in np.flatnonzero(~inside):
        o = objs[c]
        mask = np.pad(comp[o] == c + 1, 1)  # outside the image counts as boundary too
        dist = ndi.distance_transform_edt(mask, sampling=spacing)
        at = np.unravel_index(int(np.argmax(dist)), mask.shape)  # ties: first in C order
        src[c] = [a - 1 + s.start for a, s in zip(at, o)]
    return src


def diffusion_sources(labels: np.ndarray, spacing: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Components and their heat sources, as used by :func:`diffusion_field`.

    Returns ``(components, sources)``: ``components`` labels every connected component of equal id
    (full neighbourhood: 8-connectivity in 2D, 26 in 3D) with 1..K; ``sources[k - 1]`` is the pixel of
    component k where heat is injected: the component's centroid rounded to the nearest pixel (halves round
    up), or, if that pixel is not in the component (C shapes, rings), the component pixel farthest from the
    boundary: the argmax of the Euclidean distance transform of the component mask (with ``spacing``;
    pixels outside the component and outside the image count as boundary; ties go to the first pixel in C
    order of the component's bounding box).
    """
    lab = _as_labels(labels)
    sp = _spacing(spacing, lab.ndim)
    if lab.size == 0 or not lab.any():
        return np.zeros(lab.shape, dtype=np.intp), np.zeros((0, lab.ndim), dtype=np.int64)
    comp = _components(lab)
    return comp, _sources(comp, ndi.find_objects(comp), sp)


def diffusion_field(labels: np.ndarray, spacing: Any = None, tol: float = 0.01,
                    max_iter: int = 10_000) -> np.ndarray:
    """Heat diffused from one source per cell, min-max scaled to [0, 1] per cell; background 0.

    Every connected component of one id (full neighbourhood, see :func:`diffusion_sources`) is a cell with
    its own source ``s``. Starting from ``u = 0``, each iteration ``t`` does, in this order:

    1. inject: ``u[s] += 1``;
    2. average: every cell pixel becomes the mean of ``u`` over its 3x3 (3x3x3) neighbourhood restricted to
       pixels of the same cell, itself included (zero flux through the cell boundary);
    3. normalise: ``v_t = (u - min_cell u) / (max_cell u - min_cell u)`` (``v_t = 1`` if ``u`` is constant
       on the cell, e.g. a one-pixel cell; ``v_0 = 1``);
    4. stop the cell when ``||v_t - v_{t-1}||_2`` (over the cell's pixels) is below ``tol``, or at
       ``max_iter``; its output is ``v`` of that iteration.

    The raw field grows by about 1/area per iteration everywhere (no sink), so the change is measured on
    the normalised field, whose shape converges. ``spacing`` only enters the source rule (the averaging is
    the paper's plain 3^ndim mean). All cells are iterated together, vectorised, in stacks of equally sized
    crops. Returns float32.
    """
    lab = _as_labels(labels)
    sp = _spacing(spacing, lab.ndim)
    if tol <= 0:
        raise ValueError("tol must be positive")
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    out = np.zeros(lab.shape, dtype=np.float32)
    if lab.size == 0 or not lab.any():
        return out
    comp = _components(lab)
    objs = ndi.find_objects(comp)
    src = _sources(comp, objs, sp)
    ext, _ = _extents(objs)
    ndim = lab.ndim
    perms = np.argsort(-ext, axis=1, kind="stable")  # longest axis first: it becomes the stacking axis
    # Bucket by the (rounded) padded size of the trailing axes; the crops of a bucket are stacked along axis 0.
    trailing = np.array([[_bucket_size(int(ext[k, perms[k, d]]) + 2) for d in range(1, ndim)]
                         for k in range(len(objs))], dtype=np.int64).reshape(len(objs), ndim - 1)
    keys = {}
    for k in range(len(objs)):
        keys.setdefault(tuple(trailing[k].tolist()), []).append(k)
    for tdims, members in keys.items():
        _diffuse_bucket(comp, objs, src, perms, members, tdims, tol, max_iter, out)
    return out


def _box_sum(u: np.ndarray) -> np.ndarray:
    """Sum over the 3^ndim neighbourhood, for the interior (every axis shrinks by 2)."""
    for d in range(u.ndim):
        lo = [slice(None)] * u.ndim
        mid = [slice(None)] * u.ndim
        hi = [slice(None)] * u.ndim
        lo[d], mid[d], hi[d] = slice(None, -2), slice(1, -1), slice(2, None)
        u = u[tuple(lo)] + u[tuple(mid)] + u[tuple(hi)]
    return u


def _diffuse_bucket(comp, objs, src, perms, members, tdims, tol, max_iter, out) -> None:
    """Iterate all cells of one bucket together: their crops stacked along axis 0, separated by zero slabs."""
    ndim = comp.ndim
    members = np.asarray(members)
    m = members.size
    perm_of = [tuple(int(a) for a in perms[k]) for k in members]
    crop_shapes = [tuple(objs[k][p[d]].stop - objs[k][p[d]].start for d in range(ndim))
                   for k, p in zip(members, perm_of)]
    heights = np.array([cs[0] for cs in crop_shapes], dtype=np.int64)
    starts = 1 + np.r_[0, np.cumsum(heights + 1)[:-1]].astype(np.int64)
    nrows = int(starts[-1] + heights[-1] + 1)
    mask = np.zeros((nrows, *tdims), dtype=bool)
    row_stride = int(np.prod(tdims)) if ndim > 1 else 1
    trail_strides = _c_strides(tuple(tdims)) if ndim > 1 else np.zeros(0, dtype=np.int64)
    src_off = np.empty(m, dtype=np.int64)  # source position relative to the cell's first row
    for j, (k, perm, cs) in enumerate(zip(members, perm_of, crop_shapes)):
        o = objs[k]
        crop = (comp[o] == k + 1).transpose(perm)
        dst = (slice(int(starts[j]), int(starts[j]) + cs[0]),) + tuple(slice(1, 1 + cs[d]) for d in range(1, ndim))
        mask[dst] = crop
        local = [int(src[k, perm[d]] - o[perm[d]].start) for d in range(ndim)]
        src_off[j] = local[0] * row_stride + sum((local[d] + 1) * int(trail_strides[d - 1]) for d in range(1, ndim))

    dtype = np.float32
    interior = tuple(slice(1, -1) for _ in range(ndim))
    bshape = (-1,) + (1,) * (ndim - 1)
    counts = _box_sum(mask.astype(dtype))
    inv = np.zeros(mask.shape, dtype=dtype)
    inv[interior] = np.where(mask[interior], 1.0 / np.maximum(counts, 1), 0).astype(dtype)
    big = np.where(mask, 0, np.inf).astype(dtype)
    maskf = mask.astype(dtype)
    u = np.zeros(mask.shape, dtype=dtype)
    v_prev = maskf.copy()  # v_0 = 1 on every cell
    inv_in = inv[interior]
    alive = np.arange(m)  # bucket member index of each cell still in the stack
    hts = heights.copy()

    def layout(starts_: np.ndarray, nrows_: int) -> np.ndarray:
        row_seg = np.zeros(nrows_, dtype=np.int64)
        row_seg[starts_[1:]] = 1
        return np.cumsum(row_seg)  # row -> cell slot; separator rows map to a neighbour, they are masked

    row_seg = layout(starts, nrows)
    done = np.zeros(m, dtype=bool)  # per alive slot

    for it in range(1, max_iter + 1):
        u.reshape(-1)[starts * row_stride + src_off] += 1.0
        np.multiply(_box_sum(u), inv_in, out=u[interior])
        seg_starts = starts * row_stride  # every cell is one contiguous run of the flat stack
        mx = np.maximum.reduceat(u.reshape(-1), seg_starts)
        mn = np.minimum.reduceat((u + big).reshape(-1), seg_starts)
        rng = mx - mn
        flat = rng <= 0
        scale = np.where(flat, 0.0, 1.0 / np.where(flat, 1.0, rng)).astype(dtype)
        v = (u - mn[row_seg].reshape(bshape)) * scale[row_seg].reshape(bshape)
        if flat.any():
            v += flat[row_seg].astype(dtype).reshape(bshape)
        v *= maskf
        diff = v - v_prev
        diff *= diff
        change = np.sqrt(np.add.reduceat(diff.reshape(-1), seg_starts))
        v_prev = v
        conv = (change < tol) & ~done
        if it == max_iter:
            conv = ~done
        for j in np.flatnonzero(conv):
            k = int(members[alive[j]])
            o = objs[k]
            perm = perm_of[alive[j]]
            cs = crop_shapes[alive[j]]
            sl = (slice(int(starts[j]), int(starts[j]) + cs[0]),) + tuple(slice(1, 1 + cs[d]) for d in range(1, ndim))
            cell = comp[o] == k + 1
            out[o][cell] = v[sl].transpose(np.argsort(perm))[cell]
        done |= conv
        if done.all():
            break
        if conv.any() and 4 * int((hts[done] + 1).sum()) > u.shape[0]:
            # Compact: drop finished cells (their rows plus the separator after them).
            keep = ~done
            rows = np.concatenate([np.zeros(1, dtype=np.int64)]
                                  + [np.arange(s, s + h + 1) for s, h in zip(starts[keep], hts[keep])])
            u, v_prev, inv, big, maskf = u[rows], v_prev[rows], inv[rows], big[rows], maskf[rows]
            inv_in = inv[interior]
            alive, hts, src_off = alive[keep], hts[keep], src_off[keep]
            starts = 1 + np.r_[0, np.cumsum(hts + 1)[:-1]].astype(np.int64)
            row_seg = layout(starts, u.shape[0])
            done = np.zeros(alive.size, dtype=bool)


# ----------------------------------------------------------------------------------------------------------
# Field -> instances
# ----------------------------------------------------------------------------------------------------------


def _full_structure(ndim: int) -> np.ndarray:
    return np.ones((3,) * ndim, dtype=bool)


def _shelf_pack(shapes: list[tuple[int, ...]]) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Place boxes (already padded) on shelves along axes 0/1; other axes are padded to the maximum."""
    ndim = len(shapes[0])
    sizes = np.array(shapes, dtype=np.int64)
    if ndim == 1:
        offs = np.r_[0, np.cumsum(sizes[:, 0])[:-1]]
        return (int(sizes[:, 0].sum()),), [(int(a),) for a in offs]
    area = float(np.prod(sizes[:, :2], axis=1).sum())
    width = int(max(sizes[:, 1].max(), np.ceil(np.sqrt(area) * 1.1)))
    order = np.argsort(-sizes[:, 0], kind="stable")
    corners: list[tuple[int, ...]] = [()] * len(shapes)
    y = x = shelf = 0
    for k in order:
        hk, wk = int(sizes[k, 0]), int(sizes[k, 1])
        if x + wk > width:
            y, x, shelf = y + shelf, 0, 0
        corners[k] = (y, x) + (0,) * (ndim - 2)
        x += wk
        shelf = max(shelf, hk)
    total = (y + shelf, width) + tuple(int(v) for v in sizes[:, 2:].max(axis=0))
    return total, corners


def h_maxima_markers(field: np.ndarray, h: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Boolean h-maxima of ``field`` inside ``mask``, identical to
    ``skimage.morphology.h_maxima(np.where(mask, field, field.min()), h).astype(bool)`` (float32 field).

    Pixels outside ``mask`` are flattened to the field's global minimum, so every path between two mask
    components passes through that lowest level; the components are therefore independent, and they are
    packed into one compact canvas (separated by minimum-valued borders) before calling scikit-image, which
    spends its time sorting every pixel of the image it gets. The full-neighbourhood footprint is used.
    """
    from skimage.morphology import h_maxima

    f = np.asarray(field, dtype=np.float32)
    if mask is None:
        mask = np.ones(f.shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != f.shape:
        raise ValueError(f"mask shape {mask.shape} != field shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("field contains NaN or inf")
    if not h > 0:
        raise ValueError("h must be positive")
    markers = np.zeros(f.shape, dtype=bool)
    if f.size == 0 or not mask.any():
        return markers
    low = f.min()
    g = np.where(mask, f, low)
    if h > float(g.max()) - float(g.min()):  # scikit-image's own early exit
        return markers
    comp, n = ndi.label(mask, structure=_full_structure(f.ndim))
    if n == 1 or mask.all():
        return h_maxima(g, h).astype(bool)
    # A component whose top is less than h above the floor cannot hold an h-maximum (the floor connects it
    # to the global maximum); the margin keeps this exact despite scikit-image's float tolerance.
    tops = np.full(n + 1, -np.inf)
    np.maximum.at(tops, comp[mask], f[mask])
    useful = np.flatnonzero(tops[1:] - float(low) >= h * (1 - 1e-3)) + 1
    if useful.size == 0:
        return markers
    objs = ndi.find_objects(comp)
    boxes = [objs[i - 1] for i in useful]
    shapes = [tuple(s.stop - s.start + 2 for s in o) for o in boxes]  # room for a floor border on every side
    canvas_shape, corners = _shelf_pack(shapes) if useful.size <= 2000 else ((0,), [])
    if useful.size > 2000 or np.prod(canvas_shape) >= 0.8 * f.size:
        return h_maxima(g, h).astype(bool)
    canvas = np.full(canvas_shape, low, dtype=np.float32)
    places = []
    for i, o, c in zip(useful, boxes, corners):
        place = tuple(slice(ci + 1, ci + 1 + s.stop - s.start) for ci, s in zip(c, o))
        own = comp[o] == i
        canvas[place][own] = f[o][own]
        places.append((place, own))
    hm = h_maxima(canvas, h).astype(bool)
    for o, (place, own) in zip(boxes, places):
        markers[o] |= hm[place] & own
    return markers


def _relabel_sequential(lab: np.ndarray, min_size: int = 0) -> np.ndarray:
    out = np.zeros(lab.shape, dtype=np.int32)
    if lab.size == 0 or lab.max() == 0:
        return out
    counts = np.bincount(lab.ravel())
    keep = counts > 0
    keep[0] = False
    if min_size > 0:
        keep &= counts >= min_size
    lut = np.zeros(counts.size, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[lab]


def field_to_instances(field: np.ndarray, eps: float = 0.05, h: float = 0.1, min_size: int = 0) -> np.ndarray:
    """Instances from a scalar field (2D or 3D): foreground ``field >= eps`` (background ``field < eps``),
    markers = h-maxima of the field inside the foreground (:func:`h_maxima_markers`, i.e. h-minima of the
    inverted field), labelled with full connectivity, then a watershed of ``-field`` from those markers
    restricted to the foreground (face connectivity). Instances smaller than ``min_size`` pixels are dropped;
    ids are consecutive 1..N. Foreground pixels not reachable from a marker stay 0. Returns int32.

    Defaults suit the Poisson field; for the diffusion field use ``POSTPROCESS_DEFAULTS['diffusion']``
    (its min-max scaling puts the far rim of each cell near 0).
    """
    from skimage.segmentation import watershed

    f = np.asarray(field, dtype=np.float32)
    if f.ndim < 1:
        raise ValueError("field must be an array")
    fg = f >= eps
    if not fg.any():
        return np.zeros(f.shape, dtype=np.int32)
    mk = h_maxima_markers(f, h, mask=fg)
    markers, _ = ndi.label(mk, structure=_full_structure(f.ndim))
    lab = watershed(-f, markers, mask=fg)
    return _relabel_sequential(lab, min_size)


# ----------------------------------------------------------------------------------------------------------
# Training-free baseline
# ----------------------------------------------------------------------------------------------------------


def classic_watershed(image: np.ndarray, sigma: float = 0.5, min_distance: int = 12,
                      footprint: np.ndarray | None = None, min_size: int = 50,
                      hole_size: int = 100) -> np.ndarray:
    """Training-free nuclei baseline for a single-channel 2D/3D image (a leading channel axis of size 1
    is dropped): Gaussian smoothing (``sigma``), Otsu threshold, fill holes up to ``hole_size`` pixels, drop
    objects under ``min_size``, then a watershed of the negated Euclidean distance transform from markers at
    its peaks (``skimage.feature.peak_local_max`` with ``min_distance`` / ``footprint``, one peak per
    object at least), restricted to the foreground; small pieces are dropped again; ids 1..N, int32.

    Defaults were tuned on BBBC039's training split only (a grid over sigma, min_distance, min_size on
    every third training image); see docs/fields.md for the numbers.
    """
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    img = np.asarray(image, dtype=np.float64)
    if img.ndim >= 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D single-channel image, got shape {np.shape(image)}")
    sm = ndi.gaussian_filter(img, sigma) if sigma > 0 else img
    if float(sm.max()) <= float(sm.min()):
        return np.zeros(img.shape, dtype=np.int32)
    fg = sm > threshold_otsu(sm)
    structure = _full_structure(img.ndim)
    if hole_size > 0:
        holes, nh = ndi.label(ndi.binary_fill_holes(fg) & ~fg)
        if nh:
            small = np.bincount(holes.ravel()) <= hole_size
            small[0] = False
            fg |= small[holes]
    objects, nobj = ndi.label(fg, structure=structure)
    if min_size > 0 and nobj:
        big = np.bincount(objects.ravel()) >= min_size
        big[0] = False
        objects = np.where(big[objects], objects, 0)
        fg = objects > 0
    if not fg.any():
        return np.zeros(img.shape, dtype=np.int32)
    dist = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=min_distance, footprint=footprint, labels=objects,
                           exclude_border=False)
    markers = np.zeros(img.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # Any object left without a peak gets one at its distance maximum.
    has = np.zeros(int(objects.max()) + 1, dtype=bool)
    has[objects[tuple(peaks.T)]] = True
    missing = [i for i in np.unique(objects) if i and not has[i]]
    if missing:
        best = ndi.maximum_position(dist, objects, missing)
        for j, p in enumerate(best):
            markers[p] = len(peaks) + 1 + j
    lab = watershed(-dist, markers, mask=fg)
    return _relabel_sequential(lab, min_size)


# ----------------------------------------------------------------------------------------------------------
# Disk cache
# ----------------------------------------------------------------------------------------------------------

FIELD_KINDS = {"poisson": poisson_field, "diffusion": diffusion_field}


def cache_key(kind: str, labels: np.ndarray, params: Mapping[str, Any] | None = None) -> str:
    """sha256 over the fields version, kind, params (canonical JSON), dtype, shape and the label bytes."""
    from .cache import array_key

    return array_key(kind, labels, params, FIELDS_VERSION)


def cached_field(kind: str, labels: np.ndarray, params: Mapping[str, Any] | None, cache_dir: str | os.PathLike
                 ) -> np.ndarray:
    """``FIELD_KINDS[kind](labels, **params)``, stored as ``<cache_dir>/<kind>-<sha256>.npy`` by the core's
    content-keyed cache (`bench.cache.cached_array`: atomic writes, a bad file is a miss)."""
    from .cache import cached_array

    if kind not in FIELD_KINDS:
        raise ValueError(f"unknown field kind {kind!r}; known: {sorted(FIELD_KINDS)}")
    params = dict(params or {})
    lab = np.asarray(labels)
    return cached_array(kind, lambda: FIELD_KINDS[kind](lab, **params), lab, params, cache_dir, FIELDS_VERSION)
