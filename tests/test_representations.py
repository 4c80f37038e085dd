"""The instance representations side by side (issue 15): each one's ground-truth round trip on real BBBC039
masks (`bench ceiling`), the augmentation of vector targets, a few training steps of cellpose flows and
StarDist rays, and the pretrained Cellpose-SAM adapter (missing weights; offline loading of a small model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from bench.config import resolve_config
from conftest import DATA_ROOT, FAST_RUN, needs_data

pytestmark = needs_data("bbbc039")

SMALL_NET = ["method.params.network={name: monai_unet, options: {_delete_: true, channels: [8, 16, 32, 64], "
             "num_res_units: 1}}"]


def _real_label(k: int = 3) -> np.ndarray:
    import imageio.v3 as iio

    from bench.datasets.bbbc039 import decode_bbbc039_mask

    path = sorted((DATA_ROOT / "bbbc039" / "masks").glob("*.png"))[k]
    return decode_bbbc039_mask(iio.imread(path))


# each representation's round trip on 3 real test images: (AP@0.5 at least, PQ at least)
CEILINGS = {
    "poisson": (0.97, 0.97),
    "unet": (0.95, 0.95),        # 3-class: a 2-px boundary band grown back by watershed
    "cellpose_flows": (0.97, 0.97),
    "stardist": (0.97, 0.93),    # star-convex polygons: the shape, not the count, is what it loses
    "distance": (0.75, 0.8),     # EDT ties: equal maxima of one cell become two markers (docs/representations.md)
    "binary_cc": (0.7, 0.75),    # touching nuclei merge
}


@pytest.mark.parametrize("method", list(CEILINGS))
def test_round_trip_ceiling_on_real_masks(method, tmp_path, monkeypatch):
    from bench.ceiling import read_ceiling, representation_ceiling

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = resolve_config(method, "bbbc039", overrides=[f"output_root={tmp_path}", "eval.max_images=3"])
    summary = representation_ceiling(cfg, progress=False)
    ap_min, pq_min = CEILINGS[method]
    m = summary["metrics"]
    assert m["ap@0.50"] >= ap_min and m["pq"] >= pq_min, m
    assert summary["n_images"] == 3 and summary["seconds_per_image"]["postprocess"] > 0
    assert read_ceiling(tmp_path, "bbbc039", method)["metrics"] == m  # where the leaderboard finds it
    table = (tmp_path / "bbbc039" / method / "ceiling" / "metrics_per_image.csv").read_text()
    assert table.count("\n") > 3 * 5


def test_binary_ceiling_is_below_three_class_because_touching_nuclei_merge(tmp_path, monkeypatch):
    from bench.ceiling import representation_ceiling

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    got = {m: representation_ceiling(resolve_config(m, "bbbc039", overrides=[
        f"output_root={tmp_path}", "eval.max_images=3"]), progress=False)["metrics"] for m in ("unet", "binary_cc")}
    assert got["binary_cc"]["ap@0.50"] < got["unet"]["ap@0.50"] - 0.05
    # the foreground itself is exact in both
    assert got["binary_cc"]["dice"] > 0.999 and got["unet"]["dice"] > 0.999


def test_ceiling_of_a_training_free_method_is_refused(tmp_path):
    from bench.ceiling import representation_ceiling

    cfg = resolve_config("classic_watershed", "bbbc039", overrides=[f"output_root={tmp_path}", "eval.max_images=1"])
    with pytest.raises(ValueError, match="no ideal output"):
        representation_ceiling(cfg, progress=False)


def test_bench_ceiling_cli(tmp_path):
    env = {**os.environ, "BENCH_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "bench", "ceiling", "-m", "binary_cc", "-d", "bbbc039",
                          "--output-root", str(tmp_path), "--set", "eval.max_images=1", "-q"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "binary_cc on bbbc039 (1 test images): ap@0.50" in out.stdout
    assert (tmp_path / "bbbc039" / "binary_cc" / "ceiling" / "summary.json").is_file()


# -- augmentation of vector targets ----------------------------------------------------------------------

_MOVES = [("flip", 1, lambda a: np.flip(a, -1)), ("flip", 2, lambda a: np.flip(a, -2)),
          ("rot90", 1, lambda a: np.rot90(a, 1, axes=(-2, -1))), ("rot90", 2, lambda a: np.rot90(a, 2, axes=(-2, -1))),
          ("rot90", 3, lambda a: np.rot90(a, 3, axes=(-2, -1)))]


@pytest.mark.parametrize("op,arg,move", _MOVES, ids=[f"{o}{a}" for o, a, _ in _MOVES])
def test_augmented_rays_and_flows_equal_the_targets_of_the_augmented_label(op, arg, move):
    from bench.methods.cellpose_flows import transform_flows
    from bench.methods.stardist_rays import transform_rays
    from bench.targets import compute_target

    lab = np.ascontiguousarray(_real_label()[:200, :240])
    moved = np.ascontiguousarray(move(lab))
    fg = moved > 0
    rays = compute_target("stardist", lab, {"n_rays": 32}, cache=False)[1:]
    want = compute_target("stardist", moved, {"n_rays": 32}, cache=False)[1:]
    got = transform_rays(move(rays), op, arg)
    np.testing.assert_allclose(got[:, fg], want[:, fg], atol=1e-3)
    assert np.abs(move(rays) - want)[:, fg].mean() > 1  # without the permutation they would not agree
    flows = compute_target("cellpose_flows", lab, cache=False)[:2]
    want_f = compute_target("cellpose_flows", moved, cache=False)[:2]
    cos = (transform_flows(move(flows), op, arg) * want_f).sum(0)[fg]
    assert np.percentile(cos, 1) > 0.99  # cellpose's centres are medians: equal up to ties


def test_patch_dataset_applies_the_method_target_transforms():
    from bench.config import AugmentConfig
    from bench.pipeline import augment

    calls = []

    def fix(a, op, arg):
        calls.append((op, arg))
        return -a

    arrays = {"image": np.zeros((1, 4, 4), np.float32), "flows": np.ones((2, 4, 4), np.float32)}
    rng = np.random.default_rng(0)
    augment(arrays, rng, AugmentConfig(flip=True, rot90=True), 2, {"flows": fix})
    assert calls and all(op in ("flip", "rot90") for op, _ in calls)
    assert (arrays["flows"] == (-1.0) ** len(calls)).all() and (arrays["image"] == 0).all()


# -- training through the runner -------------------------------------------------------------------------

@pytest.mark.parametrize("method,loss_terms,extra", [
    ("cellpose_flows", ("flow_mse", "bce"), []),
    ("stardist", ("bce", "dist_mae"), ["method.params.max_candidates=2000"])])  # an untrained net: NMS of 2,000
def test_representation_methods_train_and_evaluate(method, loss_terms, extra, tmp_path, monkeypatch):
    from bench.runner import run

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = resolve_config(method, "bbbc039", overrides=FAST_RUN + SMALL_NET + extra + [
        f"output_root={tmp_path}", "tracking.enabled=false", "eval.max_images=1", "eval.calibrate=false"])
    res = run(cfg, progress=False)
    assert res.summary["n_images"] == 1 and "pq" in res.summary["metrics"]
    hist = (res.run_dir / "history.csv").read_text().splitlines()[0]
    assert all(f"train/{t}" in hist for t in loss_terms)


def test_stardist_loss_counts_rays_inside_objects_only():
    import torch

    from bench.registry import METHODS
    from bench.runner import build_method

    cfg = resolve_config("stardist", "bbbc039", overrides=SMALL_NET + ["method.params.n_rays=4"])
    m = build_method(cfg, "cpu")
    assert isinstance(m, METHODS.get("stardist_rays"))
    prob = torch.zeros(1, 1, 8, 8)
    prob[..., 2:5, 2:5] = 1.0
    dist = torch.full((1, 4, 8, 8), 3.0)
    out = torch.cat([torch.full((1, 1, 8, 8), -20.0), torch.full((1, 4, 8, 8), 3.0)], 1)
    out[:, 1:, 0, 0] = 100.0  # a wrong ray in the background
    out[:, 1:, 3, 3] = 5.0  # a wrong ray inside: |5 - 3| at weight 1 of 9 pixels
    terms = m.loss(out, {"prob": prob, "dist": dist})
    assert float(terms["dist_mae"]) == pytest.approx(2.0 / 9, rel=1e-5)


# -- Cellpose-SAM -----------------------------------------------------------------------------------------

def test_cellpose_sam_without_weights_says_which_file_and_a_sweep_skips_it_at_once(tmp_path, monkeypatch):
    from bench.methods.cellpose_sam import CellposeSAMParams
    from bench.registry import METHODS

    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "models"))
    why = METHODS.get("cellpose_sam").availability(CellposeSAMParams())
    assert str(tmp_path / "models" / "cpsam") in why and "huggingface.co/mouseland/cellpose-sam" in why
    from bench.catalog import list_rows

    rows, _ = list_rows("methods", "cellpose_sam")  # what `bench list methods` prints
    assert rows[0][0] == "cellpose_sam" and rows[0][3] == why
    env = dict(os.environ)
    t0 = time.time()
    sweep = subprocess.run([sys.executable, "-m", "bench", "sweep", "--methods", "cellpose_sam", "--datasets",
                            "bbbc039", "--seeds", "0", "--set", f"output_root={tmp_path}", "-q"],
                           capture_output=True, text=True, env=env, timeout=120)
    took = time.time() - t0
    text = sweep.stdout + sweep.stderr
    assert "unavailable 1" in text and "cpsam" in text, text
    assert took < 60  # an import and a file check: no network wait
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())  # nothing downloaded


@pytest.fixture
def tiny_cpsam(tmp_path, monkeypatch):
    """A Cellpose-SAM weights file of cellpose's own format, from a 1-block, 32-wide ViT (the real one is ViT-L,
    1.2 GB): cellpose's CPSAM is built on segment_anything's registry, which the test points at the small encoder."""
    from bench._compat import ensure_torchvision

    ensure_torchvision()
    from functools import partial

    import torch
    from cellpose import vit
    from segment_anything.modeling import ImageEncoderViT

    def tiny(checkpoint=None):
        enc = ImageEncoderViT(img_size=1024, patch_size=16, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2,
                              out_chans=32, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                              use_rel_pos=True, window_size=14, global_attn_indexes=[0])
        return types.SimpleNamespace(image_encoder=enc)

    monkeypatch.setitem(vit.sam_model_registry, "vit_l", tiny)
    torch.manual_seed(0)
    net = vit.CPSAM()
    path = tmp_path / "weights" / "cpsam"
    path.parent.mkdir()
    net.save_model(str(path))
    return path


def test_cellpose_sam_loads_a_weights_file_offline_and_segments(tiny_cpsam, tmp_path, monkeypatch):
    from bench.method import sha256_file
    from bench.runner import run

    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tiny_cpsam.parent))  # found by name, as a user would
    cfg = resolve_config("cellpose_sam", "bbbc039", overrides=[
        f"output_root={tmp_path}", "tracking.enabled=false", "eval.max_images=1", "eval.calibrate=false"])
    res = run(cfg, progress=False)
    s = res.summary
    assert s["n_images"] == 1 and "pq" in s["metrics"]
    assert json.dumps(s).count(sha256_file(tiny_cpsam)) >= 1  # the weights file the scores rest on


def test_cellpose_sam_runs_in_float32_on_cpu(tiny_cpsam):
    import torch

    from bench.runner import build_method

    cfg = resolve_config("cellpose_sam", "bbbc039", overrides=[f"method.params.weights={tiny_cpsam}"])
    m = build_method(cfg, torch.device("cpu"))
    assert m.model.net.dtype == torch.float32  # bf16 on CPU is ~10x slower
    raw = m.predict_raw(np.random.default_rng(0).random((1, 100, 130)).astype(np.float32))
    assert raw.shape == (3, 100, 130)
    assert m.postprocess(raw).shape == (100, 130)


def test_leaderboard_shows_each_row_beside_its_ceiling(tmp_path):
    from bench.leaderboard import Cell, Row, ceiling_section

    folder = tmp_path / "bbbc039" / "poisson" / "ceiling"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"metrics": {"ap@0.50": 0.99}, "test_ids_hash": "abc",
                                                     "seconds_per_image": {"postprocess": 0.25}}))
    rows = [Row("poisson", {"ap@0.50": Cell(0.88, (0.86, 0.9), 0.88, 0.01)}, 48, 3, {"runs": []}, image_set="abc"),
            Row("unet", {"ap@0.50": Cell(0.85, (0.83, 0.87), 0.85, 0.01)}, 48, 3, {"runs": []}, image_set="abc"),
            Row("paper", {"ap@0.50": Cell(0.95, (0.95, 0.95), 0.95, 0.0)}, 0, 0, reported=True)]
    text = "\n".join(ceiling_section(rows, ["ap@0.50"], "bbbc039", tmp_path))
    assert "| poisson | 0.990 / 0.880 | — | — | 0.25 |" in text
    assert "| unet | — / 0.850 |" in text and "paper" not in text  # reported rows have no ceiling
    (folder / "summary.json").write_text(json.dumps({"metrics": {"ap@0.50": 0.99}, "test_ids_hash": "other",
                                                     "seconds_per_image": {"postprocess": 0.25}}))
    assert "(other images)" in "\n".join(ceiling_section(rows, ["ap@0.50"], "bbbc039", tmp_path))
    assert ceiling_section(rows, ["ap@0.50"], "bbbc039", tmp_path / "none") == []


@pytest.mark.parametrize("method", ["cellpose_flows", "stardist"])
def test_representations_refuse_semantic_data_and_name_a_missing_package(method, monkeypatch):
    import importlib.util

    from bench.registry import METHODS
    from bench.runner import build_method

    cfg = resolve_config(method, "bbbc039_fg", overrides=SMALL_NET)
    with pytest.raises(ValueError, match="needs a 2D instance dataset; 'bbbc039_fg' is 2D semantic"):
        build_method(cfg, "cpu")
    pkg = {"cellpose_flows": "cellpose", "stardist": "stardist"}[method]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == pkg else real(name, *a))
    cls = METHODS.get(resolve_config(method, "bbbc039").method.impl)
    assert cls.availability(None) == f"needs the {pkg} package: pip install 'physeg-bench[{pkg}]'"
