"""The one runner: card -> registry -> method.fit -> evaluate -> per-image table -> summary.

It knows no method and no dataset by name; it talks to `Method` and `DatasetReader` only. Training lives in
`bench.loop` (the fit context and the standard epoch loop); the run folder's file names in `bench.runfiles`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


from .config import ConfigError, RunConfig, dump_config, flatten, read_yaml, validate
from .data import DataError, DatasetReader, Sample, resolve_data_root
from .method import Method, sha256_file
from .registry import DATASETS, METHODS
from .runfiles import CONFIG_FILE, STATUS_FILE, SUMMARY_FILE, TABLE_FILE, RunFiles  # noqa: F401

log = logging.getLogger(__name__)


class RunExistsError(FileExistsError):
    pass


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]  # empty when the test split was not evaluated
    mlflow_run_id: str | None
    best_value: float | None = None  # best validation monitor value (None without validation)


# ------------------------------------------------------------------------------------------------
# building blocks: each policy has this one owner


def dataset_root(card, data_root: str | None = None) -> Path | None:
    return None if card.generated else resolve_data_root(data_root) / card.root


def open_reader(card, data_root: str | None = None, *, download: bool = True) -> DatasetReader:
    """The reader of a dataset card; a missing dataset is downloaded from its card's sources (unless
    ``download`` is off or $BENCH_NO_DOWNLOAD=1), else a DataError says where the files go."""
    reader_cls = DATASETS.get(card.reader)
    root = dataset_root(card, data_root)
    if root is not None and not root.exists():
        hint = (f"Set the data root with --data-root or $BENCH_DATA_ROOT (the folder that holds {card.root}/), "
                f"or run `bench data fetch {card.name}`.")
        if download and card.source.urls and os.environ.get("BENCH_NO_DOWNLOAD") != "1":
            from .datatools import fetch_dataset

            log.info("dataset %s not at %s: downloading it from its official source", card.name, root)
            try:
                fetch_dataset(card.name, data_root=data_root)
            except DataError as exc:  # offline, or the source moved: say where the files go by hand
                raise DataError(f"dataset {card.name!r} not found at {root}, and the download failed: {exc}. "
                                f"Set the data root with --data-root or $BENCH_DATA_ROOT (the folder that holds "
                                f"{card.root}/), or put the files there by hand.") from None
        if not root.exists():
            raise DataError(f"dataset {card.name!r} not found at {root}. {hint}")
    params = validate(reader_cls.Params, card.params, f"dataset card {card.name!r}", "dataset.params.")
    reader = reader_cls(card, root, params)
    return ForegroundView(reader) if card.foreground else reader


class ForegroundView(DatasetReader):
    """A reader's samples with every label > 0 as class 1 (a card's ``foreground: true``)."""

    def __init__(self, inner: DatasetReader) -> None:
        self.inner, self.card, self.root, self.params = inner, inner.card, inner.root, inner.params

    def list_ids(self) -> list[str]:
        return self.inner.list_ids()

    def official_splits(self):
        return self.inner.official_splits()

    def __getattr__(self, name: str):  # the reader's own helpers (e.g. ctc's is_complete) stay reachable
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def load(self, sample_id: str) -> Sample:
        s = self.inner.load(sample_id)
        if s.label is not None:
            s.label = (s.label > 0).astype(np.int32)
        return s


def open_dataset(cfg: RunConfig, data_root: str | None = None) -> DatasetReader:
    return open_reader(cfg.dataset, data_root or cfg.data_root)


def open_extra_datasets(cfg: RunConfig, data_root: str | None = None) -> dict[str, DatasetReader]:
    return {role: open_reader(card, data_root or cfg.data_root) for role, card in cfg.extra_datasets.items()}


def dataset_splits(cfg: RunConfig, reader: DatasetReader, *, persist: bool = True) -> dict[str, list[str]]:
    """The split policy (one owner): persisted per dataset under the output root, checked against the data."""
    return dataset_splits_of(cfg.dataset, reader, cfg.output_root if persist else None)


def dataset_splits_of(card, reader: DatasetReader, output_root: str | Path | None) -> dict[str, list[str]]:
    from .data import split_policy

    return split_policy(card, reader, Path(output_root) / card.name if output_root is not None else None)


def make_tracker(cfg: RunConfig, enabled: bool = True):
    """The one place a run's tracker is made (config or $MLFLOW_TRACKING_URI, else the local store)."""
    from .tracking import Tracker

    return Tracker(cfg.tracking.enabled and enabled, cfg.tracking.uri, cfg.tracking.experiment or cfg.dataset.name,
                   cfg.output_root)


def build_method(cfg: RunConfig, device) -> Method:
    cls = METHODS.get(cfg.method.impl)
    params = validate(cls.Params, cfg.method.params, f"method card {cfg.method.name!r}", "method.params.")
    method = cls(params, cfg.dataset, device)
    method.train_cfg = cfg.train
    method.extra_datasets = dict(cfg.extra_datasets)
    method.build()
    return method.to(device)


