"""Post-processing calibration: after training, the post-processing parameters of a method (watershed depth,
background threshold, smallest object) are chosen on the validation split, never on the test split.

The field's tools do this as a pipeline step: StarDist's ``optimize_thresholds`` picks the probability and NMS
thresholds on validation images, nnU-Net determines its post-processing on the validation folds. Here a method card
lists a grid under ``calibrate:`` (only parameters the method declares in ``postprocess_params``, which change
nothing but ``postprocess``); the network runs once per validation image, the grid is searched by coordinate ascent
on the validation monitor (`coordinate_search`), and the best point is written to ``calibration.json`` in the run
folder. Evaluation and
prediction apply that file, so a re-evaluation or ``bench predict`` uses what the test score was computed with.
Ties keep the card's own values (the first grid point is always the card's setting).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ConfigError

if TYPE_CHECKING:
    from .config import RunConfig
    from .data import DatasetReader
    from .method import Method

log = logging.getLogger(__name__)

FILE = "calibration.json"


def check_grid(cfg: "RunConfig") -> dict[str, list]:
    """The card's calibration grid, checked against the method's post-processing parameters (fails before a run
    folder is touched: a key that would change training, or a value the params schema refuses, names itself)."""
    from .registry import METHODS

    grid = cfg.method.calibrate
    if not grid:
        return {}
    cls = METHODS.get(cfg.method.impl)
    mon = cfg.eval.calibrate_monitor
    if mon:
        from .metrics import emits_key

        if not emits_key(mon, cfg.dataset.task):
            raise ConfigError(f"eval.calibrate_monitor {mon!r} is not a validation metric of the {cfg.dataset.task} "
                              "task (e.g. f1@0.50, pq, seg, dice)")
    allowed = tuple(getattr(cls, "postprocess_params", ()))
    for key, values in grid.items():
        if key not in allowed:
            raise ConfigError(f"method card {cfg.method.name!r}: calibrate.{key} is not a post-processing parameter "
                              f"of {cfg.method.impl!r}; calibratable: {', '.join(allowed) or 'none'}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"method card {cfg.method.name!r}: calibrate.{key} must be a non-empty list of values")
        for v in values:
            try:
                cls.Params.model_validate({**cfg.method.params, key: v})
            except Exception as exc:  # pydantic's message names the bound that failed
                raise ConfigError(f"method card {cfg.method.name!r}: calibrate.{key} value {v!r}: {exc}") from None
    return grid


def coordinate_search(score, defaults: dict[str, Any], grid: dict[str, list], rounds: int = 2) -> list[dict]:
    """Coordinate ascent over the grid from the card's values: each parameter in turn takes its best value with the
    others held, for up to ``rounds`` passes (stops when a pass changes nothing). ``score(point)`` returns a value
    to maximise or None. Returns every point scored, in order, the card's setting first; a tie keeps the current
    value, so the card's setting survives unless something beats it. Costs the sum of the grid sizes per pass
    instead of their product (a watershed per image and point is the expensive part)."""
    current = {k: defaults[k] for k in grid}
    seen: dict[str, dict] = {}

    def value_of(point: dict) -> float | None:
        key = json.dumps(point, sort_keys=True, default=str)
        if key not in seen:
            seen[key] = {"params": dict(point), "value": score(point)}
        return seen[key]["value"]

    best = value_of(current)
    for _ in range(rounds):
        changed = False
        for name, values in grid.items():
            for v in values:
                cand = {**current, name: v}
                val = value_of(cand)
                if val is not None and (best is None or val > best):
                    current, best, changed = cand, val, True
        if not changed:
            break
    return list(seen.values())


def calibrate(method: "Method", cfg: "RunConfig", reader: "DatasetReader", splits: dict[str, list[str]],
              run_dir: Path, *, progress: bool = True) -> dict | None:
    """Choose the post-processing on the val split; writes and returns the calibration record (None: nothing to
    calibrate, or no val split). The method must hold the weights to be evaluated (the best checkpoint)."""
    import pandas as pd

    from .cache import atomic_write_text
    from .loop import progress_bar
    from .metrics import evaluate_image, higher_is_better, summarize
    from .runner import metric_context, monitor_mode, monitor_name

    grid = {k: v for k, v in check_grid(cfg).items() if k in method.calibratable()}
    ids = list(splits.get("val") or [])[: cfg.eval.calibrate_max_images or None]
    if not grid or not cfg.eval.calibrate:
        return None
    if not ids:
        log.warning("no val split: the post-processing of %s stays at the card's values", cfg.method.name)
        return None
    monitor = calibration_monitor(cfg, method)
    t0 = time.time()
    raws = []
    for sid in progress_bar(ids, progress, "calibrating: predicting val"):
        s = reader.load(sid)
        if s.label is None:
            raise ConfigError(f"{cfg.dataset.name}: val image {sid!r} has no label; calibration needs labels "
                              "(or set eval.calibrate=false)")
        raw = method.predict_raw(method.normalize(s.image), cfg.train.patch_size, cfg.eval.tile_overlap,
                                 meta={"spacing": s.spacing, "id": sid})
        raws.append((sid, raw, s.label, metric_context(cfg, s.spacing, s.partial)))
    if not cfg.eval.calibrate_monitor and monitor == monitor_name(cfg):
        sign = 1 if monitor_mode(cfg) == "max" else -1  # the training monitor's direction, as the config states it
    else:
        sign = 1 if higher_is_better(monitor) else -1
    wanted = [monitor.split("/")[0].removesuffix("_pooled")]  # the row whose values the summary key is made of
    base = method.params

    def score(point: dict) -> float | None:
        method.params = base.model_copy(update=point)
        rows = []
        for sid, raw, label, mctx in raws:
            rows += [{"image": sid, **r} for r in evaluate_image(method.postprocess(raw), label, mctx, wanted)]
        value = summarize(pd.DataFrame(rows)).get(monitor) if rows else None
        return None if value is None or not math.isfinite(value) else sign * value

    try:
        results = coordinate_search(score, base.model_dump(), grid)
    finally:
        method.params = base
    for r in results:  # back to the metric's own sign
        r["value"] = None if r["value"] is None else sign * r["value"]
    scored = [r for r in results if r["value"] is not None]
    if not scored:
        log.warning("calibration of %s: the val images give no %s; keeping the card's values", cfg.method.name, monitor)
        return None
    best = max(scored, key=lambda r: sign * r["value"])  # max keeps the first of equals: the card's setting
    record = {"split": "val", "images": len(ids), "monitor": monitor, "grid": grid,
              "search": "coordinate ascent, 2 passes", "default": results[0], "chosen": best, "seconds": round(time.time() - t0, 1), "results": results}
    atomic_write_text(Path(run_dir) / FILE, json.dumps(record, indent=2, default=str))
    log.info("calibrated %s on %d val images: %s -> %s = %.4f (card's values: %s)", cfg.method.name, len(ids),
             ", ".join(grid), best["params"], best["value"], results[0]["value"])
    return record


def calibration_monitor(cfg: "RunConfig", method: "Method | None" = None) -> str:
    """The val metric calibration maximises: eval.calibrate_monitor, else the training monitor; a loss (train/...)
    says nothing about post-processing, so then the method's (or the task's) default metric."""
    from .runner import monitor_name

    monitor = cfg.eval.calibrate_monitor or monitor_name(cfg)
    if monitor.startswith("train/"):
        default = method.monitor if method is not None else None
        monitor = default or ("f1@0.50" if cfg.dataset.task == "instance" else "dice")
    return monitor


def read(run_dir: Path) -> dict | None:
    p = Path(run_dir) / FILE
    return json.loads(p.read_text()) if p.exists() else None


def apply(method: "Method", run_dir: Path) -> dict | None:
    """Set the run's calibrated post-processing on the method (what evaluation and prediction use)."""
    record = read(run_dir)
    if record:
        method.params = method.params.model_copy(update=record["chosen"]["params"])
        method.calibrated = dict(record["chosen"]["params"])  # what a run built on this one records
        return record["chosen"]["params"]
    return None
