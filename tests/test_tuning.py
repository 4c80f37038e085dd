"""Optuna tuning: pruning, interruption and resume from the storage, two workers on one storage."""

from __future__ import annotations

import pytest
import yaml

from bench.config import resolve_config
from bench.tuning import Study, overlay_from, tune
from conftest import FAST_RUN, needs_data

pytestmark = needs_data("bbbc039")


def finished(study):
    from optuna.trial import TrialState

    return [t for t in study.load().get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_pruned_trials_report_every_epoch(tmp_path):
    import optuna

    sets = FAST_RUN + ["train.epochs=2", "train.steps_per_epoch=1", "train.patch_size=[64,64]",
                       "train.val_max_images=1", f"output_root={tmp_path}", "tracking.enabled=false"]
    st = Study("unet", "bbbc039", overrides=sets, pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    st.optimize(2)
    trials = finished(st)
    assert len(trials) == 2 and all(t.state.name == "PRUNED" for t in trials)
    assert all(list(t.intermediate_values) == [1] for t in trials)  # reported, then pruned at the first epoch


def test_interrupted_study_resumes_without_losing_or_repeating(tmp_path, monkeypatch):
    import bench.runner

    sets = ["train.val_max_images=2", f"output_root={tmp_path}"]
    st = Study("classic_watershed", "bbbc039", overrides=sets)
    st.optimize(2)
    first = {t.number: (t.params, t.value) for t in finished(st)}
    assert len(first) == 2

    real_run = bench.runner.run
    monkeypatch.setattr(bench.runner, "run", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        Study("classic_watershed", "bbbc039", overrides=sets).optimize(4)  # Ctrl-C during trial 3
    monkeypatch.setattr(bench.runner, "run", real_run)

    again = Study("classic_watershed", "bbbc039", overrides=sets)
    again.optimize(4)
    done = finished(again)
    assert len(done) == 4
    assert {t.number: (t.params, t.value) for t in done if t.number in first} == first  # kept as they were
    assert len({t.number for t in done}) == 4
    # the best parameters are a config overlay that `bench run --config` accepts
    best = yaml.safe_load(again.best_overlay_path().read_text())
    cfg = resolve_config("classic_watershed", "bbbc039", overlay=again.best_overlay_path())
    assert cfg.method.params["sigma"] == best["method"]["params"]["sigma"]
    assert (again.folder / "optimization_history.png").exists()
    # every trial was a nested MLflow run under the study's parent
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = again.load().user_attrs["mlflow_parent_run_id"]
    exp = client.get_experiment_by_name("bbbc039")
    kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(kids) >= 4
    assert client.get_run(parent).info.status == "FINISHED"  # the parent ends with the study
    assert again.load().metric_names == ["val/f1@0.50"]  # the study names its value
    assert "validation f1@0.50 = " in again.best_overlay_path().read_text()


def test_two_workers_share_one_storage(tmp_path):
    sets = ["train.val_max_images=1", f"output_root={tmp_path}", "tracking.enabled=false"]
    st = tune("classic_watershed", "bbbc039", 5, workers=2, overrides=sets)
    done = finished(st)
    assert len(done) == 5
    assert st.best_overlay_path().exists()


def test_overlay_from_dotted_keys():
    assert overlay_from({"train.lr": 0.1, "method.params.h": 0.2}) == {
        "train": {"lr": 0.1}, "method": {"params": {"h": 0.2}}}


def test_a_trial_killed_with_kill_9_is_reaped_and_does_not_eat_the_budget(tmp_path, monkeypatch):
    import socket
    import subprocess
    import sys

    from optuna.trial import TrialState

    from bench.tuning import Study

    study = Study("poisson", "bbbc039", overrides=[f"output_root={tmp_path}", "tracking.enabled=false"])
    opt = study.load()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = opt.ask()  # as a worker leaves it when killed mid-trial: RUNNING, its pid gone
    stale.set_user_attr("host", socket.gethostname())
    stale.set_user_attr("pid", dead.pid)
    alive = opt.ask()  # a trial of a live worker (this process) is not touched
    alive.set_user_attr("host", socket.gethostname())
    alive.set_user_attr("pid", __import__("os").getpid())
    monkeypatch.setattr(Study, "_objective", lambda self, trial, parent: 0.5)
    monkeypatch.setattr(Study, "write_outputs", lambda self, s=None: None)
    study.optimize(3)
    states = {t.number: t.state for t in study.load().get_trials()}
    assert states[stale.number] == TrialState.FAIL and states[alive.number] == TrialState.RUNNING
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 2  # 3 places: the live trial holds one
    assert "process" in study.load().trials[stale.number].user_attrs["reaped"]


@pytest.mark.parametrize("keep", ["best", "none"])
def test_finished_trials_keep_only_the_checkpoints_asked_for(tmp_path, keep):
    """Tuning does not fill the disk: by default only the best complete trial keeps its checkpoints; every trial
    keeps its config and history."""
    import optuna

    sets = FAST_RUN + ["train.epochs=1", "train.steps_per_epoch=1", "train.patch_size=[64,64]",
                       "train.val_max_images=1", f"output_root={tmp_path}", "tracking.enabled=false"]
    st = Study("unet", "bbbc039", overrides=sets, keep_checkpoints=keep,
               pruner=optuna.pruners.NopPruner())
    st.optimize(3)
    study = st.load()
    with_ckpt = sorted(p.parent.name for p in st.folder.glob("trial*/checkpoints"))
    assert with_ckpt == ([f"trial{study.best_trial.number:04d}"] if keep == "best" else [])
    assert len(list(st.folder.glob("trial*/history.csv"))) == 3 and len(list(st.folder.glob("trial*/config.yaml"))) == 3
    with pytest.raises(Exception, match="keep_checkpoints"):
        Study("unet", "bbbc039", overrides=sets, keep_checkpoints="some")
