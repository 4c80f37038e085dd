"""Shared stores for several processes or machines, each a real server on 127.0.0.1 started and stopped here:
Optuna on PostgreSQL and on a journal file (2 workers, N trials: exactly N finished, none trained twice), an MLflow
tracking server (params, metrics and artifacts over HTTP), and two `bench run` processes on a fresh output root."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import needs_data

pytestmark = needs_data("bbbc039")

TUNE_SETS = ["train.val_max_images=1", "tracking.enabled=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return Path(found).resolve().parent if found else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server: initdb in a temporary folder, pg_ctl start on a free port, stop at the end.
    It is installed by the CI set-up (README: apt-get install postgresql); skipped only where it is not there."""
    pytest.importorskip("psycopg", reason="pip install 'physeg-bench[postgres]'")
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql); the CI set-up installs it")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root: its own system user, which apt creates
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to start the server as")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data, log = folder / "data", folder / "server.log"

    def pg(*args):
        return subprocess.run([*as_user, *map(str, args)], check=True, capture_output=True, text=True, timeout=120)

    pg(bindir / "initdb", "-D", data, "-A", "trust", "-U", "bench", "-E", "UTF8")
    pg(bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
       "start")
    try:
        pg(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "bench", "optuna")
        yield f"postgresql+psycopg://bench@127.0.0.1:{port}/optuna"
    finally:
        pg(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _trials_once(study, n: int) -> None:
    """Exactly n finished trials, each trained once in its own folder; extra asks were withdrawn untrained."""
    from optuna.trial import TrialState

    trials = study.load().get_trials()
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == n
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(t.user_attrs.get("withdrawn") for t in trials if t.state == TrialState.FAIL)
    trained = sorted(p.name for p in study.folder.glob("trial*") if p.is_dir())
    assert trained == sorted(f"trial{t.number:04d}" for t in done)
    assert len({t.user_attrs["pid"] for t in done}) == 2  # both workers took trials


@pytest.mark.parametrize("store", ["postgresql", "journal"])
def test_two_tuning_workers_on_one_shared_storage(store, tmp_path, request, monkeypatch):
    from bench.tuning import Study, tune

    # A watershed trial takes well under a second: this process could use up the budget before the spawned worker
    # has imported torch (seen on a loaded CI machine). Its first trial therefore waits until the other worker holds
    # one, so the test always exercises two workers on one storage; the spawned worker is not patched.
    objective, waited = Study._objective, []

    def wait_for_the_other_worker(self, trial, parent_id):
        deadline = time.monotonic() + 300
        while not waited and time.monotonic() < deadline:
            if any(t.user_attrs.get("pid") not in (None, os.getpid()) for t in trial.study.get_trials(deepcopy=False)):
                break
            time.sleep(0.2)
        waited.append(True)
        return objective(self, trial, parent_id)

    monkeypatch.setattr(Study, "_objective", wait_for_the_other_worker)
    url = request.getfixturevalue("postgres_url") if store == "postgresql" else f"journal:///{tmp_path}/optuna.log"
    n = 6
    study = tune("classic_watershed", "bbbc039", n, workers=2, storage=url,
                 overrides=[f"output_root={tmp_path}", *TUNE_SETS])
    assert study.storage_url == url
    _trials_once(study, n)
    again = tune("classic_watershed", "bbbc039", n, workers=2, storage=url,
                 overrides=[f"output_root={tmp_path}", *TUNE_SETS])  # the budget is met: nothing more runs
    _trials_once(again, n)


def test_a_postgres_url_without_its_driver_says_what_to_install(monkeypatch):
    import importlib.util

    from bench.config import ConfigError
    from bench.tuning import open_storage

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    with pytest.raises(ConfigError, match=r"psycopg driver: pip install 'physeg-bench\[postgres\]'"):
        open_storage("postgresql+psycopg://bench@127.0.0.1:1/optuna")


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    store = tmp_path / "server"
    store.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "art")],
        stdout=subprocess.DEVNULL, stderr=open(store / "server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(url + "/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("mlflow server exited: " + (store / "server.log").read_text()[-2000:])
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer in 120 s: " + (store / "server.log").read_text()[-2000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_run_logs_params_metrics_and_artifacts_to_an_mlflow_server(tmp_path, mlflow_server):
    import mlflow

    from bench.config import resolve_config
    from bench.runner import run

    cfg = resolve_config("classic_watershed", "bbbc039", overrides=[
        f"output_root={tmp_path / 'runs'}", f"tracking.uri={mlflow_server}", "eval.max_images=2", "eval.overlays=1",
        "eval.calibrate=false"])
    result = run(cfg, progress=False)
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # nothing fell back to the local store
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    r = client.get_run(result.mlflow_run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["method.name"] == "classic_watershed"
    assert r.data.metrics["test/f1_at_0.50"] == pytest.approx(result.summary["metrics"]["f1@0.50"])  # '@': MLflow
    names = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "summary.json", "metrics_per_image.csv"} <= names
    local = client.download_artifacts(r.info.run_id, "summary.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["metrics"] == result.summary["metrics"]


def test_two_runs_start_on_a_fresh_output_root_at_once_and_both_finish(tmp_path):
    root = tmp_path / "fresh"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "bench", "run", "--method", "classic_watershed", "--dataset",
                               "bbbc039", "--seed", str(seed), "-q", "--set", f"output_root={root}",
                               "--set", "eval.max_images=1", "--set", "eval.overlays=0", "--set",
                               "eval.calibrate=false"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for seed in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bbbc039").experiment_id])
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)
