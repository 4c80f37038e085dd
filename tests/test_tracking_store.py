"""The embedded MLflow store survives several processes creating it at once (two sweeps on one output root)."""

from __future__ import annotations

import multiprocessing as mp

import pytest


def _start_run(root: str, name: str, barrier) -> str:
    from bench.tracking import Tracker

    barrier.wait()  # every process touches the fresh store at the same moment
    t = Tracker(True, None, "race", root)
    return t.start(name)


@pytest.mark.parametrize("n", [3])
def test_concurrent_first_touch_of_the_sqlite_store(tmp_path, n):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            ids = pool.starmap(_start_run, [(str(tmp_path), f"r{i}", barrier) for i in range(n)])
    assert len(set(ids)) == n and all(ids)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("race")
    assert len(client.search_runs([exp.experiment_id])) == n


def test_a_run_in_mlflow_maps_back_to_its_summary_and_has_source_and_step_curves(tmp_path):
    """MLflow cannot hold '@' in keys: metric_keys.json maps every renamed key back to summary.json / history.csv;
    MLflow's own source tags carry the git commit; the loss has one point per optimiser step."""
    import json

    import os

    import mlflow

    from bench.config import resolve_config
    from bench.runner import run
    from conftest import DATA_ROOT, FAST_RUN

    if not (DATA_ROOT / "bbbc039").exists():
        pytest.skip("bbbc039 not present")
    cfg = resolve_config("unet", "bbbc039", overlay="configs/cpu_fields.yaml", overrides=[
        *FAST_RUN, f"output_root={tmp_path}", "eval.calibrate=false", "eval.max_images=1"])
    res = run(cfg, progress=False)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    r = client.get_run(res.mlflow_run_id)
    keys = json.loads(open(client.download_artifacts(r.info.run_id, "metric_keys.json", str(tmp_path))).read())
    mapping = keys["mlflow_key_to_bench_key"]
    summary = json.loads((res.run_dir / "summary.json").read_text())
    for key in r.data.metrics:  # every MLflow metric is a bench key, or maps back to one
        bench_key = mapping.get(key, key)
        assert bench_key.split("/", 1)[0] in ("train", "val", "test", "train_step", "lr", "seconds", "val_seconds",
                                              "calibration"), key
    assert mapping["test/f1_at_0.50"] == "test/f1@0.50"
    assert r.data.metrics["test/f1_at_0.50"] == pytest.approx(summary["metrics"]["f1@0.50"])
    env = json.loads((res.run_dir / "environment.json").read_text())
    if env.get("git_commit"):
        assert r.data.tags["mlflow.source.git.commit"] == env["git_commit"]
    steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_step/loss")]
    assert steps == [1, 2, 3, 4]  # 2 epochs x 2 steps
    assert "MLFLOW_TRACKING_URI" not in os.environ  # logging the model left the process's MLflow settings alone
    assert r.info.status == "FINISHED" and r.info.end_time >= r.info.start_time
    # the evaluated network as an MLflow model: loads without the harness and takes any divisible size
    import mlflow.pytorch
    import torch

    assert "model" in {a.path for a in client.list_artifacts(r.info.run_id)}
    (tmp_path / "dl").mkdir()
    net = mlflow.pytorch.load_model(client.download_artifacts(r.info.run_id, "model", str(tmp_path / "dl")))
    with torch.no_grad():
        assert net(torch.zeros(2, 1, 48, 80)).shape == (2, 3, 48, 80)
