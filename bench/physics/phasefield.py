"""Phase-field simulation of two-phase and polycrystalline microstructures (numpy, float64, periodic grids), for
labelled synthetic images (the sim2real method; issue 14).

- :func:`cahn_hilliard`: spinodal decomposition and coarsening of a conserved composition c,
  ``c_t = M lap(f'(c) - kappa_aniso(c))`` with the double well ``f(c) = W c^2 (1 - c)^2``, stepped
  semi-implicitly in Fourier space with a linear stabiliser S (Eyre / Zhu et al. 1999): the stiff terms and
  ``S lap c`` are implicit, the rest of ``f'`` explicit, so the mean composition (the k = 0 mode) is conserved to
  round-off and, with ``S >= max f'' / 2 = W``, the free energy decreases for any step. An anisotropic gradient
  energy (a larger kappa along one direction) gives the elongated, aligned domains of directionally solidified
  alloys. Snapshots are taken while the domains coarsen.
- :func:`allen_cahn_grains`: multi-order-parameter grain growth (Fan & Chen 1997): N non-conserved order
  parameters, ``eta_t = -L (-alpha eta + beta eta^3 + 2 gamma eta sum_{j != i} eta_j^2 - kappa lap eta)``,
  semi-implicit spectral steps; the order parameters stay in [-1, 1] (tested). Grain boundaries are where no
  order parameter dominates.
- :func:`free_energy`, :func:`two_phase_mask`, :func:`grain_labels`, :func:`render_sem`: the energy that the
  tests check, masks from the order parameters, and a renderer of SEM-like grey images (phase grey levels,
  brighter interfaces as SEM's edge effect, blur, shot and read noise).

Everything is seeded by an integer: the same call gives the same microstructure and image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CahnHilliard", "cahn_hilliard", "cahn_hilliard_steps", "allen_cahn_grains", "allen_cahn_steps", "free_energy", "two_phase_mask", "grain_labels",
           "render_sem", "wavenumbers"]


def wavenumbers(shape: tuple[int, int], dx: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(ky, kx) angular wavenumbers of a periodic grid, broadcast to ``shape`` (rfft2 layout on the last axis)."""
    ky = 2 * np.pi * np.fft.fftfreq(shape[0], d=dx)[:, None]
    kx = 2 * np.pi * np.fft.rfftfreq(shape[1], d=dx)[None, :]
    return ky, kx


def _aniso_k2(shape, kappa: float, anisotropy: float, angle: float, dx: float):
    """kappa_eff(k) k^2 with the gradient energy ``anisotropy`` times larger for variation along the direction
    ``angle``: the composition changes slowly along it, so the domains elongate along ``angle``."""
    ky, kx = wavenumbers(shape, dx)
    c, s = np.cos(angle), np.sin(angle)
    k_along = kx * c + ky * s
    k_across = -kx * s + ky * c
    return kappa * (anisotropy * k_along ** 2 + k_across ** 2), kx ** 2 + ky ** 2


@dataclass
class CahnHilliard:
    """Parameters of the Cahn-Hilliard model (units: grid spacing dx and the model's time)."""

    mean: float = 0.45  # mean composition (the volume fraction of phase 1 after coarsening)
    noise: float = 0.02  # amplitude of the initial fluctuation around the mean
    W: float = 1.0  # double-well height
    kappa: float = 1.0  # gradient-energy coefficient (interface width ~ sqrt(kappa / W))
    mobility: float = 1.0
    anisotropy: float = 1.0  # >1: elongated domains along `angle`
    angle: float = 0.0
    dt: float = 0.5
    dx: float = 1.0

    def stabiliser(self) -> float:
        return self.W  # >= max f''(c) / 2 on [0, 1]: unconditional energy decrease of the stabilised scheme


def _fprime(c: np.ndarray, W: float) -> np.ndarray:
    return 2 * W * c * (1 - c) * (1 - 2 * c)


def free_energy(c: np.ndarray, model: CahnHilliard) -> float:
    """Discrete total free energy: sum of W c^2 (1-c)^2 + the (anisotropic) gradient energy, spectrally."""
    bulk = float(np.sum(model.W * c ** 2 * (1 - c) ** 2)) * model.dx ** 2
    kk, _ = _aniso_k2(c.shape, model.kappa, model.anisotropy, model.angle, model.dx)
    ch = np.fft.rfft2(c)
    power = np.abs(ch) ** 2
    power[:, 1:-1 if c.shape[1] % 2 == 0 else None] *= 2  # the rfft half-spectrum counts the other half once more
    grad = 0.5 * float(np.sum(kk * power)) / c.size * model.dx ** 2
    return bulk + grad


