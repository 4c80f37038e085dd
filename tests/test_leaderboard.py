"""Leaderboards from real runs, and the paired comparison on a constructed pair."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.leaderboard import build_rows, compare, leaderboard
from bench.results import bootstrap_ci, holm, sweep
from conftest import FAST_RUN, needs_data


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("lb") / "runs"
    sets = FAST_RUN + [f"output_root={root}", "eval.max_images=4", "eval.save_predictions=false"]
    rep = sweep(["classic_watershed", "unet"], ["bbbc039"], [0, 1], overrides=sets, progress=False)
    assert len(rep["ran"]) == 4 and not rep["failed"], rep
    return root, sets


@needs_data("bbbc039")
def test_sweep_skips_finished_runs(swept):
    root, sets = swept
    rep = sweep(["classic_watershed", "unet"], ["bbbc039"], [0, 1], overrides=sets, progress=False)
    assert rep["ran"] == [] and len(rep["skipped"]) == 4


@needs_data("bbbc039")
def test_leaderboard_from_real_runs(swept, tmp_path):
    root, _ = swept
    reported = tmp_path / "reported.yaml"
    reported.write_text("- method: paper_method\n  citation: Someone et al. 2024\n  metrics: {f1@0.50: 0.99, pq: 0.95}\n")
    out = leaderboard("bbbc039", output_root=root, out_dir=tmp_path / "lb", formats=["md", "csv", "html", "tex"],
                      reported=reported, log_mlflow=True, n_boot=500)
    assert {"md", "csv", "html", "tex", "bbbc039_bars", "bbbc039_per_image"} <= set(out)
    csv = pd.read_csv(out["csv"])
    measured = csv[csv.kind == "measured"].set_index("method")
    assert set(measured.index) == {"classic_watershed", "unet"}
    assert (measured["n_seeds"] == 2).all() and (measured["n_images"] == 4).all()

    # the CI brackets the mean, and the mean is the mean of the per-image tables (averaged over seeds)
    for label, row in measured.iterrows():
        assert row["f1@0.50_ci_low"] <= row["f1@0.50"] <= row["f1@0.50_ci_high"]
        tables = [pd.read_csv(Path(r) / "metrics_per_image.csv") for r in row["runs"].split(";")]
        per_img = pd.concat([t[t.metric == "f1@0.50"] for t in tables]).groupby("image")["value"].mean()
        assert row["f1@0.50"] == pytest.approx(per_img.mean())
        lo, hi = bootstrap_ci(per_img.values, n_boot=500)
        assert (row["f1@0.50_ci_low"], row["f1@0.50_ci_high"]) == pytest.approx((lo, hi))
        # every row traces to its runs: folders with summaries and MLflow ids
        for r, rid in zip(row["runs"].split(";"), row["mlflow_run_ids"].split(";")):
            assert json.loads((Path(r) / "summary.json").read_text())["mlflow_run_id"] == rid

    # bold marks the best measured value, never the reported row
    best = measured["pq"].idxmax()
    md = out["md"].read_text()
    # the sweep used FAST_RUN (capped training and test images): marked as smoke runs, with a warning
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {best} (smoke run) |"))
    assert "**Warning:** smoke-sized runs" in md and "train.max_train_images=4" in md
    assert f"**{measured.loc[best, 'pq']:.3f}**" in line
    assert "paper_method (reported)" in md and "Someone et al. 2024" in md
    assert "**0.990**" not in md
    assert "bench leaderboard" in md and "docs/metrics.md" in md
    assert csv[csv.kind == "reported"]["method"].tolist() == ["paper_method"]
    assert r"\textbf" in out["tex"].read_text() and "<strong>" in out["html"].read_text()

    # the cost table: a trained row with the parameters and peak memory its runs recorded; training-free rows are
    # not in it
    res = [json.loads((Path(r) / "summary.json").read_text())["training_resources"]
           for r in measured.loc["unet", "runs"].split(";")]
    assert all(x["parameters"] > 0 and x["peak_rss_mib"] > 0 for x in res)
    cost = md.split("## Cost", 1)[1].split("\n## ", 1)[0]
    assert f"| unet | {np.mean([x['parameters'] for x in res]):,.0f} |" in cost
    # a training-free row has no parameters or training time, but its timed post-processing (the watershed)
    ws = next(ln for ln in cost.splitlines() if ln.startswith("| classic_watershed |")).split(" | ")
    assert ws[1:3] == ["—", "—"] and float(ws[6]) >= 0


def _fake_run(root: Path, label: str, seed: int, values: dict[str, float], fold: int | None = None) -> None:
    d = root / "ds" / label / (f"seed{seed}" + ("" if fold is None else f"_fold{fold}"))
    d.mkdir(parents=True)
    rows = [{"image": img, "metric": "f1@0.50", "class": "", "value": v, "flag": ""} for img, v in values.items()]
    pd.DataFrame(rows).to_csv(d / "metrics_per_image.csv", index=False)
    (d / "summary.json").write_text(json.dumps({"method": label, "dataset": "ds", "seed": seed, "tag": "",
                                                "split": "test", "task": "instance", "mlflow_run_id": None}))
    (d / "status.json").write_text(json.dumps({"state": "finished"}))


def test_compare_finds_a_known_difference(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.8, 40)
    imgs = [f"im{i}" for i in range(40)]
    _fake_run(tmp_path, "better", 0, dict(zip(imgs, base + 0.1 + rng.normal(0, 0.01, 40))))
    _fake_run(tmp_path, "worse", 0, dict(zip(imgs, base)))
    _fake_run(tmp_path, "same", 0, dict(zip(imgs, base + rng.normal(0, 0.05, 40))))
    (res,) = compare("better", "worse", "ds", output_root=tmp_path, metrics=["f1@0.50"], n_boot=500)
    assert res["wins"] == 40 and res["losses"] == 0
    assert res["median_diff"] == pytest.approx(0.1, abs=0.01)
    assert res["ci_low"] < 0.1 < res["ci_high"] and res["ci_low"] > 0.08
    assert res["p_holm"] < 1e-6
    (res,) = compare("same", "worse", "ds", output_root=tmp_path, metrics=["f1@0.50"], n_boot=500)
    assert res["p_holm"] > 0.05 and res["ci_low"] < 0 < res["ci_high"]
    with pytest.raises(FileNotFoundError, match="no finished runs of 'nope'"):
        compare("nope", "worse", "ds", output_root=tmp_path)


def test_holm_matches_definition():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_row_scored_on_fewer_images_is_shown_apart_and_never_bold(tmp_path, caplog):
    """A smoke run on 10 of 40 test images must not be ranked against full runs, even with a higher mean."""
    from bench.leaderboard import leaderboard

    imgs = [f"im{i}" for i in range(40)]
    _fake_run(tmp_path, "full_a", 0, {i: 0.70 for i in imgs})
    _fake_run(tmp_path, "full_b", 0, {i: 0.60 for i in imgs})
    _fake_run(tmp_path, "partial", 0, {i: 0.95 for i in imgs[:10]})  # easier subset, higher mean
    with caplog.at_level("WARNING"):
        rows, _, _ = build_rows(tmp_path, "ds", metrics=["f1@0.50"], n_boot=100)
    by = {r.label: r for r in rows}
    assert by["full_a"].comparable and by["full_b"].comparable and not by["partial"].comparable
    assert "'partial' was scored on another set of test images" in caplog.text
    out = leaderboard("ds", output_root=tmp_path, out_dir=tmp_path / "lb", formats=["md", "csv", "html"],
                      metrics=["f1@0.50"], log_mlflow=False, n_boot=100)
    md = out["md"].read_text()
    main_table, apart = md.split("**Warning:**")
    assert "**0.700**" in main_table and "partial" not in main_table
    assert "partial (other images)" in apart and "**0.950**" not in md
    csv = pd.read_csv(out["csv"])
    row = csv[csv.method == "partial"].iloc[0]
    assert row["kind"] == "measured_other_images" and not row["f1@0.50_best"]
    assert csv[csv.method == "full_a"].iloc[0]["f1@0.50_best"]
    assert "<strong>0.950</strong>" not in out["html"].read_text()


def test_metric_direction_and_headline_come_from_the_registry():
    from bench.leaderboard import default_metrics
    from bench.metrics import higher_is_better

    assert default_metrics("semantic") == ["dice", "iou", "hd95", "bf1"]
    assert default_metrics("instance") == ["ap@0.50", "map", "f1@0.50", "pq", "sq", "rq", "seg"]
    assert not higher_is_better("hd95/enhancing_tumour") and higher_is_better("f1@0.50_pooled")
    assert not higher_is_better("train/loss") and higher_is_better("dice")


def test_deterministic_rows_smoke_runs_and_html_escaping(tmp_path, caplog):
    from bench.config import dump_config, resolve_config
    from bench.leaderboard import leaderboard

    imgs = [f"im{i}" for i in range(12)]
    vals = dict(zip(imgs, np.linspace(0.5, 0.9, 12)))
    for seed in (0, 1, 2):  # a training-free method: the same numbers for every seed
        _fake_run(tmp_path, "classic", seed, vals)
    _fake_run(tmp_path, "<b onmouseover=alert(1)>x", 0, {i: 0.6 for i in imgs})
    _fake_run(tmp_path, "quickie", 0, {i: 0.7 for i in imgs})
    cfg = resolve_config("unet", "bbbc039", overrides=["eval.max_images=12", "tag=quick"])
    (tmp_path / "ds" / "quickie" / "seed0" / "config.yaml").write_text(dump_config(cfg))
    with caplog.at_level("WARNING"):
        out = leaderboard("ds", output_root=tmp_path, out_dir=tmp_path / "lb", formats=["md", "html"],
                          metrics=["f1@0.50"], log_mlflow=False, n_boot=100, note="<img src=x onerror=alert(2)>")
    md = out["md"].read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("| classic |"))
    assert "(deterministic)" in line and "± 0.000" not in line
    assert "| quickie (smoke run) |" in md and "eval.max_images=12" in md and "tag 'quick'" in md
    assert "'quickie' comes from smoke-sized runs" in caplog.text
    html = out["html"].read_text()
    assert "<b onmouseover" not in html and "&lt;b onmouseover=alert(1)&gt;x" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html


def test_baseline_section_says_in_words_whether_a_row_beats_the_baseline(tmp_path):
    rng = np.random.default_rng(1)
    imgs = [f"im{i}" for i in range(30)]
    base = rng.uniform(0.6, 0.8, 30)
    _fake_run(tmp_path, "unet", 0, dict(zip(imgs, base)))
    _fake_run(tmp_path, "field", 0, dict(zip(imgs, base - 0.05 + rng.normal(0, 0.01, 30))))
    _fake_run(tmp_path, "strong", 0, dict(zip(imgs, base + 0.05 + rng.normal(0, 0.01, 30))))
    _fake_run(tmp_path, "twin", 0, dict(zip(imgs, base + rng.normal(0, 0.03, 30))))
    out = leaderboard("ds", output_root=tmp_path, out_dir=tmp_path / "lb", formats=["md"], metrics=["f1@0.50"],
                      log_mlflow=False, n_boot=200, baseline="unet")
    md = out["md"].read_text()
    section = md.split("## Against the baseline (unet)")[1]
    row = {ln.split("|")[1].strip(): ln for ln in section.splitlines() if ln.startswith("| ") and "---" not in ln}
    assert "*worse*" in row["field"] and "*better*" in row["strong"] and "*no difference*" in row["twin"]
    assert "30/0/0" in row["strong"] and "0/0/30" in row["field"]
    assert "**Reading:** field, twin do not beat unet on any of these metrics here." in section
    assert "**Reading:** strong beats unet on f1@0.50." in section
    with pytest.raises(ValueError, match="baseline 'nope' has no comparable measured row"):
        leaderboard("ds", output_root=tmp_path, out_dir=tmp_path / "lb", formats=["md"], metrics=["f1@0.50"],
                    log_mlflow=False, n_boot=50, baseline="nope")


def test_cross_validation_folds_pool_into_one_row_over_every_test_image(tmp_path, caplog):
    """Folds of a rotating-test cross-validation (disjoint test images) are one row over their union, ranked
    against the other CV rows; the seeds column counts seeds, not folds."""
    imgs = [f"case{i}" for i in range(6)]
    for seed in (0, 1):
        for k in range(3):
            fold = imgs[k::3]
            _fake_run(tmp_path, "a", seed, {i: 0.8 + 0.01 * int(i[-1]) for i in fold}, fold=k)
            _fake_run(tmp_path, "b", seed, {i: 0.5 for i in fold}, fold=k)
    _fake_run(tmp_path, "one_fold", 0, {i: 0.9 for i in imgs[0::3]}, fold=0)
    with caplog.at_level("WARNING"):
        rows, _, _ = build_rows(tmp_path, "ds", metrics=["f1@0.50"], n_boot=100)
    by = {r.label: r for r in rows}
    assert by["a"].n_images == 6 and by["a"].n_seeds == 2 and by["a"].provenance["folds"] == 3
    assert by["a"].cells["f1@0.50"].mean == pytest.approx(np.mean([0.8 + 0.01 * i for i in range(6)]))
    assert by["a"].comparable and by["b"].comparable and by["a"].image_set == by["b"].image_set
    assert not by["one_fold"].comparable  # 2 of the 6 cases: never ranked against the pooled rows
    assert "different test image sets" not in caplog.text


def test_overlapping_runs_of_one_seed_are_not_taken_for_folds(tmp_path):
    imgs = [f"im{i}" for i in range(6)]
    _fake_run(tmp_path, "a", 0, {i: 0.5 for i in imgs[:4]}, fold=0)
    _fake_run(tmp_path, "a", 0, {i: 0.5 for i in imgs[2:]}, fold=1)
    (row,), _, _ = build_rows(tmp_path, "ds", metrics=["f1@0.50"], n_boot=100)
    assert "folds" not in row.provenance and row.image_set.startswith("mixed:")


def test_training_minutes_sums_loops_and_stages_once(tmp_path):
    """A run's training time: final loop + loop stages (their history, not their done-marker) + other stages."""
    from bench.leaderboard import _training_minutes

    assert _training_minutes(tmp_path / "missing") is None  # no history, no stages
    run = tmp_path / "run"
    (run / "stages" / "translate").mkdir(parents=True)
    (run / "stages" / "simulate").mkdir()
    (run / "stages" / "unfinished").mkdir()  # neither history nor done-marker: not counted
    (run / "history.csv").write_text("epoch,seconds,val_seconds\n1,30,6\n2,30,\n")
    assert _training_minutes(run) == pytest.approx(66 / 60)  # no stage has a time yet
    (run / "stages" / "translate" / "history.csv").write_text("epoch,seconds\n1,100\n2,140\n")
    (run / "stages" / "translate" / "done.json").write_text(json.dumps({"finished": 1.0, "seconds": 999}))
    (run / "stages" / "simulate" / "done.json").write_text(json.dumps({"finished": 1.0, "seconds": 54}))
    assert _training_minutes(run) == pytest.approx((66 + 240 + 54) / 60)
