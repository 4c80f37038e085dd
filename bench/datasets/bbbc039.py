"""BBBC039v1: U2OS nuclei, Hoechst fluorescence (Broad Bioimage Benchmark Collection).

Official layout: ``images/<stem>.tif`` (uint16), ``masks/<stem>.png`` (RGBA; channel 0 holds a colour
code 0..3, each 4-connected component of one colour is one nucleus, so touching nuclei differ in colour),
``metadata/{training,validation,test}.txt`` (one stem per line, the official split).
"""

from __future__ import annotations

import numpy as np

from ..data import DataError, DatasetReader, Sample
from ..registry import register_dataset

SPLIT_FILES = {"train": "training.txt", "val": "validation.txt", "test": "test.txt"}


def decode_bbbc039_mask(rgba: np.ndarray) -> np.ndarray:
    """Colour-coded mask -> uint16/int32 instance labels (one id per connected component per colour)."""
    from skimage.measure import label as cc_label

    code = rgba[..., 0] if rgba.ndim == 3 else rgba
    out = np.zeros(code.shape, np.int32)
    nxt = 0
    for c in np.unique(code):
        if c == 0:
            continue
        comp, n = cc_label(code == c, connectivity=1, return_num=True)
        out[comp > 0] = comp[comp > 0] + nxt
        nxt += n
    return out


@register_dataset("bbbc039", description="BBBC039 nuclei (images/*.tif, colour-coded masks/*.png, metadata splits)")
class BBBC039(DatasetReader):
    def list_ids(self) -> list[str]:
        folder = self.require(self.root / "images", "image folder")
        return sorted(p.stem for p in folder.glob("*.tif"))

    def official_splits(self) -> dict[str, list[str]] | None:
        meta = self.root / "metadata"
        if not meta.is_dir():
            return None
        out = {}
        for split, fname in SPLIT_FILES.items():
            f = self.require(meta / fname, "split file")
            out[split] = [ln.strip().rsplit(".", 1)[0] if ln.strip().endswith((".png", ".tif")) else ln.strip()
                          for ln in f.read_text().splitlines() if ln.strip()]
        return out

    def load(self, sample_id: str) -> Sample:
        from ..imageio_utils import read_image

        img = read_image(self.require(self.root / "images" / f"{sample_id}.tif", "image"))
        mask_path = self.root / "masks" / f"{sample_id}.png"
        label = decode_bbbc039_mask(read_image(mask_path)) if mask_path.exists() else None
        if img.ndim == 3:  # some readers give (H, W, 1)
            img = img[..., 0]
        if label is not None and label.shape != img.shape:
            raise DataError(f"{mask_path}: label shape {label.shape} != image shape {img.shape}")
        return Sample(sample_id, img[None].astype(np.float32), label, (1.0, 1.0),
                      {"image_path": str(self.root / "images" / f"{sample_id}.tif"), "label_path": str(mask_path),
                       "dtype": str(img.dtype)})
