"""ISBI 2012 EM segmentation challenge: 30 ssTEM sections (512x512, Drosophila VNC) with membrane labels.

Two layouts are read:

- PNG pairs ``image/N.png`` and ``label/N.png`` (N = 0..29);
- the official multi-page TIFF volumes ``train-volume.tif`` / ``train-labels.tif`` (one page per section; a
  sample reads only its own page).

Labels are 0 = membrane, 255 = cell interior. With ``foreground: cell`` (default) they become classes
0 = membrane, 1 = cell; with ``foreground: membrane``, 0 = cell, 1 = membrane. The card's ``classes`` must
name them in that order. Only the 30 training sections are labelled (``test-volume.tif`` has none), so there
is no official split: the core makes a seeded random one.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..data import DataError, DatasetReader, Sample
from ..registry import register_dataset
from ._common import card_spacing, read_array, read_tiff_page, tiff_page_count, to_image, to_label


class ISBIParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layout: Literal["auto", "png", "tiff"] = "auto"  # auto: PNG pairs when image/ exists, else the TIFF volumes
    foreground: Literal["cell", "membrane"] = "cell"  # which of the two classes is class 1
    volume: str = "train-volume.tif"
    labels: str = "train-labels.tif"


@register_dataset("isbi2012", description="ISBI 2012 ssTEM membranes (image/N.png + label/N.png, or train-volume.tif)")
class ISBI2012(DatasetReader):
    Params = ISBIParams

    @property
    def layout(self) -> str:
        if self.params.layout != "auto":
            return self.params.layout
        if (self.root / "image").is_dir():
            return "png"
        if (self.root / self.params.volume).exists():
            return "tiff"
        raise DataError(
            f"isbi2012: neither {self.root / 'image'}/ (PNG pairs) nor {self.root / self.params.volume} "
            "(multi-page TIFF) found"
        )

    def list_ids(self) -> list[str]:
        if self.layout == "png":
            folder = self.require(self.root / "image", "image folder")
            stems = [p.stem for p in folder.glob("*.png") if not p.name.startswith(".")]
            return sorted(stems, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
        n = tiff_page_count(self.require(self.root / self.params.volume, "image volume"))
        return [str(i) for i in range(n)]

    def _map(self, lab: np.ndarray, path) -> np.ndarray:
        lab = np.asarray(lab)
        if lab.ndim == 3:
            lab = lab[..., 0]
        vals = np.unique(lab)
        if not set(vals.tolist()) <= {0, 1, 255}:
            raise DataError(f"isbi2012: label {path} holds values {vals[:8].tolist()}; expected 0 (membrane) "
                            "and 255 (cell)")
        cell = lab > 0
        return (cell if self.params.foreground == "cell" else ~cell).astype(np.int32)

    def load(self, sample_id: str) -> Sample:
        if self.layout == "png":
            img_path = self.require(self.root / "image" / f"{sample_id}.png", "image")
            lab_path = self.root / "label" / f"{sample_id}.png"
            if not lab_path.exists():
                raise DataError(f"isbi2012: missing label for image {img_path}: expected {lab_path}")
            raw = read_array(img_path)
            lab = read_array(lab_path, "label")
        else:
            img_path = self.require(self.root / self.params.volume, "image volume")
            lab_path = self.root / self.params.labels
            if not lab_path.exists():
                raise DataError(f"isbi2012: missing label volume for {img_path}: expected {lab_path}")
            raw = read_tiff_page(img_path, int(sample_id))
            lab = read_tiff_page(lab_path, int(sample_id))
        if raw.ndim == 3:
            raw = raw[..., 0]
        label = to_label(self._map(lab, lab_path), lab_path, num_classes=len(self.card.classes),
                         shape=raw.shape, image_path=img_path)
        return Sample(sample_id, to_image(raw, img_path, 2, self.card.channels), label, card_spacing(self.card, 2),
                      {"image_path": str(img_path), "label_path": str(lab_path), "dtype": str(raw.dtype)})
