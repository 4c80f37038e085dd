"""ISR joint mode (issue 13): the predictor N_theta and the constrained representation G_nu trained together.

Loss = the UNet's cross-entropy + soft Dice + ``alpha`` * mean (sigma(N_theta(f)) - sigma(G_nu))^2 on the foreground
probability, the poster's distance between the prediction and its constrained representation. The minimisation
over (theta, nu) alternates (block coordinate descent): each step first fits G_nu to the current, detached
prediction of every crop of the batch (``inner_steps`` Adamax steps, all crops at once:
`bench.shapes.fit_projection_batch`), then takes the optimiser step on theta with G_nu fixed, so the prior pulls
the network towards outputs that satisfy the constraint. Semantic data with one foreground class (one object per
image, e.g. davis2016). The run predicts with N_theta alone; `isr` over this run (method.params.predictor_run)
gives the jointly trained predictor's constrained output (the poster's "joint" column).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ..registry import register_method
from .unet import UNet, UNetParams


class ISRJointParams(UNetParams):
    constraint: Literal["convex", "star", "mirror", "rotational", "connected"] = "convex"
    alpha: float = Field(1.0, ge=0, description="weight of the prior term (prediction vs its constrained fit)")
    inner_steps: int = Field(50, ge=1, description="Adamax steps of each crop's fit per training step")
    points: int = Field(1024, ge=16, description="pixel coordinates drawn per inner step")
    lr: float = Field(0.02, gt=0, description="Adamax learning rate of the inner fits")
    width: int = Field(16, ge=4, description="hidden width of the representation's networks")


@register_method("isr_joint", description="UNet trained jointly with a shape-constrained implicit representation")
class ISRJoint(UNet):
    Params = ISRJointParams

    def build(self) -> None:
        if self.dataset.task != "semantic" or self.dataset.num_classes != 2:
            raise ValueError(f"isr_joint fits one constrained foreground per image; {self.dataset.name!r} is "
                             f"{self.dataset.task} with classes {list(self.dataset.classes)} (one foreground class "
                             "expected, e.g. davis2016)")
        super().build()
        self._fits = 0

    def constrained_fit(self, prob_fg) -> "np.ndarray":
        """(B, *spatial) detached foreground probabilities -> (B, *spatial) sigma(G_nu) of their constrained fits."""
        from ..shapes import fit_projection_batch

        p = self.params
        maps = [m for m in prob_fg.detach().float().cpu().numpy()]
        self._fits += 1
        fitted = fit_projection_batch(maps, p.constraint, steps=p.inner_steps, points=p.points, lr=p.lr,
                                      seed=self._fits, soft=True, width=p.width)
        return np.stack(fitted)

    def loss(self, outputs, batch):
        import torch

        terms = super().loss(outputs, batch)
        if not self.params.alpha:
            return terms
        prob_fg = outputs.float().softmax(1)[:, 1]
        target = torch.from_numpy(self.constrained_fit(prob_fg)).to(prob_fg.device)
        prior = ((prob_fg - target) ** 2).mean()
        terms["prior"] = prior
        terms["loss"] = terms["loss"] + self.params.alpha * prior
        return terms
