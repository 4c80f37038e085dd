"""Shared physics for methods: finite-difference operators and PDE residual / energy terms (torch).

One definition per operator, imported by every method that needs it (never copied):

- `laplacian(u, spacing)`: the 2*ndim+1-point stencil (5-point in 2D, 7-point in 3D) with weights
  ``1 / spacing[d]**2``, the same stencil as the Poisson targets of `bench.fields.poisson_field`. Boundary:
  ``"reflect"`` (zero normal derivative: the ghost cell mirrors the first interior cell, i.e. replicate
  padding) or ``"zero"`` (Dirichlet u = 0 outside, the Poisson targets' boundary).
- `gradient(u, spacing)`: central differences per axis (one-sided at the image border).
- `reaction_diffusion_residual(u, D, a)`: ``D * lap(u) + u (1 - u)(u - a)`` (Allen-Cahn / Nagumo bistable
  reaction), zero for the constant states u = 0, u = 1 and u = a.
- `phase_field_energy(u, eps)`: Ginzburg-Landau / Modica-Mortola density ``eps/2 |grad u|^2 + u^2 (1-u)^2 / eps``.

Tensors are (B, C, *spatial); spacing is a sequence of ndim floats, or a (B, ndim) tensor (per sample, as
batches carry it), or None for unit spacing. Every function computes in float32 whatever the input dtype, so
physics terms keep their precision under mixed precision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

__all__ = ["laplacian", "gradient", "reaction_diffusion_residual", "phase_field_energy", "spacing_weights"]


def _spacing(u: "torch.Tensor", spacing, ndim: int) -> "torch.Tensor":
    """(B or 1, ndim) float32 tensor of grid spacings."""
    import torch

    if spacing is None:
        return torch.ones(1, ndim, dtype=torch.float32, device=u.device)
    sp = torch.as_tensor(spacing, dtype=torch.float32, device=u.device)
    if sp.ndim == 1:
        sp = sp[None]
    if sp.shape[-1] != ndim:
        raise ValueError(f"spacing has {sp.shape[-1]} axes, the field has {ndim} spatial axes")
    return sp


def spacing_weights(u: "torch.Tensor", spacing, d: int) -> "torch.Tensor":
    """Broadcastable per-sample spacing of axis d, shaped (B or 1, 1, 1, ...)."""
    ndim = u.ndim - 2
    sp = _spacing(u, spacing, ndim)[:, d]
    return sp.reshape(-1, *([1] * (u.ndim - 1)))


def _shifted(u: "torch.Tensor", d: int, boundary: str):
    """u shifted by +1 and -1 along spatial axis d, with the boundary's ghost cells."""
    import torch.nn.functional as F

    ndim = u.ndim - 2
    pad = [0, 0] * ndim
    k = 2 * (ndim - 1 - d)  # F.pad lists the last axis first
    pad[k] = pad[k + 1] = 1
    # reflecting (zero-flux): the ghost cell repeats the border cell; zero: Dirichlet u = 0 outside
    p = F.pad(u, pad, mode="replicate") if boundary == "reflect" else F.pad(u, pad, mode="constant", value=0.0)
    ax = 2 + d
    n = u.shape[ax]
    return p.narrow(ax, 2, n), p.narrow(ax, 0, n)


def laplacian(u: "torch.Tensor", spacing: Sequence[float] | None = None, boundary: str = "reflect") -> "torch.Tensor":
    """5-point (7-point in 3D) Laplacian of u (B, C, *spatial), in float32."""
    if boundary not in ("reflect", "zero"):
        raise ValueError(f"boundary must be 'reflect' or 'zero', got {boundary!r}")
    u = u.float()
    out = None
    for d in range(u.ndim - 2):
        plus, minus = _shifted(u, d, boundary)
        term = (plus - 2 * u + minus) / spacing_weights(u, spacing, d) ** 2
        out = term if out is None else out + term
    return out


def gradient(u: "torch.Tensor", spacing: Sequence[float] | None = None) -> list["torch.Tensor"]:
    """Central differences (u[i+1] - u[i-1]) / (2 h) per spatial axis; one-sided at the border."""
    import torch

    u = u.float()
    grads = []
    for d in range(u.ndim - 2):
        ax = 2 + d
        n = u.shape[ax]
        h = spacing_weights(u, spacing, d)
        if n < 2:
            grads.append(u.new_zeros(u.shape))
            continue
        inner = (u.narrow(ax, 2, n - 2) - u.narrow(ax, 0, n - 2)) / 2 if n > 2 else u.narrow(ax, 0, 0)
        first = u.narrow(ax, 1, 1) - u.narrow(ax, 0, 1)
        last = u.narrow(ax, n - 1, 1) - u.narrow(ax, n - 2, 1)
        grads.append(torch.cat([first, inner, last], dim=ax) / h)
    return grads


def reaction_diffusion_residual(u: "torch.Tensor", D: float = 5.0, a: float = 0.5, spacing=None,
                                boundary: str = "reflect") -> "torch.Tensor":
    """Pointwise residual of the steady bistable reaction-diffusion equation D lap(u) + u(1-u)(u-a) = 0."""
    u = u.float()
    return D * laplacian(u, spacing, boundary) + u * (1 - u) * (u - a)


def phase_field_energy(u: "torch.Tensor", eps: float = 0.05, spacing=None) -> "torch.Tensor":
    """Pointwise Ginzburg-Landau / Modica-Mortola energy density eps/2 |grad u|^2 + u^2 (1-u)^2 / eps."""
    u = u.float()
    grad_sq = sum(g ** 2 for g in gradient(u, spacing))
    return eps / 2 * grad_sq + u ** 2 * (1 - u) ** 2 / eps
