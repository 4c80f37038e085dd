"""Tests for bench.fields: Poisson / diffusion targets, field -> instances, classic watershed, the cache.

Real-data tests read BBBC039 from $BENCH_DATA_ROOT (default: <checkout>/../shared/data) and skip without it.
The GT round trip here uses 8 test images; benchmarks/bench_fields.py runs all 48.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from scipy.sparse.linalg import splu

import bench.fields as F
from bench.fields import (
    POSTPROCESS_DEFAULTS,
    cache_key,
    cached_field,
    classic_watershed,
    diffusion_field,
    diffusion_sources,
    field_to_instances,
    h_maxima_markers,
    poisson_field,
)

DATA_ROOT = Path(os.environ.get("BENCH_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
BBBC = DATA_ROOT / "bbbc039"
needs_bbbc = pytest.mark.skipif(not (BBBC / "metadata" / "test.txt").is_file(), reason="BBBC039 not available")


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


def load_bbbc_labels(stem: str) -> np.ndarray:
    """BBBC039 mask PNG -> instance labels, with the dataset reader's decoder."""
    import imageio.v3 as iio

    from bench.datasets.bbbc039 import decode_bbbc039_mask

    return decode_bbbc039_mask(iio.imread(BBBC / "masks" / f"{stem}.png"))


