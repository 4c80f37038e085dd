"""`bench sweep --launcher ray|submitit` (a local Ray cluster; submitit's local executor) finishes the same runs, in
the same folders, as the local launcher; folds are a sweep axis; a failed task is retried on request; a missing
engine gives a one-line install hint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import needs_data

TINY = ["train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=2", "train.patch_size=[64,64]",
        "train.max_train_images=2", "train.val_max_images=1", "eval.max_images=2", "eval.overlays=0",
        "eval.calibrate=false", "tracking.log_model=false", "eval.save_predictions=false"]
NET = """
launcher:
  cpus: 1
  ray:
    init: {num_cpus: 2, object_store_memory: 104857600}
"""


def _finished(root: Path) -> dict[str, dict]:
    """run folder (relative) -> test metrics, for every finished run under an output root."""
    out = {}
    for status in sorted(root.glob("*/*/*/status.json")):
        if json.loads(status.read_text()).get("state") == "finished":
            summary = json.loads((status.parent / "summary.json").read_text())
            out[str(status.parent.relative_to(root))] = summary["metrics"]
    return out


def _sweep(tmp_path, launcher: str, overlay: Path) -> dict:
    from bench.results import sweep

    root = tmp_path / launcher
    rep = sweep(["classic_watershed", "unet"], ["bbbc039"], [0, 1], overlay=str(overlay), progress=False,
                overrides=[f"output_root={root}", *TINY], launcher=launcher)
    assert not rep["failed"], rep["failed"]
    return {"report": rep, "runs": _finished(root)}


@needs_data("bbbc039")
def test_ray_and_submitit_finish_the_same_runs_as_local(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(NET)
    got = {name: _sweep(tmp_path, name, overlay) for name in ("local", "ray", "submitit")}
    expected = {f"bbbc039/{m}/seed{s}" for m in ("classic_watershed", "unet") for s in (0, 1)}
    for name, g in got.items():
        assert set(g["runs"]) == expected, name
        assert sorted(g["report"]["ran"]) == sorted(f"{m}/bbbc039/seed{s}" for m in ("classic_watershed", "unet")
                                                    for s in (0, 1)), name
    # a training-free method is deterministic: identical numbers whichever launcher ran it
    for run in ("bbbc039/classic_watershed/seed0", "bbbc039/classic_watershed/seed1"):
        for name in ("ray", "submitit"):
            assert got[name]["runs"][run] == pytest.approx(got["local"]["runs"][run], rel=1e-12, abs=1e-12), name
    # a second sweep through another launcher finds them finished and sends nothing
    again = _sweep(tmp_path, "ray", overlay)["report"]
    assert len(again["skipped"]) == 4 and not again["ran"]


@needs_data("bbbc039")
def test_folds_are_a_sweep_axis_with_their_own_folders(tmp_path):
    from bench.results import sweep

    rep = sweep(["classic_watershed"], ["bbbc039"], [0], folds=[0, 1], progress=False,
                overrides=[f"output_root={tmp_path}", "tracking.enabled=false", "eval.max_images=2",
                           "eval.overlays=0", "eval.save_predictions=false", "eval.calibrate=false"])
    assert sorted(rep["ran"]) == ["classic_watershed/bbbc039/seed0/fold0", "classic_watershed/bbbc039/seed0/fold1"]
    folds = [json.loads((tmp_path / "bbbc039" / "classic_watershed" / f"seed0_fold{k}" / "splits.json").read_text())
             for k in (0, 1)]
    assert set(folds[0]["val"]).isdisjoint(folds[1]["val"])  # two folds hold out different images


def test_a_failed_task_is_retried_on_request(tmp_path, monkeypatch):
    import bench.launchers as launchers
    from bench.results import sweep

    calls = []

    def flaky(task, progress=False):
        calls.append(task.key)
        if len(calls) == 1:
            return {"key": task.key, "outcome": "failed", "error": "RuntimeError: node lost"}
        return {"key": task.key, "outcome": "resumed", "error": None}

    monkeypatch.setattr(launchers, "execute", flaky)
    sets = [f"output_root={tmp_path}", "tracking.enabled=false"]
    rep = sweep(["classic_watershed"], ["bbbc039"], [0], overrides=sets, progress=False, retries=1)
    assert calls == ["classic_watershed/bbbc039/seed0"] * 2 and rep["resumed"] == calls[:1] and not rep["failed"]
    calls.clear()
    rep = sweep(["classic_watershed"], ["bbbc039"], [0], overrides=sets, progress=False)
    assert rep["failed"] == [("classic_watershed/bbbc039/seed0", "RuntimeError: node lost")]


def test_a_missing_engine_gives_an_install_hint(monkeypatch):
    import importlib.util

    from bench.config import ConfigError
    from bench.launchers import check_available

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'physeg-bench\[ray\]'"):
        check_available("ray")
    with pytest.raises(ConfigError, match="choose one of local, ray, submitit"):
        check_available("dask")


def test_a_combination_named_twice_is_one_task_and_forwarded_paths_are_absolute(tmp_path, monkeypatch):
    import os

    import bench.launchers as launchers
    from bench.results import sweep

    calls = []
    monkeypatch.setattr(launchers, "execute", lambda task, progress=False: calls.append(task.key) or
                        {"key": task.key, "outcome": "ran", "error": None})
    rep = sweep(["classic_watershed"], ["bbbc039"], [0, 0], progress=False,
                overrides=[f"output_root={tmp_path}", "tracking.enabled=false"])
    assert calls == ["classic_watershed/bbbc039/seed0"] and rep["ran"] == calls
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_DATA_ROOT", "data")
    monkeypatch.setenv("BENCH_CARD_PATH", os.pathsep.join(["cards", "/abs/cards"]))
    env = launchers._env()
    assert env["BENCH_DATA_ROOT"] == str(tmp_path.resolve() / "data")
    assert env["BENCH_CARD_PATH"] == os.pathsep.join([str(tmp_path.resolve() / "cards"), "/abs/cards"])
