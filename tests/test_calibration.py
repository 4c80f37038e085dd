"""Post-processing calibration on the val split (bench/calibration.py): the search, the card checks, and a run
whose test score depends on the calibrated choice being applied."""

from __future__ import annotations

import json

import pytest

from bench.calibration import coordinate_search
from bench.config import ConfigError, resolve_config
from conftest import FAST_RUN, needs_data

SMALL_NET = ["method.params.network={name: monai_unet, options: {_delete_: true, channels: [8, 16, 32, 64], "
             "num_res_units: 1}}"]


def test_coordinate_search_reaches_the_best_point_and_a_tie_keeps_the_cards_value():
    best = {"h": 0.3, "min_size": 64}
    calls = []

    def score(p):
        calls.append(dict(p))
        return -abs(p["h"] - best["h"]) - abs(p["min_size"] - best["min_size"]) / 100

    grid = {"h": [0.05, 0.1, 0.3], "min_size": [0, 16, 64]}
    res = coordinate_search(score, {"h": 0.1, "min_size": 0, "eps": 0.05}, grid)
    assert res[0]["params"] == {"h": 0.1, "min_size": 0}  # the card's setting is scored first
    assert max(res, key=lambda r: r["value"])["params"] == best
    assert len(calls) == len({json.dumps(c, sort_keys=True) for c in calls}) < 9  # no point twice, not the product

    flat = coordinate_search(lambda p: 1.0, {"h": 0.1, "min_size": 0}, grid)
    assert max(flat, key=lambda r: r["value"])["params"] == {"h": 0.1, "min_size": 0}


def test_a_calibration_grid_may_only_hold_post_processing_params_with_valid_values():
    from bench.runner import preflight

    with pytest.raises(ConfigError, match=r"calibrate\.loss is not a post-processing parameter.*eps, h, min_size"):
        preflight(resolve_config("poisson", "bbbc039", overrides=["method.calibrate={loss: [l1, l2]}"]))
    with pytest.raises(ConfigError, match=r"calibrate\.h value 2\.0"):
        preflight(resolve_config("poisson", "bbbc039", overrides=["method.calibrate={h: [0.1, 2.0]}"]))
    with pytest.raises(ConfigError, match="calibrate_monitor 'dise'"):
        preflight(resolve_config("poisson", "bbbc039", overrides=["eval.calibrate_monitor=dise"]))


@needs_data("bbbc039")
@pytest.mark.parametrize("calibrate", [True, False])
def test_the_test_split_is_scored_with_the_post_processing_chosen_on_val(calibrate, tmp_path, monkeypatch):
    """The card's min_size deletes every object (F1 0); the grid offers 0. Calibration on val must pick it, and the
    test score, a re-evaluation and `bench predict` must all use it; with eval.calibrate=false nothing changes."""
    import numpy as np

    from bench.imageio_utils import read_image
    from bench.runner import evaluate_run, open_dataset, predict_folder, run

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = resolve_config("poisson", "bbbc039", overrides=FAST_RUN + SMALL_NET + [
        f"output_root={tmp_path}", "tracking.enabled=false", "eval.max_images=2", "eval.calibrate_max_images=2",
        "method.params.min_size=1000000", "method.calibrate={_delete_: true, min_size: [1000000, 0]}",
        "eval.calibrate_monitor=dice",  # a few steps leave F1 at 0 whatever the post-processing; Dice is not
        f"eval.calibrate={str(calibrate).lower()}"])
    res = run(cfg, progress=False)
    rec_path = res.run_dir / "calibration.json"
    if not calibrate:
        assert not rec_path.exists() and "postprocess" not in res.summary
        assert res.summary["metrics"]["n_pred"] == 0
        return
    rec = json.loads(rec_path.read_text())
    assert rec["split"] == "val" and rec["images"] == 2 and rec["monitor"] == "dice"
    assert rec["default"]["params"] == {"min_size": 1000000} and rec["default"]["value"] == 0
    assert rec["chosen"]["params"] == {"min_size": 0}
    assert res.summary["postprocess"] == {"calibrated_on": "val", "params": {"min_size": 0}}
    assert res.summary["metrics"]["n_pred"] > 0
    again = evaluate_run(res.run_dir, progress=False)
    assert again["metrics"] == pytest.approx(res.summary["metrics"])
    reader = open_dataset(cfg)
    sid = json.loads((res.run_dir / "splits.json").read_text())["test"][0]
    img = tmp_path / "in" / f"{sid}.tif"
    img.parent.mkdir()
    import tifffile

    tifffile.imwrite(img, reader.load(sid).image[0])
    out = predict_folder(res.run_dir, img, tmp_path / "out", progress=False)
    assert np.unique(read_image(out[0])).size > 1  # objects survive: the calibrated min_size, not the card's


@needs_data("bbbc039")
def test_bench_calibrate_on_a_finished_run_writes_the_choice(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.runner import run

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = resolve_config("unet", "bbbc039", overrides=FAST_RUN + [
        f"output_root={tmp_path}", "tracking.enabled=false", "eval.max_images=1", "eval.calibrate=false",
        "eval.calibrate_max_images=2", "method.params.network={name: monai_unet, options: {_delete_: true, "
        "channels: [8, 16, 32], num_res_units: 1}}"])
    res = run(cfg, progress=False)
    assert not (res.run_dir / "calibration.json").exists()
    out = CliRunner().invoke(app, ["calibrate", str(res.run_dir), "-q"])
    assert out.exit_code == 0, out.output
    assert "chosen {'min_size':" in out.output
    assert json.loads((res.run_dir / "calibration.json").read_text())["grid"] == {"min_size": [0, 16, 64]}