def test_stems(k: int) -> list[str]:
    stems = (BBBC / "metadata" / "test.txt").read_text().split()
    return stems[:: max(1, len(stems) // k)][:k]


test_stems.__test__ = False  # not a test


def reference_poisson(labels: np.ndarray, spacing=None) -> np.ndarray:
    """The paper's formulation: one sparse LU (scipy splu) per label id, on that id's own pixels."""
    labels = np.asarray(labels)
    nd = labels.ndim
    w = np.ones(nd) if spacing is None else 1.0 / np.asarray(spacing, dtype=float) ** 2
    out = np.zeros(labels.shape)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        m = labels[sl] == i
        n = int(m.sum())
        idx = -np.ones(m.shape, dtype=np.int64)
        idx[m] = np.arange(n)
        rows, cols, vals = [np.arange(n)], [np.arange(n)], [np.full(n, 2 * w.sum())]
        for d in range(nd):
            a = [slice(None)] * nd
            b = [slice(None)] * nd
            a[d], b[d] = slice(None, -1), slice(1, None)
            both = m[tuple(a)] & m[tuple(b)]
            p, q = idx[tuple(a)][both], idx[tuple(b)][both]
            rows += [p, q]
            cols += [q, p]
            vals += [np.full(p.size, -w[d])] * 2
        mat = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        u = splu(mat).solve(np.ones(n))
        out[sl][m] = u / u.max()
    return out


def reference_diffusion_cell(mask: np.ndarray, source: tuple, tol: float = 0.01, max_iter: int = 10_000):
    """Literal per-cell loop (float64): inject at the source, masked 3^d mean, min-max normalise, L2 stop."""
    m = np.pad(mask, 1)
    s = tuple(c + 1 for c in source)
    kernel = np.ones((3,) * mask.ndim)
    count = ndi.correlate(m.astype(float), kernel, mode="constant")
    u = np.zeros(m.shape)
    v_prev = m.astype(float)
    for it in range(1, max_iter + 1):
        u[s] += 1.0
        u = np.where(m, ndi.correlate(u, kernel, mode="constant") / np.maximum(count, 1), 0.0)
        lo, hi = u[m].min(), u[m].max()
        v = np.where(m, (u - lo) / (hi - lo), 0.0) if hi > lo else m.astype(float)
        change = np.sqrt(((v - v_prev)[m] ** 2).sum())
        v_prev = v
        if change < tol:
            break
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    return v_prev[inner], it


def match_counts(gt: np.ndarray, pred: np.ndarray) -> dict:
    """TP/FP/FN at IoU > 0.5 (such pairs are unique) and the summed IoU of the matches."""
    gt = gt.ravel().astype(np.int64)
    pred = pred.ravel().astype(np.int64)
    npred = int(pred.max())
    area_g = np.bincount(gt)
    area_p = np.bincount(pred, minlength=npred + 1)
    both = (gt > 0) & (pred > 0)
    pairs, inter = np.unique(gt[both] * (npred + 1) + pred[both], return_counts=True)
    g, p = pairs // (npred + 1), pairs % (npred + 1)
    iou = inter / (area_g[g] + area_p[p] - inter)
    ok = iou > 0.5
    tp = int(ok.sum())
    return {"tp": tp, "fp": int((area_p[1:] > 0).sum()) - tp, "fn": int((area_g[1:] > 0).sum()) - tp,
            "iou": float(iou[ok].sum())}


def f1(c: dict) -> float:
    return 2 * c["tp"] / max(2 * c["tp"] + c["fp"] + c["fn"], 1)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to a renaming of the ids."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pa, pb = a[a > 0].astype(np.int64), b[b > 0].astype(np.int64)
    pairs = np.unique(pa * (int(pb.max(initial=0)) + 1) + pb)
    return pairs.size == np.unique(pa).size == np.unique(pb).size


def reference_field_to_instances(field: np.ndarray, eps: float, h: float) -> np.ndarray:
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    f = field.astype(np.float32)
    fg = f >= eps
    markers = h_maxima(np.where(fg, f, f.min()), h).astype(bool)
    lab, _ = ndi.label(markers, structure=np.ones((3,) * f.ndim))
    return watershed(-f, lab, mask=fg)


def disc(shape, center, radius):
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius**2


@pytest.fixture(scope="module")
def bbbc_images():
    if not (BBBC / "metadata" / "test.txt").is_file():
        pytest.skip("BBBC039 not available")
    return {s: load_bbbc_labels(s) for s in test_stems(8)}


@pytest.fixture(scope="module")
def bbbc_fields(bbbc_images):
    return {s: (poisson_field(lab), diffusion_field(lab)) for s, lab in bbbc_images.items()}


# ----------------------------------------------------------------------------------------------------------
# Poisson
# ----------------------------------------------------------------------------------------------------------


@needs_bbbc
def test_poisson_matches_per_cell_splu_on_bbbc039(bbbc_images):
    for stem in list(bbbc_images)[:3]:
        lab = bbbc_images[stem]
        ours = poisson_field(lab)
        assert ours.dtype == np.float32 and ours.shape == lab.shape
        assert np.abs(ours - reference_poisson(lab)).max() <= 1e-6, stem


def _synthetic_2d() -> dict[str, np.ndarray]:
    cases = {}
    a = np.zeros((30, 40), np.int32)
    a[0:10, 0:15] = 1  # touches two image borders
    a[20:30, 25:40] = 2  # touches the other two
    a[12, 20] = 3  # one pixel
    a[0, 39] = 4  # one pixel in a corner
    a[10:20, 0:15] = 5  # touches cell 1 along a full side
    cases["border_touching_onepixel"] = a
    b = np.zeros((25, 25), np.int32)
    b[2:23, 2:23] = 7
    b[8:14, 9:15] = 0  # a hole: Dirichlet 0 inside
    b[10:12, 11:13] = 9  # a cell inside the hole
    cases["hole"] = b
    c = np.zeros((20, 30), np.int64)
    c[2:8, 2:10] = 1000
    c[12:18, 15:28] = 1000  # one id, two components
    c[2:6, 20:22] = 5
    c[10, 2:12] = 3  # a one-pixel-wide line
    cases["non_contiguous_and_split_id"] = c
    d = np.zeros((16, 16), np.int64)
    d[3:9, 3:9] = 2**40  # huge id: remapped internally
    d[9:13, 3:12] = 7
    cases["huge_id"] = d
    e = np.zeros((12, 12), np.int32)
    e[np.arange(12), np.arange(12)] = 1  # diagonal chain: every pixel is its own 4-component
    e[2:6, 6:11] = 2
    cases["diagonal_chain"] = e
    rng = np.random.default_rng(3)
    cases["random_blocks"] = ndi.zoom(rng.integers(0, 6, (8, 10)), 4, order=0).astype(np.int32)
    return cases


@pytest.mark.parametrize("name", list(_synthetic_2d()))
@pytest.mark.parametrize("spacing", [None, (1.0, 2.5)])
def test_poisson_matches_splu_synthetic_2d(name, spacing):
    lab = _synthetic_2d()[name]
    ref = reference_poisson(lab if lab.max() < 2**20 else np.unique(lab, return_inverse=True)[1].reshape(lab.shape),
                            spacing)
    ours = poisson_field(lab, spacing=spacing)
    assert np.abs(ours - ref).max() <= 1e-6


def test_poisson_3d_and_sparse_path(monkeypatch):
    lab = np.zeros((14, 16, 18), np.int32)
    lab[disc(lab.shape, (7, 8, 9), 6)] = 1
    lab[0:5, 0:6, 0:4] = 2  # touches three faces
    lab[7, 8, 9] = 0  # a one-voxel hole in cell 1
    lab[13, 15, 17] = 3  # one voxel in a corner
    lab[9:14, 12:16, 13:18] = 4
    for spacing in (None, (2.0, 1.0, 0.5)):
        ref = reference_poisson(lab, spacing)
        assert np.abs(poisson_field(lab, spacing) - ref).max() <= 1e-6
        monkeypatch.setattr(F, "BANDED_MAX_KD", 3)  # force the sparse-LU path for every real cell
        assert np.abs(poisson_field(lab, spacing) - ref).max() <= 1e-6
        monkeypatch.undo()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(1, 14), st.integers(1, 14), st.integers(1, 5))
def test_poisson_random_labels_property(seed, h, w, k):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, k + 1, (h, w)).astype(np.int32)
    if rng.random() < 0.5:
        lab = ndi.zoom(lab, 2, order=0)
    ours = poisson_field(lab)
    assert np.abs(ours - reference_poisson(lab)).max() <= 1e-6
    assert np.all(ours[lab == 0] == 0)
    for i in np.unique(lab[lab > 0]):
        assert ours[lab == i].max() == pytest.approx(1.0, abs=1e-6)


