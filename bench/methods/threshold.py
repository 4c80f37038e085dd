"""Training-free floor for two-phase semantic data: Gaussian smoothing + Otsu's threshold (the classical way to
segment a two-phase micrograph), optionally a morphological opening; the brighter side is class 1."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..method import Method
from ..registry import register_method


class ThresholdParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sigma: float = Field(2.0, ge=0, description="Gaussian smoothing before the threshold (pixels)")
    opening: int = Field(0, ge=0, description="radius of a morphological opening of the bright phase (0: none)")
    bright_class: int = Field(1, ge=0, le=1, description="the class of the pixels above the threshold")


@register_method("otsu_threshold", description="training-free: Gaussian smoothing + Otsu threshold (2 classes)")
class OtsuThreshold(Method):
    Params = ThresholdParams
    trainable = False

    def build(self) -> None:
        self.require_data("semantic")
        if self.dataset.num_classes != 2:
            raise ValueError(f"otsu_threshold separates two classes; {self.dataset.name!r} has "
                             f"{self.dataset.num_classes}")

    def predict_raw(self, image: np.ndarray, patch_size=None, overlap: float = 0.25, meta=None) -> np.ndarray:
        from scipy import ndimage as ndi

        img = image.mean(0)
        return ndi.gaussian_filter(img, self.params.sigma) if self.params.sigma else img

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        from skimage.filters import threshold_otsu

        bright = raw > threshold_otsu(raw)
        if self.params.opening:
            from skimage.morphology import binary_opening, disk

            bright = binary_opening(bright, disk(self.params.opening))
        p = self.params
        return np.where(bright, p.bright_class, 1 - p.bright_class).astype(np.int32)
