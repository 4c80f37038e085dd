"""pde3d_unet: its cards (full model and ablations) build the networks they name, the loss has its deep supervision
and PDE terms and trains the PDE layers, and a tiny run on the real BraTS 2015 cases finishes; the MONAI baselines
(3D UNet, V-Net, Swin UNETR) build as cards over the same recipe."""

from __future__ import annotations

import pytest
import torch

from bench.config import resolve_config
from bench.runner import build_method
from conftest import needs_data

TINY_NET = "method.params.network.options.features=[4,4,8,16,32,4]"


def _method(card: str, *sets: str):
    cfg = resolve_config(card, "brats2015", overrides=list(sets))
    return cfg, build_method(cfg, torch.device("cpu"))


@pytest.mark.parametrize("card,stages,steps,scheme,lambda_pde", [
    ("pde3d_unet", ["stage3", "stage4"], 2, "semi_implicit", 1e-3),
    ("pde3d_unet_loss", [], 2, "semi_implicit", 1e-3),
    ("pde3d_unet_backbone", [], 2, "semi_implicit", 0.0),
    ("pde3d_unet_k1", ["stage3", "stage4"], 1, "semi_implicit", 1e-3),
    ("pde3d_unet_k5", ["stage3", "stage4"], 5, "semi_implicit", 1e-3),
    ("pde3d_unet_explicit", ["stage3", "stage4"], 2, "explicit", 1e-3),
    ("pde3d_unet_cn", ["stage3", "stage4"], 2, "crank_nicolson", 1e-3),
])
def test_each_ablation_card_builds_what_it_says(card, stages, steps, scheme, lambda_pde):
    _, m = _method(card, TINY_NET)
    net = m.networks["net"]
    assert sorted(net.pde) == stages
    for layer in net.pde.values():
        assert layer.steps == steps and layer.scheme == scheme
    assert m.params.lambda_pde == lambda_pde


def test_the_loss_has_deep_supervision_and_the_pde_residual_and_trains_the_pde_layers():
    cfg, m = _method("pde3d_unet", TINY_NET, "train.patch_size=[32,32,32]")
    m.configure_optimizers(cfg.train, 10)
    torch.manual_seed(0)
    batch = {"image": torch.randn(2, 2, 32, 32, 32), "target": torch.randint(0, 4, (2, 32, 32, 32)),
             "spacing": torch.ones(2, 3)}
    m.train_mode(True)
    out = m.forward(batch["image"], {"spacing": batch["spacing"]})
    terms = m.loss(out, batch)
    assert {"ce", "dice", "deep_supervision", "pde", "loss"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    layer = m.networks["net"].pde["stage4"]
    assert layer.diffusion.theta.grad is not None and layer.diffusion.theta.grad.abs().sum() > 0
    assert layer.dt_theta.grad is not None
    # ignoring the heads and the residual changes the loss: both are in it
    m.params.deep_supervision_weight, m.params.lambda_pde = 0.0, 0.0
    plain = m.loss(out, batch)
    assert "deep_supervision" not in plain and "pde" not in plain
    assert float(plain["loss"]) != pytest.approx(float(terms["loss"]))


@pytest.mark.parametrize("card,network", [("unet3d", "monai_basic_unet"), ("vnet", "monai_vnet"),
                                          ("swin_unetr", "monai_swin_unetr")])
def test_the_monai_baselines_are_cards_over_the_same_recipe(card, network):
    cfg = resolve_config(card, "brats2015")
    ref = resolve_config("pde3d_unet", "brats2015")
    assert cfg.method.params["network"]["name"] == network
    for key in ("optimizer", "scheduler", "lr", "epochs", "steps_per_epoch", "batch_size", "augment"):
        assert getattr(cfg.train, key) == getattr(ref.train, key), key
    if card == "unet3d":  # the backbone of pde3d_unet, same widths
        assert cfg.method.params["network"]["options"]["features"] == \
            ref.method.params["network"]["options"]["features"]


@needs_data("brats2015")
def test_a_tiny_pde3d_unet_run_on_brats2015_finishes(tmp_path):
    from bench.runner import run

    cfg = resolve_config("pde3d_unet", "brats2015", overrides=[
        TINY_NET, f"output_root={tmp_path}", "train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=1",
        "train.patch_size=[32,32,32]", "train.val_max_images=1", "eval.max_images=1", "eval.overlays=0",
        "tracking.enabled=false", "eval.calibrate=false"])
    result = run(cfg, progress=False)
    assert result.summary["n_images"] == 1
    assert 0 <= result.summary["metrics"]["dice"] <= 1


def test_without_deep_supervision_the_heads_are_not_built():
    # heads that never reach the loss would be unused parameters, which DistributedDataParallel refuses
    _, m = _method("pde3d_unet", TINY_NET, "method.params.deep_supervision_weight=0")
    assert len(m.networks["net"].heads) == 0
    m.train_mode(True)
    out = m.forward(torch.randn(1, 2, 32, 32, 32), {"spacing": torch.ones(1, 3)})
    assert out.shape == (1, 4, 32, 32, 32) and m.networks["net"].aux_logits == []