def test_poisson_basic_properties():
    assert not poisson_field(np.zeros((5, 6), np.int32)).any()
    assert poisson_field(np.zeros((0, 4), np.int32)).shape == (0, 4)
    one = np.zeros((5, 5), np.int32)
    one[2, 2] = 4
    assert poisson_field(one)[2, 2] == 1.0
    # an id with two components is normalised by its overall maximum: the small one peaks below 1
    lab = np.zeros((20, 40), np.int32)
    lab[2:18, 2:18] = 1
    lab[5:10, 25:30] = 1
    u = poisson_field(lab)
    assert u[2:18, 2:18].max() == pytest.approx(1.0)
    assert u[5:10, 25:30].max() < 0.5
    with pytest.raises(ValueError):
        poisson_field(-np.ones((3, 3), np.int32))
    with pytest.raises(TypeError):
        poisson_field(np.ones((3, 3), np.float32))
    with pytest.raises(ValueError):
        poisson_field(one, spacing=(1.0, 0.0))


# ----------------------------------------------------------------------------------------------------------
# Diffusion
# ----------------------------------------------------------------------------------------------------------


def test_diffusion_sources_rule():
    lab = np.zeros((40, 60), np.int32)
    lab[disc(lab.shape, (10, 10), 6)] = 1  # centroid inside: the centre
    ring = disc(lab.shape, (25, 40), 10) & ~disc(lab.shape, (25, 40), 5)
    lab[ring] = 2  # centroid in the hole: farthest-from-boundary pixel
    lab[30:34, 2:9] = 3  # 4x7 block: centroid (31.5, 5) rounds (halves up) to (32, 5)
    _, src = diffusion_sources(lab)
    by_id = {int(lab[tuple(s)]): tuple(int(v) for v in s) for s in src}
    assert by_id[1] == (10, 10)
    assert by_id[3] == (32, 5)
    s2 = by_id[2]
    assert ring[s2]
    dist = ndi.distance_transform_edt(np.pad(ring, 1))[1:-1, 1:-1]
    assert dist[s2] == dist[ring].max()
    # the first such pixel in C order of the ring's bounding box
    sl = ndi.find_objects(ring.astype(int))[0]
    first = np.unravel_index(np.argmax(np.where(ring[sl], dist[sl], -1)), ring[sl].shape)
    assert s2 == tuple(int(a + b.start) for a, b in zip(first, sl))
    # spacing changes the distance transform used by the fallback
    c = np.zeros((30, 30), np.int32)
    c[5:25, 5:25] = 1
    c[10:20, 10:25] = 0  # C shape open to the right: centroid is outside
    _, s_iso = diffusion_sources(c)
    _, s_aniso = diffusion_sources(c, spacing=(1.0, 3.0))
    assert c[tuple(s_iso[0])] and c[tuple(s_aniso[0])]


