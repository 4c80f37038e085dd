"""PDE-constrained 2D UNet (Poudel & Khadka, "PDE-Constrained Optimization for Neural Image Segmentation with
Physics Priors", 2026): the physics enters as differentiable residual losses on the predicted foreground.

u = sigmoid(UNet(x)). Data term: dice_weight * soft Dice + bce_weight * BCE. Physics terms (`bench.physics`):

- reaction-diffusion: lambda_rd * mean((D lap(u) + u (1 - u)(u - a))^2), 5-point Laplacian, reflecting boundary,
  grid spacing from the batch (the dataset's; unit when it has none);
- phase field (Ginzburg-Landau / Modica-Mortola): lambda_pf * mean(eps/2 |grad u|^2 + u^2 (1 - u)^2 / eps).

Two stages, as the authors train: stage I ("data") the data term only for ``stage1_epochs`` (default half of
``train.epochs``), then from stage I's best checkpoint stage II adds the physics terms at lr x ``stage2_lr_factor``
for the remaining epochs; both stages validate (Dice) and keep their best checkpoint. The unconstrained baseline
is this method with both weights 0 and the same epochs and schedule (card `pde_unet_zero`).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data import Sample
from ..method import Method
from ..networks import NetworkSpec
from ..registry import register_method


class PDEUNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    dice_weight: float = Field(0.5, ge=0)
    bce_weight: float = Field(0.5, ge=0)
    lambda_rd: float = Field(1e-4, ge=0, description="weight of the reaction-diffusion residual")
    D: float = Field(5.0, ge=0, description="diffusion coefficient of the residual")
    a: float = Field(0.5, gt=0, lt=1, description="unstable fixed point of the bistable reaction")
    lambda_pf: float = Field(1e-4, ge=0, description="weight of the phase-field interface energy")
    eps: float = Field(0.05, gt=0, description="interface width of the phase-field energy")
    stage1_epochs: int | None = Field(None, ge=0, description="data-only epochs; null: half of train.epochs")
    stage2_lr_factor: float = Field(0.1, gt=0)
    threshold: float = Field(0.5, gt=0, lt=1)


@register_method("pde_unet", description="2D UNet + reaction-diffusion and phase-field residual losses, two stages")
class PDEUNet(Method):
    Params = PDEUNetParams
    default_monitor = "dice"
    handles_ignore = True

    def build(self) -> None:
        if self.dataset.num_classes != 2:
            raise ValueError(f"pde_unet segments one foreground; {self.dataset.name!r} has classes "
                             f"{self.dataset.classes} (use a foreground card such as bbbc039_fg)")
        self.networks["net"] = self.build_network(self.params.network, 1)
        self.physics_on = False

    def target_key(self) -> dict:
        return {"class": "pde_unet", "target": "foreground-1"}  # the loss weights do not change the arrays

    def make_targets(self, sample: Sample) -> dict[str, np.ndarray]:
        return {"fg": (sample.label > 0).astype(np.float32)[None]}

    def physics_terms(self, u, spacing=None) -> dict:
        from ..physics import phase_field_energy, reaction_diffusion_residual

        p = self.params
        sp = spacing if self.dataset.spacing else None  # unit grid unless the dataset states a spacing
        return {"rd": (reaction_diffusion_residual(u, p.D, p.a, sp) ** 2).mean(),
                "pf": phase_field_energy(u, p.eps, sp).mean()}

    def loss(self, outputs, batch):
        import torch.nn.functional as F

        from ..method import known_weights, masked_mean

        p = self.params
        y = batch["fg"].float()
        u = outputs.sigmoid()
        w = known_weights(batch, outputs)  # the data terms skip the ignore region; the physics terms need none
        uw, yw = (u, y) if w is None else (u * w, y * w)
        dims = tuple(range(1, u.ndim))
        dice = 1 - ((2 * (uw * yw).sum(dims) + 1) / (uw.sum(dims) + yw.sum(dims) + 1)).mean()
        bce = masked_mean(F.binary_cross_entropy_with_logits(outputs, y, reduction="none"), w)
        data = p.dice_weight * dice + p.bce_weight * bce
        terms = {"dice": dice, "bce": bce, "data": data}
        loss = data
        if self.physics_on and (p.lambda_rd or p.lambda_pf):
            phys = self.physics_terms(u, batch.get("spacing"))
            terms.update(phys)
            loss = loss + p.lambda_rd * phys["rd"] + p.lambda_pf * phys["pf"]
        terms["loss"] = loss
        return terms

    def fit(self, ctx):
        p, epochs = self.params, ctx.cfg.train.epochs
        n1 = epochs // 2 if p.stage1_epochs is None else min(p.stage1_epochs, epochs)
        if n1 > 0:
            self.physics_on = False
            ctx.train_loop(stage="data", train={"epochs": n1})
            best = ctx.load("best", stage="data")
            if best is not None:  # stage II starts from stage I's best epoch
                self.load_state_dict(best["method"])
        self.physics_on = True
        return ctx.train_loop(train={"epochs": max(1, epochs - n1), "lr": ctx.cfg.train.lr * p.stage2_lr_factor})

    def activation(self, raw):
        return raw.sigmoid()

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        return (raw[0] > self.params.threshold).astype(np.int32)