def method_availability(cfg: RunConfig) -> str:
    """'ok', or why this method cannot run with these params here (missing package, weights file)."""
    entry = METHODS.entry(cfg.method.impl)
    avail = entry.availability()
    if avail != "ok":
        return avail
    cls = entry.obj
    params = validate(cls.Params, cfg.method.params, f"method card {cfg.method.name!r}", "method.params.")
    return cls.availability(params) or "ok"


def monitor_name(cfg: RunConfig) -> str:
    """The validation summary key a run keeps its best checkpoint on (as `Method.monitor` resolves it)."""
    cls = METHODS.get(cfg.method.impl)
    return cfg.train.monitor or cls.default_monitor or ("f1@0.50" if cfg.dataset.task == "instance" else "dice")


def monitor_mode(cfg: RunConfig) -> str:
    """'max' or 'min' for the validation monitor: the config's, else the monitored metric's registered direction."""
    if cfg.train.monitor_mode:
        return cfg.train.monitor_mode
    from .metrics import higher_is_better

    return "max" if higher_is_better(monitor_name(cfg)) else "min"


def eval_metrics(cfg: RunConfig) -> list[str] | None:
    """The metric names a run's evaluation computes: eval.metrics (None: the task's default set) plus the
    on-request eval.extra_metrics."""
    from .metrics.base import default_metrics_plus

    if cfg.eval.metrics is not None:
        return list(cfg.eval.metrics) + [e for e in cfg.eval.extra_metrics if e not in cfg.eval.metrics]
    return default_metrics_plus(list(cfg.eval.extra_metrics), cfg.dataset.task)


def metric_context(cfg: RunConfig, spacing: tuple[float, ...] | None = None, partial: bool = False):
    """Metric settings of a run; ``partial``: the image's reference annotates only some objects."""
    from .metrics import MetricContext

    return MetricContext(
        task=cfg.dataset.task,
        spacing=tuple(spacing or cfg.dataset.spacing or (1.0,) * cfg.dataset.ndim),
        num_classes=cfg.dataset.num_classes,
        class_names=list(cfg.dataset.classes),
        boundary_tolerance=cfg.eval.boundary_tolerance,
        regions=cfg.eval.regions,
        partial=partial,
    )


def _write_json(path: Path, data: dict) -> None:
    from .cache import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def read_status(run_dir: Path) -> dict:
    p = RunFiles(run_dir).status
    return json.loads(p.read_text()) if p.exists() else {}


def _update_status(run_dir: Path, **kw: Any) -> dict:
    st = read_status(run_dir)
    st.update(kw)
    _write_json(RunFiles(run_dir).status, st)
    return st


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = RunFiles(run_dir).config
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    return validate(RunConfig, read_yaml(path), str(path))


# ------------------------------------------------------------------------------------------------
# the run


def check_split(dataset: str, splits: dict[str, list[str]], split: str) -> None:
    if split != "all" and not splits.get(split):
        raise ConfigError(f"eval.split {split!r}: dataset {dataset!r} has no such split (or it is empty); "
                          f"have {sorted(k for k, v in splits.items() if v)} or 'all'")


def method_trains(cfg: RunConfig) -> bool:
    return METHODS.get(cfg.method.impl).trainable and cfg.train.epochs > 0


def verify_images(cfg: RunConfig, reader: DatasetReader, ids: list[str], split: str) -> None:
    """Read every image of a split and its label (nnU-Net's integrity check): a corrupt, missing or mis-shaped test
    file fails before training, naming the file, instead of after it with half the predictions written."""
    problems = []
    for sid in ids:
        try:
            s = reader.load(sid)
        except DataError as exc:
            problems.append(str(exc))
            continue
        if s.label is None:
            problems.append(f"image {sid!r} of split {split!r} has no label")
        elif not np.isfinite(s.image).all():
            problems.append(f"{s.meta.get('image_path', sid)}: NaN/inf pixels in the image")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DataError(f"dataset {cfg.dataset.name!r}, split {split!r}: {len(problems)} image(s) cannot be scored, "
                        f"found before training: " + "; ".join(problems[:5]) + more +
                        " (`bench data check` lists them all)")


def preflight(cfg: RunConfig) -> None:
    """Config checks that need the registries, made before a run folder is touched (so a typo costs seconds)."""
    from .metrics import emits_key

    monitor = monitor_name(cfg)
    if not monitor.startswith("train/") and not emits_key(monitor, cfg.dataset.task):
        from .metrics import metric_families

        raise ConfigError(f"train.monitor {monitor!r} is not a validation metric of the {cfg.dataset.task} task; use a "
                          f"row of {', '.join(metric_families(cfg.dataset.task))} (e.g. f1@0.50, dice, seg) or "
                          "train/<loss>")
    from .calibration import check_grid

    check_grid(cfg)
    if cfg.train.augment.rot90 and len(cfg.train.patch_size) >= 2 and len(set(cfg.train.patch_size[-2:])) > 1:
        raise ConfigError(f"train.patch_size {cfg.train.patch_size}: 90-degree rotations need square in-plane "
                          "patches; make the last two sizes equal or set train.augment.rot90=false")


