"""Learnable differential operators with exact moment constraints (PDE-Net, Long et al. 2018) and PDE layers that
evolve feature maps, du/dt = D[u] + N(u), by a few stable time steps (the blueprint of Gajbhiye, "Numerical Methods
and Convolutional Neural Networks for 3D Medical Image Segmentation").

Moments. A kernel K of size n per axis, read as a correlation at centred offsets o in {-(n-1)/2 .. (n-1)/2}, applied
to a smooth u gives, by Taylor expansion, sum_o K[o] u(x + o h) = sum_i m[i] h^|i| d^i u(x), with the moments
m[i] = sum_o K[o] prod_d o_d^i_d / i_d!  (the per-axis moment matrix M[i, o] = o^i / i!, so m = (M x ... x M) K).
K approximates the derivative d^alpha with accuracy order p when m[alpha] = 1 and every other moment with
|i| <= |alpha| + p - 1 is 0; the higher moments are free. `ConstrainedKernel` stores only the free moments as
parameters and builds K = (M^-1 x ... x M^-1) m at every forward pass, so the constraint holds exactly after any
optimiser step (no penalty). The kernel of d^alpha on a grid of spacing h is K / prod_d h_d^alpha_d.

`DiffusionOperator`: anisotropic diffusion sum_d a_{c,d} d_dd u per channel c (a > 0 learnable), from constrained
second-derivative kernels, spacing-aware (one spacing per sample), reflecting (zero-flux) border.

`PDELayer`: K steps of
- ``explicit``: u + dt (L u + N(u)), dt kept below the stability bound 1 / |diag L|;
- ``semi_implicit``: backward Euler on the diffusion, (I - dt L) u' = u + dt N(u), solved by one Jacobi iterate from u:
  u' = (u + dt (O u + N(u))) / (1 - dt diag L), with O = L - diag L. With the default (free moments fixed at 0) the
  off-diagonal weights are >= 0 and sum to -diag L, so without reaction u' is a convex combination of neighbours:
  the maximum principle holds for every dt (monotone), where the explicit step blows up for dt > 1 / |diag L|;
- ``crank_nicolson``: (I - dt/2 L) u' = (I + dt/2 L) u + dt N(u), one Jacobi iterate.
N(u) is a 1x1(x1) convolution (the reaction term), zero at the start so a new layer is pure diffusion; the step
dt = dt_max * sigmoid(theta) is learnable and stays in (0, dt_max) (explicit: dt_max is the stability bound).
"""

from __future__ import annotations

import itertools
import math
from typing import Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

SCHEMES = ("explicit", "semi_implicit", "crank_nicolson")


def moment_matrix(n: int, dtype=torch.float64) -> torch.Tensor:
    """(n, n): M[i, j] = o_j^i / i! at centred offsets o_j = j - (n - 1) / 2 (n odd)."""
    if n % 2 == 0:
        raise ValueError(f"kernel size {n}: must be odd (centred offsets)")
    offsets = torch.arange(n, dtype=dtype) - (n - 1) / 2
    return torch.stack([offsets**i / math.factorial(i) for i in range(n)])


