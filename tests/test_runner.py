"""Runner behaviour in process: NaN losses, training-free methods, tiling, splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.config import resolve_config
from bench.data import DataError, crossval_splits, kfold_splits, load_or_create_splits
from bench.method import NonFiniteLossError
from bench.methods.unet import UNet
from bench.registry import METHODS
from bench.runner import RunExistsError, run
from conftest import FAST_RUN, needs_data

pytestmark = needs_data("bbbc039")


@pytest.fixture
def nan_method():
    """A UNet whose loss turns NaN in the second epoch."""

    class NaNAtEpoch2(UNet):
        calls = 0

        def loss(self, outputs, batch):
            terms = super().loss(outputs, batch)
            type(self).calls += 1
            if type(self).calls > 2:  # steps_per_epoch=2: the 3rd step is in epoch 2
                terms["loss"] = terms["loss"] * float("nan")
            return terms

    METHODS.register("nan_at_epoch2")(NaNAtEpoch2)
    yield
    METHODS.unregister("nan_at_epoch2")


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, nan_method):
    cfg = resolve_config("unet", "bbbc039", overrides=FAST_RUN + [
        "method.impl=nan_at_epoch2", "tracking.enabled=false", f"output_root={tmp_path}"])
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss.*epoch 2, step 1.*last good checkpoint.*epoch 1"):
        run(cfg, progress=False)
    run_dir = cfg.run_dir()
    ck = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ck["state"]["epoch"] == 1
    # the advice works: the changed config runs again with --overwrite (here it fails the same way, being NaN)
    fixed = resolve_config("unet", "bbbc039", overrides=FAST_RUN + [
        "method.impl=nan_at_epoch2", "tracking.enabled=false", f"output_root={tmp_path}", "train.grad_clip=1.0"])
    # (the NaN now comes at its first step: no checkpoint of the new run exists, and the message says so)
    with pytest.raises(NonFiniteLossError, match=r"No checkpoint was written yet.*a changed config is a new run, "
                                                 r"so add --overwrite"):
        run(fixed, overwrite=True, progress=False)
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["state"]["epoch"] == 1  # kept
    assert all(torch.isfinite(v).all() for v in ck["method"]["networks"]["net"].values() if v.is_floating_point())
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "NonFiniteLossError" in status["error"]


def test_training_free_method_runs_without_checkpoints(tmp_path):
    cfg = resolve_config("classic_watershed", "bbbc039", overrides=[
        "eval.max_images=2", "tracking.enabled=false", f"output_root={tmp_path}"])
    res = run(cfg, progress=False)
    assert res.summary["n_images"] == 2 and res.summary["metrics"]["f1@0.50"] > 0.5
    assert not (res.run_dir / "checkpoints").exists()


def test_overwrite_and_resume_guard(tmp_path):
    cfg = resolve_config("classic_watershed", "bbbc039", overrides=[
        "eval.max_images=1", "tracking.enabled=false", f"output_root={tmp_path}"])
    run(cfg, progress=False)
    with pytest.raises(RunExistsError, match="already holds a run"):
        run(cfg, progress=False)
    other = resolve_config("classic_watershed", "bbbc039", overrides=[
        "eval.max_images=1", "tracking.enabled=false", f"output_root={tmp_path}", "method.params.sigma=1.0"])
    with pytest.raises(RunExistsError, match="another config"):
        run(other, resume=True, progress=False)
    res = run(other, overwrite=True, progress=False)
    assert res.summary["n_images"] == 1


def test_sliding_window_matches_whole_image(monkeypatch):
    import bench.inference as inf
    from bench.config import DatasetCard
    from bench.envinfo import seed_everything

    seed_everything(0)
    card = DatasetCard(name="x", reader="bbbc039", task="semantic", root="x", classes=["bg", "fg"])
    m = UNet(UNet.Params(network={"name": "smp_unet", "options": {"encoder": "resnet18"}}), card,
             torch.device("cpu"))
    m.build()
    img = np.random.default_rng(0).random((1, 200, 260), dtype=np.float32)
    whole = m.predict_raw(img)
    monkeypatch.setitem(inf.MAX_WHOLE_PIXELS, 2, 64 * 64)  # force tiling
    tiled = m.predict_raw(img, patch_size=[128, 128], overlap=0.5)
    assert tiled.shape == whole.shape == (2, 200, 260)
    # tiles see less context than the whole image, so only the bulk agrees closely
    assert np.mean(np.abs(tiled - whole)) < 0.05


def test_splits_are_persisted_and_checked(tmp_path):
    ids = [f"img{i}" for i in range(20)]
    p = tmp_path / "splits.json"
    s1 = load_or_create_splits(p, ids, None, seed=3)
    assert load_or_create_splits(p, ids, None, seed=99) == s1  # read back, not redrawn
    assert sorted(s1["train"] + s1["val"] + s1["test"]) == sorted(ids)
    with pytest.raises(DataError, match="other data"):
        load_or_create_splits(p, ids[:-1], None)
    folds = [kfold_splits(ids, {"test": ids[:4]}, folds=4, fold=k, seed=0, path=tmp_path / "k.json")
             for k in range(4)]
    assert all(f["test"] == ids[:4] for f in folds)
    vals = [i for f in folds for i in f["val"]]
    assert sorted(vals) == sorted(ids[4:])  # every non-test image is validated exactly once


@pytest.fixture
def format_probe():
    """A UNet that records the memory format of its input batch and first conv weight at every train step."""

    class FormatProbe(UNet):
        seen: list = []

        def train_step(self, batch):
            # a weight with several input channels and a 3x3 kernel: NCHW and NHWC differ (for 1 channel they agree)
            w = next(p for p in self.networks["net"].parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] > 1)
            type(self).seen.append((batch["image"].is_contiguous(memory_format=torch.channels_last),
                                    w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()))
            return super().train_step(batch)

    METHODS.register("format_probe")(FormatProbe)
    yield FormatProbe
    METHODS.unregister("format_probe")


def test_channels_last_reaches_network_and_batches_and_trains_the_same(tmp_path, format_probe):
    """train.channels_last stores the 2D network and every image batch NHWC; the losses match the contiguous run."""
    losses = {}
    for cl in (False, True):
        format_probe.seen = []
        cfg = resolve_config("unet", "bbbc039", overlay="configs/cpu_fields.yaml", overrides=[
            *FAST_RUN, "method.impl=format_probe", "tracking.enabled=false", f"output_root={tmp_path / str(cl)}",
            f"train.channels_last={str(cl).lower()}", "eval.max_images=1", "eval.calibrate=false"])
        res = run(cfg, progress=False)
        assert format_probe.seen and all(s == (True, cl) for s in format_probe.seen), format_probe.seen
        hist = (res.run_dir / "history.csv").read_text().splitlines()
        col = hist[0].split(",").index("train/loss")
        losses[cl] = [float(r.split(",")[col]) for r in hist[1:]]
        assert res.summary["n_images"] == 1
    assert np.allclose(losses[False], losses[True], rtol=1e-3), losses


def test_to_device_makes_image_batches_channels_last():
    from bench.loop import to_device

    batch = {"image": torch.zeros(2, 3, 8, 8), "target": torch.zeros(2, 1, 8, 8), "id": ["a", "b"]}
    out = to_device(batch, torch.device("cpu"), torch.channels_last)
    assert out["image"].is_contiguous(memory_format=torch.channels_last) and not out["image"].is_contiguous()
    assert out["target"].is_contiguous() and out["id"] == ["a", "b"]
    assert to_device(batch, torch.device("cpu"))["image"].is_contiguous()


def test_training_resources_count_trainable_parameters_and_read_the_peak_memory():
    from bench.envinfo import training_resources

    frozen = torch.nn.Linear(4, 4)
    frozen.requires_grad_(False)
    nets = {"a": torch.nn.Linear(10, 3), "b": torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), frozen)}
    res = training_resources(nets, torch.device("cpu"))
    assert res["parameters"] == 10 * 3 + 3 + 2 * 9 + 2  # the frozen layer is not counted
    assert res["peak_rss_mib"] > 50  # this process holds torch: tens of MiB at least
    assert "peak_cuda_mib" not in res  # no CUDA peak is claimed for a CPU run


def test_crossval_rotates_the_test_fold_over_every_image_and_is_persisted(tmp_path):
    ids = [f"case{i}" for i in range(6)]
    p = tmp_path / "cv.json"
    folds = [crossval_splits(ids, folds=3, fold=k, seed=0, path=p) for k in range(3)]
    assert sorted(i for f in folds for i in f["test"]) == sorted(ids)  # each image tested exactly once
    for f in folds:
        assert (len(f["train"]), len(f["val"]), len(f["test"])) == (3, 1, 2)
        assert sorted(f["train"] + f["val"] + f["test"]) == sorted(ids)
    assert crossval_splits(ids, folds=3, fold=1, seed=99, path=p) == folds[1]  # read back, not redrawn
    with pytest.raises(DataError, match="other data"):
        crossval_splits(ids[:-1], folds=3, fold=0, seed=0, path=p)
    with pytest.raises(DataError, match="cannot fill"):
        crossval_splits(ids[:3], folds=3, fold=0, seed=0, path=None)


def test_a_corrupt_saved_prediction_is_named(tmp_path):
    from bench.imageio_utils import read_label, write_label

    good = tmp_path / "a.tif"
    write_label(good, np.arange(12).reshape(3, 4))
    assert read_label(good).tolist() == np.arange(12).reshape(3, 4).tolist()
    bad = tmp_path / "b.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(DataError, match=r"b\.tif: cannot read the label image"):
        read_label(bad)
