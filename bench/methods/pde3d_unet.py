"""pde3d_unet: a 3D UNet whose encoder/bottleneck features are evolved by learnable PDE layers (the blueprint of
Gajbhiye, "Numerical Methods and Convolutional Neural Networks for 3D Medical Image Segmentation").

Network: ``pde_unet3d`` (bench/networks/medical3d.py): MONAI's BasicUNet with `bench.physics.pde_layers.PDELayer`
after the stages the card names: du/dt = D_phi[u] + N_psi(u), D_phi anisotropic diffusion from moment-constrained
kernels (PDE-Net), N_psi a 1x1x1 conv, K explicit / semi-implicit / Crank-Nicolson steps with a learnable step in
its stable range; spacing-aware.

Loss (the UNet's data term, `bench.methods.unet.UNet.loss`: cross-entropy + soft Dice, honouring ignore regions)
plus
- deep supervision: the same data term on the decoder heads at 1/2 and 1/4 resolution against nearest-downsampled
  labels, weighted 1/2 and 1/4 and the sum normalised (nnU-Net);
- ``lambda_pde`` x a PDE-consistency residual of the prediction: the reaction-diffusion residual
  ``D lap(p) + p (1 - p)(p - a)`` of the foreground probability p = 1 - p_background (`bench.physics`, the same
  term as pde_unet's), squared and averaged, on the data's grid spacing;
- ``lambda_tv`` x the total variation of the class probabilities (optional; 0 by default).
The ablations are cards: backbone only (no PDE layers, lambda_pde 0), PDE loss only (no layers), the full model,
K = 1 / 2 / 5, explicit vs semi-implicit vs Crank-Nicolson.
"""

from __future__ import annotations

from pydantic import Field

from ..registry import register_method
from .unet import UNet, UNetParams


class PDE3DParams(UNetParams):
    deep_supervision_weight: float = Field(1.0, ge=0, description="0: main output only")
    lambda_pde: float = Field(1e-3, ge=0, description="weight of the reaction-diffusion residual of the prediction")
    D: float = Field(1.0, ge=0, description="diffusion coefficient of the residual (per spacing unit squared)")
    a: float = Field(0.5, gt=0, lt=1, description="unstable fixed point of the bistable reaction")
    lambda_tv: float = Field(0.0, ge=0, description="weight of the total variation of the class probabilities")


@register_method("pde3d_unet", description="3D UNet with learnable PDE layers + Dice/CE, deep supervision, PDE residual")
class PDE3DUNet(UNet):
    Params = PDE3DParams

    def build(self) -> None:
        super().build()
        net = self.networks["net"]
        if not self.params.deep_supervision_weight and getattr(net, "heads", None) is not None:
            from torch import nn

            net.heads = nn.ModuleList()  # heads outside the loss would be unused parameters (DDP refuses them)

    def loss(self, outputs, batch):
        import torch
        import torch.nn.functional as F

        from ..distributed import unwrap
        from ..physics import gradient, reaction_diffusion_residual

        p = self.params
        terms = super().loss(outputs, batch)
        loss = terms["loss"]
        aux = getattr(unwrap(self.networks["net"]), "aux_logits", []) if p.deep_supervision_weight else []
        if aux:
            weights = [0.5 ** (k + 1) for k in range(len(aux))]
            ds = 0.0
            for w, logits in zip(weights, aux):
                size = logits.shape[2:]
                small = {**batch, "target": F.interpolate(batch["target"][:, None].float(), size=size,
                                                          mode="nearest")[:, 0].long()}
                if batch.get("ignore") is not None:
                    small["ignore"] = F.interpolate(batch["ignore"][:, None].float(), size=size,
                                                    mode="nearest")[:, 0] > 0.5
                ds = ds + w * super().loss(logits.float(), small)["loss"]
            # nnU-Net: the main output weighs 1, the heads 1/2, 1/4; the sum normalised to 1
            ds = p.deep_supervision_weight * ds
            loss = (loss + ds) / (1 + p.deep_supervision_weight * sum(weights))
            terms["deep_supervision"] = ds
        prob = outputs.float().softmax(1)
        spacing = batch.get("spacing") if self.dataset.spacing else None  # unit grid unless the card states one
        if p.lambda_pde:
            fg = 1 - prob[:, :1]
            rd = (reaction_diffusion_residual(fg, p.D, p.a, spacing) ** 2).mean()
            terms["pde"] = rd
            loss = loss + p.lambda_pde * rd
        if p.lambda_tv:
            tv = torch.stack([g.abs().mean() for g in gradient(prob, spacing)]).sum()
            terms["tv"] = tv
            loss = loss + p.lambda_tv * tv
        terms["loss"] = loss
        return terms
