"""`torchrun --nproc_per_node=2` (gloo, CPU) trains one run: the folder, its checkpoints, tables and MLflow run are
written once (rank 0), and the weights equal a single-process run's with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import needs_data

# poisson: an L1 loss averaged over the batch, so the DDP gradient average is the single-process gradient;
# 2 x 3 steps of 4 crops of 64 x 64 (2 per rank)
SETS = ["train.epochs=2", "train.steps_per_epoch=3", "train.batch_size=4", "train.patch_size=[64,64]",
        "train.max_train_images=4", "train.val_max_images=1", "eval.max_images=2", "eval.overlays=0",
        "train.augment.flip=true", "eval.calibrate=false", "tracking.log_model=false", "train.optimizer=sgd",
        "train.lr=0.01"]
# SGD: Adam divides by the root of the second moment, which turns the float noise of a gradient that is zero in exact
# arithmetic (a conv bias before instance norm) into steps of size lr; SGD keeps it noise
# instance norm: batch norm's statistics would differ between 2 crops per rank and 4 in one process
NET = """
method:
  params:
    network:
      name: monai_unet
      options: {_delete_: true, channels: [8, 16], num_res_units: 1, norm: instance}
"""


def _bench(args, cwd, env_extra=None, torchrun=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "bench", *args]
    else:
        cmd = [sys.executable, "-m", "bench", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@needs_data("bbbc039")
def test_torchrun_two_ranks_match_one_process_and_write_once(tmp_path):
    import mlflow
    import pandas as pd
    import torch

    overlay = tmp_path / "net.yaml"
    overlay.write_text(NET)
    runs = {}
    for name, torchrun in (("single", False), ("ddp", True)):
        root = tmp_path / name
        sets = [f"output_root={root}", *SETS]
        p = _bench(["run", "--method", "poisson", "--dataset", "bbbc039", "-q", "--config", str(overlay),
                    *[a for s in sets for a in ("--set", s)]], tmp_path, torchrun=torchrun)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        runs[name] = root / "bbbc039" / "poisson" / "seed0"

    single, ddp = runs["single"], runs["ddp"]
    assert json.loads((ddp / "status.json").read_text())["world_size"] == 2
    assert json.loads((ddp / "status.json").read_text())["state"] == "finished"
    # written once: one history row per epoch, one table row per (image, metric), one MLflow run
    hist_s, hist_d = pd.read_csv(single / "history.csv"), pd.read_csv(ddp / "history.csv")
    assert list(hist_d["epoch"]) == [1, 2]
    table_s, table_d = pd.read_csv(single / "metrics_per_image.csv"), pd.read_csv(ddp / "metrics_per_image.csv")
    assert len(table_d) == len(table_s) and not table_d.duplicated(["image", "metric", "class"]).any()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ddp' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bbbc039")
    (mlrun,) = client.search_runs([exp.experiment_id])
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "train/loss")] == [1, 2]

    # same global batch, same items: the weights agree up to float reduction order
    w_s = torch.load(single / "checkpoints" / "last.pt", weights_only=False)["method"]["networks"]["net"]
    w_d = torch.load(ddp / "checkpoints" / "last.pt", weights_only=False)["method"]["networks"]["net"]
    assert w_s.keys() == w_d.keys()
    worst = max(float((w_s[k].float() - w_d[k].float()).abs().max()) for k in w_s)
    assert worst < 1e-5, f"largest weight difference {worst:.2e}"
    assert hist_d["train/loss"].tolist() == pytest.approx(hist_s["train/loss"].tolist(), rel=1e-5)

    # the same run resumes under torchrun (rank 0 decides, every rank loads last.pt)
    status = json.loads((ddp / "status.json").read_text())
    status["state"] = "interrupted"
    (ddp / "status.json").write_text(json.dumps(status))
    shutil.rmtree(ddp / "predictions", ignore_errors=True)
    sets = [f"output_root={tmp_path / 'ddp'}", *SETS]
    p = _bench(["run", "--method", "poisson", "--dataset", "bbbc039", "-q", "--resume", "--config", str(overlay),
                *[a for s in sets for a in ("--set", s)]], tmp_path, torchrun=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert list(pd.read_csv(ddp / "history.csv")["epoch"]) == [1, 2]


def test_global_batch_must_split_over_the_ranks(monkeypatch):
    from bench import distributed
    from bench.config import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.local_batch_size(4) == 2
    with pytest.raises(ConfigError, match="divisible by the 2 torchrun processes"):
        distributed.local_batch_size(3)