# what a run writes before its first checkpoint; a folder holding only these (and not running) is a failed start
_START_FILES = {"config.yaml", "environment.json", "splits.json", "status.json"}


def _failed_start(run_dir: Path) -> bool:
    names = {p.name for p in run_dir.iterdir()}
    return "config.yaml" in names and names <= _START_FILES and read_status(run_dir).get("state") != "running"


def replaced_path(run_dir: Path) -> Path:
    """Where `--overwrite` keeps the run it replaces until the new one has results."""
    return run_dir.parent / f".{run_dir.name}.replaced"


def is_run_folder(path: Path) -> bool:
    """A folder a run wrote: its status.json, or a config.yaml that is a run's config (not any project's)."""
    if (path / STATUS_FILE).is_file():
        return True
    try:
        load_run_config(path)
        return True
    except Exception:
        return False


def prepare_run_dir(cfg: RunConfig, run_dir: Path, *, resume: bool, overwrite: bool,
                    outcome: dict | None = None) -> bool:
    """Returns True when resuming. Refuses to clobber earlier results: `overwrite` replaces only a run folder, and
    moves it aside (`replaced_path`) instead of deleting it; `run` deletes it once the new run has finished and
    puts it back if the new run fails."""
    if run_dir.exists() and any(run_dir.iterdir()) and _failed_start(run_dir):
        # only the start files are removed, so a folder that holds anything else is never touched
        log.warning("%s holds a run that failed before its first checkpoint; starting it again", run_dir)
        for name in _START_FILES:
            (run_dir / name).unlink(missing_ok=True)
    if run_dir.exists() and any(run_dir.iterdir()):
        status = read_status(run_dir).get("state", "unknown")
        if overwrite:
            if not is_run_folder(run_dir):
                raise RunExistsError(f"--overwrite: {run_dir} is not a run folder (no {STATUS_FILE}, no run's {CONFIG_FILE}) "
                                     "and holds other files; refusing to delete it. Choose another --run-dir.")
            backup = replaced_path(run_dir)
            if outcome is not None:
                outcome["backup"] = backup  # this call owns the backup: run() restores or removes it
            if backup.exists() and status != "finished":
                # a replacement was killed before it had results: the backup holds the last results; keep them
                shutil.rmtree(run_dir)
            else:
                if backup.exists():  # killed just after it finished: run_dir holds the newer results
                    shutil.rmtree(backup)
                run_dir.rename(backup)
            run_dir.mkdir(parents=True)
            return False
        elif resume:
            saved = load_run_config(run_dir)
            if saved.config_hash() != cfg.config_hash():
                raise RunExistsError(
                    f"{run_dir} holds a run with another config (hash {saved.config_hash()} != "
                    f"{cfg.config_hash()}); resume it with the same settings, or use --overwrite / --tag"
                )
            return True
        else:
            raise RunExistsError(
                f"{run_dir} already holds a run ({status}). Use --resume to continue it, --overwrite to "
                "replace it, or --tag NAME / --run-dir to write elsewhere."
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    return False


def run(
    cfg: RunConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    data_root: str | None = None,
    progress: bool = True,
    evaluate_test: bool = True,
    on_epoch=None,
    parent_run_id: str | None = None,
) -> RunResult:
    """Train (through ``method.fit``) and evaluate one method on one dataset.

    `on_epoch(epoch, value)` is called after each validated epoch with the monitor value (tuning uses it to
    report to Optuna and prune). With `evaluate_test=False` the test split is never touched.
    """
    from . import distributed

    run_dir = Path(run_dir) if run_dir else cfg.run_dir()
    # under torchrun rank 0 owns the folder (bench.distributed); the other ranks only read what it wrote
    with run_folder_lock(run_dir) if distributed.is_main() else contextlib.nullcontext():
        outcome: dict = {}
        try:
            result = _run(cfg, run_dir, resume=resume, overwrite=overwrite, data_root=data_root,
                          progress=progress, evaluate_test=evaluate_test, on_epoch=on_epoch,
                          parent_run_id=parent_run_id, outcome=outcome)
        except BaseException:
            backup = outcome.get("backup")
            if backup is not None and backup.exists() and read_status(run_dir).get("state") != "finished":
                # the new run has no results: the replaced one comes back
                shutil.rmtree(run_dir, ignore_errors=True)
                backup.rename(run_dir)
                log.warning("the new run failed; %s holds the run it was to replace again", run_dir)
            raise
        if outcome.get("backup") is not None and outcome["backup"].exists():
            shutil.rmtree(outcome["backup"], ignore_errors=True)
        return result


@contextlib.contextmanager
def run_folder_lock(run_dir: Path):
    """One process per run folder: a second `--resume`, or a `bench eval` / `bench calibrate` of a run still going,
    would write the same files (the lock sits beside the folder, so --overwrite can replace the folder under it)."""
    from .locks import LockHeld, file_lock

    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(run_dir.parent / f".{run_dir.name}.lock", blocking=False, what=str(run_dir)):
            yield
    except LockHeld as exc:
        raise RunExistsError(f"{exc}; wait for it to finish, or stop it first") from None


def _run(cfg: RunConfig, run_dir: Path, *, resume: bool, overwrite: bool, data_root: str | None, progress: bool,
         evaluate_test: bool, on_epoch, parent_run_id: str | None, outcome: dict | None = None) -> RunResult:
    from . import distributed
    from .envinfo import environment_record, seed_everything, training_resources
    from .loop import FitContext

    files = RunFiles(run_dir)
    avail = method_availability(cfg)
    if avail != "ok":
        raise DataError(f"method {cfg.method.name!r} cannot run here: {avail}")
    preflight(cfg)
    device = distributed.init(cfg.train.device)
    main = distributed.is_main()
    if method_trains(cfg):  # every rank, before rank 0 touches the folder
        distributed.local_batch_size(cfg.train.batch_size)
    progress = progress and main
    if data_root:
        cfg.data_root = str(data_root)
    prepared: tuple = ("ok", False)
    if main:
        try:
            resuming = prepare_run_dir(cfg, run_dir, resume=resume, overwrite=overwrite, outcome=outcome)
            files.config.write_text(dump_config(cfg))
            env = environment_record()
            if distributed.is_distributed():
                env["world_size"] = distributed.world_size()
            _write_json(files.environment, env)
            reader = open_dataset(cfg, data_root)
            extra_readers = open_extra_datasets(cfg, data_root)
            splits = dataset_splits(cfg, reader)
            _write_json(files.splits, splits)
            if evaluate_test and cfg.eval_dataset is None:  # a typo in eval.split fails now, not after training
                check_split(cfg.dataset.name, splits, cfg.eval.split)
                if cfg.eval.verify_before_training and method_trains(cfg):
                    verify_images(cfg, reader, splits[cfg.eval.split][: cfg.eval.max_images or None],
                                  cfg.eval.split)
            prepared = ("ok", resuming)
        except BaseException as exc:
            distributed.broadcast(("failed", f"{type(exc).__name__}: {exc}"))  # the other ranks stop too
            raise
    prepared = distributed.broadcast(prepared)
    if prepared[0] != "ok":
        raise RuntimeError(f"rank 0 could not prepare {run_dir}: {prepared[1]}")
    resuming = prepared[1]
    if not main:
        env = {}
        reader = open_dataset(cfg, data_root)
        extra_readers = open_extra_datasets(cfg, data_root)
        splits = json.loads(files.splits.read_text())

    seed_everything(cfg.seed, cfg.train.deterministic)
    method = build_method(cfg, device)
    if method.trainable and cfg.train.epochs == 0 and not method.weights_files():
        raise ConfigError(f"train.epochs=0: {cfg.method.name!r} is trained from scratch and loads no weights, so the "
                          "run would publish an untrained network; set train.epochs >= 1")

    tracker = make_tracker(cfg) if main else make_tracker(cfg, enabled=False)  # one MLflow run: rank 0's
    prev_id = read_status(run_dir).get("mlflow_run_id") if resuming else None
    run_name = f"{cfg.method.name}{'-' + cfg.tag if cfg.tag else ''}/{cfg.dataset.name}/{run_dir.name}"
    mlflow_id = tracker.start(run_name, prev_id, tags={
        "method": cfg.method.name, "dataset": cfg.dataset.name, "seed": str(cfg.seed),
        "config_hash": cfg.config_hash(), "git_commit": str(env.get("git_commit")), "run_dir": str(run_dir.resolve()),
        # MLflow's own source tags: the UI's "Source" and "Version" columns
        "mlflow.source.type": "LOCAL", "mlflow.source.name": "bench run",
        **({"mlflow.source.git.commit": str(env["git_commit"])} if env.get("git_commit") else {}),
        **{f"extra_dataset.{k}": v.name for k, v in cfg.extra_datasets.items()},
    }, parent_run_id=parent_run_id)
    if main:
        _update_status(run_dir, state="running", started=time.time(), mlflow_run_id=mlflow_id,
                       config_hash=cfg.config_hash(), device=str(device), world_size=distributed.world_size())
    tracker.log_params(flatten(cfg.model_dump(mode="json", exclude={"method": {"tune", "calibrate"}, "extra_datasets": True, "eval_dataset": True})))
    tracker.log_artifact(files.config)
    tracker.log_artifact(files.environment)
    ctx = FitContext(cfg, method, reader, splits, files, tracker, resuming=resuming, progress=progress,
                     on_epoch=on_epoch, readers=extra_readers)
    best = None
    try:
        if method.trainable and cfg.train.epochs > 0:
            best = (method.fit(ctx) or {}).get("best_value")
            if main:  # read before evaluation, whose whole-image inference has its own, image-size-bound peak
                _update_status(run_dir, resources=training_resources(method.networks, device))
        elif not evaluate_test:  # nothing to train: the validation score is the objective
            if not ctx.val_ids():
                raise DataError(f"dataset {cfg.dataset.name!r}: the val split is empty")
            val = ctx.score()
            best = val[cfg.train.monitor or method.monitor]
            tracker.log_metrics({f"val/{k}": v for k, v in val.items()})
            if on_epoch:
                on_epoch(0, best)
        summary = {}
        if not main:  # evaluation is rank 0's
            return RunResult(run_dir, {}, None, best)
        if evaluate_test:
            calibrate_run(method, cfg, reader, splits, run_dir, tracker, progress=progress)
            summary = evaluate(method, cfg, reader, splits, run_dir, tracker, progress=progress)
    except BaseException as exc:
        if not main:
            raise
        state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        if type(exc).__name__ == "TrialPruned":
            state = "pruned"
        try:
            _update_status(run_dir, state=state, error=f"{type(exc).__name__}: {exc}", finished=time.time())
        except OSError as status_exc:  # e.g. the disk is still full: the original error is the one to report
            log.warning("could not record the %s state in %s: %s", state, run_dir, status_exc)
        tracker.end({"interrupted": "KILLED", "pruned": "KILLED"}.get(state, "FAILED"))
        raise
    from .loop import slim_finished_checkpoint

    if not cfg.train.keep_resume_state:
        slim_finished_checkpoint(files.checkpoint("last"))  # before "finished": a kill here leaves a resumable run
    _update_status(run_dir, state="finished", finished=time.time(), error=None, best_value=best)
    tracker.end("FINISHED")
    return RunResult(run_dir, summary, mlflow_id, best)


def load_checkpoint(method: Method, run_dir: Path, which: str = "best") -> dict | None:
    import torch

    path = RunFiles(run_dir).checkpoint(which)
    if not method.trainable:
        return None
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path}: the run did not finish an epoch")
    ck = torch.load(path, map_location=method.device, weights_only=False)
    method.load_state_dict(ck["method"])
    return ck


