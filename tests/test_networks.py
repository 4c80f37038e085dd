import pytest
import torch

from bench.networks import NetworkSpec, build_network
from bench.registry import NETWORKS


@pytest.mark.parametrize("ndim,shape", [(2, (2, 1, 64, 96)), (3, (1, 1, 16, 32, 32))])
def test_ma_unet_shapes_and_parts(ndim, shape):
    net = build_network(NetworkSpec(name="ma_unet", options={"features": [8, 16, 32]}), 1, 3, ndim)
    assert net(torch.randn(*shape)).shape == (shape[0], 3, *shape[2:])
    layers = net.transformer.layers
    assert len(layers) == 3 and layers[0].self_attn.num_heads == 8
    kinds = {type(m).__name__ for m in net.modules()}
    assert {"GroupNorm", "SiLU", "Dropout2d" if ndim == 2 else "Dropout3d"} <= kinds
    drop = next(m for m in net.modules() if type(m).__name__.startswith("Dropout") and m.p > 0.2)
    assert drop.p == 0.3


def test_unknown_network_option_is_named():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['encodr'\].*encoder"):
        build_network(NetworkSpec(name="smp_unet", options={"encodr": "resnet18"}), 1, 2, 2)


def test_networks_listed():
    assert {"smp_unet", "monai_unet", "ma_unet"} <= set(NETWORKS.names())