def cahn_hilliard_steps(c: np.ndarray, model: CahnHilliard, steps: int) -> np.ndarray:
    """`steps` stabilised semi-implicit spectral steps from composition c (float64, periodic)."""
    kk, k2 = _aniso_k2(c.shape, model.kappa, model.anisotropy, model.angle, model.dx)
    S, M, dt = model.stabiliser(), model.mobility, model.dt
    denom = 1 + dt * M * (k2 * kk + S * k2)
    ch = np.fft.rfft2(c)
    for _ in range(steps):
        rhs = ch * (1 + dt * M * S * k2) - dt * M * k2 * np.fft.rfft2(_fprime(np.fft.irfft2(ch, s=c.shape), model.W))
        ch = rhs / denom
    return np.fft.irfft2(ch, s=c.shape)


def cahn_hilliard(shape: tuple[int, int], model: CahnHilliard, steps: int, seed: int,
                  snapshots: list[int] | None = None) -> list[np.ndarray]:
    """Compositions after each step count in `snapshots` (default: [steps]), from a seeded random start."""
    rng = np.random.default_rng(seed)
    c = model.mean + model.noise * rng.standard_normal(shape)
    c += model.mean - c.mean()  # the exact mean: conservation is then checked from step 0
    marks = sorted(set(snapshots or [steps]))
    out, done = [], 0
    for m in marks:
        c = cahn_hilliard_steps(c, model, m - done)
        done = m
        out.append(c.copy())
    return out


def allen_cahn_steps(eta: np.ndarray, steps: int, *, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0,
                     kappa: float = 1.0, mobility: float = 1.0, dt: float = 0.2, dx: float = 1.0) -> np.ndarray:
    """`steps` semi-implicit spectral steps of Fan-Chen grain growth from order parameters (n_grains, H, W)."""
    shape = eta.shape[1:]
    ky, kx = wavenumbers(shape, dx)
    denom = 1 + dt * mobility * kappa * (kx ** 2 + ky ** 2)
    for _ in range(steps):
        sq = eta ** 2
        others = sq.sum(0, keepdims=True) - sq
        dfdeta = -alpha * eta + beta * eta ** 3 + 2 * gamma * eta * others
        eta_h = (np.fft.rfft2(eta) - dt * mobility * np.fft.rfft2(dfdeta)) / denom
        eta = np.fft.irfft2(eta_h, s=shape)
    return eta


def allen_cahn_grains(shape: tuple[int, int], n_grains: int = 12, steps: int = 400, seed: int = 0, *,
                      snapshots: list[int] | None = None, **kw) -> np.ndarray | list[np.ndarray]:
    """(n_grains, H, W) order parameters after `steps` of grain growth from small random values; with `snapshots`
    (step counts), the list of them along one run (as `cahn_hilliard`). `kw`: the model's coefficients."""
    rng = np.random.default_rng(seed)
    eta = 0.01 * rng.standard_normal((n_grains, *shape))
    if snapshots is None:
        return allen_cahn_steps(eta, steps, **kw)
    out, done = [], 0
    for m in sorted(set(snapshots)):
        eta = allen_cahn_steps(eta, m - done, **kw)
        done = m
        out.append(eta.copy())
    return out


def two_phase_mask(c: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Phase 1 where the composition is above the threshold (uint8 0/1)."""
    return (c > threshold).astype(np.uint8)


def grain_labels(eta: np.ndarray, boundary: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """Grain ids (1..N, the dominant order parameter) and the boundary mask (no order parameter above `boundary`
    in magnitude... measured as sum eta^2 below boundary^2)."""
    sq = eta ** 2
    ids = sq.argmax(0).astype(np.int32) + 1
    edge = sq.sum(0) < boundary ** 2
    return ids, edge


def render_sem(mask: np.ndarray, seed: int, *, levels: tuple[float, float] = (0.35, 0.6), edge: float = 0.35,
               edge_width: float = 1.5, blur: float = 1.0, shot: float = 40.0, read_noise: float = 0.03,
               texture: float = 0.05) -> np.ndarray:
    """A grey SEM-like image in [0, 1] of a phase mask: a grey level per phase, slow texture inside each phase,
    brighter interfaces (SEM's edge effect: secondary electrons escape near edges), Gaussian blur (the probe),
    Poisson shot noise (`shot` electrons at full scale) and Gaussian read noise."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    m = np.asarray(mask) > 0
    img = np.where(m, levels[1], levels[0]).astype(np.float64)
    if texture:
        img += texture * ndi.gaussian_filter(rng.standard_normal(m.shape), 6.0) * 6.0
    if edge:
        boundary = m ^ ndi.binary_erosion(m, border_value=1) | (~m ^ ndi.binary_erosion(~m, border_value=1))
        dist = ndi.distance_transform_edt(~boundary)
        img += edge * np.exp(-(dist / edge_width) ** 2)
    if blur:
        img = ndi.gaussian_filter(img, blur)
    img = np.clip(img, 0, 1)
    if shot:
        img = rng.poisson(img * shot) / shot
    img = img + read_noise * rng.standard_normal(m.shape)
    return np.clip(img, 0, 1).astype(np.float32)
