"""Plain UNets: segmentation-models-pytorch in 2D, MONAI in 3D."""

from __future__ import annotations

from ..registry import register_network


def _monai_divisor(ctx, options) -> int:
    return 2 ** (len(options.get("channels", (16, 32, 64, 128, 256))) - 1)


@register_network("smp_unet", description="2D UNet from segmentation-models-pytorch (any timm/smp encoder)",
                  requires=("segmentation_models_pytorch",), ndims=(2,), divisor=32)
def smp_unet(in_channels: int, out_channels: int, ndim: int, encoder: str = "resnet18",
             encoder_weights: str | None = None, decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)):
    if ndim != 2:
        raise ValueError("smp_unet is 2D; use monai_unet for 3D data")
    from .._compat import ensure_torchvision

    ensure_torchvision()
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name=encoder, encoder_weights=encoder_weights, in_channels=in_channels,
                    classes=out_channels, decoder_channels=tuple(decoder_channels))


@register_network("monai_unet", description="2D/3D residual UNet from MONAI", requires=("monai",), ndims=(2, 3),
                  divisor=_monai_divisor)
def monai_unet(in_channels: int, out_channels: int, ndim: int, channels: tuple[int, ...] = (16, 32, 64, 128, 256),
               num_res_units: int = 2, norm: str = "instance", dropout: float = 0.0):
    from monai.networks.nets import UNet

    return UNet(spatial_dims=ndim, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=num_res_units, norm=norm, dropout=dropout)
