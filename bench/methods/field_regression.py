"""Single-tensor scalar-field regression (Ruiz Vargas et al., "Single tensor cell segmentation using
scalar field representations").

A UNet regresses one scalar field per image: the per-cell Poisson solution (Δu = -1, u = 0 on the cell
boundary) or the steady-state diffusion from the cell's centroid, each cell scaled to [0, 1]. Training is
a plain L1 loss on the field. Instances come back by watershed of the inverted field from its h-minima,
restricted to field >= eps. Also here: the training-free classical watershed floor.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data import Sample
from ..method import Method
from ..networks import NetworkSpec
from ..registry import register_method


class FieldParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str = Field("poisson", description="a registered target (`bench list targets`): poisson, diffusion, ...")
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    loss: Literal["l1", "l2", "smooth_l1"] = "l1"
    output_activation: Literal["none", "sigmoid"] = "none"
    eps: float = Field(0.05, ge=0, lt=1, description="background threshold on the predicted field")
    h: float = Field(0.1, gt=0, lt=1, description="h-minima depth of the watershed markers")
    min_size: int = Field(0, ge=0, description="drop predicted objects smaller than this (pixels)")
    target_params: dict = Field(default_factory=dict, description="keyword arguments of the target "
                                "(diffusion: tol, the per-cell stop on the normalised change)")
    cache: bool = True


@register_method("field_regression", description="UNet regressing a per-cell Poisson/diffusion field + watershed")
class FieldRegression(Method):
    Params = FieldParams
    default_monitor = "f1@0.50"
    handles_ignore = True
    postprocess_params = ("eps", "h", "min_size")

    def build(self) -> None:
        if self.dataset.task != "instance":
            raise ValueError(f"{self.params.field} fields need an instance dataset; "
                             f"{self.dataset.name!r} is {self.dataset.task}")
        from ..registry import TARGETS

        TARGETS.entry(self.params.field)  # unknown names fail here, listing the registered targets
        self.networks["net"] = self.build_network(self.params.network, 1)

    def field_of(self, label: np.ndarray, spacing=None) -> np.ndarray:
        from ..targets import compute_target

        return compute_target(self.params.field, label, self.params.target_params, spacing, cache=self.params.cache)

    def make_targets(self, sample: Sample) -> dict[str, np.ndarray]:
        return {"field": self.field_of(sample.label, sample.spacing).astype(np.float32)[None]}

    def forward(self, x, meta=None):
        out = super().forward(x, meta)
        return out.sigmoid() if self.params.output_activation == "sigmoid" else out

    def loss(self, outputs, batch):
        import torch.nn.functional as F

        from ..method import known_weights, masked_mean

        target = batch["field"].to(outputs.dtype)
        fn = {"l1": F.l1_loss, "l2": F.mse_loss, "smooth_l1": F.smooth_l1_loss}[self.params.loss]
        value = masked_mean(fn(outputs, target, reduction="none"), known_weights(batch, outputs))
        return {"loss": value, self.params.loss: value}

    def explain(self, sample: Sample, raw: np.ndarray) -> dict[str, np.ndarray]:
        maps = {f"predicted {self.params.field} field": raw[0]}
        if sample.label is not None:
            maps[f"target {self.params.field} field"] = self.field_of(sample.label, sample.spacing)
        return maps

    def export_outputs(self) -> dict:
        return {"channel_names": [f"{self.params.field}_field"], "activation": self.params.output_activation,
                "description": f"The per-object {self.params.field} scalar field (each object's field scaled to "
                               "[0, 1], 0 on its boundary and in the background).",
                "postprocess": "Instances: foreground = field >= `eps`; markers = the field's regional maxima of "
                               "height at least `h` (h-maxima); seeded watershed of the negative field inside the "
                               "foreground; objects under `min_size` pixels dropped "
                               "(`bench.fields.field_to_instances`)."}

    def ideal_raw(self, sample: Sample) -> np.ndarray:
        return self.field_of(sample.label, sample.spacing).astype(np.float32)[None]

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

    def predict_raw(self, image: np.ndarray, patch_size=None, overlap: float = 0.25, meta=None) -> np.ndarray:
        return image.mean(0)  # channels averaged; the pipeline has already normalised

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        from ..fields import classic_watershed

        p = self.params
        return classic_watershed(raw, sigma=p.sigma, min_distance=p.min_distance, min_size=p.min_size,
                                 hole_size=p.hole_size)