def calibrate_run(method: Method, cfg: RunConfig, reader: DatasetReader, splits: dict[str, list[str]], run_dir: Path,
                  tracker, *, progress: bool = True) -> dict | None:
    """The post-processing step between training and testing: the card's grid scored on the val split with the
    evaluated checkpoint; writes calibration.json (which `evaluate` and `predict_folder` apply)."""
    from .calibration import FILE, calibrate

    (Path(run_dir) / FILE).unlink(missing_ok=True)  # a stale choice (an earlier checkpoint) must not survive
    if not cfg.method.calibrate or not cfg.eval.calibrate:
        return None
    if method.trainable and cfg.train.epochs > 0:
        load_checkpoint(method, run_dir, cfg.eval.checkpoint)
    record = calibrate(method, cfg, reader, splits, run_dir, progress=progress)
    if record:
        # metrics, not params: MLflow refuses a param whose value changes, and a run may be calibrated again
        tracker.log_metrics({f"calibration/{record['monitor']}": record["chosen"]["value"],
                             **{f"calibrated/{k}": float(v) for k, v in record["chosen"]["params"].items()}})
        tracker.log_artifact(Path(run_dir) / FILE)
    return record


def provenance(method: Method, cfg: RunConfig) -> dict[str, Any]:
    """What the model was made from: weights files (sha256), training data, extra datasets."""
    weights = {}
    for name, path in method.weights_files().items():
        p = Path(path)
        weights[name] = {"path": str(p), "sha256": sha256_file(p) if p.is_file() else None}
    return {"weights": weights, "training_data": method.training_data(),
            "extra_datasets": {role: {"name": c.name, "reader": c.reader, "root": c.root,
                                      "generated": c.generated, "params": c.params}
                               for role, c in cfg.extra_datasets.items()}}


