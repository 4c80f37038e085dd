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
        # + quad * |x - centre|^2 with quad >= 0: convex too; 0 at first, set by init_disc for a warm start
        self.quad = nn.Parameter(torch.zeros(()))
        self.centre = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.softplus(self.inp[0](x))
        for lin, u in zip(self.inp[1:], self.hid):
            z = F.softplus(z @ u.clamp(min=0).T + lin(x))
        bowl = self.quad.clamp(min=0) * ((x - self.centre) ** 2).sum(-1)
        return z @ self.out_z.clamp(min=0) + self.out_x(x)[..., 0] + bowl

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp the stored hidden-path weights (the optimiser then moves feasible weights, as the poster does)."""
        for u in self.hid:
            u.clamp_(min=0)
        self.out_z.clamp_(min=0)
        self.quad.clamp_(min=0)

    @torch.no_grad()
    def init_disc(self, centre: torch.Tensor, radius: float) -> None:
        """Start as (about) the disc of this centre and radius: G ~ |x - c|^2 / r^2 - 1 (the network's other terms
        are shifted out at the centre)."""
        self.centre.copy_(centre)
        self.quad.fill_(1.0 / max(radius, 1e-3) ** 2)
        self.out_x.bias.sub_(float(self(centre[None])[0]) + 1.0)


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

    def init_disc(self, centre, radius):
        self.g.init_disc(centre, radius)


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

    @torch.no_grad()
    def init_disc(self, centre, radius):
        self.centre.copy_(centre)
        r = max(radius - self.r_min, 1e-3)
        self.radius[-1].bias.fill_(math.log(math.expm1(r)))  # softplus^-1: about this radius in every direction


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

    def init_disc(self, centre, radius):
        self.convex.init_disc(centre, radius)  # the flow starts as the identity


def init_from_map(model: nn.Module, prob: np.ndarray) -> None:
    """Warm start: the disc with the map's foreground centroid and area (coordinates of `pixel_coords`), for the
    representations that have one (convex, star, connected); a constraint holds for any weights, so this only
    shortens the fit."""
    if not hasattr(model, "init_disc"):
        return
    p = torch.as_tensor(np.asarray(prob, np.float32)).ravel()
    mass = float(p.sum())
    if mass <= 0:
        return
    coords = pixel_coords(prob.shape)
    centre = (coords * p[:, None]).sum(0) / mass
    pixel = 2.0 / max(prob.shape)  # one pixel in these coordinates
    model.init_disc(centre, math.sqrt(mass / math.pi) * pixel)


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
    init_from_map(model, prob)
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


def _clamped_names(model: nn.Module) -> list[str]:
    """Parameter names of the hidden paths of the model's input-convex networks (kept >= 0 after each step)."""
    names = []
    for prefix, m in model.named_modules():
        if isinstance(m, ICNN):
            pre = f"{prefix}." if prefix else ""
            names += [f"{pre}hid.{i}" for i in range(len(m.hid))] + [f"{pre}out_z", f"{pre}quad"]
    return names


def fit_projection_batch(probs: list[np.ndarray], kind: str, *, steps: int = 300, points: int = 2048,
                         lr: float = 0.02, seed: int = 0, soft: bool = False, **kw) -> list[np.ndarray]:
    """`fit_projection` of many maps at once (e.g. every object of an image): one representation per map, their
    weights stacked and evaluated with ``torch.func.vmap``, so a step fits all of them in one pass. Each map keeps its
    own coordinates (its crop spans [-1, 1] on its longer side), pixel draws and foreground weight; the loss is the
    sum of the per-map losses and Adamax is element-wise, so every fit is independent of the others. Returns the
    masks {G < 0}, one per map; ``soft``: the fitted maps sigmoid(-G / tau) instead (the joint mode's target)."""
    from torch.func import functional_call, stack_module_state, vmap

    if not probs:
        return []
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    models = [make(kind, **kw) for _ in probs]
    for model, p in zip(models, probs):
        init_from_map(model, p)
    params, buffers = stack_module_state(models)
    params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    base = models[0].to("meta")
    clamped = [n for n in _clamped_names(models[0]) if n in params]
    sizes = torch.tensor([p.size for p in probs])
    n_max = int(sizes.max())
    coords = torch.zeros(len(probs), n_max, 2)
    target = torch.zeros(len(probs), n_max)
    for b, p in enumerate(probs):
        coords[b, : p.size] = pixel_coords(p.shape)
        target[b, : p.size] = torch.as_tensor(np.asarray(p, np.float32)).ravel()
    fg = target.sum(1)
    pos_weight = ((sizes - fg) / fg.clamp_min(1.0)).clamp(0.1, 100.0)[:, None]

    def g_of(par, buf, x):
        return functional_call(base, (par, buf), (x,))

    batched = vmap(g_of)
    opt = torch.optim.Adamax(list(params.values()), lr=lr)
    tau = 0.05
    m = min(points, n_max)
    rows = torch.arange(len(probs))[:, None]
    for _ in range(steps):
        idx = (torch.rand(len(probs), m, generator=gen) * sizes[:, None]).long()  # within each map's own pixels
        logits = -batched(params, buffers, coords[rows, idx]) / tau
        loss = F.binary_cross_entropy_with_logits(logits, target[rows, idx], pos_weight=pos_weight,
                                                  reduction="none").mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n in clamped:
                params[n].clamp_(min=0)
    with torch.no_grad():
        g = batched(params, buffers, coords)
    if soft:
        return [torch.sigmoid(-g[b, : p.size] / tau).reshape(p.shape).numpy() for b, p in enumerate(probs)]
    return [(g[b, : p.size] < 0).reshape(p.shape).numpy() for b, p in enumerate(probs)]
