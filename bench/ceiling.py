"""The round-trip ceiling of a method's representation: label -> the output a perfect network would give
(`Method.ideal_raw`) -> the method's post-processing -> instances, scored against the label with the same
metric code as a run. No training; it says how much a representation loses before any learning (touching
objects a binary mask merges, shapes a star-convex polygon cannot follow, small cells a threshold drops).

Written next to the method's runs: ``<output_root>/<dataset>/<method>/ceiling/`` with the per-image table and
a ``summary.json`` (metrics, the post-processing settings used, seconds per image of target and of
post-processing); `bench leaderboard` shows it beside the trained rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .config import RunConfig

CEILING_DIR = "ceiling"


def ceiling_dir(cfg: RunConfig) -> Path:
    return cfg.run_dir().parent / CEILING_DIR


def representation_ceiling(cfg: RunConfig, *, split: str = "test", data_root: str | None = None,
                           progress: bool = True) -> dict[str, Any]:
    """Score ``postprocess(ideal_raw(sample))`` on `split` and write the table and summary (see module doc)."""
    import pandas as pd

    from .loop import progress_bar
    from .metrics import evaluate_image, summarize
    from .results import image_set_hash
    from .runner import build_method, check_split, dataset_splits, eval_metrics, metric_context, method_availability, open_dataset

    avail = method_availability(cfg)
    if avail != "ok":
        raise RuntimeError(f"method {cfg.method.name!r} is unavailable: {avail}")
    import torch

    method = build_method(cfg, torch.device("cpu"))  # a target and a post-processing: no network runs
    reader = open_dataset(cfg, data_root)
    splits = dataset_splits(cfg, reader)
    if split == "all":
        splits = {**splits, "all": sorted(reader.list_ids())}
    check_split(cfg.dataset.name, splits, split)
    ids = splits[split][: cfg.eval.max_images or None]
    rows, t_target, t_post = [], 0.0, 0.0
    for sid in progress_bar(ids, progress, f"{cfg.method.name} ceiling on {split}"):
        s = reader.load(sid)
        if s.label is None:
            raise ValueError(f"{cfg.dataset.name}: image {sid!r} of split {split!r} has no label")
        t0 = time.time()
        raw = method.ideal_raw(s)
        t1 = time.time()
        if raw is None:
            raise ValueError(f"method {cfg.method.name!r} ({type(method).__name__}) has no ideal output "
                             "(Method.ideal_raw), so its representation has no round-trip ceiling")
        pred = method.postprocess(raw)
        t_post += time.time() - t1
        t_target += t1 - t0
        for r in evaluate_image(pred, s.label, metric_context(cfg, s.spacing, s.partial), eval_metrics(cfg)):
            rows.append({"image": sid, **r})
    out = ceiling_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=["image", "metric", "class", "value", "flag"])
    table.to_csv(out / "metrics_per_image.csv", index=False)
    summary = {
        "method": cfg.method.name, "dataset": cfg.dataset.name, "split": split, "n_images": len(ids),
        "test_ids_hash": image_set_hash(ids), "metrics": summarize(table),
        "postprocess": {k: getattr(method.params, k) for k in method.postprocess_params},
        "seconds_per_image": {"target": t_target / max(1, len(ids)), "postprocess": t_post / max(1, len(ids))},
        "config_hash": cfg.config_hash(), "created": time.time(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def read_ceiling(output_root: str | Path, dataset: str, method: str) -> dict | None:
    path = Path(output_root) / dataset / method / CEILING_DIR / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None