def derivative_moments(alpha: Sequence[int], size: int, accuracy: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, values) over the moment grid (size,) * ndim: the moments fixed for d^alpha at accuracy order
    `accuracy` (|i| <= |alpha| + accuracy - 1) and their values (1 at alpha, else 0)."""
    ndim, order = len(alpha), sum(alpha)
    if any(a >= size for a in alpha):
        raise ValueError(f"derivative {tuple(alpha)} needs a kernel larger than {size} along some axis")
    mask = torch.zeros((size,) * ndim, dtype=torch.bool)
    values = torch.zeros((size,) * ndim, dtype=torch.float64)
    for i in itertools.product(range(size), repeat=ndim):
        if sum(i) <= order + accuracy - 1:
            mask[i] = True
    values[tuple(alpha)] = 1.0
    return mask, values


def moments_of(kernel: torch.Tensor) -> torch.Tensor:
    """Moments of an (n,) * ndim kernel: m = (M x ... x M) K (the inverse of `ConstrainedKernel.kernel`)."""
    m = kernel.to(torch.float64)
    M = moment_matrix(kernel.shape[0])
    for ax in range(kernel.ndim):
        m = torch.movedim(torch.tensordot(M, m, dims=([1], [ax])), 0, ax)
    return m


class ConstrainedKernel(nn.Module):
    """A (size,) * ndim kernel approximating d^alpha to accuracy order `accuracy`, with its free moments learnable
    (or fixed at 0: ``learn_free=False``, which gives the classical stencil, e.g. [1, -2, 1])."""

    def __init__(self, alpha: Sequence[int], size: int = 3, accuracy: int = 2, learn_free: bool = True) -> None:
        super().__init__()
        self.alpha, self.size, self.accuracy = tuple(int(a) for a in alpha), size, accuracy
        mask, values = derivative_moments(self.alpha, size, accuracy)
        self.register_buffer("mask", mask, persistent=False)
        # float64 constants outside the module's buffers, so that .float() / .half() cannot round them: the
        # kernel is assembled in float64 and cast to the parameters' dtype
        self._values, self._minv = values, torch.linalg.inv(moment_matrix(size))
        n_free = int((~mask).sum())
        self.free = nn.Parameter(torch.zeros(n_free), requires_grad=learn_free and n_free > 0)

    def moments(self) -> torch.Tensor:
        """The full moment tensor (float64): the fixed values, the free parameters elsewhere."""
        m = self._values.to(self.free.device)
        return m.masked_scatter(~self.mask, self.free.double()) if self.free.numel() else m

    def kernel(self) -> torch.Tensor:
        """The unit-spacing kernel, (size,) * ndim, built from the moments at every call."""
        k = self.moments()
        minv = self._minv.to(k.device)
        for ax in range(k.ndim):
            k = torch.movedim(torch.tensordot(minv, k, dims=([1], [ax])), 0, ax)
        return k.to(self.free.dtype)

    def scale(self, spacing: torch.Tensor) -> torch.Tensor:
        """(B, 1) factors 1 / prod_d h_d^alpha_d for (B, ndim) spacings."""
        return 1.0 / torch.prod(spacing ** torch.tensor(self.alpha, dtype=spacing.dtype, device=spacing.device),
                                dim=1, keepdim=True)


def _spacing(u: torch.Tensor, spacing, ndim: int) -> torch.Tensor:
    if spacing is None:
        return torch.ones(u.shape[0], ndim, dtype=u.dtype, device=u.device)
    sp = torch.as_tensor(spacing, dtype=u.dtype, device=u.device)
    sp = sp[None].expand(u.shape[0], ndim) if sp.ndim == 1 else sp
    if sp.shape != (u.shape[0], ndim):
        raise ValueError(f"spacing of shape {tuple(sp.shape)}; expected ({u.shape[0]}, {ndim}) or ({ndim},)")
    return sp


def correlate(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The same kernel on every channel of (B, C, *spatial) u, reflecting border (zero flux: replicate padding)."""
    ndim = u.ndim - 2
    r = kernel.shape[0] // 2
    padded = F.pad(u, [r] * (2 * ndim), mode="replicate")
    weight = kernel.to(u.dtype).expand(u.shape[1], 1, *kernel.shape)
    conv = (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]
    return conv(padded, weight, groups=u.shape[1])


def derivative(u: torch.Tensor, op: ConstrainedKernel, spacing=None) -> torch.Tensor:
    """d^alpha u on a grid of the given spacing (None: unit; (ndim,) or per sample (B, ndim))."""
    sp = _spacing(u, spacing, u.ndim - 2)
    return correlate(u, op.kernel()) * op.scale(sp).reshape(-1, 1, *([1] * (u.ndim - 2)))