def test_diffusion_matches_literal_loop():
    lab = np.zeros((40, 50), np.int32)
    lab[disc(lab.shape, (12, 12), 8)] = 1
    lab[0:6, 30:50] = 2  # border
    lab[20:38, 28:32] = 3  # long thin
    lab[25, 5] = 4  # one pixel
    lab[30:33, 5:7] = 5  # tiny
    lab[disc(lab.shape, (12, 12), 3)] = 6  # a cell inside cell 1's hole
    out = diffusion_field(lab)
    comp, src = diffusion_sources(lab)
    for k, o in enumerate(ndi.find_objects(comp)):
        m = comp[o] == k + 1
        ref, _ = reference_diffusion_cell(m, tuple(int(s - b.start) for s, b in zip(src[k], o)))
        assert np.abs(out[o][m] - ref[m]).max() < 1e-4, k
    lab3 = np.zeros((10, 12, 14), np.int32)
    lab3[disc(lab3.shape, (5, 6, 7), 4)] = 9
    lab3[0:3, 0:3, 0:14] = 2
    out3 = diffusion_field(lab3)
    comp3, src3 = diffusion_sources(lab3)
    for k, o in enumerate(ndi.find_objects(comp3)):
        m = comp3[o] == k + 1
        ref, _ = reference_diffusion_cell(m, tuple(int(s - b.start) for s, b in zip(src3[k], o)))
        assert np.abs(out3[o][m] - ref[m]).max() < 1e-4


@needs_bbbc
def test_diffusion_properties_bbbc039(bbbc_images, bbbc_fields):
    for stem, lab in list(bbbc_images.items())[:4]:
        d = bbbc_fields[stem][1]
        assert d.dtype == np.float32
        assert d.min() >= 0 and d.max() <= 1
        assert not d[lab == 0].any()
        comp, src = diffusion_sources(lab)
        ids = np.arange(1, comp.max() + 1)
        assert np.allclose(ndi.maximum(d, comp, ids), 1.0, atol=1e-6)
        big = np.bincount(comp.ravel())[1:] > 2
        assert np.allclose(ndi.minimum(d, comp, ids)[big], 0.0, atol=1e-6)
        # the peak sits on the source or right next to it (paper order: inject, then average)
        for k, o in enumerate(ndi.find_objects(comp)):
            m = comp[o] == k + 1
            at = np.unravel_index(np.argmax(np.where(m, d[o], -1)), m.shape)
            assert max(abs(a + b.start - s) for a, b, s in zip(at, o, src[k])) <= 1


def test_diffusion_synthetic_properties():
    lab = np.zeros((30, 30), np.int64)
    lab[disc(lab.shape, (15, 15), 9)] = 77
    lab[0, 0] = 3
    lab[28:30, 0:2] = 3  # same id, a second component: its own source and its own [0, 1] scaling
    d = diffusion_field(lab)
    assert d[15, 15] == pytest.approx(1.0)  # symmetric disc: the peak is the source
    assert d[0, 0] == 1.0 and np.allclose(d[28:30, 0:2], 1.0)  # one pixel / constant field -> 1
    assert not d[lab == 0].any()
    assert not diffusion_field(np.zeros((4, 4), np.int32)).any()
    # max_iter caps the loop; a looser tol stops earlier
    assert not np.array_equal(diffusion_field(lab, max_iter=3), d)
    with pytest.raises(ValueError):
        diffusion_field(lab, tol=0)


# ----------------------------------------------------------------------------------------------------------
# Field -> instances
# ----------------------------------------------------------------------------------------------------------


