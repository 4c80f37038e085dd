"""The one runner: card -> registry -> train -> evaluate -> per-image table -> summary.

It knows no method and no dataset by name; it talks to `Method` and `DatasetReader` only.

A run directory holds everything needed to reproduce and audit the run::

    config.yaml            resolved config (re-run with `bench run --config RUN_DIR/config.yaml`)
    environment.json       package versions, torch/CUDA/GPU, git commit
    status.json            running / finished / failed, MLflow run id, config hash
    splits.json            the image ids of each split used
    history.csv            per-epoch losses and validation metrics
    checkpoints/last.pt    written atomically after every epoch (resume point)
    checkpoints/best.pt    best epoch on the validation monitor
    metrics_per_image.csv  one row per image x metric x class: the source of every summary
    summary.json           dataset-level metrics (per-image means, pooled instance metrics)
    predictions/*.tif      predicted label images
    overlays/*.png         a few test images with predicted (magenta) and reference (green) outlines
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig, dump_config, flatten, read_yaml, validate
from .data import DataError, DatasetReader, Sample, load_or_create_splits, resolve_data_root
from .method import Method, NonFiniteLossError
from .registry import DATASETS, METHODS

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
STATUS_FILE = "status.json"
TABLE_FILE = "metrics_per_image.csv"
SUMMARY_FILE = "summary.json"


class RunExistsError(FileExistsError):
    pass


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]  # empty when the test split was not evaluated
    mlflow_run_id: str | None
    best_value: float | None = None  # best validation monitor value (None without validation)


# ------------------------------------------------------------------------------------------------
# building blocks


def open_dataset(cfg: RunConfig, data_root: str | None = None) -> DatasetReader:
    reader_cls = DATASETS.get(cfg.dataset.reader)
    root = resolve_data_root(data_root or cfg.data_root) / cfg.dataset.root
    if not root.exists() and cfg.dataset.source.urls and os.environ.get("BENCH_NO_DOWNLOAD") != "1":
        from .datatools import fetch_dataset

        log.info("dataset %s not at %s: downloading it from its official source", cfg.dataset.name, root)
        try:
            fetch_dataset(cfg.dataset.name, data_root=data_root or cfg.data_root)
        except DataError as exc:  # offline, or the source moved: say where the files go by hand
            raise DataError(f"dataset {cfg.dataset.name!r} not found at {root}, and the download failed: {exc}. "
                            f"Set the data root with --data-root or $BENCH_DATA_ROOT (the folder that holds "
                            f"{cfg.dataset.root}/), or put the files there by hand.") from None
    if not root.exists():
        raise DataError(
            f"dataset {cfg.dataset.name!r} not found at {root}. Set the data root with --data-root or "
            f"$BENCH_DATA_ROOT (the folder that holds {cfg.dataset.root}/), or run "
            f"`bench data fetch {cfg.dataset.name}`."
        )
    params = validate(reader_cls.Params, cfg.dataset.params, f"dataset card {cfg.dataset.name!r}", "dataset.params.")
    return reader_cls(cfg.dataset, root, params)


def dataset_splits(cfg: RunConfig, reader: DatasetReader) -> dict[str, list[str]]:
    """Splits persisted per dataset under the output root, checked against the data's content hash."""
    sc = cfg.dataset.splits
    ids = reader.list_ids()
    if not ids:
        raise DataError(f"dataset {cfg.dataset.name!r}: no images found under {reader.root}")
    official = reader.official_splits() if sc.kind == "official" else None
    # reader params (a LIVECell protocol, a block size) change the samples: their hash names the file
    sfx = ""
    if cfg.dataset.params:
        import hashlib

        sfx = "_p" + hashlib.sha256(json.dumps(cfg.dataset.params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    if sc.kind == "kfold":
        from .data import kfold_splits

        return kfold_splits(ids, official, folds=sc.folds, fold=sc.fold, seed=sc.seed,
                            path=Path(cfg.output_root) / cfg.dataset.name / f"splits_kfold{sc.folds}_seed{sc.seed}{sfx}.json")
    name = f"splits_official{sfx}.json" if official else f"splits_random_seed{sc.seed}{sfx}.json"
    return load_or_create_splits(Path(cfg.output_root) / cfg.dataset.name / name, ids, official, seed=sc.seed)


def build_method(cfg: RunConfig, device) -> Method:
    cls = METHODS.get(cfg.method.impl)
    params = validate(cls.Params, cfg.method.params, f"method card {cfg.method.name!r}", "method.params.")
    method = cls(params, cfg.dataset, device)
    method.train_cfg = cfg.train
    method.build()
    return method.to(device)


def metric_context(cfg: RunConfig, spacing: tuple[float, ...] | None = None):
    from .metrics import MetricContext

    return MetricContext(
        task=cfg.dataset.task,
        spacing=tuple(spacing or cfg.dataset.spacing or (1.0,) * cfg.dataset.ndim),
        num_classes=cfg.dataset.num_classes,
        class_names=list(cfg.dataset.classes),
        boundary_tolerance=cfg.eval.boundary_tolerance,
    )


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill during save leaves the previous checkpoint intact


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_status(run_dir: Path) -> dict:
    p = Path(run_dir) / STATUS_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def _update_status(run_dir: Path, **kw: Any) -> dict:
    st = read_status(run_dir)
    st.update(kw)
    _write_json(Path(run_dir) / STATUS_FILE, st)
    return st


def load_run_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    return validate(RunConfig, read_yaml(path), str(path))


# ------------------------------------------------------------------------------------------------
# the run


def prepare_run_dir(cfg: RunConfig, run_dir: Path, *, resume: bool, overwrite: bool) -> bool:
    """Returns True when resuming. Refuses to clobber earlier results."""
    if run_dir.exists() and any(run_dir.iterdir()):
        status = read_status(run_dir).get("state", "unknown")
        if overwrite:
            shutil.rmtree(run_dir)
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
    """Train (if the method trains) and evaluate one method on one dataset.

    `on_epoch(epoch, value)` is called after each validated epoch with the monitor value (tuning uses it to
    report to Optuna and prune). With `evaluate_test=False` the test split is never touched.
    """
    from .envinfo import environment_record, seed_everything, select_device
    from .tracking import Tracker

    run_dir = Path(run_dir) if run_dir else cfg.run_dir()
    resuming = prepare_run_dir(cfg, run_dir, resume=resume, overwrite=overwrite)
    if data_root:
        cfg.data_root = str(data_root)
    (run_dir / CONFIG_FILE).write_text(dump_config(cfg))
    env = environment_record()
    _write_json(run_dir / "environment.json", env)

    reader = open_dataset(cfg, data_root)
    splits = dataset_splits(cfg, reader)
    _write_json(run_dir / "splits.json", splits)

    seed_everything(cfg.seed, cfg.train.deterministic)
    device = select_device(cfg.train.device)
    method = build_method(cfg, device)

    tracker = Tracker(cfg.tracking.enabled, cfg.tracking.uri, cfg.tracking.experiment or cfg.dataset.name,
                      cfg.output_root)
    prev_id = read_status(run_dir).get("mlflow_run_id") if resuming else None
    run_name = f"{cfg.method.name}{'-' + cfg.tag if cfg.tag else ''}/{cfg.dataset.name}/seed{cfg.seed}"
    mlflow_id = tracker.start(run_name, prev_id, tags={
        "method": cfg.method.name, "dataset": cfg.dataset.name, "seed": str(cfg.seed),
        "config_hash": cfg.config_hash(), "git_commit": str(env.get("git_commit")), "run_dir": str(run_dir.resolve()),
    }, parent_run_id=parent_run_id)
    _update_status(run_dir, state="running", started=time.time(), mlflow_run_id=mlflow_id,
                   config_hash=cfg.config_hash(), device=str(device))
    tracker.log_params(flatten(cfg.model_dump(mode="json", exclude={"method": {"tune"}})))
    tracker.log_artifact(run_dir / CONFIG_FILE)
    tracker.log_artifact(run_dir / "environment.json")
    best = None
    try:
        if method.trainable and cfg.train.epochs > 0:
            best = train(method, cfg, reader, splits, run_dir, tracker, resuming=resuming, progress=progress,
                         on_epoch=on_epoch)["best_value"]
        elif not evaluate_test:  # nothing to train: the validation score is the objective
            val_ids = splits.get("val") or []
            if not val_ids:
                raise DataError(f"dataset {cfg.dataset.name!r}: the val split is empty")
            val = score_samples(method, cfg, _load_samples(reader, val_ids[: cfg.train.val_max_images or None]))
            best = val[cfg.train.monitor or method.monitor]
            tracker.log_metrics({f"val/{k}": v for k, v in val.items()})
            if on_epoch:
                on_epoch(0, best)
        summary = evaluate(method, cfg, reader, splits, run_dir, tracker, progress=progress) if evaluate_test else {}
    except BaseException as exc:
        state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        if type(exc).__name__ == "TrialPruned":
            state = "pruned"
        _update_status(run_dir, state=state, error=f"{type(exc).__name__}: {exc}", finished=time.time())
        tracker.end({"interrupted": "KILLED", "pruned": "KILLED"}.get(state, "FAILED"))
        raise
    _update_status(run_dir, state="finished", finished=time.time(), error=None, best_value=best)
    tracker.end("FINISHED")
    return RunResult(run_dir, summary, mlflow_id, best)


def _load_samples(reader: DatasetReader, ids: list[str]) -> list[Sample]:
    return [reader.load(i) for i in ids]


def train(method: Method, cfg: RunConfig, reader: DatasetReader, splits: dict[str, list[str]], run_dir: Path,
          tracker, *, resuming: bool, progress: bool, on_epoch=None) -> dict:
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader

    from .envinfo import seed_worker
    from .pipeline import PatchDataset, prepare_training_set

    tc = cfg.train
    train_ids = splits.get("train") or []
    if not train_ids:
        raise DataError(f"dataset {cfg.dataset.name!r}: the train split is empty")
    if tc.max_train_images:
        train_ids = train_ids[: tc.max_train_images]
    samples = _load_samples(reader, train_ids)
    images, targets = prepare_training_set(samples, cfg.dataset.normalize, method.make_targets)
    n_items = (tc.steps_per_epoch or max(1, -(-len(images) // tc.batch_size))) * tc.batch_size
    ds = PatchDataset(images, targets, tc.patch_size, n_items, tc.augment, cfg.dataset.ndim, cfg.seed)
    steps_per_epoch = n_items // tc.batch_size
    method.configure_optimizers(tc, steps_per_epoch * tc.epochs)

    val_ids = (splits.get("val") or [])[: tc.val_max_images or None]
    val_samples = _load_samples(reader, val_ids) if val_ids else []
    monitor = tc.monitor or (method.monitor if val_samples else "train/loss")
    mode = tc.monitor_mode if (tc.monitor or val_samples) else "min"

    ckpt_dir = run_dir / "checkpoints"
    state = {"epoch": 0, "best_value": None, "best_epoch": None, "bad_epochs": 0, "history": []}
    if resuming and (ckpt_dir / "last.pt").exists():
        ck = torch.load(ckpt_dir / "last.pt", map_location=method.device, weights_only=False)
        method.load_state_dict(ck["method"])
        state = ck["state"]
        log.info("resuming %s from epoch %d", run_dir, state["epoch"])
        if state.get("stopped_early"):
            return state
    for epoch in range(state["epoch"], tc.epochs):
        ds.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 100003 + epoch)  # dropout etc.: same per epoch whether resumed or not
        g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        loader = DataLoader(ds, batch_size=tc.batch_size, shuffle=False, num_workers=tc.num_workers,
                            worker_init_fn=seed_worker, generator=g, drop_last=False)
        method.train_mode(True)
        sums: dict[str, float] = {}
        n = 0
        bar = _progress(loader, progress, f"epoch {epoch + 1}/{tc.epochs}")
        t0 = time.time()
        for step, batch in enumerate(bar):
            batch = {k: v.to(method.device, non_blocking=True) for k, v in batch.items()}
            try:
                logs = method.train_step(batch)
            except NonFiniteLossError as exc:
                raise NonFiniteLossError(
                    f"{exc} at epoch {epoch + 1}, step {step + 1}; the run stopped. The last good checkpoint "
                    f"({ckpt_dir / 'last.pt'}, epoch {state['epoch']}) is kept: lower train.lr or set "
                    "train.grad_clip, then `bench run ... --resume`."
                ) from None
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}")
        row: dict[str, Any] = {"epoch": epoch + 1, "seconds": round(time.time() - t0, 2)}
        row.update({f"train/{k}": v / max(n, 1) for k, v in sums.items()})
        row["lr"] = next(iter(method.optimizers.values())).param_groups[0]["lr"] if method.optimizers else None
        if val_samples and ((epoch + 1) % tc.val_every == 0 or epoch + 1 == tc.epochs):
            val = score_samples(method, cfg, val_samples)
            row.update({f"val/{k}": v for k, v in val.items()})
        value = row.get(monitor if monitor.startswith("train/") else f"val/{monitor}")
        if value is None and not monitor.startswith("train/") and f"val/{monitor}" not in row:
            if val_samples and ((epoch + 1) % tc.val_every == 0 or epoch + 1 == tc.epochs):
                raise KeyError(f"train.monitor {monitor!r} is not a validation metric; have: "
                               f"{sorted(k[4:] for k in row if k.startswith('val/'))}")
        improved = value is not None and (
            state["best_value"] is None
            or (value > state["best_value"] if mode == "max" else value < state["best_value"])
        )
        if improved:
            state.update(best_value=float(value), best_epoch=epoch + 1, bad_epochs=0)
            _atomic_torch_save({"method": method.state_dict(with_optim=False), "epoch": epoch + 1,
                                "monitor": monitor, "value": float(value)}, ckpt_dir / "best.pt")
        elif value is not None:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        state["history"].append(row)
        stop = bool(tc.early_stopping_patience and state["bad_epochs"] >= tc.early_stopping_patience)
        state["stopped_early"] = stop
        _atomic_torch_save({"method": method.state_dict(), "state": state}, ckpt_dir / "last.pt")
        pd.DataFrame(state["history"]).to_csv(run_dir / "history.csv", index=False)
        tracker.log_metrics({k: v for k, v in row.items() if k != "epoch" and v is not None}, step=epoch + 1)
        shown = {k: round(v, 4) for k, v in row.items()
                 if k.startswith("train/") or k in (f"val/{monitor}", "seconds") and v is not None}
        log.info("epoch %d/%d: %s", epoch + 1, tc.epochs, shown)
        if on_epoch is not None and value is not None:
            on_epoch(epoch + 1, float(value))
        if stop:
            log.info("early stopping: %s did not improve for %d epochs", monitor, tc.early_stopping_patience)
            break
    if not (ckpt_dir / "best.pt").exists():  # no validation: the last epoch is the best we know
        _atomic_torch_save({"method": method.state_dict(with_optim=False), "epoch": state["epoch"],
                            "monitor": None, "value": None}, ckpt_dir / "best.pt")
    return state


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True)


def score_samples(method: Method, cfg: RunConfig, samples: list[Sample]) -> dict[str, float]:
    """Dataset-level summary of the method's predictions on labelled samples (validation)."""
    import pandas as pd

    from .metrics import evaluate_image, summarize
    from .pipeline import normalize

    rows = []
    for s in samples:
        pred = method.predict(normalize(s.image, cfg.dataset.normalize), cfg.train.patch_size, cfg.eval.tile_overlap)
        for r in evaluate_image(pred, s.label, metric_context(cfg, s.spacing), cfg.eval.metrics):
            rows.append({"image": s.id, **r})
    return summarize(pd.DataFrame(rows))


def load_checkpoint(method: Method, run_dir: Path, which: str = "best") -> dict | None:
    import torch

    path = Path(run_dir) / "checkpoints" / f"{which}.pt"
    if not method.trainable:
        return None
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path}: the run did not finish an epoch")
    ck = torch.load(path, map_location=method.device, weights_only=False)
    method.load_state_dict(ck["method"])
    return ck


def evaluate(method: Method, cfg: RunConfig, reader: DatasetReader, splits: dict[str, list[str]], run_dir: Path,
             tracker, *, progress: bool = True, split: str | None = None) -> dict[str, Any]:
    """Predict the evaluation split, write predictions/overlays, the per-image table and the summary."""
    import pandas as pd

    from .imageio_utils import overlay_png, write_label
    from .metrics import evaluate_image, summarize
    from .pipeline import normalize

    split = split or cfg.eval.split
    if split not in splits or not splits[split]:
        raise DataError(f"dataset {cfg.dataset.name!r}: split {split!r} is empty or missing (have {sorted(splits)})")
    ids = splits[split][: cfg.eval.max_images or None]
    if method.trainable and cfg.train.epochs > 0:
        load_checkpoint(method, run_dir, cfg.eval.checkpoint)
    rows = []
    t_pred = 0.0
    for k, sid in enumerate(_progress(ids, progress, f"evaluating {split}")):
        s = reader.load(sid)
        if s.label is None:
            raise DataError(f"{cfg.dataset.name}: image {sid!r} of split {split!r} has no label")
        t0 = time.time()
        pred = method.predict(normalize(s.image, cfg.dataset.normalize), cfg.train.patch_size, cfg.eval.tile_overlap)
        t_pred += time.time() - t0
        if pred.shape != s.label.shape:
            raise ValueError(f"{cfg.method.name} predicted shape {pred.shape} for {sid!r}, label is {s.label.shape}")
        if cfg.eval.save_predictions:
            write_label(run_dir / "predictions" / f"{sid}.tif", pred)
        if k < cfg.eval.overlays:
            overlay_png(run_dir / "overlays" / f"{sid}.png", s.image, pred, s.label)
        for r in evaluate_image(pred, s.label, metric_context(cfg, s.spacing), cfg.eval.metrics):
            rows.append({"image": sid, **r})
    table = pd.DataFrame(rows, columns=["image", "metric", "class", "value", "flag"])
    table.to_csv(run_dir / TABLE_FILE, index=False)
    metrics = summarize(table)
    status = read_status(run_dir)
    from .envinfo import hardware_summary

    env = json.loads((run_dir / "environment.json").read_text()) if (run_dir / "environment.json").exists() else {}
    summary = {
        "method": cfg.method.name, "dataset": cfg.dataset.name, "seed": cfg.seed, "tag": cfg.tag,
        "split": split, "n_images": len(ids), "metrics": metrics,
        "seconds_per_image": t_pred / max(1, len(ids)),
        "config_hash": cfg.config_hash(), "mlflow_run_id": status.get("mlflow_run_id"),
        "git_commit": env.get("git_commit"), "hardware": hardware_summary(env) if env else None,
        "task": cfg.dataset.task, "created": time.time(),
    }
    _write_json(run_dir / SUMMARY_FILE, summary)
    tracker.log_metrics({f"{split}/{k}": v for k, v in metrics.items()})
    for name in (TABLE_FILE, SUMMARY_FILE, "history.csv", "splits.json"):
        tracker.log_artifact(run_dir / name)
    for folder in ("overlays", "predictions"):
        tracker.log_artifact(run_dir / folder, folder)
    if (run_dir / "checkpoints" / "best.pt").exists():
        tracker.log_artifact(run_dir / "checkpoints" / "best.pt", "checkpoints")
    return summary


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
                 progress: bool = True) -> dict[str, Any]:
    """Re-evaluate a finished run on its test split (or another), logging into its MLflow run."""
    from .tracking import Tracker

    run_dir = Path(run_dir)
    cfg, method = reopen(run_dir, data_root)
    reader = open_dataset(cfg, data_root)
    splits = json.loads((run_dir / "splits.json").read_text())
    tracker = Tracker(cfg.tracking.enabled, cfg.tracking.uri, cfg.tracking.experiment or cfg.dataset.name,
                      cfg.output_root)
    tracker.start("eval", read_status(run_dir).get("mlflow_run_id"))
    summary = evaluate(method, cfg, reader, splits, run_dir, tracker, progress=progress, split=split)
    tracker.end("FINISHED")
    return summary


def predict_folder(run_dir: str | Path, input_dir: str | Path, output_dir: str | Path, *,
                   progress: bool = True) -> list[Path]:
    """Segment every image of a folder with a trained run; images of any size (tiled when large)."""
    from .imageio_utils import IMAGE_SUFFIXES, as_channels_first, read_image, write_label
    from .pipeline import normalize

    cfg, method = reopen(run_dir)
    if method.trainable and cfg.train.epochs > 0:
        load_checkpoint(method, Path(run_dir), cfg.eval.checkpoint)
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    files = sorted(p for p in input_dir.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES)) \
        if input_dir.is_dir() else []
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {input_dir}")
    out = []
    for f in _progress(files, progress, "predicting"):
        img = as_channels_first(read_image(f), cfg.dataset.ndim, cfg.dataset.channels)
        pred = method.predict(normalize(img, cfg.dataset.normalize), cfg.train.patch_size, cfg.eval.tile_overlap)
        dest = output_dir / (f.name.split(".")[0] + ".tif")
        write_label(dest, pred)
        out.append(dest)
    return out
