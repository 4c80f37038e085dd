"""sim2real end to end on tiny settings: the CycleGAN networks, the staged pipeline (simulate, translate, render,
segment) with a kill and a resume per stage, and a test that no real label reaches the training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.config import resolve_config
from conftest import needs_data

TINY = [
    "tracking.enabled=false", "eval.max_images=1", "eval.overlays=0", "eval.calibrate=false",
    "extra_datasets.synthetic.params.n_simulations=2", "extra_datasets.synthetic.params.size=[64,64]",
    "extra_datasets.synthetic.params.snapshots=[100,200]",
    "method.params.network={name: monai_unet, options: {_delete_: true, channels: [4, 8, 16], num_res_units: 1}}",
    "method.params.cyclegan={ngf: 4, n_blocks: 1, ndf: 4, crop: 32, epochs: 2, steps_per_epoch: 2, batch_size: 2}",
    "train.epochs=2", "train.steps_per_epoch=2", "train.batch_size=2", "train.patch_size=[32,32]",
    "train.max_train_images=2",
]


def test_generator_keeps_the_shape_and_the_discriminator_sees_70_pixels():
    from torch import nn

    from bench.networks import NetworkSpec, build_network
    from bench.networks.cyclegan import PatchDiscriminator

    g = build_network(NetworkSpec(name="cyclegan_resnet", options={"ngf": 8, "n_blocks": 2}), 1, 1, 2)
    x = torch.randn(2, 1, 64, 96)
    y = g(x)
    assert y.shape == x.shape and y.abs().max() <= 1  # tanh
    d = PatchDiscriminator(1, 8)
    for i, m in enumerate(d.model):  # instance norm couples all positions: leave it out to see the receptive field
        if isinstance(m, nn.InstanceNorm2d):
            d.model[i] = nn.Identity()
    x = torch.randn(1, 1, 256, 256, requires_grad=True)
    out = d(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    nz = (x.grad[0, 0].abs() > 0).nonzero()
    assert ((nz.max(0).values - nz.min(0).values + 1) == 70).all()


def test_realism_checks_tell_a_different_domain_from_a_copy(tmp_path):
    from bench.realism import realism_report

    rng = np.random.default_rng(0)
    real = [np.clip(0.5 + 0.1 * rng.standard_normal((96, 96)), 0, 1) for _ in range(4)]
    copy = [np.clip(0.5 + 0.1 * rng.standard_normal((96, 96)), 0, 1) for _ in range(4)]
    flat = [np.full((96, 96), 0.3) + 0.01 * rng.standard_normal((96, 96)) for _ in range(4)]
    r = realism_report({"real": real, "copy": copy, "flat": flat}, "real", tmp_path, n_crops=20, crop=64)
    d = r["domains"]
    assert d["copy"]["ks_statistic"] < 0.5 < d["flat"]["ks_statistic"]
    assert d["copy"]["feature_distance_to_reference"] < d["flat"]["feature_distance_to_reference"]
    assert (tmp_path / "realism_tsne.png").exists()


def test_sim2real_needs_the_real_classes_merged_to_the_simulated_phases(tmp_path):
    from bench.runner import build_method

    cfg = resolve_config("sim2real", "metaldam", overrides=TINY + [f"output_root={tmp_path}"])
    with pytest.raises(ValueError, match="metaldam_2phase"):
        build_method(cfg, "cpu")


class _Killed(Exception):
    pass


@needs_data("metaldam")
def test_pipeline_runs_is_killed_in_a_stage_and_resumes_that_stage(tmp_path, monkeypatch):
    from bench.methods.sim2real import Sim2Real
    from bench.runner import run

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = resolve_config("sim2real", "metaldam_2phase", overrides=TINY + [f"output_root={tmp_path}"])
    calls = {"simulated": 0}
    orig_save = np.savez

    def counting_savez(path, **kw):
        if "/stages/simulate/" in str(path):
            calls["simulated"] += 1
        return orig_save(path, **kw)

    monkeypatch.setattr(np, "savez", counting_savez)

    def killer(self, epoch):
        if self.stage == "translate" and epoch == 1 and not getattr(type(self), "_resumed", False):
            raise _Killed

    monkeypatch.setattr(Sim2Real, "on_epoch_start", killer)
    with pytest.raises(_Killed):
        run(cfg, progress=False)
    rd = cfg.run_dir()
    assert (rd / "stages" / "simulate" / "done.json").exists() and calls["simulated"] == 4
    assert not (rd / "stages" / "translate" / "done.json").exists()
    ck = torch.load(rd / "checkpoints" / "translate" / "last.pt", weights_only=False)
    assert ck["state"]["epoch"] == 1 and set(ck["method"]["optimizers"]) == {"G", "D"}

    monkeypatch.setattr(Sim2Real, "_resumed", True, raising=False)
    res = run(cfg, resume=True, progress=False)
    assert calls["simulated"] == 4  # stage 1 is not repeated
    hist = (rd / "stages" / "translate" / "history.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in hist[1:]] == [1, 2]  # epoch 2 only, after the resume
    assert "train/G/cycle" in hist[0] and "train/D/loss" in hist[0]
    assert len(list((rd / "stages" / "render").glob("*.npz"))) == 4
    import json

    realism = json.loads((rd / "stages" / "realism" / "realism.json").read_text())
    assert set(realism["domains"]) == {"real", "synthetic", "translated"}
    assert 0 <= realism["domains"]["translated"]["ks_statistic"] <= 1
    assert all((rd / "stages" / "realism" / f"realism_{k}.png").exists() for k in ("tsne", "entropy", "crops"))
    assert "iou" in res.summary["metrics"] and res.summary["dataset"] == "metaldam_2phase"
    kinds = [d["kind"] for d in res.summary["training_data"]]
    assert kinds == ["synthetic", "images_only"]


@needs_data("metaldam")
def test_no_real_label_reaches_the_training(tmp_path, monkeypatch):
    """The real reader is rigged: during fit, every label it returns is all 'second phase' and recorded. The
    training must still see the simulated masks only, and the CycleGAN's view must have dropped the labels."""
    from bench.datasets.metaldam import MetalDAM
    from bench.methods.sim2real import ImagesOnly, Sim2Real
    from bench.runner import run

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    state = {"in_fit": False, "labels_out": 0, "seen_by_gan": []}
    orig_load, orig_fit, orig_view_load = MetalDAM.load, Sim2Real.fit, ImagesOnly.load

    def rigged_load(self, sid):
        s = orig_load(self, sid)
        if state["in_fit"]:
            s.label = np.ones_like(s.label)
            if not state.get("in_view"):
                state["labels_out"] += 1  # a labelled real sample handed to anything but the CycleGAN's view
        return s

    def view_load(self, sid):
        state["in_view"] = True
        try:
            s = orig_view_load(self, sid)
        finally:
            state["in_view"] = False
        state["seen_by_gan"].append(s.label)
        return s

    def fit(self, ctx):
        state["in_fit"] = True
        try:
            return orig_fit(self, ctx)
        finally:
            state["in_fit"] = False

    seen_targets = []
    orig_loss = Sim2Real.loss

    def loss(self, outputs, batch):
        seen_targets.append(batch["target"].clone())
        return orig_loss(self, outputs, batch)

    monkeypatch.setattr(MetalDAM, "load", rigged_load)
    monkeypatch.setattr(ImagesOnly, "load", view_load)
    monkeypatch.setattr(Sim2Real, "fit", fit)
    monkeypatch.setattr(Sim2Real, "loss", loss)
    cfg = resolve_config("sim2real", "metaldam_2phase", overrides=TINY + [f"output_root={tmp_path}"])
    run(cfg, progress=False)
    assert state["seen_by_gan"] and all(lab is None for lab in state["seen_by_gan"])
    assert state["labels_out"] == 0  # no validation, no cache, no stage read a real label during fit
    targets = torch.cat([t.flatten() for t in seen_targets])
    assert 0.2 < targets.float().mean() < 0.8  # the simulated phase fractions, not the rigged all-ones labels
    sims = [np.load(f)["mask"] for f in sorted((cfg.run_dir() / "stages" / "simulate").glob("*.npz"))]
    assert set(np.unique(targets.numpy())) <= set(np.unique(np.concatenate([m.ravel() for m in sims])))


@needs_data("metaldam")
def test_otsu_floor_on_metaldam_two_phases(tmp_path):
    from bench.runner import run

    cfg = resolve_config("otsu_threshold", "metaldam_2phase", overrides=[
        f"output_root={tmp_path}", "tracking.enabled=false", "eval.max_images=2", "eval.overlays=0"])
    res = run(cfg, progress=False)
    iou = res.summary["metrics"]["iou"]
    assert 0.3 < iou < 0.95  # a real floor: above chance, below a learned model
