"""Implicit shape representations with provable constraints (the ISR of "Constrained implicit segmentation
representations"; issue 13): a coordinate network G(x), x in [-1, 1]^2, whose foreground {G(x) < 0} is by
construction

- ``convex``: G is an input-convex network (ICNN, Amos et al. 2017): the hidden path's weights are clamped to >= 0 in
  every forward (and projected after each optimiser step, `project_`), activations convex and non-decreasing, so G is
  convex and its sublevel set is convex;
- ``star``: star-shaped about a learnable centre c: G(x) = |x - c| - r(direction), r > 0, so along every ray from c the
  foreground is one interval starting at c;
- ``mirror``: mirror-symmetric about a learnable axis: G reads (|distance to the axis|, position along it);
- ``rotational``: k-fold rotationally symmetric about a learnable centre: G reads (radius, cos k*angle, sin k*angle);
- ``connected``: path-connected: a convex ICNN after an invertible coupling flow f (RealNVP-style), so the foreground
  f^-1({C < 0}) is the continuous image of a convex, hence connected, set.

`fit_projection` fits one representation to a probability map (the projection of a predictor's output onto the
constrained set): foreground-weighted BCE on sub-sampled pixel coordinates, Adamax.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

KINDS = ("convex", "star", "mirror", "rotational", "connected")


class ICNN(nn.Module):
    """Input-convex network R^d -> R: z1 = softplus(W0 x), z_{k+1} = softplus(U_k z_k + W_k x), G = u.z + w.x + b, with
    U_k >= 0 and u >= 0 (clamped in the forward, so convexity holds for any stored weights)."""

    def __init__(self, dim: int = 2, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.inp = nn.ModuleList([nn.Linear(dim, width) for _ in range(depth)])
        self.hid = nn.ParameterList([nn.Parameter(torch.rand(width, width) / width) for _ in range(depth - 1)])
        self.out_z = nn.Parameter(torch.rand(width) / width)
        self.out_x = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.softplus(self.inp[0](x))
        for lin, u in zip(self.inp[1:], self.hid):
            z = F.softplus(z @ u.clamp(min=0).T + lin(x))
        return z @ self.out_z.clamp(min=0) + self.out_x(x)[..., 0]

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp the stored hidden-path weights (the optimiser then moves feasible weights, as the poster does)."""
        for u in self.hid:
            u.clamp_(min=0)
        self.out_z.clamp_(min=0)


def _mlp(d_in: int, d_out: int, width: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, d_out))


