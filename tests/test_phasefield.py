"""Phase-field simulation (bench/physics/phasefield.py): conservation, energy decay, boundedness, masks."""

from __future__ import annotations

import numpy as np
import pytest

from bench.physics import phasefield as pf


@pytest.mark.parametrize("dt,anisotropy", [(0.5, 1.0), (1.0, 3.0), (20.0, 1.0)])
def test_cahn_hilliard_conserves_mass_and_decreases_the_free_energy(dt, anisotropy):
    model = pf.CahnHilliard(mean=0.42, dt=dt, anisotropy=anisotropy, angle=0.7)
    c = pf.cahn_hilliard((96, 128), model, 0, seed=3)[0]
    assert abs(c.mean() - 0.42) < 1e-12
    energies = [pf.free_energy(c, model)]
    for _ in range(150):
        c = pf.cahn_hilliard_steps(c, model, 1)
        energies.append(pf.free_energy(c, model))
        assert abs(c.mean() - 0.42) < 1e-8  # the k = 0 mode is untouched by every step
    assert np.all(np.diff(energies) <= 1e-9 * abs(energies[0]))  # the stabiliser makes every step a descent
    assert energies[-1] < 0.8 * energies[0]


def test_cahn_hilliard_separates_into_two_phases_with_the_mean_as_volume_fraction():
    model = pf.CahnHilliard(mean=0.4, dt=1.0)
    early, late = pf.cahn_hilliard((128, 128), model, 2000, seed=0, snapshots=[50, 2000])
    assert late.min() < 0.05 and late.max() > 0.95 and early.max() - early.min() < late.max() - late.min()
    mask = pf.two_phase_mask(late)
    assert abs(mask.mean() - 0.4) < 0.05
    again = pf.cahn_hilliard((128, 128), model, 2000, seed=0, snapshots=[50, 2000])[1]
    np.testing.assert_array_equal(again, late)  # seeded: the same call, the same microstructure
    straight = pf.cahn_hilliard((128, 128), model, 2000, seed=0)[0]
    np.testing.assert_allclose(straight, late, atol=1e-9)  # snapshots do not change the path (up to round-off)


def test_anisotropic_gradient_energy_elongates_the_domains_along_its_angle():
    model = pf.CahnHilliard(mean=0.5, dt=1.0, anisotropy=4.0, angle=0.0)  # domains along x (angle 0)
    c = pf.cahn_hilliard((128, 128), model, 1500, seed=1)[0]
    m = pf.two_phase_mask(c).astype(float)
    along_x = np.abs(np.diff(m, axis=1)).mean()
    along_y = np.abs(np.diff(m, axis=0)).mean()
    assert along_x < 0.5 * along_y  # fewer phase changes when walking along the domains


def test_allen_cahn_grain_growth_keeps_order_parameters_bounded_and_makes_grains():
    eta = pf.allen_cahn_grains((64, 64), n_grains=8, steps=300, seed=2)
    assert np.abs(eta).max() <= 1 + 1e-3
    ids, edge = pf.grain_labels(eta)
    assert len(np.unique(ids)) >= 4 and 0 < edge.mean() < 0.2
    # boundaries sit between grains: a boundary pixel has neighbours of two grain ids
    from scipy import ndimage as ndi

    lo, hi = ndi.minimum_filter(ids, 3), ndi.maximum_filter(ids, 3)
    assert (lo[edge] != hi[edge]).mean() > 0.8


def test_rendered_images_match_their_masks():
    c = pf.cahn_hilliard((128, 128), pf.CahnHilliard(mean=0.45, dt=1.0), 1500, seed=4)[0]
    mask = pf.two_phase_mask(c)
    img = pf.render_sem(mask, seed=0)
    assert img.shape == mask.shape and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    assert img[mask == 1].mean() > img[mask == 0].mean() + 0.1  # phase 1 is brighter
    from skimage.filters import threshold_otsu

    recovered = img > threshold_otsu(img)
    from scipy import ndimage as ndi

    smooth = ndi.gaussian_filter(img, 2) > threshold_otsu(img)
    assert (smooth == (mask == 1)).mean() > 0.85 and recovered.mean() > 0  # the image shows the mask
    np.testing.assert_array_equal(pf.render_sem(mask, seed=0), img)


def _generated(**params):
    from bench.config import resolve_config
    from bench.runner import open_dataset

    sets = [f"dataset.params.{k}={v}" for k, v in params.items()]
    return open_dataset(resolve_config("unet", "phasefield_sem", overrides=sets))


def test_generated_dataset_is_seeded_has_no_files_and_its_masks_match_its_images():
    small = dict(n_simulations=2, size="[64,96]", snapshots="[200,600]")
    r = _generated(**small)
    assert r.root is None and r.list_ids() == ["sim0000_t0", "sim0000_t1", "sim0001_t0", "sim0001_t1"]
    s = r.load("sim0001_t1")
    assert s.image.shape == (1, 64, 96) and s.label.shape == (64, 96) and set(np.unique(s.label)) == {0, 1}
    assert s.image[0][s.label == 1].mean() > s.image[0][s.label == 0].mean() + 0.1
    again = _generated(**small).load("sim0001_t1")
    np.testing.assert_array_equal(again.image, s.image)
    np.testing.assert_array_equal(again.label, s.label)
    other = _generated(**small, seed=5).load("sim0001_t1")
    assert (other.label != s.label).mean() > 0.2  # another seed, another microstructure
    from bench.data import DataError

    with pytest.raises(DataError, match="sim0003_t1"):
        r.load("nope")


def test_generated_grain_dataset():
    r = _generated(model="allen_cahn", n_simulations=1, size="[64,64]", snapshots="[150,300]", n_grains=6)
    s = r.load("sim0000_t1")
    assert 0 < s.label.mean() < 0.3  # boundaries are a thin network
    assert (r.load("sim0000_t0").label.mean()) > s.label.mean()  # grains coarsen: fewer boundaries later
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match="increasing order"):
        _generated(snapshots="[300,100]")


def test_allen_cahn_snapshots_follow_one_run():
    early, late = pf.allen_cahn_grains((48, 48), 5, seed=1, snapshots=[100, 250])
    np.testing.assert_allclose(late, pf.allen_cahn_grains((48, 48), 5, 250, seed=1), atol=1e-9)
    np.testing.assert_allclose(early, pf.allen_cahn_grains((48, 48), 5, 100, seed=1), atol=1e-12)