def evaluate(method: Method, cfg: RunConfig, reader: DatasetReader, splits: dict[str, list[str]], run_dir: Path,
             tracker, *, progress: bool = True, split: str | None = None,
             from_predictions: bool = False) -> dict[str, Any]:
    """Predict the evaluation split, write predictions/overlays, the per-image table and the summary.

    ``from_predictions``: score the predictions the run saved instead of predicting again (new or corrected metric
    code over an expensive method, as nnU-Net's evaluate_folder); the timings are those of the summary they came
    with, since nothing is predicted."""
    import pandas as pd

    from .envinfo import hardware_summary
    from .imageio_utils import overlay_png, write_label
    from .loop import progress_bar
    from .metrics import evaluate_image, summarize
    from .results import image_set_hash

    files = RunFiles(run_dir)
    split = split or cfg.eval.split
    scored = cfg.dataset
    if cfg.eval_dataset is not None:  # cross-domain: the other dataset's images, with its own split policy
        scored = cfg.eval_dataset
        reader = open_reader(scored, cfg.data_root)
        splits = dataset_splits_of(scored, reader, cfg.output_root)
    if split == "all":
        splits = {**splits, "all": sorted(reader.list_ids())}
    check_split(scored.name, splits, split)
    ids = splits[split][: cfg.eval.max_images or None]
    previous: dict = {}
    if from_predictions:
        from .imageio_utils import read_label

        if not files.summary(split).exists():
            raise FileNotFoundError(f"{files.summary(split)}: the run has no scored {split} split whose saved "
                                    "predictions could be scored again")
        previous = json.loads(files.summary(split).read_text())
        missing = [sid for sid in ids if not (files.predictions(split) / f"{sid}.tif").is_file()]
        if missing:
            raise FileNotFoundError(f"{files.predictions(split)}: no saved prediction for {len(missing)} of "
                                    f"{len(ids)} images (first: {missing[0]}.tif); run `bench eval` without "
                                    "--from-predictions")
    elif method.trainable and cfg.train.epochs > 0:
        load_checkpoint(method, run_dir, cfg.eval.checkpoint)
    from . import calibration

    calibrated = previous.get("postprocess", {}).get("params") if from_predictions else calibration.apply(
        method, run_dir)
    rows = []
    t_pred = t_post = 0.0
    split_timing = type(method).predict is Method.predict  # a method that overrides predict is timed as a whole
    metric_names = eval_metrics(cfg)
    n_partial = 0
    for k, sid in enumerate(progress_bar(ids, progress, f"evaluating {split}")):
        s = reader.load(sid)
        if s.label is None:
            raise DataError(f"{cfg.dataset.name}: image {sid!r} of split {split!r} has no label")
        t0 = time.time()
        args = (method.normalize(s.image), cfg.train.patch_size, cfg.eval.tile_overlap)
        meta = {"spacing": s.spacing, "id": sid}
        if from_predictions:
            pred = read_label(files.predictions(split) / f"{sid}.tif")
        elif split_timing:  # network and post-processing timed apart (an ISR fit, a watershed, cellpose's dynamics)
            raw = method.predict_raw(*args, meta=meta)
            t1 = time.time()
            pred = method.postprocess(raw)
            t_post += time.time() - t1
        else:
            pred = method.predict(*args, meta=meta)
        t_pred += time.time() - t0
        if pred.shape != s.label.shape:
            raise ValueError(f"{cfg.method.name} predicted shape {pred.shape} for {sid!r}, label is {s.label.shape}")
        if cfg.eval.save_predictions and not from_predictions:
            write_label(files.predictions(split) / f"{sid}.tif", pred)
        if k < cfg.eval.overlays and not from_predictions:
            overlay_png(files.overlays(split) / f"{sid}.png", s.image, pred, s.label)
        n_partial += s.partial
        for r in evaluate_image(pred, s.label, metric_context(cfg, s.spacing, s.partial), metric_names):
            rows.append({"image": sid, **r})
    table = pd.DataFrame(rows, columns=["image", "metric", "class", "value", "flag"])
    files.table(split).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(files.table(split), index=False)
    metrics = summarize(table)
    status = read_status(run_dir)
    env = json.loads(files.environment.read_text()) if files.environment.exists() else {}
    summary = {
        "method": cfg.method.name, "dataset": cfg.dataset.name, "seed": cfg.seed, "tag": cfg.tag,
        "eval_dataset": scored.name, "split": split, "n_images": len(ids), "test_ids_hash": image_set_hash(ids), "metrics": metrics,
        "seconds_per_image": t_pred / max(1, len(ids)),
        "postprocess_seconds_per_image": t_post / max(1, len(ids)) if split_timing else None,
        "config_hash": cfg.config_hash(), "mlflow_run_id": status.get("mlflow_run_id"),
        "git_commit": env.get("git_commit"), "hardware": hardware_summary(env) if env else None,
        "task": cfg.dataset.task, "created": time.time(), **provenance(method, cfg),
    }
    if status.get("resources"):  # parameters and peak memory of the training (bench.envinfo.training_resources)
        summary["training_resources"] = status["resources"]
    if from_predictions:  # nothing was predicted: the timings of the predictions, and a note that says so
        for key in ("seconds_per_image", "postprocess_seconds_per_image"):
            summary[key] = previous.get(key)
        summary["rescored_from_predictions"] = time.time()
    if calibrated is not None:  # the post-processing the scores rest on, chosen on the val split
        summary["postprocess"] = {"calibrated_on": "val", "params": calibrated}
    if n_partial:  # instance metrics rest on the fully annotated images only
        summary["n_partial_images"] = n_partial
    if cfg.train.fraction < 1:
        summary["train_fraction"] = cfg.train.fraction
    _write_json(files.summary(split), summary)
    tracker.log_metrics({f"{split}/{k}": v for k, v in metrics.items()})
    for p in (files.table(split), files.summary(split), files.history(), files.splits):
        tracker.log_artifact(p)
    for folder, name in ((files.overlays(split), "overlays"), (files.predictions(split), "predictions")):
        tracker.log_artifact(folder, name if split == "test" else f"eval_{split}/{name}")
    logged = split == "test" and cfg.tracking.log_model and method.trainable and _log_networks(tracker, method, cfg)
    if not logged and files.checkpoint("best").exists():  # no MLflow model (or one without the method's state)
        tracker.log_artifact(files.checkpoint("best"), "checkpoints")
    return summary


