"""The shared physics operators, the pde_unet method, and the low-data / cross-domain protocols."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.config import resolve_config
from bench.physics import gradient, laplacian, phase_field_energy, reaction_diffusion_residual
from conftest import DATA_ROOT, needs_data


@pytest.mark.parametrize("value", [0.0, 1.0, 0.5])
def test_reaction_diffusion_residual_vanishes_on_its_fixed_points(value):
    u = torch.full((2, 1, 17, 23), value)
    assert torch.count_nonzero(reaction_diffusion_residual(u, D=5.0, a=0.5)) == 0
    # a = 0.3: u = 0.3 is the fixed point, 0.5 is not
    assert reaction_diffusion_residual(torch.full((1, 1, 5, 5), 0.3), a=0.3).abs().max() < 1e-7
    assert reaction_diffusion_residual(torch.full((1, 1, 5, 5), 0.5), a=0.3).abs().min() > 1e-3


def test_phase_field_energy_is_zero_for_pure_phases_and_positive_at_interfaces():
    for v in (0.0, 1.0):
        assert torch.count_nonzero(phase_field_energy(torch.full((1, 1, 9, 9), v), eps=0.05)) == 0
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    e = phase_field_energy(step, eps=0.05)
    assert e[..., 3:5].min() > 0 and e[..., :2].max() == 0
    # the double well at u = 1/2 is (1/16) / eps
    assert phase_field_energy(torch.full((1, 1, 3, 3), 0.5), eps=0.05).max() == pytest.approx(1 / 16 / 0.05)


def test_laplacian_and_gradient_are_exact_on_quadratics_with_anisotropic_spacing():
    y, x = torch.meshgrid(torch.arange(12.0), torch.arange(15.0), indexing="ij")
    h = (2.0, 0.5)
    u = ((y * h[0]) ** 2 + 3 * (x * h[1]) ** 2)[None, None]
    lap = laplacian(u, spacing=h)
    assert torch.allclose(lap[..., 1:-1, 1:-1], torch.full_like(lap[..., 1:-1, 1:-1], 2 + 6.0), atol=1e-4)
    gy, gx = gradient(u, spacing=h)
    assert torch.allclose(gy[..., 1:-1, :], (2 * y * h[0])[None, None][..., 1:-1, :], atol=1e-4)
    assert torch.allclose(gx[..., :, 1:-1], (6 * x * h[1])[None, None][..., :, 1:-1], atol=1e-4)
    # reflecting boundary: a constant has zero Laplacian up to the border; a per-sample (B, ndim) spacing works
    assert torch.count_nonzero(laplacian(torch.ones(3, 1, 6, 6), spacing=torch.tensor([[1.0, 1.0]] * 3))) == 0


@needs_data("bbbc039")
def test_shared_laplacian_of_the_unscaled_poisson_target_is_minus_one_in_every_cell():
    """One stencil for the targets and the losses: Δu = -1 on every pixel of every cell (u = 0 outside it)."""
    from bench.datasets._common import read_array
    from bench.fields import poisson_field

    from bench.datasets.bbbc039 import decode_bbbc039_mask

    mask = read_array(sorted((DATA_ROOT / "bbbc039" / "masks").glob("*.png"))[0], "label")
    lab = decode_bbbc039_mask(mask)[:200, :260]
    u = poisson_field(lab, scaled=False)
    ids = [i for i in np.unique(lab) if i][:40]
    assert len(ids) >= 10
    for i in ids:
        cell = lab == i
        ui = torch.from_numpy(np.where(cell, u, 0.0).astype(np.float64))[None, None]
        lap = laplacian(ui, boundary="zero")[0, 0].numpy()
        np.testing.assert_allclose(lap[cell], -1.0, atol=1e-6 * max(1.0, float(u[cell].max())) * 8)  # float32


def test_physics_terms_gradcheck_and_float32_under_half_precision():
    u = torch.rand(1, 1, 6, 7, dtype=torch.float64, requires_grad=True)
    # the operators compute in float32 by design; gradcheck in float64 on the same formulas via .double()
    assert torch.autograd.gradcheck(lambda v: (reaction_diffusion_residual(v).double() ** 2).mean(), (u,),
                                    eps=1e-3, atol=1e-2)
    assert torch.autograd.gradcheck(lambda v: phase_field_energy(v).double().mean(), (u,), eps=1e-3, atol=1e-2)
    half = torch.rand(1, 1, 8, 8).to(torch.bfloat16)
    assert reaction_diffusion_residual(half).dtype == torch.float32
    assert phase_field_energy(half).dtype == torch.float32
    assert laplacian(half).dtype == torch.float32


@needs_data("bbbc039")
def test_pde_unet_two_stages_physics_only_in_stage_two_and_cross_domain_summary(tmp_path, monkeypatch):
    from bench.runner import run

    if not (DATA_ROOT / "ctc" / "Fluo-N2DH-GOWT1").exists():
        pytest.skip("GOWT1 not present")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = resolve_config("pde_unet", "bbbc039_fg", overrides=[
        "train.epochs=2", "train.steps_per_epoch=2", "train.batch_size=2", "train.patch_size=[64,64]",
        "train.max_train_images=2", "train.val_max_images=1", "eval.max_images=1", "eval.overlays=0",
        "tracking.enabled=false", f"output_root={tmp_path}", "method.params.network.name=monai_unet",
        "method.params.network.options={_delete_: true, channels: [8, 16, 32], num_res_units: 0}",
        "eval.dataset=gowt1_complete_fg", "eval.split=all", "train.keep_resume_state=true"])
    res = run(cfg, progress=False)
    rd = res.run_dir
    stage1 = (rd / "stages" / "data" / "history.csv").read_text().splitlines()
    final = (rd / "history.csv").read_text().splitlines()
    assert "train/rd" not in stage1[0] and "train/bce" in stage1[0] and len(stage1) == 2
    assert "train/rd" in final[0] and "train/pf" in final[0]
    s = res.summary
    assert s["dataset"] == "bbbc039_fg" and s["eval_dataset"] == "gowt1_complete_fg" and s["split"] == "all"
    assert s["n_images"] == 1 and {"dice", "iou", "hd95", "bf1"} <= set(s["metrics"])
    # stage II starts at lr x 0.1
    ck = torch.load(rd / "checkpoints" / "last.pt", weights_only=False)
    assert ck["method"]["optimizers"]["main"]["param_groups"][0]["lr"] == pytest.approx(cfg.train.lr * 0.1)


@needs_data("bbbc039")
def test_training_fractions_are_seeded_and_nested(tmp_path):
    from pathlib import Path

    from bench.loop import FitContext
    from bench.runfiles import RunFiles
    from bench.runner import dataset_splits, open_dataset

    sets = {}
    for f in (0.1, 0.25, 0.5, 1.0):
        cfg = resolve_config("pde_unet", "bbbc039_fg", overrides=[f"train.fraction={f}", f"output_root={tmp_path}"])
        reader = open_dataset(cfg)
        ctx = FitContext(cfg, None, reader, dataset_splits(cfg, reader), RunFiles(Path(tmp_path) / "r"), None,
                         resuming=False, progress=False)
        sets[f] = set(ctx.train_ids())
    assert [len(sets[f]) for f in (0.1, 0.25, 0.5, 1.0)] == [10, 25, 50, 100]
    assert sets[0.1] < sets[0.25] < sets[0.5] < sets[1.0]
    cfg = resolve_config("pde_unet", "bbbc039_fg", overrides=["train.fraction=0.1", "train.fraction_seed=1",
                                                              f"output_root={tmp_path}"])
    reader = open_dataset(cfg)
    other = set(FitContext(cfg, None, reader, dataset_splits(cfg, reader), RunFiles(Path(tmp_path) / "r"), None,
                           resuming=False, progress=False).train_ids())
    assert other != sets[0.1]


@needs_data("ctc/Fluo-N2DH-GOWT1")
def test_ctc_complete_frame_filter_on_the_real_gowt1_files():
    from bench.runner import open_dataset

    full = open_dataset(resolve_config("unet", "ctc_fluo_n2dh_gowt1"))
    complete = open_dataset(resolve_config("pde_unet", "gowt1_complete_fg"))
    ids = complete.list_ids()
    assert len(full.list_ids()) == 50 and len(ids) == 7  # the README: 7 frames annotate every nucleus
    for sid in full.list_ids()[:12]:
        s = full.load(sid)
        from bench.datasets._common import read_array

        tra = read_array(complete._tra_file(sid))
        n_tracked, n_seg = len(np.unique(tra[tra > 0])), len(np.unique(s.label[s.label > 0]))
        assert complete.is_complete(sid) == (sid in ids)
        if sid not in ids:
            assert n_seg < n_tracked  # a partial frame: fewer annotated nuclei than tracked ones
    s = complete.load(ids[0])
    assert set(np.unique(s.label)) == {0, 1}  # the foreground view


def test_cross_domain_needs_the_same_classes():
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match="cross-domain evaluation needs the same classes"):
        resolve_config("unet", "bbbc039_fg", overrides=["eval.dataset=drosophila_vnc"])


def test_pde_unet_refuses_multiclass_data():
    from bench.runner import build_method

    cfg = resolve_config("pde_unet", "metaldam")
    with pytest.raises(ValueError, match="one foreground"):
        build_method(cfg, torch.device("cpu"))


def test_variant_cards_differ_only_in_the_physics_weights():
    cards = {n: resolve_config(n, "bbbc039_fg") for n in ("pde_unet", "pde_unet_rd", "pde_unet_pf", "pde_unet_zero")}
    w = {n: (c.method.params["lambda_rd"], c.method.params["lambda_pf"]) for n, c in cards.items()}
    assert w == {"pde_unet": (1e-4, 1e-4), "pde_unet_rd": (1e-4, 0.0), "pde_unet_pf": (0.0, 1e-4),
                 "pde_unet_zero": (0.0, 0.0)}
    base = json.dumps(cards["pde_unet"].train.model_dump(), sort_keys=True)
    assert all(json.dumps(c.train.model_dump(), sort_keys=True) == base for c in cards.values())
