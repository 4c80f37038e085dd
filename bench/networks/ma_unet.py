"""MA-UNet: the second backbone of the single-tensor field paper.

Residual blocks (GroupNorm + SiLU), spatial dropout, a transformer encoder over the bottleneck tokens and
additive attention gates on the skip connections (Oktay et al., Attention U-Net). 2D and 3D.
"""

from __future__ import annotations

from ..registry import register_network


def _modules(ndim: int):
    import torch.nn as nn

    conv = nn.Conv2d if ndim == 2 else nn.Conv3d
    up = nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d
    drop = nn.Dropout2d if ndim == 2 else nn.Dropout3d  # spatial dropout: whole channels
    pool = nn.MaxPool2d if ndim == 2 else nn.MaxPool3d
    return conv, up, drop, pool


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


def build_ma_unet(in_channels: int, out_channels: int, ndim: int, features=(32, 64, 128, 256),
                  dropout: float = 0.3, heads: int = 8, layers: int = 3):
    import torch
    import torch.nn as nn

    conv, up, drop, pool = _modules(ndim)

    class ResBlock(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                conv(cin, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout), nn.SiLU(),
                drop(dropout),
                conv(cout, cout, 3, padding=1), nn.GroupNorm(_groups(cout), cout),
            )
            self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.body(x) + self.skip(x))

    class AttentionGate(nn.Module):
        """Weights the skip features by a map computed from them and the coarser decoder signal."""

        def __init__(self, skip_ch: int, gate_ch: int) -> None:
            super().__init__()
            inter = max(1, skip_ch // 2)
            self.ws, self.wg = conv(skip_ch, inter, 1), conv(gate_ch, inter, 1)
            self.psi = nn.Sequential(nn.SiLU(), conv(inter, 1, 1), nn.Sigmoid())

        def forward(self, skip, gate):
            return skip * self.psi(self.ws(skip) + self.wg(gate))

    class MAUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            f = list(features)
            self.enc = nn.ModuleList()
            cin = in_channels
            for ch in f:
                self.enc.append(ResBlock(cin, ch))
                cin = ch
            self.pool = pool(2)
            self.bottleneck = ResBlock(f[-1], f[-1] * 2)
            d = f[-1] * 2
            self.transformer = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True),
                num_layers=layers,
                enable_nested_tensor=False,  # pre-norm layers cannot use it anyway
            )
            self.ups, self.gates, self.dec = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            for ch in reversed(f):
                self.ups.append(up(d, ch, 2, stride=2))
                self.gates.append(AttentionGate(ch, ch))
                self.dec.append(ResBlock(2 * ch, ch))
                d = ch
            self.head = conv(f[0], out_channels, 1)

        def forward(self, x):
            skips = []
            for block in self.enc:
                x = block(x)
                skips.append(x)
                x = self.pool(x)
            x = self.bottleneck(x)
            shape = x.shape
            tokens = x.flatten(2).transpose(1, 2)  # (B, N, C): one token per bottleneck position
            x = self.transformer(tokens).transpose(1, 2).reshape(shape)
            for upconv, gate, block, skip in zip(self.ups, self.gates, self.dec, reversed(skips)):
                x = upconv(x)
                x = block(torch.cat([gate(skip, x), x], dim=1))
            return self.head(x)

    return MAUNet()


@register_network("ma_unet", description="residual GroupNorm/SiLU UNet, transformer bottleneck, attention gates",
                  ndims=(2, 3), divisor=lambda ctx, o: 2 ** (len(o.get("features", (32, 64, 128, 256))) - 1))
def ma_unet(in_channels: int, out_channels: int, ndim: int, features: tuple[int, ...] = (32, 64, 128, 256),
            dropout: float = 0.3, heads: int = 8, layers: int = 3):
    return build_ma_unet(in_channels, out_channels, ndim, features, dropout, heads, layers)