def _log_networks(tracker, method: Method, cfg: RunConfig) -> bool:
    """The evaluated networks as MLflow models (``model``, or ``model_<key>``); True when they stand in for the
    checkpoint: every network logged and no state beside the networks (``extra_state``)."""
    import torch

    if not tracker.run_id:
        return False
    side = max(method.divisor, 32)
    example = torch.zeros(1, cfg.dataset.channels, *[side] * cfg.dataset.ndim)
    complete = not method.extra_state()
    for key, net in method.networks.items():
        if getattr(net, "accepts_meta", False):
            complete = False  # takes (image, metadata): not a tensor-in, tensor-out model
            continue
        try:
            cpu = copy.deepcopy(net).to("cpu", memory_format=torch.contiguous_format).eval()  # the method's stays
            tracker.log_model(cpu, "model" if len(method.networks) == 1 else f"model_{key}",
                              example if key == "net" else None)
        except Exception as exc:  # the results are written; a model MLflow cannot take is only a warning
            log.warning("MLflow: network %r not logged as a model (%s); the checkpoint is logged instead", key, exc)
            complete = False
    return complete


# ------------------------------------------------------------------------------------------------
# verbs on a finished run


def reopen(run_dir: str | Path, data_root: str | None = None, device: str | None = None):
    from .envinfo import select_device

    cfg = load_run_config(run_dir)
    if data_root:
        cfg.data_root = str(data_root)
    method = build_method(cfg, select_device(device or cfg.train.device))
    return cfg, method


