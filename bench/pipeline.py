"""Training data: normalisation, cached targets, seeded random patches with augmentation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np


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


def augment(arrays: dict[str, np.ndarray], rng: np.random.Generator, cfg: "AugmentConfig", ndim: int,
            transforms: dict | None = None) -> None:
    """Same random flips / in-plane 90° rotations on every array (last `ndim` axes spatial), in place.

    ``transforms``: key -> ``fn(array, op, arg)`` for targets whose values change with the geometry (flow
    vectors, ray distances; `bench.method.Method.target_transforms`), called after the array was moved with
    ``op="flip", arg=ax`` (axis ``-ax`` reversed) or ``op="rot90", arg=k`` (``np.rot90(a, k, axes=(-2, -1))``).
    """
    keys = list(arrays)
    fix = transforms or {}
    if cfg.flip:
        for ax in range(1, ndim + 1):
            if rng.random() < 0.5:
                for k in keys:
                    arrays[k] = np.flip(arrays[k], axis=-ax)
                    if k in fix:
                        arrays[k] = fix[k](arrays[k], "flip", ax)
    if cfg.rot90:
        k90 = int(rng.integers(0, 4))
        if k90:
            for k in keys:
                arrays[k] = np.rot90(arrays[k], k90, axes=(-2, -1))
                if k in fix:
                    arrays[k] = fix[k](arrays[k], "rot90", k90)
    if cfg.intensity > 0:
        gain = 1 + rng.normal(0, cfg.intensity)
        offset = rng.normal(0, cfg.intensity)
        arrays["image"] = arrays["image"] * gain + offset
    for k in keys:
        arrays[k] = np.ascontiguousarray(arrays[k])


class PatchDataset:
    """A torch-style dataset of random patches from cached cases; item i of epoch e is fixed by (seed, e, i).

    That makes a resumed epoch draw exactly the patches the interrupted one would have, whatever the number of
    dataloader workers. Cases are `bench.cache.CaseEntry` folders read memory-mapped one crop at a time, so
    memory does not grow with the number of cases. With ``foreground_fraction`` f, a share f of the patches is
    centred (with jitter) on a foreground voxel of the label (nnU-Net's oversampling for sparse targets).
    Each item carries the case's ``spacing`` and ``id`` next to the arrays. When any case has an ignore region
    (`bench.data.Sample.ignore`), every item carries ``ignore`` (bool, zeros for fully annotated cases), cropped and
    augmented with the targets, for the loss to leave out.
    """

    def __init__(
        self,
        cases: list,
        patch_size: list[int],
        n_items: int,
        augment_cfg: "AugmentConfig",
        ndim: int,
        seed: int,
        foreground_fraction: float = 0.0,
        keys: list[str] | None = None,
        target_transforms: dict | None = None,
    ) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.cases = cases
        self.patch = tuple(patch_size)
        if len(self.patch) != ndim:
            raise ValueError(f"train.patch_size {list(patch_size)} has {len(self.patch)} axes; the data is {ndim}D")
        self.n_items, self.augment_cfg, self.ndim, self.seed = n_items, augment_cfg, ndim, seed
        self.foreground_fraction = float(foreground_fraction)
        self.keys = keys
        self.target_transforms = target_transforms or {}
        self.with_ignore = any("ignore" in c.keys for c in cases)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_items

    def _origin(self, rng: np.random.Generator, case) -> tuple[int, ...]:
        shape = case.shape
        if self.foreground_fraction > 0 and rng.random() < self.foreground_fraction:
            fg = case.foreground()
            if len(fg):
                v = fg[int(rng.integers(len(fg)))]
                out = []
                for c, s, p in zip(v, shape, self.patch):
                    jitter = int(rng.integers(-(p // 4), p // 4 + 1)) if p >= 4 else 0
                    out.append(int(np.clip(c - p // 2 + jitter, 0, max(0, s - p))))
                return tuple(out)
        return _crop_origin(rng, shape, self.patch)

    def __getitem__(self, i: int) -> dict:
        import torch

        rng = np.random.default_rng([self.seed, self.epoch, i])
        case = self.cases[int(rng.integers(len(self.cases)))]
        o = self._origin(rng, case)
        sl = tuple(slice(a, a + p) for a, p in zip(o, self.patch))
        arrays = {}
        for k in ["image"] + list(self.keys if self.keys is not None else case.info.get("targets", [])):
            a = case.array(k)
            arrays[k] = _pad_to(np.array(a[(..., *sl)]), self.patch, self.ndim)  # copy the crop, drop the map
        if self.with_ignore:
            crop = np.array(case.array("ignore")[sl]) if "ignore" in case.keys else np.zeros(
                tuple(min(p, s - a) for p, s, a in zip(self.patch, case.shape, o)), bool)
            arrays["ignore"] = _pad_to(crop, self.patch, self.ndim)
        augment(arrays, rng, self.augment_cfg, self.ndim, self.target_transforms)
        out = {k: torch.from_numpy(v) for k, v in arrays.items()}
        out["spacing"] = torch.tensor(case.spacing, dtype=torch.float32)
        out["id"] = case.id
        return out


def cache_cases(reader, ids: list[str], method, cache, *, with_targets: bool, progress=None,
                perturb=None) -> list:
    """Cached cases of `ids` (built on first use, one case in memory at a time).

    ``with_targets``: training cases (label -> the method's targets; a missing label is an error unless the
    method takes unlabelled images); otherwise evaluation cases (normalised image + label only).
    ``perturb(label, sample_id) -> label``: the noisy-annotation protocol, applied before the targets are made
    (the cache must then be keyed by its settings).
    """
    from .data import DataError

    out = []
    it = progress(ids) if progress else ids
    for sid in it:
        entry = cache.lookup(sid)
        if entry is not None and (not with_targets or entry.info.get("with_targets")):
            out.append(entry)
            continue
        s = reader.load(sid)
        if s.label is None and (not with_targets or method.requires_labels):
            raise DataError(f"{reader.card.name}: image {sid!r} has no label, and "
                            f"{'training' if with_targets else 'evaluation'} needs one"
                            + (f" ({type(method).__name__} trains on labelled images only)" if with_targets else ""))
        if perturb is not None and s.label is not None:
            s.label = perturb(s.label, sid)
        targets = method.make_targets(s) if (with_targets and s.label is not None) else {}
        entry = cache.build(s, method.normalize(s.image), targets, with_targets=with_targets)
        del s, targets
        out.append(entry)
    return out
