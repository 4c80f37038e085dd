"""Cellpose's representation (Stringer et al., Nature Methods 2021) on the harness's backbone: the network
regresses the flows of each cell's heat diffusion from its centre (two channels, scaled by 5 as cellpose
trains them) and a cell-probability logit; cellpose's own dynamics turn them into masks
(``cellpose.dynamics.compute_masks``: pixels follow the flows to their sinks, masks whose flows disagree with
their shape are dropped). Targets come from ``cellpose.dynamics.masks_to_flows_gpu`` (the ``cellpose_flows``
target), the loss is cellpose's: MSE on the scaled flows / 2 + BCE on the probability.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data import Sample
from ..method import Method, missing_package
from ..networks import NetworkSpec
from ..registry import register_method

#: cellpose trains and reads flows multiplied by 5 (train._loss_fn_seg, dynamics.compute_masks)
FLOW_SCALE = 5.0


class CellposeFlowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    cellprob_threshold: float = Field(0.0, description="threshold on the cell-probability logit")
    flow_threshold: float = Field(0.4, ge=0, description="max flow error of a kept mask (0: keep all)")
    min_size: int = Field(15, ge=0, description="drop masks smaller than this (pixels); cellpose's default")
    niter: int = Field(200, ge=1, description="steps of the flow dynamics")


def cellpose_available() -> str | None:
    return missing_package("cellpose", "cellpose")


def flows_to_instances(raw: np.ndarray, cellprob_threshold: float = 0.0, flow_threshold: float = 0.4,
                       min_size: int = 15, niter: int = 200) -> np.ndarray:
    """(3, H, W) = scaled flow y, flow x, cell-probability logit -> instance labels, by cellpose's dynamics."""
    import torch

    from .._compat import ensure_torchvision

    ensure_torchvision()
    from cellpose.dynamics import compute_masks
    from skimage.segmentation import relabel_sequential

    raw = np.asarray(raw, np.float32)
    masks = compute_masks(raw[:2], raw[2], niter=niter, cellprob_threshold=cellprob_threshold,
                          flow_threshold=flow_threshold or None, min_size=min_size or -1,
                          device=torch.device("cpu"))
    return relabel_sequential(np.asarray(masks, np.int64))[0].astype(np.int32)


def transform_flows(flows: np.ndarray, op: str, arg: int) -> np.ndarray:
    """(2, H, W) flows (y, x) of a crop that was flipped (axis -arg) or rotated by np.rot90(k=arg, axes=(-2, -1)):
    the vectors follow the geometry. np.rot90 by 90° maps a displacement (dy, dx) to (-dx, dy)."""
    if op == "flip":
        out = flows.copy()
        out[2 - arg] *= -1  # arg 1 reversed x (channel 1), arg 2 reversed y (channel 0)
        return out
    y, x = flows[0], flows[1]
    for _ in range(arg % 4):
        y, x = -x, y
    return np.stack([y, x])


@register_method("cellpose_flows", description="Cellpose's flows + cell probability on the harness's UNet, "
                                               "masks by cellpose's dynamics")
class CellposeFlows(Method):
    Params = CellposeFlowParams
    default_monitor = "f1@0.50"
    handles_ignore = True
    postprocess_params = ("cellprob_threshold", "flow_threshold", "min_size")

    @classmethod
    def availability(cls, params) -> str | None:
        return cellpose_available()

    def build(self) -> None:
        self.require_data("instance", 2)
        self.networks["net"] = self.build_network(self.params.network, 3)

    def make_targets(self, sample: Sample) -> dict[str, np.ndarray]:
        from ..targets import compute_target

        t = compute_target("cellpose_flows", sample.label)
        return {"flows": t[:2], "cellprob": t[2:]}

    def target_transforms(self) -> dict:
        return {"flows": transform_flows}

    def loss(self, outputs, batch):
        import torch.nn.functional as F

        from ..method import known_weights, masked_mean

        w = known_weights(batch, outputs)
        flows = FLOW_SCALE * batch["flows"].to(outputs.dtype)
        mse = masked_mean(F.mse_loss(outputs[:, :2], flows, reduction="none").mean(1, keepdim=True), w) / 2
        bce = masked_mean(F.binary_cross_entropy_with_logits(outputs[:, 2:], batch["cellprob"].to(outputs.dtype),
                                                             reduction="none"), w)
        return {"loss": mse + bce, "flow_mse": mse, "bce": bce}

    def ideal_raw(self, sample: Sample) -> np.ndarray:
        t = self.make_targets(sample)
        logit = np.where(t["cellprob"] > 0.5, 10.0, -10.0)
        return np.concatenate([FLOW_SCALE * t["flows"], logit], 0).astype(np.float32)

    def explain(self, sample: Sample, raw: np.ndarray) -> dict[str, np.ndarray]:
        maps = {"predicted flow magnitude": np.hypot(raw[0], raw[1]) / FLOW_SCALE,
                "predicted cell probability": 1 / (1 + np.exp(-raw[2]))}
        if sample.label is not None:
            t = self.make_targets(sample)["flows"]
            maps["target flow magnitude"] = np.hypot(t[0], t[1])
        return maps

    def export_outputs(self) -> dict:
        return {"channel_names": ["flow_y", "flow_x", "cellprob_logit"], "activation": "none",
                "description": "Cellpose flows (unit diffusion flows times 5) and the cell-probability logit.",
                "postprocess": "cellpose.dynamics.compute_masks(dP=channels 0-1, cellprob=channel 2, niter, "
                               "cellprob_threshold, flow_threshold, min_size)."}

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        p = self.params
        return flows_to_instances(raw, p.cellprob_threshold, p.flow_threshold, p.min_size, p.niter)
