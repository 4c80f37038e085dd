"""StarDist's representation (Schmidt et al., MICCAI 2018) on the harness's backbone: per pixel, an object
probability (the normalised distance to the background, ``stardist.edt_prob``) and the distances to the object
boundary along ``n_rays`` equiangular rays (``stardist.star_dist``); instances are the star-convex polygons that
survive StarDist's non-maximum suppression (``stardist.non_maximum_suppression`` + ``polygons_to_label``, the
package's numpy/C parts: no TensorFlow). Loss as StarDist's: BCE on the probability + ``dist_weight`` x the
mean absolute ray error weighted by the true probability (StarDist's train_foreground_only). Predictions are
made at full resolution (StarDist's grid (1, 1)).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data import Sample
from ..method import Method, missing_package
from ..networks import NetworkSpec
from ..registry import register_method


class StarDistParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    n_rays: int = Field(32, ge=3, description="equiangular rays per pixel (StarDist's default 32)")
    dist_weight: float = Field(0.2, ge=0, description="weight of the ray-distance loss (StarDist's 0.2)")
    prob_thresh: float = Field(0.5, gt=0, lt=1, description="object probability of a candidate polygon")
    nms_thresh: float = Field(0.4, ge=0, lt=1, description="overlap above which the weaker polygon is dropped")
    max_candidates: int = Field(20000, ge=1, description="at most this many most probable pixels enter the NMS (an "
                                "untrained network's ~0.5 everywhere would send every pixel into a quadratic search)")


def stardist_available() -> str | None:
    return missing_package("stardist", "stardist")


def rays_to_instances(raw: np.ndarray, prob_thresh: float = 0.5, nms_thresh: float = 0.4,
                      max_candidates: int = 20000) -> np.ndarray:
    """(1 + n_rays, H, W) = probability, ray distances -> instance labels (StarDist's NMS + polygon rendering)."""
    from stardist import non_maximum_suppression, polygons_to_label

    raw = np.asarray(raw, np.float32)
    prob, dist = raw[0], np.ascontiguousarray(np.moveaxis(np.maximum(raw[1:], 1e-3), 0, -1))
    shape = prob.shape
    n_above = int((prob > prob_thresh).sum())
    if not n_above:
        return np.zeros(shape, np.int32)
    if n_above > max_candidates:
        prob_thresh = float(np.partition(prob.ravel(), -max_candidates)[-max_candidates])
    points, probi, disti = non_maximum_suppression(dist, prob, grid=(1, 1), prob_thresh=prob_thresh,
                                                   nms_thresh=nms_thresh, verbose=False)
    return polygons_to_label(disti, points, shape=shape, prob=probi).astype(np.int32)


def transform_rays(dist: np.ndarray, op: str, arg: int) -> np.ndarray:
    """(n_rays, H, W) ray distances of a crop that was flipped (axis -arg) or rotated by np.rot90(k=arg): the
    rays change places. Ray j points along (dy, dx) = (sin phi_j, cos phi_j), phi_j = 2 pi j / n (stardist's
    convention): reversing x maps phi to pi - phi, reversing y maps phi to -phi, np.rot90 subtracts pi / 2
    (checked against star_dist of the transformed label in tests/test_representations.py)."""
    n = dist.shape[0]
    j = np.arange(n)
    if op == "flip":
        if arg == 1 and n % 2:
            raise ValueError(f"an x flip of {n} rays needs an even n_rays")
        src = (n // 2 - j) % n if arg == 1 else (-j) % n
    else:
        if (arg * n) % 4:
            raise ValueError(f"a 90-degree rotation of {n} rays needs n_rays divisible by 4")
        src = (j + arg * n // 4) % n
    return dist[src]


@register_method("stardist_rays", description="StarDist's star-convex rays + object probability on the harness's "
                                              "UNet, instances by StarDist's NMS")
class StarDistRays(Method):
    Params = StarDistParams
    default_monitor = "f1@0.50"
    handles_ignore = True
    postprocess_params = ("prob_thresh", "nms_thresh", "max_candidates")

    @classmethod
    def availability(cls, params) -> str | None:
        return stardist_available()

    def build(self) -> None:
        self.require_data("instance", 2)
        self.networks["net"] = self.build_network(self.params.network, 1 + self.params.n_rays)

    def make_targets(self, sample: Sample) -> dict[str, np.ndarray]:
        from ..targets import compute_target

        t = compute_target("stardist", sample.label, {"n_rays": self.params.n_rays})
        return {"prob": t[:1], "dist": t[1:]}

    def target_transforms(self) -> dict:
        return {"dist": transform_rays}

    def loss(self, outputs, batch):
        import torch.nn.functional as F

        from ..method import known_weights, masked_mean

        w = known_weights(batch, outputs)
        prob = batch["prob"].to(outputs.dtype)
        bce = masked_mean(F.binary_cross_entropy_with_logits(outputs[:, :1], prob, reduction="none"), w)
        mae_px = (outputs[:, 1:] - batch["dist"].to(outputs.dtype)).abs().mean(1, keepdim=True)
        wd = prob if w is None else prob * w  # rays only count inside objects, weighted towards their centres
        mae = (mae_px * wd).sum() / wd.sum().clamp_min(1e-6)
        return {"loss": bce + self.params.dist_weight * mae, "bce": bce, "dist_mae": mae}

    def activation(self, raw):
        import torch

        return torch.cat([raw[:, :1].sigmoid(), raw[:, 1:]], 1)

    def ideal_raw(self, sample: Sample) -> np.ndarray:
        t = self.make_targets(sample)
        return np.concatenate([t["prob"], t["dist"]], 0).astype(np.float32)

    def explain(self, sample: Sample, raw: np.ndarray) -> dict[str, np.ndarray]:
        maps = {"predicted object probability": raw[0], "predicted mean ray length": raw[1:].mean(0)}
        if sample.label is not None:
            maps["target object probability"] = self.make_targets(sample)["prob"][0]
        return maps

    def export_outputs(self) -> dict:
        return {"channel_names": ["prob"] + [f"ray_{k}" for k in range(self.params.n_rays)],
                "activation": "sigmoid on channel 0",
                "description": "Object probability and the distances (pixels) to the boundary along equiangular "
                               "rays, the first pointing along +y (StarDist's convention).",
                "postprocess": "stardist.non_maximum_suppression(dist, prob, grid=(1, 1), prob_thresh, "
                               "nms_thresh) then stardist.polygons_to_label."}

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        p = self.params
        return rays_to_instances(raw, p.prob_thresh, p.nms_thresh, p.max_candidates)
