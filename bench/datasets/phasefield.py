"""A generated dataset: phase-field microstructures with exact masks and SEM-like renderings (no files on disk).

Each simulation (seeded by the card's ``seed`` and its index) is run once per requested snapshot list and gives
one image per snapshot (``sim0003_t2`` is simulation 3 at its third snapshot), so coarsening stages of one
microstructure are separate images. Per simulation the parameters are drawn from the card's ranges (mean
composition, anisotropy strength and angle). Models (`bench.physics.phasefield`):

- ``cahn_hilliard``: two phases (labels 0 / 1 = c > 0.5); elongated, interpenetrating domains with an
  anisotropic gradient energy, the morphology of MetalDAM's matrix / austenite map (docs/sim2real.md).
- ``allen_cahn``: grain growth; labels 0 grain interior / 1 grain boundary (polycrystal micrographs).

The image is `render_sem` of the mask (phase grey levels, bright interfaces, blur, shot and read noise). Any method
can train on it (`bench run -m unet -d phasefield_sem`); sim2real reads it as its synthetic domain.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..data import DataError, DatasetReader, Sample
from ..registry import register_dataset


class PhaseFieldParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Literal["cahn_hilliard", "allen_cahn"] = "cahn_hilliard"
    n_simulations: int = Field(8, ge=1)
    size: list[int] = Field(default_factory=lambda: [256, 256], min_length=2, max_length=2)
    snapshots: list[int] = Field(default_factory=lambda: [1500, 3000], min_length=1,
                                 description="step counts at which an image is taken (coarsening stages)")
    dt: float = Field(1.0, gt=0)
    mean: list[float] = Field(default_factory=lambda: [0.5, 0.6], min_length=2, max_length=2,
                              description="range of the mean composition (phase-1 fraction)")
    anisotropy: list[float] = Field(default_factory=lambda: [1.5, 3.0], min_length=2, max_length=2)
    angle_deg: list[float] = Field(default_factory=lambda: [0.0, 180.0], min_length=2, max_length=2)
    noise: float = Field(0.02, ge=0)
    n_grains: int = Field(12, ge=2, description="allen_cahn: order parameters")
    # renderer (bench.physics.phasefield.render_sem)
    levels: list[float] = Field(default_factory=lambda: [0.35, 0.6], min_length=2, max_length=2)
    edge: float = 0.35
    blur: float = 1.0
    shot: float = 40.0
    read_noise: float = 0.03
    seed: int = 0

    @field_validator("snapshots")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:])) or v[0] < 1:
            raise ValueError(f"snapshots {v}: positive step counts in increasing order (image k is snapshot k)")
        return v


@lru_cache(maxsize=8)
def _simulate(params_json: str, index: int) -> tuple[np.ndarray, ...]:
    """The label maps of one simulation at each snapshot, from one run (cached: the snapshots' ids share it)."""
    from ..physics import phasefield as pf

    p = PhaseFieldParams.model_validate_json(params_json)
    rng = np.random.default_rng([p.seed, index])
    shape = tuple(p.size)
    if p.model == "allen_cahn":
        etas = pf.allen_cahn_grains(shape, p.n_grains, seed=int(rng.integers(2**31)), snapshots=list(p.snapshots),
                                    dt=p.dt)
        return tuple(pf.grain_labels(eta)[1].astype(np.uint8) for eta in etas)
    model = pf.CahnHilliard(mean=float(rng.uniform(*p.mean)), noise=p.noise, dt=p.dt,
                            anisotropy=float(rng.uniform(*p.anisotropy)),
                            angle=float(np.deg2rad(rng.uniform(*p.angle_deg))))
    comps = pf.cahn_hilliard(shape, model, max(p.snapshots), seed=int(rng.integers(2**31)),
                             snapshots=list(p.snapshots))
    return tuple(pf.two_phase_mask(c) for c in comps)


@register_dataset("phasefield", description="generated: phase-field microstructures (Cahn-Hilliard two-phase or "
                                            "Allen-Cahn grains) with exact masks, SEM-like renderings; no files")
class PhaseField(DatasetReader):
    Params = PhaseFieldParams

    def list_ids(self) -> list[str]:
        p = self.params
        return [f"sim{i:04d}_t{k}" for i in range(p.n_simulations) for k in range(len(p.snapshots))]

    def load(self, sample_id: str) -> Sample:
        try:
            sim, snap = sample_id.removeprefix("sim").split("_t")
            index, k = int(sim), int(snap)
        except ValueError:
            raise DataError(f"{self.card.name}: no image {sample_id!r} (ids look like sim0003_t1)") from None
        p = self.params
        if not (0 <= index < p.n_simulations and 0 <= k < len(p.snapshots)):
            raise DataError(f"{self.card.name}: no image {sample_id!r}: {p.n_simulations} simulations x "
                            f"{len(p.snapshots)} snapshots")
        from ..physics.phasefield import render_sem

        label = _simulate(p.model_dump_json(), index)[k].astype(np.int64)
        render_seed = int(np.random.default_rng([p.seed, index, k, 1]).integers(2**31))
        image = render_sem(label, seed=render_seed, levels=tuple(p.levels), edge=p.edge,
                           blur=p.blur, shot=p.shot, read_noise=p.read_noise)
        return Sample(sample_id, image[None], label, tuple(self.card.spacing or (1.0, 1.0)),
                      meta={"model": p.model, "simulation": index, "snapshot_steps": p.snapshots[k]})
