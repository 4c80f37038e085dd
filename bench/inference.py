"""Whole-image inference for images of any size.

Small enough images go through the network in one piece, padded to the network's divisor (exact for
fully convolutional nets, and fastest). Larger ones use MONAI's sliding window with Gaussian blending.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .method import Method

# above this many pixels/voxels per image, tile instead of one pass (memory on CPU and GPU)
MAX_WHOLE_PIXELS = {2: 2048 * 2048, 3: 160**3}


def pad_to_divisor(x, divisor: int, ndim: int):
    """Pad the last `ndim` axes of a tensor up to a multiple of `divisor` (reflect). Returns (x, slices)."""
    import torch.nn.functional as F

    spatial = x.shape[-ndim:]
    pads = [(-s) % divisor for s in spatial]
    if not any(pads):
        return x, tuple(slice(0, s) for s in spatial)
    flat = []
    for p in reversed(pads):  # F.pad wants the last axis first
        flat += [p // 2, p - p // 2]
    mode = "reflect" if all(s > p for s, p in zip(spatial, pads)) else "replicate"
    out = F.pad(x, flat, mode=mode)
    return out, tuple(slice(p // 2, p // 2 + s) for s, p in zip(spatial, pads))


def inference_meta(method: "Method", meta: dict | None, batch: int = 1) -> dict:
    """The metadata a network sees at inference: the image's spacing (B x ndim) and id, as in training."""
    import torch

    meta = dict(meta or {})
    spacing = meta.get("spacing")
    if spacing is None:
        spacing = method.dataset.spacing or (1.0,) * method.ndim
    if not isinstance(spacing, torch.Tensor):
        spacing = torch.tensor([list(map(float, spacing))] * batch, dtype=torch.float32)
    meta["spacing"] = spacing.to(method.device)
    ids = meta.get("id", "")
    meta["id"] = list(ids) if isinstance(ids, (list, tuple)) else [str(ids)] * batch
    return meta


def infer_full_image(
    method: "Method", image: np.ndarray, patch_size: list[int] | None = None, overlap: float = 0.25,
    meta: dict | None = None,
) -> np.ndarray:
    import torch

    ndim = method.ndim
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(method.device)
    method.train_mode(False)
    n_pix = int(np.prod(image.shape[1:]))
    divisor = method.divisor
    with torch.inference_mode(), method.autocast(inference=True):
        if patch_size is None or n_pix <= MAX_WHOLE_PIXELS[ndim]:
            xp, crop = pad_to_divisor(x, divisor, ndim)
            out = method.activation(method.forward(xp, inference_meta(method, meta)))[(..., *crop)]
        else:
            from monai.inferers import sliding_window_inference

            roi = [max(divisor, (p // divisor) * divisor) for p in patch_size]
            out = sliding_window_inference(
                x,
                roi_size=roi,
                sw_batch_size=4,
                predictor=lambda t: method.activation(method.forward(t, inference_meta(method, meta, t.shape[0]))),
                overlap=overlap,
                mode="gaussian",
                padding_mode="reflect",
            )
    return out[0].float().cpu().numpy()