def evaluate_run(run_dir: str | Path, *, split: str | None = None, data_root: str | None = None,
                 progress: bool = True, from_predictions: bool = False) -> dict[str, Any]:
    """Re-evaluate a finished run on its test split (or another, into eval_<split>/), in its MLflow run;
    ``from_predictions``: score its saved predictions again instead of predicting (see `evaluate`)."""
    run_dir = Path(run_dir)
    with run_folder_lock(run_dir):
        return _evaluate_run(run_dir, split, data_root, progress, from_predictions)


def _evaluate_run(run_dir: Path, split: str | None, data_root: str | None, progress: bool,
                  from_predictions: bool = False) -> dict[str, Any]:
    from .calibration import read as read_calibration

    cfg, method = reopen(run_dir, data_root)
    reader = open_dataset(cfg, data_root)
    splits = json.loads(RunFiles(run_dir).splits.read_text())
    tracker = make_tracker(cfg)
    tracker.start("eval", read_status(run_dir).get("mlflow_run_id"))
    complete = training_complete(cfg, run_dir)
    if complete and read_calibration(run_dir) is None and not from_predictions:  # killed before or during
        calibrate_run(method, cfg, reader, splits, run_dir, tracker, progress=progress)  # calibration: as run does
    summary = evaluate(method, cfg, reader, splits, run_dir, tracker, progress=progress, split=split,
                       from_predictions=from_predictions)
    if complete and (split or cfg.eval.split) == cfg.eval.split and read_status(run_dir).get("state") != "finished":
        # a run killed while it was being evaluated: its training was whole, and now so are its results
        _update_status(run_dir, state="finished", finished=time.time(), error=None)
    tracker.end("FINISHED")
    return summary


def training_complete(cfg: RunConfig, run_dir: Path) -> bool:
    """Whether the run's final training loop ran to its end (all epochs, or early stopping)."""
    if not method_trains(cfg):
        return True
    import torch

    path = RunFiles(run_dir).checkpoint("last")
    if not path.exists():
        return False
    state = torch.load(path, map_location="cpu", weights_only=False).get("state") or {}
    planned = state.get("planned_epochs", cfg.train.epochs)  # a staged method's final loop plans fewer
    return state.get("stage") is None and (state.get("epoch", 0) >= planned or bool(state.get("stopped_early")))


def calibrate_finished_run(run_dir: str | Path, *, data_root: str | None = None, progress: bool = True) -> dict | None:
    """Calibrate the post-processing of a finished run on its val split (then `bench eval` applies it)."""
    run_dir = Path(run_dir)
    with run_folder_lock(run_dir):
        cfg, method = reopen(run_dir, data_root)
        return _calibrate_finished(run_dir, cfg, method, data_root, progress)


