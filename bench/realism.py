"""How alike are two image domains? The realism checks of sim2real (issue 14), usable for any set of images.

- Shannon entropy (bits) of each crop's 256-bin grey histogram, per domain, and two-sample Kolmogorov-Smirnov tests of
  each domain's entropies against the reference domain's (scipy.stats.ks_2samp): a translated domain closer to the
  real one has the smaller KS statistic.
- A 2D t-SNE (scikit-learn) of hand-made image features (grey histogram, gradient-magnitude histogram, grey-level
  co-occurrence contrast / homogeneity / energy / correlation at 1 and 4 px), one colour per domain, and the mean
  distance of each domain's feature vectors to the reference domain's nearest ones (standardised features).
- A grid of example crops per domain.

`realism_report(domains, reference, out_dir)` writes ``realism.json`` and the figures ``realism_tsne.png``,
``realism_entropy.png`` and ``realism_crops.png`` and returns the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def to_uint8(img: np.ndarray) -> np.ndarray:
    """A normalised grey image (values ~[0, 1]) as 8 bits, clipped."""
    return (np.clip(np.asarray(img, np.float64), 0, 1) * 255).round().astype(np.uint8)


def random_crops(images: list[np.ndarray], n: int, size: int, seed: int) -> list[np.ndarray]:
    """`n` random size x size crops (2D, first channel) drawn over the images, seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = np.asarray(images[int(rng.integers(len(images)))])
        img = img[0] if img.ndim == 3 else img
        h, w = img.shape
        s = min(size, h, w)
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        out.append(img[y:y + s, x:x + s])
    return out


def entropy_bits(crop: np.ndarray) -> float:
    counts = np.bincount(to_uint8(crop).ravel(), minlength=256).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def features(crop: np.ndarray) -> np.ndarray:
    from skimage.feature import graycomatrix, graycoprops
    from skimage.filters import sobel

    u8 = to_uint8(crop)
    grey = np.histogram(u8, bins=16, range=(0, 256))[0] / u8.size
    grad = np.histogram(np.clip(sobel(u8 / 255.0), 0, 0.5), bins=8, range=(0, 0.5))[0] / u8.size
    glcm = graycomatrix(u8 // 8, distances=[1, 4], angles=[0, np.pi / 2], levels=32, symmetric=True, normed=True)
    tex = np.concatenate([graycoprops(glcm, p).ravel() for p in ("contrast", "homogeneity", "energy", "correlation")])
    return np.concatenate([grey, grad, tex, [u8.mean() / 255, u8.std() / 255]])


def realism_report(domains: dict[str, list[np.ndarray]], reference: str, out_dir: str | Path, *, n_crops: int = 64,
                   crop: int = 128, seed: int = 0) -> dict:
    """Entropy KS tests, feature distances and t-SNE of `domains` (name -> images) against `reference`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import ks_2samp
    from sklearn.manifold import TSNE

    if reference not in domains:
        raise ValueError(f"reference domain {reference!r} is not among {sorted(domains)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    crops = {k: random_crops(v, n_crops, crop, seed + i) for i, (k, v) in enumerate(domains.items())}
    ent = {k: np.array([entropy_bits(c) for c in v]) for k, v in crops.items()}
    feats = {k: np.stack([features(c) for c in v]) for k, v in crops.items()}
    allf = np.concatenate(list(feats.values()))
    mu, sd = allf.mean(0), allf.std(0) + 1e-9
    z = {k: (f - mu) / sd for k, f in feats.items()}
    result: dict = {"reference": reference, "n_crops": n_crops, "crop": crop, "domains": {}}
    for k in domains:
        ks = ks_2samp(ent[k], ent[reference]) if k != reference else None
        d = np.linalg.norm(z[k][:, None] - z[reference][None], axis=-1)
        if k == reference:
            np.fill_diagonal(d, np.inf)
        result["domains"][k] = {
            "entropy_mean": float(ent[k].mean()), "entropy_sd": float(ent[k].std()),
            "ks_statistic": None if ks is None else float(ks.statistic),
            "ks_pvalue": None if ks is None else float(ks.pvalue),
            "feature_distance_to_reference": float(d.min(1).mean())}
    emb = TSNE(n_components=2, perplexity=min(30.0, (len(allf) - 1) / 3), random_state=seed, init="pca"
               ).fit_transform(np.concatenate(list(z.values())))
    fig, ax = plt.subplots(figsize=(5, 4.5))
    start = 0
    for k, f in feats.items():
        ax.scatter(*emb[start:start + len(f)].T, s=10, label=k, alpha=0.7)
        start += len(f)
    ax.legend(fontsize=8)
    ax.set_title("t-SNE of crop features", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "realism_tsne.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.linspace(min(e.min() for e in ent.values()), max(e.max() for e in ent.values()) + 1e-6, 30)
    for k, e in ent.items():
        ks = result["domains"][k]["ks_statistic"]
        ax.hist(e, bins=bins, alpha=0.5, label=k + ("" if ks is None else f" (KS {ks:.2f})"))
    ax.set_xlabel("Shannon entropy of a crop (bits, 256 bins)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "realism_entropy.png", dpi=110)
    plt.close(fig)
    cols = 6
    fig, axes = plt.subplots(len(crops), cols, figsize=(1.6 * cols, 1.7 * len(crops)), squeeze=False)
    for r, (k, v) in enumerate(crops.items()):
        for c in range(cols):
            axes[r, c].imshow(v[c], cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_axis_off()
        axes[r, 0].set_title(k, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(out_dir / "realism_crops.png", dpi=100)
    plt.close(fig)
    (out_dir / "realism.json").write_text(json.dumps(result, indent=2))
    return result
