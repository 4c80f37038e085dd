"""The benchmark scripts' own logic (their measurements run outside CI)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_time_to_quality_stacks_recipe_files_and_spots_a_run_of_another_recipe(monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes are paths relative to the checkout, as in the script's usage
    ttq = load_script("time_to_quality")
    from bench.config import resolve_config

    stacked = "configs/cpu_fields.yaml+benchmarks/recipes/cpu_bf16.yaml"
    files = ttq.recipe_files(stacked)
    assert [p.name for p in files] == ["cpu_fields.yaml", "cpu_bf16.yaml"]
    cfg = resolve_config("poisson", "bbbc039", overlay=[ROOT / p for p in files]).model_dump(mode="json")
    assert cfg["train"]["cpu_bf16"] is True and cfg["train"]["patch_size"] == [128, 128]
    assert ttq.recipe_mismatch(stacked, cfg) == []
    # the preset alone was trained in float32: a finished run of it is not the bf16 recipe
    plain = resolve_config("poisson", "bbbc039", overlay=ROOT / files[0]).model_dump(mode="json")
    assert ttq.recipe_mismatch(stacked, plain) == ["train.cpu_bf16"]
    assert ttq.recipe_mismatch("configs/cpu_fields.yaml", plain) == []
    # and the other way: a run of the bf16 stack is not a run of the plain preset (its files do not name cpu_bf16)
    assert ttq.recipe_mismatch("configs/cpu_fields.yaml", cfg) == ["train.cpu_bf16"]
    # a run made before a setting existed is compared on what it holds
    old = {**plain, "train": {k: v for k, v in plain["train"].items() if k != "cpu_bf16"}}
    assert ttq.recipe_mismatch("configs/cpu_fields.yaml", old) == []


@pytest.mark.parametrize("history,reached", [([0.5, 0.91, 0.95], 2), ([0.5, 0.6, 0.7], None)])
def test_time_to_quality_reads_the_first_validation_at_the_threshold(history, reached):
    import pandas as pd

    ttq = load_script("time_to_quality")
    h = pd.DataFrame({"epoch": [1, 2, 3], "seconds": [10.0, 10.0, 10.0], "val_seconds": [1.0, 1.0, 1.0],
                      "val/f1@0.50": history})
    res = ttq.time_to(h, "f1@0.50", 0.90, steps_per_epoch=50)
    assert res["reached"] is (reached is not None)
    if reached:
        assert res["epoch"] == reached and res["steps"] == 100 and res["train_s"] == 20.0 and res["wall_s"] == 22.0
