"""Fault suite (issue 18): bad settings fail before training with the key named, and a failed start does not block
the corrected rerun. Every case here fails in seconds; none trains."""

from __future__ import annotations

import pytest
from conftest import needs_data

from bench.config import ConfigError, resolve_config
from bench.runner import RunExistsError, prepare_run_dir, run

pytestmark = needs_data("bbbc039")


def _cfg(tmp_path, *sets):
    return resolve_config("unet", "bbbc039", overrides=["tracking.enabled=false", f"output_root={tmp_path}",
                                                        "train.epochs=1", "train.steps_per_epoch=1", *sets])


@pytest.mark.parametrize("setting, message", [
    ("train.monitor=f1@0.5O", r"train.monitor 'f1@0.5O' is not a validation metric of the instance task"),
    ("train.patch_size=[64,96]", r"train.patch_size \[64, 96\]: 90-degree rotations need square"),
    ("eval.split=tset", r"eval.split 'tset': dataset 'bbbc039' has no such split"),
    ("train.epochs=0", r"train.epochs=0: 'unet' is trained from scratch and loads no weights"),
])
def test_bad_run_settings_fail_before_training_with_the_key(tmp_path, setting, message):
    cfg = _cfg(tmp_path, setting)
    with pytest.raises(ConfigError, match=message):
        run(cfg, progress=False)
    run_dir = cfg.run_dir()
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "summary.json").exists()


@pytest.mark.parametrize("setting, message", [
    ("train.patch_size=[0,0]", r"train.patch_size.0: Input should be greater than or equal to 1"),
    ("train.patch_size=[-64,64]", r"train.patch_size.0: Input should be greater than or equal to 1"),
    ("train.patch_size=[64]", r"train.patch_size: List should have at least 2 items"),
    ("train.device=gpu", r"train.device: String should match pattern"),
    ("train=5", r"'train' in --config/--set must be a mapping of settings, not 5"),
    ("eval=[1,2]", r"'eval' in --config/--set must be a mapping"),
])
def test_bad_values_are_refused_when_the_config_is_resolved(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, setting)


def test_good_monitors_pass_the_preflight(tmp_path):
    from bench.runner import preflight

    for monitor in ("f1@0.50", "seg", "seg_pooled", "pq", "dice", "ap@0.75_pooled", "train/loss", "tp@0.50"):
        preflight(_cfg(tmp_path, f"train.monitor={monitor}"))
    preflight(_cfg(tmp_path, "train.patch_size=[64,96]", "train.augment.rot90=false"))


def test_a_failed_start_does_not_block_the_corrected_rerun(tmp_path):
    cfg = _cfg(tmp_path, "eval.split=tset")
    with pytest.raises(ConfigError):
        run(cfg, progress=False)
    run_dir = cfg.run_dir()
    assert (run_dir / "config.yaml").exists()  # the failed start left its folder ...
    fixed = _cfg(tmp_path)
    assert prepare_run_dir(fixed, run_dir, resume=False, overwrite=False) is False  # ... which no longer blocks
    assert run_dir.is_dir() and not any(run_dir.iterdir())
    # a folder that holds a checkpoint is a run: still refused without --resume / --overwrite
    (run_dir / "config.yaml").write_text("x")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"0")
    with pytest.raises(RunExistsError):
        prepare_run_dir(fixed, run_dir, resume=False, overwrite=False)


def test_a_run_folder_in_use_by_another_process_is_refused(tmp_path):
    """Two `--resume` of one run must not both train: the second is refused, naming the holder."""
    import os

    from bench.locks import file_lock

    cfg = _cfg(tmp_path)
    run_dir = cfg.run_dir()
    with file_lock(run_dir.parent / f".{run_dir.name}.lock", what=str(run_dir)):
        with pytest.raises(RunExistsError, match=rf"{run_dir} is in use by pid {os.getpid()}"):
            run(cfg, resume=True, progress=False)
    assert not run_dir.exists()  # refused before anything was written
    # released: the next run gets past the lock (and fails on the bad split, before training)
    with pytest.raises(ConfigError, match="eval.split"):
        run(_cfg(tmp_path, "eval.split=nope"), progress=False)