def _calibrate_finished(run_dir: Path, cfg: RunConfig, method: Method, data_root: str | None, progress: bool):
    if not cfg.method.calibrate:
        raise ConfigError(f"method card {cfg.method.name!r} has no calibrate: grid; add one (param: [values]) to its "
                          "card or the run's config.yaml")
    reader = open_dataset(cfg, data_root)
    splits = json.loads(RunFiles(run_dir).splits.read_text())
    tracker = make_tracker(cfg)
    tracker.start("calibrate", read_status(run_dir).get("mlflow_run_id"))
    record = calibrate_run(method, cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"calibrate": True})}),
                           reader, splits, run_dir, tracker, progress=progress)
    tracker.end("FINISHED")
    return record


def load_trained(run_dir: str | Path, *, data_root: str | None = None, device: str | None = None):
    """(config, method) of a finished run, as it predicts: its evaluated checkpoint and calibrated post-processing.
    What `bench predict` uses, and what a method built on another run's predictions loads."""
    from .calibration import apply

    run_dir = Path(run_dir)
    cfg, method = reopen(run_dir, data_root, device)
    if method.trainable and cfg.train.epochs > 0:
        load_checkpoint(method, run_dir, cfg.eval.checkpoint)
    apply(method, run_dir)
    return cfg, method


def output_stem(path: Path) -> str:
    """A file name without its image suffix only (``plate1.A01.tif -> plate1.A01``, ``x.nii.gz -> x``)."""
    from .imageio_utils import IMAGE_SUFFIXES

    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def training_intensity(run_dir: Path, cfg) -> dict | None:
    """1 / 99.8 percentiles of the first training image as its reader gives it (None when the data is not
    readable here)."""
    try:
        ids = json.loads(RunFiles(run_dir).splits.read_text())["train"]
        image = open_reader(cfg.dataset, cfg.data_root, download=False).load(ids[0]).image  # never a download
    except Exception:  # predicting away from the training data is normal: no reference, no warning
        return None
    lo, hi = np.percentile(image, [1, 99.8])
    return {"id": ids[0], "low": float(lo), "high": float(hi)}


def input_misfits(image: np.ndarray, reference: dict | None) -> list[str]:
    """Why an input may not fit the trained model: a constant image, or an intensity range far from the training
    images' (e.g. an 8-bit export of 16-bit data: the normalisation then sees other statistics than in training)."""
    lo, hi = np.percentile(image, [1, 99.8])
    out = []
    if hi - lo <= 0:
        out.append("the image is constant over 98% of its pixels: nothing to segment, the normalisation is degenerate")
    if reference is None:
        return out
    span, ref_span = max(hi - lo, 1e-12), max(reference["high"] - reference["low"], 1e-12)
    if not 0.1 <= span / ref_span <= 10:
        out.append(f"intensity range {lo:.4g}..{hi:.4g} (1st-99.8th percentile) against {reference['low']:.4g}.."
                   f"{reference['high']:.4g} in training ({reference['id']}): {span / ref_span:.2g}x; check the "
                   "acquisition or the export (bit depth, scaling)")
    return out


def predict_folder(run_dir: str | Path, input_dir: str | Path, output_dir: str | Path, *,
                   progress: bool = True) -> list[Path]:
    """Segment every image of a folder (or one image file) with a trained run; any size (tiled when large).

    Each output is ``<output>/<input name without its image suffix>.tif``; inputs whose names would give the
    same output, and an output folder that is the input folder, are refused before anything is written.
    """
    from .imageio_utils import IMAGE_SUFFIXES, as_channels_first, read_image, write_label
    from .loop import progress_bar

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if input_dir.is_file():
        files = [input_dir]
    elif input_dir.is_dir():
        files = sorted(p for p in input_dir.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
    else:
        raise DataError(f"input not found: {input_dir}")
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {input_dir}")
    in_folder = input_dir if input_dir.is_dir() else input_dir.parent
    if output_dir.resolve() == in_folder.resolve():
        raise DataError(f"--output {output_dir} is the input folder: label images would overwrite or mix with the "
                        "inputs; choose another folder")
    dests: dict[Path, Path] = {}
    for f in files:
        dest = output_dir / (output_stem(f) + ".tif")
        if dest in dests:
            raise DataError(f"{dests[dest].name} and {f.name} would both be written to {dest}; rename one")
        dests[dest] = f
    cfg, method = load_trained(run_dir)
    reference = training_intensity(run_dir, cfg)
    out = []
    for dest, f in progress_bar(list(dests.items()), progress, "predicting"):
        raw, spacing = read_image(f, with_spacing=True)
        try:
            img = as_channels_first(raw, cfg.dataset.ndim, cfg.dataset.channels)
        except DataError as exc:
            raise DataError(f"{f}: {exc} (the model was trained on {cfg.dataset.channels} channel(s), "
                            f"{cfg.dataset.ndim}D)") from None
        for problem in input_misfits(img, reference):
            log.warning("%s: %s", f, problem)
        pred = method.predict(method.normalize(img), cfg.train.patch_size, cfg.eval.tile_overlap,
                              meta={"spacing": spacing, "id": f.name} if spacing else {"id": f.name})
        write_label(dest, pred)
        out.append(dest)
    return out
