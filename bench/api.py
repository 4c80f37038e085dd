"""The Python API: what the command line does, as functions (``import bench``; see docs/api.md).

    import bench
    res = bench.run("poisson", "bbbc039", config="configs/cpu_fields.yaml", set={"train.epochs": 4}, seed=0)
    res.summary["metrics"]["f1@0.50"]
    runs = bench.load_results("runs", "bbbc039")          # one row per finished run, a column per metric
    images = bench.load_per_image("runs", "bbbc039")      # one row per run x image x metric
    bench.write_leaderboard("bbbc039", output_root="runs", formats=["md"])

(``bench.leaderboard`` and ``bench.config`` are the modules behind them, hence the verbs' longer names here.)
Every function takes the same settings as its CLI verb; settings are dotted config keys (``{"train.lr": 1e-3}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from .config import RunConfig
    from .runner import RunResult


def _overrides(settings: dict[str, Any] | None, output_root: str | Path | None, tag: str | None) -> list[str]:
    out = [f"{k}={json.dumps(v)}" for k, v in (settings or {}).items()]  # JSON is YAML: values parse back as given
    if output_root is not None:
        out.append(f"output_root={json.dumps(str(output_root))}")
    if tag:
        out.append(f"tag={tag}")
    return out


def resolve_config(method: str, dataset: str, *, config: "str | Path | list | None" = None,
           set: dict[str, Any] | None = None, seed: int | None = None, output_root: str | Path | None = None,
           tag: str | None = None) -> "RunConfig":
    """The fully resolved, validated config of a method on a dataset (what ``bench config show`` prints)."""
    from .config import resolve_config as resolve

    return resolve(method, dataset, overlay=config, overrides=_overrides(set, output_root, tag), seed=seed)


def run(method: str, dataset: str, *, config: "str | Path | list | None" = None, set: dict[str, Any] | None = None,
        seed: int | None = None, output_root: str | Path | None = None, tag: str | None = None,
        data_root: str | Path | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = False) -> "RunResult":
    """Train and evaluate one method on one dataset (``bench run``); returns the run folder and its test summary."""
    from .runner import run as run_fn

    cfg = resolve_config(method, dataset, config=config, set=set, seed=seed, output_root=output_root, tag=tag)
    return run_fn(cfg, resume=resume, overwrite=overwrite, data_root=str(data_root) if data_root else None,
                  progress=progress)


def evaluate(run_dir: str | Path, *, split: str | None = None, data_root: str | Path | None = None) -> dict:
    """Score a finished run on its test split, or another split into ``eval_<split>/`` (``bench eval``)."""
    from .runner import evaluate_run

    return evaluate_run(run_dir, split=split, data_root=str(data_root) if data_root else None, progress=False)


def load_results(output_root: str | Path, dataset: str, *, split: str = "test") -> "pd.DataFrame":
    """One row per finished run of a dataset: method (with its tag), seed, images, run folder, then one column per
    summary metric, as in each run's summary.json."""
    import pandas as pd

    from .results import finished_runs

    rows = []
    for r in finished_runs(output_root, dataset, split):
        s = r.summary
        rows.append({"method": s["method"] + (f"-{s['tag']}" if s.get("tag") else ""), "seed": s["seed"],
                     "images": s["n_images"], "run_dir": str(r.run_dir), **s["metrics"]})
    return pd.DataFrame(rows, columns=None if rows else ["method", "seed", "images", "run_dir"])


def load_per_image(output_root: str | Path, dataset: str, *, split: str = "test") -> "pd.DataFrame":
    """The per-image tables of every finished run, stacked: method, seed, image, metric, class, value, flag."""
    import pandas as pd

    from .results import finished_runs
    from .runfiles import RunFiles

    frames = []
    for r in finished_runs(output_root, dataset, split):
        t = pd.read_csv(RunFiles(r.run_dir).table(split))
        s = r.summary
        t.insert(0, "seed", s["seed"])
        t.insert(0, "method", s["method"] + (f"-{s['tag']}" if s.get("tag") else ""))
        frames.append(t)
    if not frames:
        return pd.DataFrame(columns=["method", "seed", "image", "metric", "class", "value", "flag"])
    return pd.concat(frames, ignore_index=True)


def write_leaderboard(dataset: str, *, output_root: str | Path = "runs", out_dir: str | Path = "leaderboards",
                formats: list[str] = ("md",), methods: list[str] | None = None, metrics: list[str] | None = None,
                baseline: str | None = None, note: str | None = None, log_mlflow: bool = False) -> dict[str, Path]:
    """Write the leaderboard of a dataset's finished runs (``bench leaderboard``); returns format -> file."""
    from .leaderboard import leaderboard as lb

    return lb(dataset, output_root=output_root, out_dir=out_dir, formats=list(formats), methods=methods,
              metrics=metrics, baseline=baseline, note=note, log_mlflow=log_mlflow)


def list_methods(pattern: str = "*") -> list[str]:
    """Method card names matching a shell wildcard (``"*unet*"``)."""
    import fnmatch

    from .config import find_cards

    return sorted(n for n in find_cards("methods") if fnmatch.fnmatchcase(n, pattern))


def list_datasets(pattern: str = "*") -> list[str]:
    """Dataset card names matching a shell wildcard."""
    import fnmatch

    from .config import find_cards

    return sorted(n for n in find_cards("datasets") if fnmatch.fnmatchcase(n, pattern))


__all__ = ["evaluate", "list_datasets", "list_methods", "load_per_image", "load_results", "resolve_config", "run",
           "write_leaderboard"]
