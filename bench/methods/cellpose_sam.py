"""Cellpose-SAM (Pachitariu, Rariden & Stringer, 2025), pretrained, through cellpose's own API: no training
here. The weights file is given by path (``method.params.weights``) or found as ``<model_name>`` in
``$CELLPOSE_LOCAL_MODELS_PATH`` (cellpose's models folder). It is never downloaded by the harness: without
the file the method reports which file it needs (``bench list methods``), and a sweep skips it at once.

Cellpose normalises its input itself (1st-99th percentile per channel), so the harness passes the raw image.
``predict_raw`` returns cellpose's flows and cell-probability logit (``eval(..., compute_masks=False)``);
``postprocess`` runs cellpose's dynamics on them (`bench.methods.cellpose_flows.flows_to_instances`), so the
thresholds can be calibrated on the val split like any method's post-processing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..method import Method
from ..registry import register_method
from .cellpose_flows import cellpose_available, flows_to_instances

WEIGHTS_URL = "https://huggingface.co/mouseland/cellpose-sam/resolve/main/"


class CellposeSAMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: str | None = Field(None, description="path of the Cellpose-SAM weights file; None: <model_name> in "
                                                  "$CELLPOSE_LOCAL_MODELS_PATH (else ~/.cellpose/models)")
    model_name: str = Field("cpsam", description="file name looked up in the models folder")
    diameter: float | None = Field(None, gt=0, description="mean object diameter in pixels; None: as trained (30)")
    batch_size: int = Field(8, ge=1, description="256 x 256 tiles per forward pass")
    use_bfloat16: bool = Field(True, description="bf16 weights on CUDA (always float32 on CPU: bf16 is 10x slower)")
    cellprob_threshold: float = 0.0
    flow_threshold: float = Field(0.4, ge=0)
    min_size: int = Field(15, ge=0)
    niter: int = Field(200, ge=1)


def models_folder() -> Path:
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env) if env else Path.home() / ".cellpose" / "models"


def weights_path(params: CellposeSAMParams) -> Path:
    return Path(params.weights).expanduser() if params.weights else models_folder() / params.model_name


@register_method("cellpose_sam", description="pretrained Cellpose-SAM through cellpose's API (weights by path)")
class CellposeSAM(Method):
    Params = CellposeSAMParams
    trainable = False
    postprocess_params = ("cellprob_threshold", "flow_threshold", "min_size")

    @classmethod
    def availability(cls, params: CellposeSAMParams) -> str | None:
        missing = cellpose_available()
        if missing:
            return missing
        path = weights_path(params)
        if not path.is_file():
            return (f"needs the Cellpose-SAM weights file {path} (download {WEIGHTS_URL}{params.model_name} "
                    "there, or set method.params.weights / $CELLPOSE_LOCAL_MODELS_PATH)")
        return None

    def build(self) -> None:
        self.require_data("instance", 2)
        why = self.availability(self.params)
        if why:
            raise FileNotFoundError(why)
        from .._compat import ensure_torchvision

        ensure_torchvision()
        from cellpose.models import CellposeModel

        cuda = self.device.type == "cuda"
        self.model = CellposeModel(gpu=cuda, device=self.device, pretrained_model=str(weights_path(self.params)),
                                   use_bfloat16=cuda and self.params.use_bfloat16)

    def to(self, device):
        self.device = device
        return self

    def weights_files(self) -> dict[str, Path]:
        return {self.params.model_name: weights_path(self.params)}

    def normalize(self, image: np.ndarray) -> np.ndarray:
        return np.asarray(image, np.float32)  # cellpose normalises (percentiles) inside eval

    def predict_raw(self, image: np.ndarray, patch_size=None, overlap: float = 0.25, meta=None) -> np.ndarray:
        _, flows, _ = self.model.eval(image, channel_axis=0, batch_size=self.params.batch_size,
                                      diameter=self.params.diameter, compute_masks=False, progress=None)
        dp, cellprob = np.asarray(flows[1], np.float32), np.asarray(flows[2], np.float32)
        return np.concatenate([dp, cellprob[None]], 0)

    def export_outputs(self) -> dict:
        raise ValueError("cellpose_sam is cellpose's own model: export it with cellpose (its weights file is "
                         f"{weights_path(self.params)})")

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        p = self.params
        return flows_to_instances(raw, p.cellprob_threshold, p.flow_threshold, p.min_size, p.niter)