@needs_bbbc
def test_round_trip_gt_fields_bbbc039(bbbc_images, bbbc_fields):
    totals = {"poisson": [], "diffusion": []}
    for stem, lab in bbbc_images.items():
        p, d = bbbc_fields[stem]
        totals["poisson"].append(match_counts(lab, field_to_instances(p)))
        totals["diffusion"].append(match_counts(lab, field_to_instances(d, **POSTPROCESS_DEFAULTS["diffusion"])))
    for kind, counts in totals.items():
        pooled = {k: sum(c[k] for c in counts) for k in ("tp", "fp", "fn")}
        assert f1(pooled) >= 0.99, (kind, pooled)
        assert np.mean([f1(c) for c in counts]) >= 0.99, kind


@needs_bbbc
def test_field_to_instances_equals_skimage_reference(bbbc_images, bbbc_fields):
    rng = np.random.default_rng(0)
    stem = next(iter(bbbc_images))
    p, d = bbbc_fields[stem]
    noisy = np.clip(ndi.gaussian_filter(p, 1.5) + rng.normal(0, 0.02, p.shape), -0.05, 1).astype(np.float32)
    speckle = (p + rng.normal(0, 0.04, p.shape)).astype(np.float32)  # thousands of tiny components
    for field, eps, h in [(p, 0.05, 0.1), (d, 0.005, 0.1), (noisy, 0.05, 0.1), (noisy, 0.1, 0.3),
                          (speckle, 0.05, 0.1)]:
        fg = field >= eps
        from skimage.morphology import h_maxima

        ref_markers = h_maxima(np.where(fg, field, field.min()).astype(np.float32), h).astype(bool)
        assert np.array_equal(h_maxima_markers(field, h, fg), ref_markers)
        assert same_partition(field_to_instances(field, eps=eps, h=h), reference_field_to_instances(field, eps, h))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.02, 0.5))
def test_h_maxima_markers_random_fields(seed, h):
    from skimage.morphology import h_maxima

    rng = np.random.default_rng(seed)
    f = ndi.gaussian_filter(rng.random((40, 50)), rng.uniform(0.5, 3)).astype(np.float32)
    f = (f - f.min()) / max(f.max() - f.min(), 1e-6)
    mask = f >= rng.uniform(0, 0.7)
    ref = h_maxima(np.where(mask, f, f.min()).astype(np.float32), h).astype(bool) if mask.any() else ~mask
    assert np.array_equal(h_maxima_markers(f, h, mask), ref)


def test_field_to_instances_2d_3d_and_options():
    lab = np.zeros((40, 60), np.int32)
    lab[disc(lab.shape, (20, 18), 12)] = 1
    lab[disc(lab.shape, (20, 40), 12) & (lab == 0)] = 2  # touching cell 1
    lab[2:5, 55:58] = 3  # 9 pixels
    out = field_to_instances(poisson_field(lab))
    assert out.dtype == np.int32 and out.max() == 3
    c = match_counts(lab, out)
    assert c["tp"] == 3 and c["iou"] / 3 > 0.95
    assert field_to_instances(poisson_field(lab), min_size=10).max() == 2  # the 9-pixel cell is dropped
    assert not field_to_instances(np.zeros((8, 8), np.float32)).any()
    lab3 = np.zeros((24, 24, 40), np.int32)
    lab3[disc(lab3.shape, (12, 12, 12), 8)] = 5
    lab3[disc(lab3.shape, (12, 12, 27), 8) & (lab3 == 0)] = 8
    apart = np.zeros((24, 48, 48), np.int32)  # separate blobs: exercises the packed 3D h-maxima path
    apart[disc(apart.shape, (10, 8, 8), 5)] = 1
    apart[disc(apart.shape, (10, 8, 22), 6)] = 2
    apart[disc(apart.shape, (10, 21, 15), 4)] = 3
    apart[disc(apart.shape, (10, 24, 15), 4) & (apart == 0)] = 4
    pf = poisson_field(apart)
    assert same_partition(field_to_instances(pf), reference_field_to_instances(pf, 0.05, 0.1))
    assert field_to_instances(pf).max() == 4
    for field, kw, min_iou in [(poisson_field(lab3), {}, 0.95),
                               (diffusion_field(lab3), POSTPROCESS_DEFAULTS["diffusion"], 0.75)]:
        got = field_to_instances(field, **kw)
        assert got.max() == 2 and sorted(np.unique(got)) == [0, 1, 2]
        c = match_counts(lab3, got)
        assert c["tp"] == 2 and c["iou"] / 2 > min_iou  # 3D diffusion decays like 1/r: its rim is ~0