class DiffusionOperator(nn.Module):
    """L u = sum_d a_{c,d} d_dd u, a = softplus(theta) > 0 per channel and axis, from constrained kernels."""

    def __init__(self, channels: int, ndim: int, size: int = 3, accuracy: int = 2, learn_free: bool = False,
                 diffusivity: float = 1.0) -> None:
        super().__init__()
        self.ndim = ndim
        self.ops = nn.ModuleList([ConstrainedKernel([2 if k == d else 0 for k in range(ndim)], size, accuracy,
                                                    learn_free) for d in range(ndim)])
        inv_softplus = math.log(math.expm1(diffusivity))
        self.theta = nn.Parameter(torch.full((channels, ndim), inv_softplus))

    def diffusivity(self) -> torch.Tensor:
        return F.softplus(self.theta)

    def _per_axis(self, u: torch.Tensor, sp: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per axis: (coefficient (B, C, 1..) = a_{c,d} / h_d^2, kernel)."""
        a = self.diffusivity().to(u.dtype)
        shape = (1, u.shape[1], *([1] * self.ndim))
        out = []
        for d, op in enumerate(self.ops):
            coef = a[:, d].reshape(shape) * op.scale(sp).reshape(-1, 1, *([1] * self.ndim))
            out.append((coef, op.kernel()))
        return out

    def forward(self, u: torch.Tensor, spacing=None) -> torch.Tensor:
        sp = _spacing(u, spacing, self.ndim)
        return sum(coef * correlate(u, k) for coef, k in self._per_axis(u, sp))

    def split(self, u: torch.Tensor, spacing=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(diag, L u): the diagonal of L (the kernels' centre weights, (B, C, 1..)) and L u, for the implicit and
        Jacobi steps (the off-diagonal part is L u - diag * u)."""
        sp = _spacing(u, spacing, self.ndim)
        diag, lu = 0.0, 0.0
        for coef, k in self._per_axis(u, sp):
            centre = k[(k.shape[0] // 2,) * self.ndim]
            diag = diag + coef * centre
            lu = lu + coef * correlate(u, k)
        return diag, lu


class PDELayer(nn.Module):
    """K time steps of du/dt = L u + N(u) on (B, C, *spatial) features (see the module docstring)."""

    def __init__(self, channels: int, ndim: int, steps: int = 2,
                 scheme: Literal["explicit", "semi_implicit", "crank_nicolson"] = "semi_implicit",
                 size: int = 3, accuracy: int = 2, learn_free: bool = False, dt_max: float = 5.0,
                 dt_init: float = 0.5, reaction: bool = True) -> None:
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"PDE layer scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
        if not 0 < dt_init < 1:
            raise ValueError("dt_init is the fraction of dt_max the step starts at: in (0, 1)")
        self.steps, self.scheme, self.dt_max = steps, scheme, dt_max
        self.diffusion = DiffusionOperator(channels, ndim, size, accuracy, learn_free)
        self.dt_theta = nn.Parameter(torch.tensor(math.log(dt_init / (1 - dt_init))))
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]
        self.reaction = conv(channels, channels, 1) if reaction else None
        if self.reaction is not None:  # a new layer is pure diffusion
            nn.init.zeros_(self.reaction.weight)
            nn.init.zeros_(self.reaction.bias)

    def dt(self, diag: torch.Tensor | None = None) -> torch.Tensor:
        """The step: dt_max * sigmoid(theta); explicit: times the stability bound 1 / max |diag L| (at most
        dt_max), so every learnable value is stable."""
        frac = torch.sigmoid(self.dt_theta)
        if self.scheme == "explicit":
            bound = 1.0 / diag.detach().abs().amax().clamp(min=1e-12)
            return frac * torch.minimum(bound, torch.as_tensor(self.dt_max, dtype=bound.dtype))
        return frac * self.dt_max

    def forward(self, u: torch.Tensor, spacing=None) -> torch.Tensor:
        for _ in range(self.steps):
            diag, lu = self.diffusion.split(u, spacing)
            n = self.reaction(u) if self.reaction is not None else 0.0
            dt = self.dt(diag)
            if self.scheme == "explicit":
                u = u + dt * (lu + n)
            elif self.scheme == "semi_implicit":
                off = lu - diag * u
                u = (u + dt * (off + n)) / (1 - dt * diag)
            else:  # Crank-Nicolson, one Jacobi iterate from u
                off = lu - diag * u
                u = (u + 0.5 * dt * lu + dt * n + 0.5 * dt * off) / (1 - 0.5 * dt * diag)
        return u