def test_tune_refuses_zero_trials_before_creating_a_study(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.tuning import tune

    with pytest.raises(ConfigError, match="--trials and --workers must be >= 1"):
        tune("unet", "bbbc039", 0, overrides=[f"output_root={tmp_path}", "tracking.enabled=false"])
    out = CliRunner().invoke(app, ["tune", "-m", "unet", "-d", "bbbc039", "--trials", "0",
                                   "--set", f"output_root={tmp_path}"])
    assert out.exit_code != 0 and "--trials" in out.output
    assert not any(tmp_path.rglob("optuna.db"))


def test_a_failed_start_cleanup_never_touches_a_folder_holding_other_files(tmp_path):
    """`--run-dir` at a user's folder that has a config.yaml of its own: nothing is deleted, the run is refused."""
    fixed = _cfg(tmp_path)
    folder = tmp_path / "my_project"
    folder.mkdir()
    (folder / "config.yaml").write_text("mine")
    (folder / "notes.txt").write_text("keep")
    with pytest.raises(RunExistsError):
        prepare_run_dir(fixed, folder, resume=False, overwrite=False)
    assert (folder / "config.yaml").read_text() == "mine" and (folder / "notes.txt").read_text() == "keep"


def test_an_overlay_that_is_a_folder_or_not_text_is_named(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(ConfigError, match="adir is a folder, not a YAML config file"):
        resolve_config("unet", "bbbc039", overlay=[tmp_path / "adir"])
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe\x00train: {}")
    with pytest.raises(ConfigError, match=r"bad.yaml: not a UTF-8 text file"):
        resolve_config("unet", "bbbc039", overlay=[tmp_path / "bad.yaml"])


@pytest.mark.parametrize("base, message", [
    ("5", r"x.yaml: _base_ must be a card file name or a list of them"),
    ("[poisson.yaml, 3]", r"x.yaml: _base_ must be a card file name"),
    ("missing.yaml", r"x.yaml: _base_ 'missing.yaml' not found: neither .*missing.yaml nor a methods card"),
])
def test_a_bad_base_names_the_card_that_refers_to_it(tmp_path, monkeypatch, base, message):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "x.yaml").write_text(f"_base_: {base}\nname: x\nimpl: unet\n")
    monkeypatch.setenv("BENCH_CARD_PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=message):
        resolve_config("x", "bbbc039")


def _serve(tmp_path, handler_body: bytes | None):
    """A local HTTP server: 404 for everything (handler_body None) or that body for every GET."""
    import http.server
    import threading

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if handler_body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(handler_body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


@pytest.mark.parametrize("kind", ["garbage", "not_mlflow", "html"])
def test_a_tracking_uri_that_cannot_work_falls_back_to_the_local_store_with_a_warning(tmp_path, kind):
    from bench.tracking import choose_uri, local_store_uri

    srv = None
    if kind == "garbage":
        uri = "garbage:::///x"
    else:
        srv, uri = _serve(tmp_path, None if kind == "not_mlflow" else b"<html>hello</html>")
    try:
        with pytest.warns(UserWarning, match="logging to the local store"):
            assert choose_uri(uri, tmp_path) == local_store_uri(tmp_path)
    finally:
        if srv:
            srv.shutdown()


def test_a_tracking_server_that_speaks_mlflow_is_kept(tmp_path, recwarn):
    from bench.tracking import choose_uri

    srv, uri = _serve(tmp_path, b'{"experiments": []}')
    try:
        assert choose_uri(uri, tmp_path) == uri
        assert choose_uri("file:///tmp/x", tmp_path) == "file:///tmp/x"
        assert choose_uri(str(tmp_path / "mlruns"), tmp_path) == str(tmp_path / "mlruns")
    finally:
        srv.shutdown()
    assert not [w for w in recwarn if "local store" in str(w.message)]


def test_a_corrupt_test_image_fails_before_training_naming_the_file(tmp_path):
    import json

    from _dataset_fixtures import folder_card, make_folder

    from bench.data import DataError

    stems = make_folder(tmp_path / "mine", n=6, images="images", labels="labels")
    (tmp_path / "mine" / "split.json").write_text(json.dumps({"train": stems[:4], "val": stems[4:5],
                                                              "test": stems[5:]}))
    card = folder_card(tmp_path / "cards" / "mine.yaml", "mine", splits={"kind": "official"},
                       params={"split_file": "split.json"})
    bad = tmp_path / "mine" / "images" / f"{stems[5]}.tif"
    bad.write_bytes(b"II*\x00 not a TIFF any more")
    cfg = resolve_config("unet", str(card), overrides=[
        "tracking.enabled=false", f"output_root={tmp_path / 'runs'}", f"data_root={tmp_path}", "train.epochs=1",
        "train.steps_per_epoch=1", "train.batch_size=1", "train.patch_size=[64,64]"])
    with pytest.raises(DataError, match=rf"split 'test': 1 image\(s\) cannot be scored, found before training.*{bad}"):
        run(cfg, progress=False)
    assert not (cfg.run_dir() / "checkpoints").exists()


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    (precious / "config.yaml").write_text("latex: {engine: lualatex}\n")  # a project's config, not a run's
    cfg = resolve_config("classic_watershed", "bbbc039", overrides=["tracking.enabled=false",
                                                                    f"output_root={tmp_path}", "eval.max_images=1"])
    with pytest.raises(RunExistsError, match="is not a run folder .* refusing to delete it"):
        run(cfg, run_dir=precious, overwrite=True, progress=False)
    assert (precious / "chapter1.tex").read_text() == "years of work"


def test_overwrite_keeps_the_old_results_until_the_new_run_has_its_own(tmp_path, monkeypatch):
    import json

    import bench.runner as runner

    cfg = resolve_config("classic_watershed", "bbbc039", overrides=["tracking.enabled=false",
                                                                    f"output_root={tmp_path}", "eval.max_images=1"])
    first = run(cfg, progress=False)
    before = json.loads((first.run_dir / "summary.json").read_text())

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "evaluate", disk_full)  # the replacing run dies before it has results
    with pytest.raises(OSError, match="No space left"):
        run(cfg, overwrite=True, progress=False)
    assert json.loads((first.run_dir / "summary.json").read_text()) == before  # the old results are back
    assert not runner.replaced_path(first.run_dir).exists()
    monkeypatch.undo()
    again = run(cfg, overwrite=True, progress=False)
    assert again.summary["created"] > before["created"] and not runner.replaced_path(first.run_dir).exists()


def test_a_run_killed_while_evaluating_ends_finished_after_bench_eval(tmp_path, monkeypatch):
    import json

    import torch

    from bench.runner import evaluate_run, read_status

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = resolve_config("unet", "bbbc039", overrides=[
        "tracking.enabled=false", f"output_root={tmp_path}", "train.epochs=2", "train.steps_per_epoch=1",
        "train.batch_size=1", "train.patch_size=[64,64]", "train.val_max_images=1", "eval.max_images=1",
        "eval.calibrate_max_images=1", "method.params.network={name: monai_unet, options: {_delete_: true, "
        "channels: [8, 16], num_res_units: 0}}"])
    rd = run(cfg, progress=False).run_dir
    # as if killed during calibration / scoring: status still running, no calibration, no summary
    status = json.loads((rd / "status.json").read_text())
    (rd / "status.json").write_text(json.dumps({**status, "state": "running"}))
    (rd / "summary.json").unlink()
    (rd / "calibration.json").unlink()
    evaluate_run(rd, progress=False)
    assert read_status(rd)["state"] == "finished"
    assert (rd / "summary.json").exists() and (rd / "calibration.json").exists()  # what `bench run` would have done
    # killed during training: `bench eval` scores the best checkpoint but the run is not called finished
    ck = torch.load(rd / "checkpoints" / "last.pt", weights_only=False)
    ck["state"]["epoch"] = 1
    torch.save(ck, rd / "checkpoints" / "last.pt")
    (rd / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
    evaluate_run(rd, progress=False)
    assert read_status(rd)["state"] == "interrupted"


def test_an_edited_official_split_is_detected_not_silently_replaced(tmp_path):
    import json

    from _dataset_fixtures import folder_card, make_folder

    from bench.data import DataError
    from bench.runner import dataset_splits, open_dataset

    stems = make_folder(tmp_path / "mine", n=6)
    split_file = tmp_path / "mine" / "split.json"
    split_file.write_text(json.dumps({"train": stems[:4], "val": stems[4:5], "test": stems[5:]}))
    card = folder_card(tmp_path / "cards" / "mine.yaml", "mine", splits={"kind": "official"},
                       params={"split_file": "split.json"})
    cfg = resolve_config("unet", str(card), overrides=[f"output_root={tmp_path / 'runs'}", f"data_root={tmp_path}"])
    first = dataset_splits(cfg, open_dataset(cfg))
    assert first["test"] == stems[5:]
    assert dataset_splits(cfg, open_dataset(cfg)) == first  # unchanged: read back
    split_file.write_text(json.dumps({"train": stems[1:5], "val": stems[5:], "test": stems[:1]}))  # same ids
    with pytest.raises(DataError, match="official split changed since these splits were made"):
        dataset_splits(cfg, open_dataset(cfg))


def test_ctrl_c_in_a_sweep_keeps_the_finished_runs_and_the_same_command_continues(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import bench.runner as runner
    from bench.cli import app

    real_run, calls = runner.run, []

    def run_then_ctrl_c(cfg, **kw):
        calls.append(cfg.seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(cfg, **kw)

    monkeypatch.setattr(runner, "run", run_then_ctrl_c)
    args = ["sweep", "--methods", "classic_watershed", "--datasets", "bbbc039", "--seeds", "0,1", "-q",
            "--set", f"output_root={tmp_path}", "--set", "tracking.enabled=false", "--set", "eval.max_images=1"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 130, out.output
    assert "interrupted (sweep stopped in classic_watershed/bbbc039/seed1; 1 of 2 runs finished)" in out.output
    assert "the same command continues" in out.output
    assert (tmp_path / "bbbc039" / "classic_watershed" / "seed0" / "summary.json").exists()
    monkeypatch.setattr(runner, "run", real_run)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "ran 1, resumed 0, skipped 1" in again.output


def test_ctrl_c_in_a_study_fails_only_the_trial_it_hit_and_the_study_continues(tmp_path, monkeypatch):
    from optuna.trial import TrialState

    from bench.tuning import Study

    study = Study("poisson", "bbbc039", overrides=[f"output_root={tmp_path}", "tracking.enabled=false"])
    calls = []

    def objective(self, trial, parent):
        calls.append(trial.number)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 0.5

    monkeypatch.setattr(Study, "_objective", objective)
    monkeypatch.setattr(Study, "write_outputs", lambda self, s=None: None)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(3)
    states = [t.state for t in study.load().get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]
    study.optimize(3)
    assert [t.state for t in study.load().get_trials()].count(TrialState.COMPLETE) == 3


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 400 KB tmpfs (needs root: skipped elsewhere); remount it larger with ``grow()``."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")

    def grow():
        subprocess.run(["mount", "-o", "remount,size=512m", str(mnt)], check=True)  # the UNet's checkpoints

    yield mnt, grow
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_full_disk_fails_cleanly_and_the_run_resumes_once_there_is_space(tmp_path, small_tmpfs, monkeypatch):
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.runner import read_status

    mnt, grow = small_tmpfs
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    args = ["run", "-m", "unet", "-d", "bbbc039", "-q", "--set", f"output_root={mnt}", "--set", "tracking.enabled=false",
            "--set", "train.epochs=1", "--set", "train.steps_per_epoch=1", "--set", "train.batch_size=1",
            "--set", "train.patch_size=[64,64]", "--set", "train.val_max_images=1", "--set", "eval.max_images=1",
            "--set", "eval.calibrate=false", "--set", "eval.overlays=0"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 4, out.output
    assert "No space left on device" in out.output and "The disk is full" in out.output and "--resume" in out.output
    run_dir = mnt / "bbbc039" / "unet" / "seed0"
    assert read_status(run_dir)["state"] == "failed"
    assert not list(mnt.rglob("*.tmp"))  # no half-written checkpoint left behind
    grow()
    again = CliRunner().invoke(app, args + ["--resume"])
    assert again.exit_code == 0, again.output
    assert read_status(run_dir)["state"] == "finished" and (run_dir / "summary.json").exists()


@pytest.mark.parametrize("dataset, methods", [("../x", None), ("a/b", None), ("bbbc039", ["../unet"])])
def test_leaderboard_names_cannot_reach_outside_the_output_folders(tmp_path, dataset, methods):
    from bench.leaderboard import leaderboard

    with pytest.raises(ConfigError, match="may hold letters, digits"):
        leaderboard(dataset, output_root=tmp_path, out_dir=tmp_path / "lb", methods=methods, log_mlflow=False)
    assert not (tmp_path / "lb").exists()


def test_overwrite_after_a_killed_replacement_keeps_the_last_results(tmp_path):
    import json
    import shutil

    from bench.runner import replaced_path

    cfg = resolve_config("classic_watershed", "bbbc039", overrides=["tracking.enabled=false",
                                                                    f"output_root={tmp_path}", "eval.max_images=1"])
    rd = run(cfg, progress=False).run_dir
    before = json.loads((rd / "summary.json").read_text())
    # as a `--overwrite` killed with -9 mid-run leaves it: the old run aside, a partial new one in place
    shutil.copytree(rd, replaced_path(rd))
    (rd / "summary.json").unlink()
    (rd / "status.json").write_text(json.dumps({"state": "running"}))
    prepare_run_dir(cfg, rd, resume=False, overwrite=True)
    assert json.loads((replaced_path(rd) / "summary.json").read_text()) == before  # still kept aside
    shutil.rmtree(rd)
    replaced_path(rd).rename(rd)


def test_a_sweep_with_an_unknown_method_fails_before_anything_trains(tmp_path):
    from bench.registry import RegistryError
    from bench.results import sweep

    with pytest.raises((ConfigError, RegistryError), match="unknown method 'unett'"):
        sweep(["classic_watershed", "unett"], ["bbbc039"], [0], overrides=[f"output_root={tmp_path}"])
    assert not (tmp_path / "bbbc039").exists()


def test_an_empty_test_split_fails_before_training(tmp_path):
    import json

    from _dataset_fixtures import folder_card, make_folder

    stems = make_folder(tmp_path / "mine", n=5)
    (tmp_path / "mine" / "split.json").write_text(json.dumps({"train": stems[:4], "val": stems[4:], "test": []}))
    card = folder_card(tmp_path / "cards" / "mine.yaml", "mine", splits={"kind": "official"},
                       params={"split_file": "split.json"})
    cfg = resolve_config("unet", str(card), overrides=["tracking.enabled=false", f"output_root={tmp_path / 'runs'}",
                                                        f"data_root={tmp_path}", "train.epochs=1"])
    with pytest.raises(ConfigError, match="eval.split 'test': dataset 'mine' has no such split \\(or it is empty\\)"):
        run(cfg, progress=False)
    assert not (cfg.run_dir() / "checkpoints").exists()


def test_a_failure_after_the_replacement_finished_keeps_the_new_results(tmp_path, monkeypatch):
    """Only an unfinished replacement is rolled back: an error after the new run finished (here the tracker's
    end) must not bring the old run back over the new results."""
    import json

    import bench.runner as runner

    cfg = resolve_config("classic_watershed", "bbbc039", overrides=["tracking.enabled=false",
                                                                    f"output_root={tmp_path}", "eval.max_images=1"])
    rd = run(cfg, progress=False).run_dir
    old = json.loads((rd / "summary.json").read_text())["created"]
    real = runner.make_tracker

    def tracker_that_fails_at_the_end(c):
        t = real(c)
        t.end = lambda status="FINISHED": (_ for _ in ()).throw(ConnectionError("tracking server went away"))
        return t

    monkeypatch.setattr(runner, "make_tracker", tracker_that_fails_at_the_end)
    with pytest.raises(ConnectionError):
        run(cfg, overwrite=True, progress=False)
    assert json.loads((rd / "summary.json").read_text())["created"] > old  # the new, finished results stay
