"""Training data: normalisation, cached targets, seeded random patches with augmentation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from .data import Sample

if TYPE_CHECKING:
    from .config import AugmentConfig, NormalizeConfig


def normalize(image: np.ndarray, cfg: "NormalizeConfig") -> np.ndarray:
    """Per image and channel: percentile scaling to about [0, 1] (Cellpose/StarDist style) or z-score."""
    img = image.astype(np.float32, copy=True)
    if cfg.kind == "none":
        return img
    for c in range(img.shape[0]):
        ch = img[c]
        if cfg.kind == "percentile":
            lo, hi = np.percentile(ch, [cfg.low, cfg.high])
            ch -= lo
            ch /= max(hi - lo, 1e-6)
        else:
            ch -= ch.mean()
            ch /= max(float(ch.std()), 1e-6)
    return img


def _crop_origin(rng: np.random.Generator, shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(rng.integers(0, max(1, s - p + 1))) for s, p in zip(shape, patch))


def _pad_to(a: np.ndarray, patch: tuple[int, ...], ndim: int) -> np.ndarray:
    spatial = a.shape[-ndim:]
    if all(s >= p for s, p in zip(spatial, patch)):
        return a
    pad = [(0, 0)] * (a.ndim - ndim) + [(0, max(0, p - s)) for s, p in zip(spatial, patch)]
    return np.pad(a, pad, mode="constant")


def augment(arrays: dict[str, np.ndarray], rng: np.random.Generator, cfg: "AugmentConfig", ndim: int) -> None:
    """Same random flips / in-plane 90° rotations on every array (last `ndim` axes spatial), in place."""
    keys = list(arrays)
    if cfg.flip:
        for ax in range(1, ndim + 1):
            if rng.random() < 0.5:
                for k in keys:
                    arrays[k] = np.flip(arrays[k], axis=-ax)
    if cfg.rot90:
        k90 = int(rng.integers(0, 4))
        if k90:
            for k in keys:
                arrays[k] = np.rot90(arrays[k], k90, axes=(-2, -1))
    if cfg.intensity > 0:
        gain = 1 + rng.normal(0, cfg.intensity)
        offset = rng.normal(0, cfg.intensity)
        arrays["image"] = arrays["image"] * gain + offset
    for k in keys:
        arrays[k] = np.ascontiguousarray(arrays[k])


class PatchDataset:
    """A torch-style dataset of random patches; item i of epoch e is fixed by (seed, e, i).

    That makes a resumed epoch draw exactly the patches the interrupted one would have, whatever the
    number of dataloader workers.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        targets: list[dict[str, np.ndarray]],
        patch_size: list[int],
        n_items: int,
        augment_cfg: "AugmentConfig",
        ndim: int,
        seed: int,
    ) -> None:
        self.images, self.targets = images, targets
        self.patch = tuple(patch_size)
        if len(self.patch) != ndim:
            raise ValueError(f"train.patch_size {list(patch_size)} has {len(self.patch)} axes; the data is {ndim}D")
        self.n_items, self.augment_cfg, self.ndim, self.seed = n_items, augment_cfg, ndim, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, i: int) -> dict:
        import torch

        rng = np.random.default_rng([self.seed, self.epoch, i])
        j = int(rng.integers(len(self.images)))
        img = _pad_to(self.images[j], self.patch, self.ndim)
        o = _crop_origin(rng, img.shape[-self.ndim :], self.patch)
        sl = tuple(slice(a, a + p) for a, p in zip(o, self.patch))
        arrays = {"image": img[(..., *sl)]}
        for k, t in self.targets[j].items():
            arrays[k] = _pad_to(t, self.patch, self.ndim)[(..., *sl)]
        augment(arrays, rng, self.augment_cfg, self.ndim)
        return {k: torch.from_numpy(v) for k, v in arrays.items()}


def prepare_training_set(
    samples: list[Sample], norm_cfg: "NormalizeConfig", make_targets: Callable[[Sample], dict]
) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
    images, targets = [], []
    for s in samples:
        if s.label is None:
            raise ValueError(f"training image {s.id!r} has no label")
        images.append(normalize(s.image, norm_cfg))
        targets.append(make_targets(s))
    return images, targets
