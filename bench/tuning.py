"""Hyper-parameter tuning with Optuna.

The search space is the method card's ``tune:`` block, one entry per dotted config key::

    tune:
      train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      method.params.h: {type: float, low: 0.05, high: 0.4, step: 0.05}
      method.params.boundary_width: {type: int, low: 1, high: 3}
      method.params.loss: {type: categorical, choices: [l1, smooth_l1]}

The objective is the best validation-split monitor value of a training run (the test split is never
evaluated); every epoch is reported to Optuna and a median pruner stops weak trials. Each trial is an
MLflow run nested under the study's parent run. The study lives in an Optuna storage (sqlite under the output
root by default, any RDB URL such as PostgreSQL, or a journal file; `open_storage`), so an interrupted study
resumes and several worker processes, on one machine or several, share it without losing or repeating a trial.
The best parameters are written as a config overlay: ``bench run --config BEST.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, model_validator

from .config import ConfigError, RunConfig, resolve_config

log = logging.getLogger(__name__)


class ParamSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs 'choices'")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"a {self.type} parameter needs low <= high")
        return self


def search_space(cfg: RunConfig) -> dict[str, ParamSpace]:
    if not cfg.method.tune:
        raise ConfigError(f"method card {cfg.method.name!r} has no 'tune:' block to search")
    out = {}
    for key, spec in cfg.method.tune.items():
        try:
            out[key] = ParamSpace.model_validate(spec)
        except Exception as exc:
            raise ConfigError(f"method card {cfg.method.name!r}, tune.{key}: {exc}") from None
    return out


def suggest(trial, space: dict[str, ParamSpace]) -> dict[str, Any]:
    values = {}
    for key, p in space.items():
        if p.type == "float":
            values[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            values[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            values[key] = trial.suggest_categorical(key, p.choices)
    return values


KEEP_CHECKPOINTS = ("best", "none", "all")  # which finished trials keep their checkpoints (disk: ~2 x model size each)


def overlay_from(params: dict[str, Any]) -> dict:
    """{'train.lr': 0.001} -> {'train': {'lr': 0.001}} (a config overlay)."""
    out: dict = {}
    for key, value in params.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


class Study:
    """A tuning study of one method on one dataset; all state is in the Optuna storage."""

    def __init__(self, method: str, dataset: str, *, storage: str | None = None, overrides: list[str] | None = None,
                 overlay: "str | list[str] | None" = None, study_name: str | None = None, data_root: str | None = None,
                 seed: int = 0, n_startup_trials: int = 2, n_warmup_steps: int = 1, pruner=None,
                 keep_checkpoints: str = "best") -> None:
        if keep_checkpoints not in KEEP_CHECKPOINTS:
            raise ConfigError(f"tune: keep_checkpoints={keep_checkpoints!r}; choose one of {', '.join(KEEP_CHECKPOINTS)}")
        self.keep_checkpoints = keep_checkpoints
        self.method, self.dataset = method, dataset
        self.overrides, self.overlay, self.data_root, self.seed = list(overrides or []), overlay, data_root, seed
        self.base = resolve_config(method, dataset, overlay=overlay, overrides=self.overrides, seed=seed)
        self.space = search_space(self.base)
        self.folder = Path(self.base.output_root) / self.base.dataset.name / f"{self.base.method.name}-tune"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.storage_url = storage or f"sqlite:///{(self.folder / 'optuna.db').resolve()}"
        self.study_name = study_name or f"{self.base.method.name}-{self.base.dataset.name}"
        self.n_startup_trials, self.n_warmup_steps = n_startup_trials, n_warmup_steps
        self.pruner = pruner

    def load(self):
        import optuna

        storage = open_storage(self.storage_url)
        pruner = self.pruner or optuna.pruners.MedianPruner(n_startup_trials=self.n_startup_trials,
                                                            n_warmup_steps=self.n_warmup_steps)
        from .runner import monitor_mode, monitor_name

        direction = "maximize" if monitor_mode(self.base) == "max" else "minimize"
        study = optuna.create_study(study_name=self.study_name, storage=storage, direction=direction,
                                    pruner=pruner, sampler=optuna.samplers.TPESampler(seed=None),
                                    load_if_exists=True)
        if study.metric_names is None:  # optuna-dashboard and trials.csv then name the value
            study.set_metric_names([f"val/{monitor_name(self.base)}"])
        return study

    # -- one worker ----------------------------------------------------------------------------
    def optimize(self, n_trials: int, progress: bool = False) -> None:
        """Run trials until the study holds `n_trials` finished (complete or pruned) ones.

        Safe with several processes on one storage: a trial whose number would exceed the budget is
        withdrawn before it trains, so the study ends with exactly `n_trials`.
        """
        import optuna
        from optuna.trial import TrialState

        from .runner import make_tracker

        study = self.load()
        tracker = make_tracker(self.base)
        parent_id = study.user_attrs.get("mlflow_parent_run_id")
        if tracker.enabled and not parent_id:
            parent_id = tracker.start(f"tune/{self.study_name}", tags={"study": self.study_name})
            study.set_user_attr("mlflow_parent_run_id", parent_id)
        reap_stale_trials(study)
        while True:
            if _count(study, (TrialState.COMPLETE, TrialState.PRUNED)) >= n_trials:
                break
            trial = study.ask()
            trial.set_user_attr("host", socket.gethostname())
            trial.set_user_attr("pid", os.getpid())
            live = sorted(t.number for t in study.get_trials(deepcopy=False)
                          if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
            if live.index(trial.number) >= n_trials:  # another worker took the last place
                trial.set_user_attr("withdrawn", True)
                study.tell(trial, state=TrialState.FAIL)
                break
            try:
                value = self._objective(trial, parent_id)
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
                continue
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
            study.tell(trial, value)
            self.drop_checkpoints(study)
        self.drop_checkpoints(study)
        self.write_outputs(study)
        if tracker.enabled and parent_id and _count(study, (TrialState.RUNNING,)) == 0:
            tracker.run_id = parent_id  # the study's parent run ends with the study (no worker left running)
            tracker.end("FINISHED")

    def _objective(self, trial, parent_id: str | None) -> float:
        import optuna

        values = suggest(trial, self.space)
        # JSON is valid YAML: `--set` parses the value back to the same number, string or list
        sets = self.overrides + [f"{k}={json.dumps(v)}" for k, v in values.items()]
        cfg = resolve_config(self.method, self.dataset, overlay=self.overlay, overrides=sets, seed=self.seed)
        from .runner import run

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({value:.4f})")

        run_dir = self.trial_dir(trial.number)
        result = run(cfg, run_dir=run_dir, overwrite=True, data_root=self.data_root, progress=False,
                     evaluate_test=False, on_epoch=report, parent_run_id=parent_id)
        if result.best_value is None:
            raise RuntimeError(f"trial {trial.number}: no validation value (is the val split empty?)")
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("mlflow_run_id", result.mlflow_run_id)
        return result.best_value

    def trial_dir(self, number: int) -> Path:
        return self.folder / f"trial{number:04d}"

    def drop_checkpoints(self, study) -> list[Path]:
        """Delete the checkpoints of finished trials that are not worth keeping (`keep_checkpoints`): "best"
        keeps the best complete trial's only, "none" keeps none, "all" every one. Running trials (this or another
        worker's) are never touched; each trial's config, history and validation scores always stay."""
        from optuna.trial import TrialState

        if self.keep_checkpoints == "all":
            return []
        done = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        complete = [t for t in done if t.state == TrialState.COMPLETE]
        best = study.best_trial.number if complete and self.keep_checkpoints == "best" else None
        dropped = []
        for t in done:
            folder = self.trial_dir(t.number) / "checkpoints"
            if t.number != best and folder.exists():
                shutil.rmtree(folder)
                dropped.append(folder)
        return dropped

    # -- outputs -------------------------------------------------------------------------------
    def best_overlay_path(self) -> Path:
        return self.folder / "best.yaml"

    def write_outputs(self, study=None) -> Path | None:
        """best.yaml (config overlay), trials.csv, and the Optuna figures, logged to the parent run."""
        from optuna.trial import TrialState

        study = study or self.load()
        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if not done:
            return None
        best = study.best_trial
        overlay = overlay_from(best.params)
        from .runner import monitor_name

        header = (f"# best of {len(done)} complete trials of study {self.study_name!r} "
                  f"(trial {best.number}, validation {monitor_name(self.base)} = {best.value:.4f})\n"
                  f"# use: bench run --method {self.method} --dataset {self.dataset} --config {self.best_overlay_path()}\n")
        self.best_overlay_path().write_text(header + yaml.safe_dump(overlay, sort_keys=False))
        study.trials_dataframe().to_csv(self.folder / "trials.csv", index=False)
        figures = self._figures(study)
        from .runner import make_tracker

        parent = study.user_attrs.get("mlflow_parent_run_id")
        if parent and self.base.tracking.enabled:
            tr = make_tracker(self.base)
            tr.run_id = parent
            tr.log_metrics({"best_value": best.value, "n_complete": len(done)})
            for f in [self.best_overlay_path(), self.folder / "trials.csv", *figures]:
                tr.log_artifact(f)
        return self.best_overlay_path()

    def _figures(self, study) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import optuna.visualization.matplotlib as ovm

        out = []
        for name, fn in (("optimization_history", ovm.plot_optimization_history),
                         ("param_importances", ovm.plot_param_importances)):
            try:
                ax = fn(study)
                fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
                path = self.folder / f"{name}.png"
                fig.savefig(path, dpi=110, bbox_inches="tight")
                plt.close(fig)
                out.append(path)
            except Exception as exc:  # importances need >= 2 complete trials with varied params
                log.info("no %s figure: %s", name, exc)
        return out


def reap_stale_trials(study) -> list[int]:
    """Mark FAIL the RUNNING trials of this host whose process is gone (killed with -9, or the machine rebooted), so
    that they stop holding places of the trial budget. Trials of other hosts are left alone (their pids mean nothing
    here). Returns the reaped trial numbers."""
    from optuna.trial import TrialState

    host, reaped = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or not isinstance(pid, int) or _alive(pid):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "reaped", f"process {pid} is gone")
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)  # another worker may reap it first
        reaped.append(t.number)
    if reaped:
        log.warning("study %s: trials %s were left RUNNING by processes that no longer exist; marked FAIL",
                    study.study_name, reaped)
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _count(study, states) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state in states)


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):  # several processes on one sqlite file: wait for the lock instead of failing
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}  # a server that dropped an idle connection (a long trial) is reconnected


# SQLAlchemy dialect -> (module it needs, what installs it)
DB_DRIVERS = {"postgresql+psycopg": ("psycopg", "pip install 'physeg-bench[postgres]'"),
              "postgresql+psycopg2": ("psycopg2", "pip install psycopg2-binary (or use postgresql+psycopg://, "
                                                  "which the [postgres] extra installs)"),
              "postgresql": ("psycopg2", "pip install psycopg2-binary (or use postgresql+psycopg://, which the "
                                         "[postgres] extra installs)"),
              "mysql+pymysql": ("pymysql", "pip install pymysql"), "mysql": ("MySQLdb", "pip install mysqlclient")}


def open_storage(url: str):
    """The Optuna storage of a URL: any SQLAlchemy URL (sqlite:///..., postgresql+psycopg://user@host/db, mysql://)
    through RDBStorage, or ``journal:///path/to/file.log``: Optuna's journal file, for a shared file system where no
    database server runs (NFS-safe file locks)."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = Path(url.removeprefix("journal:").removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # the open(O_EXCL) lock works where flock does not (NFS)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    dialect = url.split("://", 1)[0]
    if dialect in DB_DRIVERS:
        import importlib.util

        module, hint = DB_DRIVERS[dialect]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--storage {dialect}://... needs the {module} driver: {hint}")
    return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))


