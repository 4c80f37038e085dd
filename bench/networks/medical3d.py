"""3D medical networks from MONAI (BasicUNet, V-Net, Swin UNETR) and the PDE-layer UNet built on MONAI's BasicUNet.

``pde_unet3d``: MONAI's BasicUNet (two conv-norm-act blocks per stage, four 2x poolings) with
`bench.physics.pde_layers.PDELayer` evolving the features after the stages named in ``pde_stages`` (``stage0`` ..
``stage3`` the encoder outputs at full to 1/8 resolution, ``stage4`` the bottleneck). A layer's grid spacing is the
image spacing (from the batch) times the stage's pooling factor, so its operators are in physical units. With
``deep_supervision`` two 1x1x1 heads read the decoder at 1/2 and 1/4 resolution (nnU-Net style); their logits are
kept in ``aux_logits`` during training for the method's loss.
"""

from __future__ import annotations

from typing import Sequence

from ..registry import register_network
from .unets import _build

STAGES = ("stage0", "stage1", "stage2", "stage3", "stage4")


def _basic_unet_class(in_channels: int, out_channels: int, ndim: int,
                      features: Sequence[int] = (32, 32, 64, 128, 256, 32), norm: str = "instance",
                      dropout: float = 0.0):
    return "monai.networks.nets", "BasicUNet", dict(
        spatial_dims=ndim, in_channels=in_channels, out_channels=out_channels, features=tuple(features),
        norm=(norm, {"affine": True}) if norm == "instance" else norm, dropout=dropout)


@register_network("monai_basic_unet", description="MONAI BasicUNet (2 conv blocks per stage, 4 poolings)",
                  requires=("monai",), ndims=(2, 3), divisor=16, library=_basic_unet_class)
def monai_basic_unet(in_channels: int, out_channels: int, ndim: int,
                     features: Sequence[int] = (32, 32, 64, 128, 256, 32), norm: str = "instance",
                     dropout: float = 0.0):
    return _build(*_basic_unet_class(in_channels, out_channels, ndim, features, norm, dropout))


def _vnet_class(in_channels: int, out_channels: int, ndim: int, dropout: float = 0.0):
    if 16 % in_channels:
        raise ValueError(f"monai_vnet: in_channels={in_channels} must divide 16 (MONAI's V-Net input block)")
    return "monai.networks.nets", "VNet", dict(
        spatial_dims=ndim, in_channels=in_channels, out_channels=out_channels, dropout_prob_down=dropout,
        dropout_prob_up=(dropout, dropout))


@register_network("monai_vnet", description="MONAI V-Net (Milletari et al. 2016; fixed widths 16-256)",
                  requires=("monai",), ndims=(2, 3), divisor=16, library=_vnet_class)
def monai_vnet(in_channels: int, out_channels: int, ndim: int, dropout: float = 0.0):
    return _build(*_vnet_class(in_channels, out_channels, ndim, dropout))


def _swin_unetr_class(in_channels: int, out_channels: int, ndim: int, feature_size: int = 24,
                      depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                      use_checkpoint: bool = False):
    if feature_size % 12:
        raise ValueError(f"monai_swin_unetr: feature_size={feature_size} must be a multiple of 12")
    # MONAI 1.6 has no img_size: any input whose sides are multiples of 32
    return "monai.networks.nets", "SwinUNETR", dict(
        in_channels=in_channels, out_channels=out_channels, feature_size=feature_size, depths=tuple(depths),
        num_heads=tuple(num_heads), spatial_dims=ndim, use_checkpoint=use_checkpoint)


@register_network("monai_swin_unetr", description="MONAI Swin UNETR (Hatamizadeh et al. 2022)",
                  requires=("monai", "einops"),
                  ndims=(2, 3), divisor=32, library=_swin_unetr_class)
def monai_swin_unetr(in_channels: int, out_channels: int, ndim: int, feature_size: int = 24,
                     depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                     use_checkpoint: bool = False):
    return _build(*_swin_unetr_class(in_channels, out_channels, ndim, feature_size, depths, num_heads,
                                     use_checkpoint))


def _pde_unet(in_channels: int, out_channels: int, ndim: int, features, norm, pde_stages, steps, scheme,
              accuracy, learn_free, dt_max, reaction, deep_supervision):
    import torch
    from torch import nn

    from ..physics.pde_layers import PDELayer

    unknown = [s for s in pde_stages if s not in STAGES]
    if unknown:
        raise ValueError(f"pde_unet3d: pde_stages {unknown}; choose among {', '.join(STAGES)}")
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]

    class PDEUNet(nn.Module):
        accepts_meta = True

        def __init__(self):
            super().__init__()
            self.backbone = _build(*_basic_unet_class(in_channels, out_channels, ndim, features, norm))
            f = list(features)
            widths = dict(zip(STAGES, f[:5]))
            self.pde = nn.ModuleDict({s: PDELayer(widths[s], ndim, steps=steps, scheme=scheme, accuracy=accuracy,
                                                  learn_free=learn_free, dt_max=dt_max, reaction=reaction)
                                      for s in pde_stages})
            # decoder widths after upcat_3 / upcat_2 (BasicUNet: features[2], features[1])
            self.heads = nn.ModuleList([conv(f[1], out_channels, 1), conv(f[2], out_channels, 1)]
                                       if deep_supervision else [])
            self.aux_logits: list = []

        def _evolve(self, name, x, spacing):
            if name not in self.pde:
                return x
            k = STAGES.index(name)
            sp = None if spacing is None else torch.as_tensor(spacing, dtype=x.dtype, device=x.device) * 2**k
            return self.pde[name](x, sp)

        def forward(self, x, meta=None):
            b = self.backbone
            sp = (meta or {}).get("spacing")
            x0 = self._evolve("stage0", b.conv_0(x), sp)
            x1 = self._evolve("stage1", b.down_1(x0), sp)
            x2 = self._evolve("stage2", b.down_2(x1), sp)
            x3 = self._evolve("stage3", b.down_3(x2), sp)
            x4 = self._evolve("stage4", b.down_4(x3), sp)
            u4 = b.upcat_4(x4, x3)
            u3 = b.upcat_3(u4, x2)
            u2 = b.upcat_2(u3, x1)
            u1 = b.upcat_1(u2, x0)
            self.aux_logits = [h(u) for h, u in zip(self.heads, (u2, u3))] if self.training else []
            return b.final_conv(u1)

    return PDEUNet()


@register_network("pde_unet3d", description="MONAI BasicUNet with learnable PDE layers on encoder stages "
                  "(constrained finite-difference kernels, stable time steps)", requires=("monai",), ndims=(2, 3),
                  divisor=16)
def pde_unet3d(in_channels: int, out_channels: int, ndim: int, features: Sequence[int] = (32, 32, 64, 128, 256, 32),
               norm: str = "instance", pde_stages: Sequence[str] = ("stage3", "stage4"), steps: int = 2,
               scheme: str = "semi_implicit", accuracy: int = 2, learn_free: bool = False, dt_max: float = 5.0,
               reaction: bool = True, deep_supervision: bool = True):
    return _pde_unet(in_channels, out_channels, ndim, tuple(features), norm, tuple(pde_stages), steps, scheme,
                     accuracy, learn_free, dt_max, reaction, deep_supervision)
