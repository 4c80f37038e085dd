"""Plain UNets: segmentation-models-pytorch in 2D, MONAI in 3D."""

from __future__ import annotations

from ..registry import register_network


def _monai_divisor(ctx, options) -> int:
    return 2 ** (len(options.get("channels", (16, 32, 64, 128, 256))) - 1)


def _smp_unet_class(in_channels: int, out_channels: int, ndim: int, encoder: str = "resnet18",
                    encoder_weights: str | None = None, decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)):
    """(module, class, kwargs) of smp_unet: what the builder calls and what an exported model names."""
    if ndim != 2:
        raise ValueError("smp_unet is 2D; use monai_unet for 3D data")
    return "segmentation_models_pytorch", "Unet", dict(
        encoder_name=encoder, encoder_weights=encoder_weights, in_channels=in_channels, classes=out_channels,
        decoder_channels=list(decoder_channels))


def _monai_unet_class(in_channels: int, out_channels: int, ndim: int,
                      channels: tuple[int, ...] = (16, 32, 64, 128, 256), num_res_units: int = 2,
                      norm: str = "instance", dropout: float = 0.0):
    return "monai.networks.nets", "UNet", dict(
        spatial_dims=ndim, in_channels=in_channels, out_channels=out_channels, channels=list(channels),
        strides=[2] * (len(channels) - 1), num_res_units=num_res_units, norm=norm, dropout=dropout)


def _build(module: str, cls: str, kwargs: dict):
    import importlib

    return getattr(importlib.import_module(module), cls)(**kwargs)


@register_network("smp_unet", description="2D UNet from segmentation-models-pytorch (any timm/smp encoder)",
                  requires=("segmentation_models_pytorch",), ndims=(2,), divisor=32,
                  # an exported state dict holds the weights: rebuilding must not download pretrained ones
                  library=lambda **kw: _smp_unet_class(**{**kw, "encoder_weights": None}))
def smp_unet(in_channels: int, out_channels: int, ndim: int, encoder: str = "resnet18",
             encoder_weights: str | None = None, decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)):
    from .._compat import ensure_torchvision

    ensure_torchvision()
    return _build(*_smp_unet_class(in_channels, out_channels, ndim, encoder, encoder_weights, decoder_channels))


@register_network("monai_unet", description="2D/3D residual UNet from MONAI", requires=("monai",), ndims=(2, 3),
                  divisor=_monai_divisor, library=_monai_unet_class)
def monai_unet(in_channels: int, out_channels: int, ndim: int, channels: tuple[int, ...] = (16, 32, 64, 128, 256),
               num_res_units: int = 2, norm: str = "instance", dropout: float = 0.0):
    return _build(*_monai_unet_class(in_channels, out_channels, ndim, channels, num_res_units, norm, dropout))
