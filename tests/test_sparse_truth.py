"""Sparse gold truth: the CTC SEG measure, ignore regions from reader to loss, partial references in the metrics,
and the convergence verdict of the leaderboard's budget policy."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from _toy import register_toy_dataset, write_cards
from conftest import needs_data
from bench.config import resolve_config
from bench.metrics import MetricContext, evaluate_image, summarize

register_toy_dataset()


# ------------------------------------------------------------------------------------------------
# SEG


def _seg_case():
    gt = np.zeros((10, 10), int)
    gt[0:4, 0:4] = 1  # 16 px
    gt[5:9, 5:9] = 2  # 16 px
    gt[0:2, 6:10] = 3  # 8 px, no prediction
    pr = np.zeros((10, 10), int)
    pr[0:4, 0:3] = 7  # covers 12 of object 1: J = 12 / 16
    pr[5:9, 5:7] = 8  # exactly half of object 2: not "more than half"
    pr[5:9, 7:9] = 9  # the other half
    return pr, gt


def test_seg_follows_the_challenge_definition_on_a_hand_computed_case():
    pr, gt = _seg_case()
    rows = {r["metric"]: r["value"] for r in evaluate_image(pr, gt, MetricContext(), ["seg"])}
    assert rows["seg"] == pytest.approx((0.75 + 0 + 0) / 3)
    assert rows["seg_nref"] == 3 and rows["seg_jsum"] == pytest.approx(0.75)
    # an extra prediction on the background changes nothing (SEG iterates over reference objects)
    pr2 = pr.copy()
    pr2[9, 0:3] = 5
    assert {r["metric"]: r["value"] for r in evaluate_image(pr2, gt, MetricContext(), ["seg"])}["seg"] == rows["seg"]


def test_seg_pooled_is_the_mean_over_all_reference_objects():
    pr, gt = _seg_case()
    one = np.zeros((10, 10), int)
    one[2:6, 2:6] = 1
    rows = [{"image": "a", **r} for r in evaluate_image(pr, gt, MetricContext())]
    rows += [{"image": "b", **r} for r in evaluate_image(one, one, MetricContext())]
    rows += [{"image": "c", **r} for r in evaluate_image(one, np.zeros_like(one), MetricContext())]  # no reference
    s = summarize(pd.DataFrame(rows))
    assert s["seg"] == pytest.approx((0.25 + 1.0) / 2)  # per image; image c has no objects to average
    assert s["seg_pooled"] == pytest.approx((0.75 + 1.0) / 4)  # 4 reference objects in all


def test_partial_reference_is_scored_by_seg_only():
    pr, gt = _seg_case()
    names = {r["metric"] for r in evaluate_image(pr, gt, MetricContext(partial=True))}
    assert names == {"seg", "seg_jsum", "seg_nref"}


# ------------------------------------------------------------------------------------------------
# ignore region -> loss


def _grad_at(loss_fn, outputs, batch):
    out = outputs.clone().requires_grad_(True)
    loss_fn(out, batch)["loss"].backward()
    return out.grad


@pytest.mark.parametrize("kind", ["field", "unet"])
def test_ignore_region_gets_no_gradient_where_a_background_label_would(kind):
    from bench.methods.field_regression import FieldRegression
    from bench.methods.unet import UNet

    g = torch.Generator().manual_seed(0)
    ign = torch.zeros(2, 16, 16, dtype=torch.bool)
    ign[:, 4:10, 4:10] = True  # an unannotated object: its label says background
    if kind == "field":
        self = SimpleNamespace(params=SimpleNamespace(loss="l1"))
        fn = lambda o, b: FieldRegression.loss(self, o, b)  # noqa: E731
        outputs = torch.rand(2, 1, 16, 16, generator=g) + 0.5
        batch = {"field": torch.zeros(2, 1, 16, 16)}
    else:
        self = SimpleNamespace(params=SimpleNamespace(dice_weight=1.0), n_out=3)
        fn = lambda o, b: UNet.loss(self, o, b)  # noqa: E731
        outputs = torch.randn(2, 3, 16, 16, generator=g)
        batch = {"target": torch.zeros(2, 16, 16, dtype=torch.long)}
    labelled = _grad_at(fn, outputs, batch)
    ignored = _grad_at(fn, outputs, {**batch, "ignore": ign})
    inside = ign[:, None].expand_as(labelled)
    assert labelled[inside].abs().sum() > 0  # labelling the nucleus as background would teach it
    assert ignored[inside].abs().sum() == 0  # ignoring it does not
    assert ignored[~inside].abs().sum() > 0


def test_ignore_travels_from_the_sample_through_cache_and_patches(tmp_path):
    from bench.cache import SampleCache
    from bench.config import AugmentConfig
    from bench.data import Sample
    from bench.pipeline import PatchDataset

    lab = np.zeros((32, 32), np.int32)
    lab[2:8, 2:8] = 1
    ign = np.zeros((32, 32), bool)
    ign[20:30, 20:30] = True
    img = np.zeros((1, 32, 32), np.float32)
    cache = SampleCache(tmp_path, {"k": 1})
    partial = cache.build(Sample("p", img, lab, (1.0, 1.0), {}, ign), img, {"target": lab.astype(np.int64)})
    full = cache.build(Sample("f", img, lab, (1.0, 1.0), {}), img, {"target": lab.astype(np.int64)})
    assert partial.partial and not full.partial and "ignore" not in full.keys
    ds = PatchDataset([partial, full], [32, 32], 8, AugmentConfig(flip=True, rot90=True), 2, 0)
    items = [ds[i] for i in range(8)]
    for it in items:  # the same flips and rotations as the target; zeros for the complete case
        assert it["ignore"].dtype == torch.bool and it["ignore"].shape == (32, 32)
        assert int(it["ignore"].sum()) in (0, 100)
    assert {int(it["ignore"].sum()) for it in items} == {0, 100}
    with pytest.raises(ValueError, match="reserved name 'ignore'"):
        cache.build(Sample("x", img, lab, (1.0, 1.0), {}), img, {"ignore": lab})


def test_a_method_whose_loss_ignores_the_mask_is_refused(tmp_path, monkeypatch):
    from bench.methods.unet import UNet
    from bench.registry import METHODS
    from bench.runner import run

    class Unaware(UNet):
        handles_ignore = False

    root = write_cards(tmp_path / "cards", {"toy_unaware": "impl: toy_unaware\nparams:\n  network:\n"
                                            "    name: monai_unet\n"})
    monkeypatch.setenv("BENCH_CARD_PATH", str(root))
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    METHODS.register("toy_unaware")(Unaware)
    try:
        over = ["tracking.enabled=false", f"output_root={tmp_path / 'runs'}", "dataset.params.ignore=true",
                "train.epochs=1", "train.steps_per_epoch=1"]
        with pytest.raises(ValueError, match="marks ignore regions.*does not read batch\\['ignore'\\]"):
            run(resolve_config("toy_unaware", "toy_blobs", overrides=over), progress=False)
    finally:
        METHODS.unregister("toy_unaware")


# ------------------------------------------------------------------------------------------------
# the real GOWT1 files


@needs_data("ctc/Fluo-N2DH-GOWT1")
def test_gowt1_partial_frames_get_an_ignore_region_over_the_missed_nuclei():
    from bench.datasets._common import read_array
    from bench.datasets.ctc import missed_markers
    from bench.runner import open_dataset

    reader = open_dataset(resolve_config("poisson", "ctc_fluo_n2dh_gowt1"))
    for sid in ("01_t002", "01_t021", "02_t001", "02_t052"):
        s = reader.load(sid)
        tra = read_array(s.meta["tra_path"])
        missed = missed_markers(tra, s.label)
        assert s.partial == bool(len(missed)) == (not reader.is_complete(sid))
        if s.partial:
            assert s.ignore is not None and not (s.ignore & (s.label > 0)).any()
            assert s.ignore[np.isin(tra, missed) & (s.label == 0)].all()  # every missed marker is covered
        else:
            assert s.ignore is None
    assert reader.is_complete("01_t021") and not reader.is_complete("02_t001")  # 22 of 24 nuclei annotated


@needs_data("ctc/Fluo-N2DH-GOWT1")
def test_gowt1_val_holds_complete_and_partial_frames_of_the_training_sequence():
    from bench.runner import dataset_splits, open_dataset

    cfg = resolve_config("poisson", "ctc_fluo_n2dh_gowt1")
    reader = open_dataset(cfg)
    sp = reader.official_splits()
    assert {i[:2] for i in sp["train"] + sp["val"]} == {"01"} and {i[:2] for i in sp["test"]} == {"02"}
    assert not set(sp["train"]) & set(sp["val"]) and len(sp["val"]) == 6  # 20% of sequence 01's 30 frames
    complete = [i for i in sp["val"] if reader.is_complete(i)]
    assert complete and any(reader.is_complete(i) for i in sp["train"])  # PQ can be calibrated on val
    assert len(complete) < len(sp["val"])
    assert reader.official_splits() == sp  # seeded
    assert dataset_splits(cfg, reader, persist=False)["val"] == sp["val"]  # the core keeps the reader's val


# ------------------------------------------------------------------------------------------------
# budget policy


def _fake_run(tmp_path, name, values):
    from bench.config import dump_config

    run_dir = tmp_path / name
    run_dir.mkdir()
    cfg = resolve_config("poisson", "bbbc039", overrides=["train.epochs=8", "train.steps_per_epoch=50"])
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    pd.DataFrame({"epoch": range(1, 9), "steps": 50, "seconds": 1.0,
                  "val/f1@0.50": values}).to_csv(run_dir / "history.csv", index=False)
    return run_dir


def test_convergence_marks_a_rising_curve_under_trained(tmp_path):
    from bench.results import convergence

    rising = convergence(_fake_run(tmp_path, "r", [0.1, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85]))
    flat = convergence(_fake_run(tmp_path, "f", [0.1, 0.6, 0.85, 0.89, 0.90, 0.90, 0.901, 0.899]))
    assert rising.rising and rising.gain == pytest.approx(0.85 / 0.75 - 1)
    assert not flat.rising and flat.gain == pytest.approx(0.901 / 0.90 - 1)
    assert flat.steps == [50 * k for k in range(1, 9)] and flat.budget["steps"] == 400
    assert flat.budget["pixels"] == 400 * flat.budget["batch_size"] * int(np.prod(flat.budget["patch_size"]))


def test_leaderboard_flags_the_under_trained_row_and_states_the_budget(tmp_path):
    from bench.leaderboard import Cell, Row, render
    from bench.results import convergence

    cell = {"f1@0.50": Cell(0.8, (0.7, 0.9), 0.8, 0.0)}
    rows = [Row("poisson", cell, 10, 1, curves=[convergence(_fake_run(tmp_path, "r", [0.1, 0.3, 0.5, 0.6, 0.7,
                                                                                       0.75, 0.8, 0.85]))]),
            Row("unet", cell, 10, 1, curves=[convergence(_fake_run(tmp_path, "f", [0.1, 0.6, 0.85, 0.89, 0.90,
                                                                                    0.90, 0.901, 0.899]))]),
            Row("classic_watershed", cell, 10, 1)]
    for r in rows:
        r.provenance = {"seeds": [0], "git_commits": [], "config_hashes": [], "hardware": [], "mlflow_run_ids": [],
                        "runs": []}
    md = render(rows, ["f1@0.50"], "bbbc039", "md", "bench leaderboard", "instance")
    assert "| poisson (under-trained) |" in md and "| unet |" in md
    assert "| poisson | 400 x 8 x 256x256 |" in md and "+13.3% | under-trained |" in md
    assert "Every trained row had the same budget. Training-free: classic_watershed." in md
    assert "bbbc039_curves.png" in md
    assert "under_trained" in render(rows, ["f1@0.50"], "bbbc039", "csv", "", "instance")


def test_a_flat_zero_validation_curve_is_a_failed_row_not_a_converged_one(tmp_path):
    """SEG 0 at every validation (GOWT1 field rows under batch norm) must not read as 'flattened'."""
    from bench.leaderboard import Cell, Row, render
    from bench.results import convergence

    zero = convergence(_fake_run(tmp_path, "z", [0.0] * 8))
    assert zero.flat and not zero.rising
    assert not convergence(_fake_run(tmp_path, "f", [0.1, 0.6, 0.85, 0.89, 0.90, 0.90, 0.901, 0.899])).flat
    row = Row("poisson", {"f1@0.50": Cell(0.0, (0.0, 0.0), 0.0, 0.0)}, 10, 1, curves=[zero])
    row.provenance = {"seeds": [0], "git_commits": [], "config_hashes": [], "hardware": [], "mlflow_run_ids": [],
                      "runs": []}
    md = render([row], ["f1@0.50"], "ds", "md", "bench leaderboard", "instance")
    assert "| poisson (failed: flat validation curve) |" in md
    assert "| failed: the monitor never moved |" in md and "| flattened |" not in md
