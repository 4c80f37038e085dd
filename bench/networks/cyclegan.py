"""CycleGAN's networks (Zhu, Park, Isola & Efros, ICCV 2017), as its reference code defines them:

- ``resnet_generator``: c7s1-ngf, two stride-2 downsamplings, ``n_blocks`` residual blocks (reflection padding,
  instance norm), two transposed-conv upsamplings, c7s1-out with tanh (images in [-1, 1]); 9 blocks at 256 px.
- ``patch_discriminator``: the 70 x 70 PatchGAN: C64 - C128 - C256 - C512 (4 x 4 convs, stride 2, 2, 2, 1; no norm
  on the first, instance norm after, LeakyReLU 0.2) then a 1-channel 4 x 4 conv, one real/fake score per
  70 x 70 receptive field (``n_layers=3``).

Widths are options (``ngf``, ``ndf``) so that a CPU preset can shrink them; the layout stays.
"""

from __future__ import annotations

from torch import nn

from ..registry import register_network


class ResnetBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim))

    def forward(self, x):
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, ngf: int = 64, n_blocks: int = 9) -> None:
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        for k in range(2):
            m = 2 ** k
            layers += [nn.Conv2d(ngf * m, ngf * m * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ngf * m * 2),
                       nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for k in range(2):
            m = 2 ** (2 - k)
            layers += [nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(ngf * m // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1), nn.InstanceNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """CycleGAN's initialisation: conv weights N(0, 0.02), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


@register_network("cyclegan_resnet", description="CycleGAN's ResNet generator (c7s1, 2 down, residual blocks, "
                  "2 up, tanh)", ndims=(2,), divisor=4)
def cyclegan_resnet(in_channels: int, out_channels: int, ndim: int, ngf: int = 64, n_blocks: int = 9):
    return init_weights(ResnetGenerator(in_channels, out_channels, ngf, n_blocks))


@register_network("patchgan", description="70 x 70 PatchGAN discriminator (CycleGAN / pix2pix)", ndims=(2,),
                  divisor=1)
def patchgan(in_channels: int, out_channels: int, ndim: int, ndf: int = 64, n_layers: int = 3):
    return init_weights(PatchDiscriminator(in_channels, ndf, n_layers))