class Convex(nn.Module):
    def __init__(self, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        self.g = ICNN(2, width, depth)

    def forward(self, x):
        return self.g(x)

    def project_(self):
        self.g.project_()


class StarShaped(nn.Module):
    """G(x) = |x - c| - r(theta), r = softplus(MLP(cos theta, sin theta)) + r_min > 0."""

    def __init__(self, width: int = 32, r_min: float = 1e-3) -> None:
        super().__init__()
        self.centre = nn.Parameter(torch.zeros(2))
        self.radius = _mlp(2, 1, width)
        self.r_min = r_min

    def forward(self, x):
        d = x - self.centre
        rho = d.norm(dim=-1)
        theta = torch.atan2(d[..., 1], d[..., 0])
        r = F.softplus(self.radius(torch.stack([theta.cos(), theta.sin()], -1))[..., 0]) + self.r_min
        return rho - r


class MirrorSymmetric(nn.Module):
    """G reads the distance to a learnable axis (through p at angle phi) without its sign: G(reflect(x)) = G(x)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.point = nn.Parameter(torch.zeros(2))
        self.angle = nn.Parameter(torch.zeros(()))
        self.g = _mlp(2, 1, width)

    def axis(self) -> tuple[torch.Tensor, torch.Tensor]:
        along = torch.stack([self.angle.cos(), self.angle.sin()])
        normal = torch.stack([-self.angle.sin(), self.angle.cos()])
        return along, normal

    def reflect(self, x):
        _, n = self.axis()
        d = x - self.point
        return x - 2 * (d @ n)[..., None] * n

    def forward(self, x):
        along, normal = self.axis()
        d = x - self.point
        return self.g(torch.stack([(d @ normal).abs(), d @ along], -1))[..., 0]


class RotationalSymmetric(nn.Module):
    """k-fold: G reads (radius, cos k*theta, sin k*theta) about a learnable centre, unchanged by a turn of 2*pi/k."""

    def __init__(self, k: int = 4, width: int = 32) -> None:
        super().__init__()
        self.k = k
        self.centre = nn.Parameter(torch.zeros(2))
        self.g = _mlp(3, 1, width)

    def rotate(self, x, turns: int = 1):
        a = 2 * math.pi * turns / self.k
        rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=x.dtype)
        return (x - self.centre) @ rot.T + self.centre

    def forward(self, x):
        d = x - self.centre
        theta = torch.atan2(d[..., 1], d[..., 0])
        return self.g(torch.stack([d.norm(dim=-1), (self.k * theta).cos(), (self.k * theta).sin()], -1))[..., 0]


class Coupling(nn.Module):
    """One affine coupling layer on 2D points: one coordinate is scaled and shifted by functions of the other."""

    def __init__(self, flip: bool, width: int = 32) -> None:
        super().__init__()
        self.flip = flip
        self.net = _mlp(1, 2, width)
        nn.init.zeros_(self.net[-1].weight)  # identity at the start
        nn.init.zeros_(self.net[-1].bias)

    def _split(self, x):
        return (x[..., 1:], x[..., :1]) if self.flip else (x[..., :1], x[..., 1:])

    def _join(self, keep, moved):
        return torch.cat([moved, keep] if self.flip else [keep, moved], -1)

    def forward(self, x):
        keep, moved = self._split(x)
        log_s, t = self.net(keep).chunk(2, -1)
        return self._join(keep, moved * torch.tanh(log_s).exp() + t)

    def inverse(self, y):
        keep, moved = self._split(y)
        log_s, t = self.net(keep).chunk(2, -1)
        return self._join(keep, (moved - t) * torch.exp(-torch.tanh(log_s)))


class PathConnected(nn.Module):
    """G = C(f(x)): a convex ICNN C after an invertible coupling flow f; the foreground f^-1({C < 0}) is connected."""

    def __init__(self, layers: int = 4, width: int = 32) -> None:
        super().__init__()
        self.flow = nn.ModuleList([Coupling(i % 2 == 1, width) for i in range(layers)])
        self.convex = ICNN(2, width, 3)

    def warp(self, x):
        for layer in self.flow:
            x = layer(x)
        return x

    def unwarp(self, y):
        for layer in reversed(self.flow):
            y = layer.inverse(y)
        return y

    def forward(self, x):
        return self.convex(self.warp(x))

    def project_(self):
        self.convex.project_()


def make(kind: str, **kw) -> nn.Module:
    """A representation by name (one of `KINDS`); keyword arguments go to its class (width, k, layers)."""
    classes = {"convex": Convex, "star": StarShaped, "mirror": MirrorSymmetric, "rotational": RotationalSymmetric,
               "connected": PathConnected}
    if kind not in classes:
        raise ValueError(f"unknown shape constraint {kind!r}; have {', '.join(KINDS)}")
    return classes[kind](**kw)


def pixel_coords(shape: tuple[int, int]) -> torch.Tensor:
    """(H*W, 2) coordinates in [-1, 1]^2, (x, y) order, of every pixel centre; the longer side spans [-1, 1]."""
    h, w = shape
    s = max(h, w)
    ys = (torch.arange(h, dtype=torch.float32) + 0.5 - h / 2) * 2 / s
    xs = (torch.arange(w, dtype=torch.float32) + 0.5 - w / 2) * 2 / s
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.ravel(), yy.ravel()], -1)


def render(model: nn.Module, shape: tuple[int, int]) -> np.ndarray:
    """The representation's foreground mask {G < 0} on the pixel grid."""
    with torch.no_grad():
        return (model(pixel_coords(shape)) < 0).reshape(shape).numpy()


def fit_projection(prob: np.ndarray, kind: str, *, steps: int = 300, points: int = 4096, lr: float = 0.02,
                   seed: int = 0, **kw) -> tuple[nn.Module, np.ndarray]:
    """Project a foreground probability map onto a constrained shape: fit G so that sigmoid(-G / tau) matches it.

    Foreground-weighted BCE (positive weight = background/foreground pixel ratio) on ``points`` pixels drawn per step,
    Adamax (as the poster); convex representations are projected after every step. Returns (model, mask).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = make(kind, **kw)
    p = torch.as_tensor(np.asarray(prob, np.float32)).ravel()
    coords = pixel_coords(prob.shape)
    fg = float(p.sum())
    pos_weight = torch.tensor((p.numel() - fg) / max(fg, 1.0)).clamp(0.1, 100.0)
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    tau = 0.05  # logit scale: G is a distance-like value in [-1, 1] units
    for _ in range(steps):
        idx = torch.randint(0, p.numel(), (min(points, p.numel()),), generator=gen)
        logits = -model(coords[idx]) / tau
        loss = F.binary_cross_entropy_with_logits(logits, p[idx], pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if hasattr(model, "project_"):
            model.project_()
    return model, render(model, prob.shape)
