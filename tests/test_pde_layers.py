"""Moment-constrained kernels (PDE-Net) and PDE layers (bench.physics.pde_layers): the classical stencils come out
exactly, the constraint survives optimiser steps, the semi-implicit step keeps the maximum principle where the
explicit one blows up, and the layer is differentiable (gradcheck)."""

from __future__ import annotations

import itertools

import pytest
import torch

from bench.physics import laplacian
from bench.physics.pde_layers import (ConstrainedKernel, DiffusionOperator, PDELayer, derivative,
                                      derivative_moments, moments_of)


def test_first_and_second_derivative_kernels_are_the_central_stencils():
    torch.testing.assert_close(ConstrainedKernel([1], 3, 2).kernel(), torch.tensor([-0.5, 0.0, 0.5]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(ConstrainedKernel([2], 3, 2).kernel(), torch.tensor([1.0, -2.0, 1.0]),
                               atol=1e-6, rtol=0)
    # 5 points, 4th order: the classical [1, -8, 0, 8, -1] / 12
    torch.testing.assert_close(ConstrainedKernel([1], 5, 4).kernel(),
                               torch.tensor([1.0, -8.0, 0.0, 8.0, -1.0]) / 12, atol=1e-6, rtol=0)


def test_the_3d_operator_is_the_7_point_laplacian_with_anisotropic_spacing():
    spacing = (2.0, 0.5, 1.0)
    op = DiffusionOperator(channels=1, ndim=3, diffusivity=1.0)
    # the kernel of d_xx alone: [1, -2, 1] along its axis, nothing off it
    kx = op.ops[0].kernel()
    expected = torch.zeros(3, 3, 3)
    expected[:, 1, 1] = torch.tensor([1.0, -2.0, 1.0])
    torch.testing.assert_close(kx, expected, atol=1e-6, rtol=0)
    u = torch.randn(2, 1, 6, 7, 5)
    torch.testing.assert_close(op(u, spacing), laplacian(u, spacing), atol=1e-5, rtol=1e-6)
    # one spacing per sample, as batches carry it
    sp = torch.tensor([spacing, (1.0, 1.0, 3.0)])
    got = op(u, sp)
    torch.testing.assert_close(got[1:], laplacian(u[1:], (1.0, 1.0, 3.0)), atol=1e-5, rtol=1e-6)
    # on a quadratic the stencil is exact: lap(x^2/h-scaled) = 2 / ... (interior)
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in (6, 7, 5)), indexing="ij")
    q = ((z * spacing[0]) ** 2 + 3 * (y * spacing[1]) ** 2 - (x * spacing[2]) ** 2)[None, None]
    torch.testing.assert_close(op(q, spacing)[..., 1:-1, 1:-1, 1:-1], torch.full((1, 1, 4, 5, 3), 2 + 6 - 2.0),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("alpha,size,accuracy", [((1, 0), 3, 1), ((0, 2), 3, 1), ((1, 1, 0), 3, 1), ((2,), 5, 2)])
def test_the_moment_constraint_holds_after_optimiser_steps(alpha, size, accuracy):
    torch.manual_seed(0)
    k = ConstrainedKernel(alpha, size, accuracy, learn_free=True)
    assert k.free.requires_grad and k.free.numel() > 0
    opt = torch.optim.Adam(k.parameters(), lr=0.5)
    u = torch.randn(1, 1, *([9] * len(alpha)))
    target = torch.randn_like(u)
    for _ in range(5):
        opt.zero_grad()
        ((derivative(u, k) - target) ** 2).mean().backward()
        opt.step()
    mask, values = derivative_moments(alpha, size, accuracy)
    m = moments_of(k.kernel().detach())
    assert float(k.free.detach().abs().max()) > 0.1  # the free moments did move
    torch.testing.assert_close(m[mask], values[mask], atol=1e-6, rtol=0)
    # and the kernel still differentiates: exact on a polynomial of order <= |alpha| + accuracy - 1
    grids = torch.meshgrid(*(torch.arange(9, dtype=torch.float64) for _ in alpha), indexing="ij")
    poly = sum(g ** a for g, a in zip(grids, alpha))  # d^alpha of it = prod alpha_d! where all others vanish
    if sum(1 for a in alpha if a) == 1:
        d = derivative(poly[None, None], k.double())[0, 0]
        inner = tuple(slice(size // 2, -(size // 2)) for _ in alpha)
        expected = float(torch.tensor([float(torch.lgamma(torch.tensor(a + 1.0)).exp()) for a in alpha if a]).prod())
        torch.testing.assert_close(d[inner], torch.full_like(d[inner], expected), atol=1e-6, rtol=0)


def test_semi_implicit_keeps_the_maximum_principle_where_explicit_blows_up():
    torch.manual_seed(0)
    u0 = torch.rand(1, 2, 8, 9, 7)
    lo, hi = float(u0.min()), float(u0.max())
    big = 50.0  # far above the explicit bound 1 / (2 * 3) = 0.17 at unit spacing and diffusivity
    semi = PDELayer(2, 3, steps=5, scheme="semi_implicit", dt_max=big / 0.999, dt_init=0.999, reaction=False)
    out = semi(u0)
    assert float(semi.dt()) == pytest.approx(big, rel=1e-3)
    assert lo - 1e-6 <= float(out.min()) and float(out.max()) <= hi + 1e-6
    assert float(out.std()) < float(u0.std())  # it did diffuse
    # the explicit update at the same step (forced past the bound the layer normally keeps) blows up
    diag, lu = semi.diffusion.split(u0)
    u = u0
    for _ in range(5):
        diag, lu = semi.diffusion.split(u)
        u = u + big * lu
    assert float(u.abs().max()) > 1e3 * hi
    # the explicit layer itself never leaves its stable range, however large dt_max
    explicit = PDELayer(2, 3, steps=5, scheme="explicit", dt_max=big, dt_init=0.999, reaction=False)
    out = explicit(u0)
    assert lo - 1e-6 <= float(out.min()) and float(out.max()) <= hi + 1e-6


@pytest.mark.parametrize("scheme", ["explicit", "semi_implicit", "crank_nicolson"])
def test_the_pde_layer_is_differentiable(scheme):
    torch.manual_seed(0)
    layer = PDELayer(2, 3, steps=2, scheme=scheme, learn_free=True, accuracy=1).double()
    torch.nn.init.normal_(layer.reaction.weight, std=0.1)  # a reaction term that is not zero
    with torch.no_grad():
        layer.diffusion.ops[0].free.normal_(std=0.05)
    u = torch.randn(1, 2, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    sp = torch.tensor([[1.0, 0.7, 1.3]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: layer(x, sp), (u,), eps=1e-6, atol=1e-5)
    # every parameter gets a gradient
    layer(u, sp).square().sum().backward()
    for name, p in layer.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_constraint_sets_and_errors():
    mask, values = derivative_moments((2, 0), 3, 2)
    fixed = {i for i in itertools.product(range(3), repeat=2) if mask[i]}
    assert fixed == {i for i in itertools.product(range(3), repeat=2) if sum(i) <= 3}
    assert values[2, 0] == 1 and values.sum() == 1
    with pytest.raises(ValueError, match="larger than 3"):
        ConstrainedKernel([3], 3, 1)
    with pytest.raises(ValueError, match="must be odd"):
        ConstrainedKernel([1], 4, 1)
    with pytest.raises(ValueError, match="choose one of"):
        PDELayer(1, 2, scheme="rk4")
