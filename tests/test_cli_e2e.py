"""The CLI end to end on a few real BBBC039 images, as a user would drive it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import DATA_ROOT, FAST_RUN, needs_data

pytestmark = needs_data("bbbc039")


def bench(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENCH_DATA_ROOT": str(DATA_ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def sets(items):
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    out = bench("run", "--method", "unet", "--dataset", "bbbc039", "--seed", "0", "-q", *sets(FAST_RUN), cwd=work)
    assert out.returncode == 0, out.stdout + out.stderr
    return work, work / "runs" / "bbbc039" / "unet" / "seed0", out


def test_run_writes_every_output(finished_run):
    work, run_dir, out = finished_run
    assert "unet on bbbc039 (test, 3 images)" in out.stdout
    for name in ("config.yaml", "environment.json", "status.json", "splits.json", "history.csv",
                 "checkpoints/last.pt", "checkpoints/best.pt", "metrics_per_image.csv", "summary.json"):
        assert (run_dir / name).exists(), name
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished"
    import torch

    last = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert "networks" in last["method"] and "optimizers" not in last["method"]  # finished: no resume state
    assert last["state"]["epoch"] == 2
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["packages"]["torch"].startswith("2.") and "git_commit" in env and "cuda_available" in env

    table = pd.read_csv(run_dir / "metrics_per_image.csv")
    assert list(table.columns) == ["image", "metric", "class", "value", "flag"]
    assert table["image"].nunique() == 3
    assert {"f1@0.50", "pq", "dice"} <= set(table["metric"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_images"] == 3 and summary["split"] == "test"
    assert 0 <= summary["metrics"]["f1@0.50"] <= 1
    # the summary is the mean of the per-image table
    f1 = table[table.metric == "f1@0.50"]["value"].mean()
    assert summary["metrics"]["f1@0.50"] == pytest.approx(f1)

    preds = sorted((run_dir / "predictions").glob("*.tif"))
    assert len(preds) == 3
    assert tifffile.imread(preds[0]).shape == (520, 696)
    assert len(list((run_dir / "overlays").glob("*.png"))) == 2
    hist = pd.read_csv(run_dir / "history.csv")
    assert list(hist["epoch"]) == [1, 2] and "val/f1@0.50" in hist and "train/loss" in hist


def test_mlflow_run_has_params_metrics_artifacts(finished_run):
    import mlflow

    work, run_dir, _ = finished_run
    run_id = json.loads((run_dir / "status.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'runs' / 'mlflow.db'}")
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["train.epochs"] == "2" and r.data.params["method.name"] == "unet"
    assert "test/f1_at_0.50" in r.data.metrics and "train/loss" in r.data.metrics
    assert len(client.get_metric_history(run_id, "train/loss")) == 2  # one point per epoch
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "metrics_per_image.csv", "summary.json", "overlays", "predictions"} <= arts
    assert "checkpoints" not in arts  # the network is logged as an MLflow model instead of a second copy


def test_existing_results_are_not_overwritten(finished_run):
    work, run_dir, _ = finished_run
    before = (run_dir / "summary.json").read_text()
    out = bench("run", "--method", "unet", "--dataset", "bbbc039", "--seed", "0", "-q", *sets(FAST_RUN), cwd=work)
    assert out.returncode == 2 and "already holds a run" in out.stderr and "--overwrite" in out.stderr
    assert (run_dir / "summary.json").read_text() == before


def test_eval_and_predict_on_a_finished_run(finished_run, tmp_path):
    work, run_dir, _ = finished_run
    out = bench("eval", str(run_dir), "-q", cwd=work)
    assert out.returncode == 0, out.stderr
    assert "unet on bbbc039 (test, 3 images)" in out.stdout
    # a new image of another size, bigger than the training patches
    img = tifffile.imread(sorted((DATA_ROOT / "bbbc039" / "images").glob("*.tif"))[0])
    inp = tmp_path / "in"
    inp.mkdir()
    tifffile.imwrite(inp / "big.tif", np.concatenate([img, img[:, :300]], axis=1))
    out = bench("predict", str(run_dir), "--input", str(inp), "--output", str(tmp_path / "out"), "-q", cwd=work)
    assert out.returncode == 0, out.stderr
    assert tifffile.imread(tmp_path / "out" / "big.tif").shape == (520, 996)


def test_predict_keeps_dotted_names_takes_one_file_and_refuses_clashes(finished_run, tmp_path, caplog):
    from bench.runner import predict_folder

    _, run_dir, _ = finished_run
    img = tifffile.imread(sorted((DATA_ROOT / "bbbc039" / "images").glob("*.tif"))[0])[:256, :256]
    inp = tmp_path / "in"
    inp.mkdir()
    tifffile.imwrite(inp / "plate1.A01.tif", img)
    import imageio.v3 as iio

    iio.imwrite(inp / "plate1.A02.png", (img // 256).astype(np.uint8))
    with caplog.at_level("WARNING"):
        out = predict_folder(run_dir, inp, tmp_path / "out", progress=False)
    assert sorted(p.name for p in out) == ["plate1.A01.tif", "plate1.A02.tif"]  # once both became plate1.tif
    # the 8-bit copy does not look like the 16-bit training images: said, naming the file; the original is not
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("plate1.A02.png: intensity range" in w and "in training" in w for w in warned), warned
    assert not any("plate1.A01.tif" in w for w in warned)
    one = predict_folder(run_dir, inp / "plate1.A01.tif", tmp_path / "one", progress=False)
    assert [p.name for p in one] == ["plate1.A01.tif"]
    tifffile.imwrite(inp / "plate1.A02.tiff", img)
    with pytest.raises(Exception, match="plate1.A02.png and plate1.A02.tiff would both be written"):
        predict_folder(run_dir, inp, tmp_path / "clash", progress=False)
    assert not (tmp_path / "clash").exists()  # refused before writing anything
    with pytest.raises(Exception, match="is the input folder"):
        predict_folder(run_dir, inp, inp, progress=False)


def test_unknown_names_list_valid_ones(tmp_path):
    out = bench("run", "--method", "poison", "--dataset", "bbbc039", cwd=tmp_path)
    assert out.returncode == 2 and "Did you mean 'poisson'" in out.stderr and "Valid methods:" in out.stderr
    out = bench("run", "--method", "unet", "--dataset", "bbbc39", cwd=tmp_path)
    assert out.returncode == 2 and "Did you mean 'bbbc039'" in out.stderr


def test_missing_data_root_names_path_and_how_to_set_it(tmp_path):
    env = {**os.environ, "BENCH_DATA_ROOT": str(tmp_path / "nowhere")}
    out = subprocess.run([sys.executable, "-m", "bench", "run", "-m", "unet", "-d", "bbbc039", "-q"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert str(tmp_path / "nowhere" / "bbbc039") in out.stderr and "BENCH_DATA_ROOT" in out.stderr


def test_killed_run_resumes_losing_at_most_one_epoch(tmp_path):
    args = ["run", "--method", "unet", "--dataset", "bbbc039", "--seed", "1", "-q",
            *sets(FAST_RUN + ["train.epochs=4", "train.steps_per_epoch=3"])]
    env = {**os.environ, "BENCH_DATA_ROOT": str(DATA_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    run_dir = tmp_path / "runs" / "bbbc039" / "unet" / "seed1"
    hist = run_dir / "history.csv"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if hist.exists() and len(pd.read_csv(hist)) >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # as a crashed node or an OOM kill would
    proc.wait()
    done_before = len(pd.read_csv(hist))
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"
    assert not (run_dir / "summary.json").exists()

    out = bench(*args, "--resume", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    hist_df = pd.read_csv(hist)
    assert list(hist_df["epoch"]) == [1, 2, 3, 4]  # each epoch exactly once
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    assert done_before >= 1


def test_eval_of_another_split_keeps_the_test_results(finished_run):
    work, run_dir, _ = finished_run
    before = (run_dir / "summary.json").read_text()
    table = (run_dir / "metrics_per_image.csv").read_text()
    out = bench("eval", str(run_dir), "--split", "val", "-q", cwd=work)
    assert out.returncode == 0, out.stderr
    assert (run_dir / "summary.json").read_text() == before  # the test summary is untouched
    assert (run_dir / "metrics_per_image.csv").read_text() == table
    val = json.loads((run_dir / "eval_val" / "summary.json").read_text())
    assert val["split"] == "val" and (run_dir / "eval_val" / "metrics_per_image.csv").exists()
    from bench.results import finished_runs

    assert [r.run_dir for r in finished_runs(work / "runs", "bbbc039")] == [run_dir]  # still on the leaderboard


def test_eval_from_predictions_scores_the_saved_predictions_again(finished_run, tmp_path):
    """`bench eval --from-predictions` scores what the run saved (a corrected metric, no new inference): an edited
    prediction changes its row and only its row, the timings stay those of the prediction, a missing file is
    named."""
    import shutil

    work, run_dir, _ = finished_run
    copy = tmp_path / "seed0"
    shutil.copytree(run_dir, copy)
    before = json.loads((copy / "summary.json").read_text())
    preds = sorted((copy / "predictions").glob("*.tif"))
    blank = preds[0]
    tifffile.imwrite(blank, np.zeros_like(tifffile.imread(blank)))  # this image now has no object predicted
    out = bench("eval", str(copy), "--from-predictions", "-q", cwd=work)
    assert out.returncode == 0, out.stderr
    after = json.loads((copy / "summary.json").read_text())
    assert after["seconds_per_image"] == before["seconds_per_image"] and after["rescored_from_predictions"]
    old = pd.read_csv(run_dir / "metrics_per_image.csv")
    new = pd.read_csv(copy / "metrics_per_image.csv")
    f1 = {t: d[d.metric == "f1@0.50"].set_index("image")["value"] for t, d in (("old", old), ("new", new))}
    assert f1["new"][blank.stem] == 0.0 and f1["old"][blank.stem] > 0
    others = [i for i in f1["old"].index if i != blank.stem]
    assert (f1["new"][others] == f1["old"][others]).all()
    assert np.array_equal(tifffile.imread(blank), np.zeros_like(tifffile.imread(blank)))  # not overwritten
    preds[1].unlink()
    out = bench("eval", str(copy), "--from-predictions", "-q", cwd=work)
    assert out.returncode != 0 and f"{preds[1].stem}.tif" in out.stderr + out.stdout