def tune(method: str, dataset: str, n_trials: int, *, workers: int = 1, storage: str | None = None,
         overrides: list[str] | None = None, overlay: "str | list[str] | None" = None, data_root: str | None = None,
         seed: int = 0, keep_checkpoints: str = "best") -> Study:
    """Run a study with `workers` processes on one storage (this process is one of them)."""
    if n_trials < 1 or workers < 1:
        raise ConfigError(f"tune: --trials and --workers must be >= 1 (got trials={n_trials}, workers={workers})")
    study = Study(method, dataset, storage=storage, overrides=overrides, overlay=overlay, data_root=data_root,
                  seed=seed, keep_checkpoints=keep_checkpoints)
    study.load()  # create it once before the workers race to
    procs = []
    for _ in range(max(0, workers - 1)):
        cmd = [sys.executable, "-m", "bench", "tune", "--method", method, "--dataset", dataset,
               "--trials", str(n_trials), "--storage", study.storage_url, "--workers", "1", "--seed", str(seed),
               "--keep-checkpoints", keep_checkpoints, "-q"]
        for s in overrides or []:
            cmd += ["--set", s]
        for o in ([overlay] if isinstance(overlay, (str, Path)) else list(overlay or [])):
            cmd += ["--config", str(o)]
        if data_root:
            cmd += ["--data-root", str(data_root)]
        procs.append(subprocess.Popen(cmd))
    try:
        study.optimize(n_trials)
    finally:
        codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"a tuning worker failed (exit codes {codes})")
    study.write_outputs()
    return study
