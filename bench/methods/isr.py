"""ISR projection (issue 13, sequential mode): the output of a finished run of any method, projected onto a shape
constraint by an implicit representation (`bench.shapes`): per object for instance data (each object's mask, in its
bounding box with a margin, refit as a convex / star-shaped / symmetric / path-connected set), on the whole
foreground for semantic data. Training-free; the predictor run is recorded in the provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..method import Method
from ..registry import register_method


class ISRParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    predictor_run: str | None = Field(None, description="a finished run folder whose predictions are projected")
    constraint: Literal["convex", "star", "mirror", "rotational", "connected"] = "convex"
    per_object: bool | None = Field(None, description="None: per object for instance data, whole mask otherwise")
    steps: int = Field(300, ge=1)
    points: int = Field(2048, ge=16, description="pixel coordinates drawn per fitting step")
    lr: float = Field(0.02, gt=0)
    margin: int = Field(4, ge=0, description="pixels around an object's bounding box in its fit")
    width: int = Field(32, ge=4, description="hidden width of the representation's networks")
    batched: bool = Field(True, description="fit all objects of an image at once (bench.shapes.fit_projection_batch)")
    fit_size: int | None = Field(256, ge=16, description="a mask whose longer side exceeds this is fitted on its "
                                 "area-averaged copy of this size, then rendered at full resolution; None: full size")
    seed: int = 0


@register_method("isr_projection", description="a finished run's output projected onto a shape constraint (ISR)")
class ISRProjection(Method):
    Params = ISRParams
    trainable = False

    @classmethod
    def availability(cls, params: ISRParams) -> str | None:
        if not params.predictor_run:
            return "needs method.params.predictor_run: a finished run folder (e.g. runs/<dataset>/unet/seed0)"
        if not (Path(params.predictor_run) / "summary.json").is_file():
            return f"predictor_run {params.predictor_run} is not a finished run (no summary.json)"
        return None

    def build(self) -> None:
        from ..runner import load_trained

        self.predictor_cfg, self.predictor = load_trained(self.params.predictor_run, device=str(self.device))
        if self.dataset.task == "semantic" and self.dataset.num_classes > 2:
            raise ValueError(f"isr_projection fits one shape per object or one foreground; {self.dataset.name!r} has "
                             f"{self.dataset.num_classes} classes")
        if self.predictor_cfg.dataset.task != self.dataset.task:
            raise ValueError(f"predictor_run {self.params.predictor_run} is a {self.predictor_cfg.dataset.task} "
                             f"run; {self.dataset.name!r} is {self.dataset.task}")

    def to(self, device):
        self.device = device
        return self

    def normalize(self, image):
        return self.predictor.normalize(image)

    def predict_raw(self, image, patch_size=None, overlap: float = 0.25, meta=None):
        return self.predictor.predict_raw(image, self.predictor_cfg.train.patch_size, overlap, meta=meta)

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        pred = self.predictor.postprocess(raw)
        per_object = self.params.per_object if self.params.per_object is not None else self.dataset.task == "instance"
        if not per_object:
            return self._project(pred > 0).astype(np.int32) * (pred.max() > 0)
        out = np.zeros_like(pred, dtype=np.int32)
        from scipy import ndimage as ndi

        m = self.params.margin
        boxes = [(k, tuple(slice(max(0, b.start - m), min(n, b.stop + m)) for b, n in zip(box, pred.shape)))
                 for k, box in enumerate(ndi.find_objects(pred), start=1) if box is not None]
        crops = [(pred[box] == k) for k, box in boxes]
        masks = self._project_many(crops) if self.params.batched else [self._project(c) for c in crops]
        for (k, box), mask in zip(boxes, masks):
            region = out[box]
            region[mask & (region == 0)] = k  # an earlier object keeps pixels both claim
        from skimage.segmentation import relabel_sequential

        return relabel_sequential(out)[0].astype(np.int32)

    def _project(self, mask: np.ndarray) -> np.ndarray:
        from ..shapes import fit_projection

        if mask.ndim != 2:
            raise ValueError("isr_projection fits 2D shapes; this mask is "
                             f"{mask.ndim}D (3D representations are not implemented)")
        p = self.params
        prob = mask.astype(np.float32)
        scale = p.fit_size / max(mask.shape) if p.fit_size else 1.0
        if scale < 1:  # the shape's coordinates span [-1, 1] on the longer side at any size: fit small, render full
            import torch
            import torch.nn.functional as F

            size = tuple(max(1, round(n * scale)) for n in mask.shape)
            prob = F.interpolate(torch.from_numpy(prob)[None, None], size=size, mode="area")[0, 0].numpy()
        model, out = fit_projection(prob, p.constraint, steps=p.steps, points=p.points, lr=p.lr, seed=p.seed,
                                    width=p.width)
        if out.shape != mask.shape:
            from ..shapes import render

            out = render(model, mask.shape)
        return out

    def _project_many(self, masks: list[np.ndarray]) -> list[np.ndarray]:
        from ..shapes import fit_projection_batch

        p = self.params
        return fit_projection_batch([mk.astype(np.float32) for mk in masks], p.constraint, steps=p.steps,
                                    points=p.points, lr=p.lr, seed=p.seed, width=p.width)

    def weights_files(self) -> dict[str, Path]:
        return {f"predictor/{k}": v for k, v in self.predictor.weights_files().items()} | (
            {"predictor": Path(self.params.predictor_run) / "checkpoints" / f"{self.predictor_cfg.eval.checkpoint}.pt"}
            if self.predictor.trainable and self.predictor_cfg.train.epochs > 0 else {})

    def training_data(self):
        return [{"kind": "run", "run_dir": str(Path(self.params.predictor_run).resolve()),
                 "method": self.predictor_cfg.method.name, "config_hash": self.predictor_cfg.config_hash(),
                 "trained_on": self.predictor.training_data(),
                 "postprocess": getattr(self.predictor, "calibrated", None)}]