# ----------------------------------------------------------------------------------------------------------
# Classic watershed
# ----------------------------------------------------------------------------------------------------------


def test_classic_watershed_synthetic():
    rng = np.random.default_rng(1)
    lab = np.zeros((120, 160), np.int32)
    centers = [(30, 30), (30, 52), (80, 40), (60, 110), (95, 130)]  # the first two touch
    for i, c in enumerate(centers, start=1):
        lab[disc(lab.shape, c, 12) & (lab == 0)] = i
    img = np.where(lab > 0, 1000.0, 100.0) + rng.normal(0, 20, lab.shape)
    out = classic_watershed(img)
    assert out.dtype == np.int32
    c = match_counts(lab, out)
    assert c["tp"] == 5 and c["fp"] == 0
    assert classic_watershed(img[None]).max() == out.max()  # leading channel axis of size 1
    assert not classic_watershed(np.ones((20, 20))).any()


@needs_bbbc
def test_classic_watershed_bbbc039_sanity():
    import tifffile

    counts = []
    for stem in test_stems(3):
        img = tifffile.imread(BBBC / "images" / f"{stem}.tif")
        counts.append(match_counts(load_bbbc_labels(stem), classic_watershed(img)))
    pooled = {k: sum(c[k] for c in counts) for k in ("tp", "fp", "fn")}
    assert f1(pooled) > 0.8  # the 48-image figure is in benchmarks/bench_fields.py


# ----------------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------------


def test_cache_hit_miss_and_atomic_write(tmp_path, monkeypatch):
    lab = np.zeros((20, 20), np.int32)
    lab[3:12, 4:15] = 1
    calls = []
    real = F.FIELD_KINDS["poisson"]
    monkeypatch.setitem(F.FIELD_KINDS, "poisson", lambda labels, **kw: calls.append(kw) or real(labels, **kw))
    a = cached_field("poisson", lab, {}, tmp_path)
    b = cached_field("poisson", lab, {}, tmp_path)
    assert len(calls) == 1 and np.array_equal(a, b) and np.array_equal(a, poisson_field(lab))
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy" and files[0].name.startswith("poisson-")
    cached_field("poisson", lab, {"spacing": [1.0, 2.0]}, tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.npy"))) == 2
    files[0].write_bytes(b"garbage")  # unreadable entry: recomputed and rewritten
    assert np.array_equal(cached_field("poisson", lab, {}, tmp_path), a)
    assert len(calls) == 3
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".npy"]  # no temporary files left behind
    d = cached_field("diffusion", lab, {"tol": 0.01}, str(tmp_path / "sub"))
    assert np.array_equal(d, diffusion_field(lab))
    with pytest.raises(ValueError):
        cached_field("nope", lab, {}, tmp_path)


def test_cache_key_sensitivity():
    lab = np.zeros((6, 7), np.int32)
    lab[1:4, 2:5] = 3
    base = cache_key("poisson", lab, {"spacing": (1.0, 2.0)})
    assert base == cache_key("poisson", lab.copy(), {"spacing": [1.0, 2.0]})  # tuple vs list
    assert base == cache_key("poisson", np.asfortranarray(lab), {"spacing": (1.0, 2.0)})
    other = lab.copy()
    other[0, 0] = 1
    variants = [
        cache_key("diffusion", lab, {"spacing": (1.0, 2.0)}),
        cache_key("poisson", other, {"spacing": (1.0, 2.0)}),
        cache_key("poisson", lab.astype(np.int64), {"spacing": (1.0, 2.0)}),
        cache_key("poisson", lab.reshape(7, 6), {"spacing": (1.0, 2.0)}),
        cache_key("poisson", lab, {"spacing": (1.0, 2.5)}),
        cache_key("poisson", lab, {}),
    ]
    assert len(set(variants + [base])) == len(variants) + 1
    assert cache_key("diffusion", lab, {"tol": 0.01, "max_iter": 5}) == cache_key(
        "diffusion", lab, {"max_iter": np.int64(5), "tol": 0.01})
