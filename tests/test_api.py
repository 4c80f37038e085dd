"""The Python API (bench/api.py, docs/api.md): the documented example, run as a user would."""

from __future__ import annotations

import subprocess
import sys

from conftest import needs_data

pytestmark = needs_data("bbbc039")


def test_import_bench_is_light_and_lists_cards():
    code = ("import sys, bench; assert 'torch' not in sys.modules and 'pandas' not in sys.modules; "
            "print(bench.list_methods('*unet*'), bench.list_datasets('bbbc039*'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'unet'" in out and "'bbbc039_fg'" in out


def test_the_documented_example_runs_and_loads_results(tmp_path):
    import bench

    settings = {"eval.max_images": 2, "tracking.enabled": False}
    cfg = bench.resolve_config("classic_watershed", "bbbc039", set=settings, output_root=tmp_path, seed=1)
    assert cfg.eval.max_images == 2 and cfg.seed == 1
    res = bench.run("classic_watershed", "bbbc039", set=settings, output_root=tmp_path, seed=1)
    bench.run("classic_watershed", "bbbc039", set={**settings, "method.params.sigma": 1.0}, output_root=tmp_path,
              seed=0, tag="smooth")
    runs = bench.load_results(tmp_path, "bbbc039")
    assert sorted(runs["method"]) == ["classic_watershed", "classic_watershed-smooth"]
    row = runs[runs.method == "classic_watershed"].iloc[0]
    assert row["seed"] == 1 and row["images"] == 2 and row["f1@0.50"] == res.summary["metrics"]["f1@0.50"]
    images = bench.load_per_image(tmp_path, "bbbc039")
    f1 = images[(images.method == "classic_watershed") & (images.metric == "f1@0.50")]
    assert len(f1) == 2 and abs(f1["value"].mean() - row["f1@0.50"]) < 1e-9
    again = bench.evaluate(res.run_dir)
    assert again["metrics"]["f1@0.50"] == row["f1@0.50"]
    written = bench.write_leaderboard("bbbc039", output_root=tmp_path, out_dir=tmp_path / "lb", formats=["md", "csv"])
    assert "classic_watershed-smooth" in written["md"].read_text()
    assert bench.load_results(tmp_path, "no_such_dataset").empty
