"""Single-tensor scalar-field regression (Ruiz Vargas et al., "Single tensor cell segmentation using
scalar field representations").

A UNet regresses one scalar field per image: the per-cell Poisson solution (Δu = -1, u = 0 on the cell
boundary) or the steady-state diffusion from the cell's centroid, each cell scaled to [0, 1]. Training is
a plain L1 loss on the field. Instances come back by watershed of the inverted field from its h-minima,
restricted to field >= eps. Also here: the training-free classical watershed floor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data import Sample
from ..method import Method
from ..networks import NetworkSpec, build_network
from ..registry import register_method

TARGET_CACHE_ENV = "BENCH_CACHE_DIR"


def target_cache_dir() -> Path:
    """Where field targets are cached on disk (keyed by label content and parameters)."""
    return Path(os.environ.get(TARGET_CACHE_ENV, Path.home() / ".cache" / "physeg-bench")) / "targets"


class FieldParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: Literal["poisson", "diffusion"] = "poisson"
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    loss: Literal["l1", "l2", "smooth_l1"] = "l1"
    output_activation: Literal["none", "sigmoid"] = "none"
    eps: float = Field(0.05, ge=0, lt=1, description="background threshold on the predicted field")
    h: float = Field(0.1, gt=0, lt=1, description="h-minima depth of the watershed markers")
    min_size: int = Field(0, ge=0, description="drop predicted objects smaller than this (pixels)")
    diffusion_tol: float = Field(0.01, gt=0, description="stop a cell's diffusion when its L2 change < tol")
    cache: bool = True


@register_method("field_regression", description="UNet regressing a per-cell Poisson/diffusion field + watershed")
class FieldRegression(Method):
    Params = FieldParams
    default_monitor = "f1@0.50"

    def build(self) -> None:
        if self.dataset.task != "instance":
            raise ValueError(f"{self.params.field} fields need an instance dataset; "
                             f"{self.dataset.name!r} is {self.dataset.task}")
        spec = self.params.network
        if self.ndim == 3 and spec.name == "smp_unet":
            spec = NetworkSpec(name="monai_unet")
        self.networks["net"] = build_network(spec, self.dataset.channels, 1, self.ndim)

    def field_of(self, label: np.ndarray, spacing=None) -> np.ndarray:
        from .. import fields

        kind = self.params.field
        params = {"tol": self.params.diffusion_tol} if kind == "diffusion" else {}
        if self.params.cache:
            return fields.cached_field(kind, label, params, target_cache_dir())
        fn = fields.poisson_field if kind == "poisson" else fields.diffusion_field
        return fn(label, **params)

    def make_targets(self, sample: Sample) -> dict[str, np.ndarray]:
        return {"field": self.field_of(sample.label).astype(np.float32)[None]}

    def forward(self, x):
        out = self.networks["net"](x)
        return out.sigmoid() if self.params.output_activation == "sigmoid" else out

    def loss(self, outputs, batch):
        import torch.nn.functional as F

        target = batch["field"].to(outputs.dtype)
        fn = {"l1": F.l1_loss, "l2": F.mse_loss, "smooth_l1": F.smooth_l1_loss}[self.params.loss]
        value = fn(outputs, target)
        return {"loss": value, self.params.loss: value}

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        from ..fields import field_to_instances

        return field_to_instances(raw[0], eps=self.params.eps, h=self.params.h, min_size=self.params.min_size)


class ClassicParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # defaults tuned on BBBC039 training images only (docs/fields.md)
    sigma: float = Field(0.5, ge=0, description="Gaussian smoothing before Otsu")
    min_distance: int = Field(12, ge=1, description="minimum distance between watershed markers")
    min_size: int = Field(50, ge=0, description="drop objects smaller than this (pixels)")
    hole_size: int = Field(100, ge=0, description="fill holes smaller than this (pixels)")


@register_method("classic_watershed", description="training-free: smoothing + Otsu + distance-transform watershed")
class ClassicWatershed(Method):
    Params = ClassicParams
    trainable = False

    def predict_raw(self, image: np.ndarray, patch_size=None, overlap: float = 0.25) -> np.ndarray:
        return image.mean(0)  # channels averaged; the pipeline has already normalised

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        from ..fields import classic_watershed

        p = self.params
        return classic_watershed(raw, sigma=p.sigma, min_distance=p.min_distance, min_size=p.min_size,
                                 hole_size=p.hole_size)
