"""Finished runs on disk, the sweep over them, and the paired statistics the leaderboard and compare use."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def image_set_hash(ids) -> str:
    """Hash of a set of evaluated image ids: rows of a leaderboard are ranked only on one such set."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()[:16]


@dataclass
class FinishedRun:
    run_dir: Path
    summary: dict

    @property
    def label(self) -> str:  # the leaderboard row: method card name plus tag
        s = self.summary
        return s["method"] + (f"-{s['tag']}" if s.get("tag") else "")

    @property
    def image_set(self) -> str:
        """The summary's hash of its test ids (recomputed from the table for summaries written before it)."""
        h = self.summary.get("test_ids_hash")
        return h or image_set_hash(self.table()["image"].astype(str).unique())

    def table(self):
        import pandas as pd

        from .runfiles import RunFiles

        return pd.read_csv(RunFiles(self.run_dir).table(self.summary.get("split", "test")), keep_default_na=False,
                           dtype={"image": str, "class": str, "flag": str})


# budget policy of published tables: a row is under-trained when the best validation score of the last quarter of
# its budget beats the best before it by more than 1% (relative): its curve has not flattened
RISING_TAIL = 0.25
RISING_TOL = 0.01


@dataclass
class Convergence:
    """A run's validation curve of its monitor and whether it was still rising at the end of the budget."""

    monitor: str
    mode: str  # "max" or "min"
    steps: list[int]  # optimiser steps at each validation
    values: list[float]
    budget: dict  # epochs, batch_size, patch_size, steps, pixels (seen in training)
    gain: float | None  # relative improvement of the last quarter's best over the best before it
    rising: bool

    @property
    def flat(self) -> bool:
        """The monitor never moved (e.g. SEG 0 at every validation): a failed run, not a converged one."""
        return len(self.values) >= 2 and max(self.values) - min(self.values) <= 1e-12


def convergence(run_dir: str | Path, tail: float = RISING_TAIL, tol: float = RISING_TOL) -> Convergence | None:
    """The run's convergence from its history.csv (None for a training-free method or a run without one)."""
    import pandas as pd

    from .runfiles import RunFiles
    from .runner import load_run_config, monitor_mode, monitor_name

    files = RunFiles(run_dir)
    if not files.history().exists():
        return None
    cfg = load_run_config(run_dir)
    hist = pd.read_csv(files.history())
    if "stage" in hist:  # staged methods: the final loop is what evaluation reads
        hist = hist[hist["stage"].isna()]
    tc = cfg.train
    # optimiser steps so far at each epoch (histories written before the loop recorded them: the config's)
    per_epoch = hist["steps"] if "steps" in hist else pd.Series(tc.steps_per_epoch or 1, index=hist.index)
    hist = hist.assign(_steps=per_epoch.cumsum())
    monitor, mode = monitor_name(cfg), monitor_mode(cfg)
    col = f"val/{monitor}"
    val = hist[["_steps", col]].dropna() if col in hist else hist.iloc[0:0]
    steps = [int(s) for s in val["_steps"]]
    values = [float(v) for v in val[col]] if len(val) else []
    n_steps = int(hist["_steps"].iloc[-1]) if len(hist) else 0
    budget = {"epochs": int(hist["epoch"].max()) if len(hist) else 0,
              "batch_size": tc.batch_size, "patch_size": list(tc.patch_size), "steps": n_steps,
              "pixels": n_steps * tc.batch_size * int(np.prod(tc.patch_size))}
    cut = n_steps * (1 - tail)
    before = [v for s, v in zip(steps, values) if s <= cut]
    last = [v for s, v in zip(steps, values) if s > cut]
    gain = None
    if before and last:
        sign = 1.0 if mode == "max" else -1.0
        b0, b1 = (max(before), max(last)) if mode == "max" else (min(before), min(last))
        gain = sign * (b1 - b0) / max(abs(b0), 1e-12)
    return Convergence(monitor, mode, steps, values, budget, gain, bool(gain is not None and gain > tol))


def finished_runs(output_root: str | Path, dataset: str, split: str = "test") -> list[FinishedRun]:
    """Every finished run of a dataset under the output root (runs/<dataset>/<label>/seed<N>)."""
    from .runfiles import RunFiles

    out = []
    for status_path in sorted(Path(output_root, dataset).glob("*/seed*/status.json")):
        files = RunFiles(status_path.parent)
        if not files.summary(split).exists() or not files.table(split).exists():
            continue
        s = json.loads(files.summary(split).read_text())
        if json.loads(files.status.read_text()).get("state") == "finished" and s.get("split") == split:
            out.append(FinishedRun(files.root, s))
    return out


def sweep(methods: list[str], datasets: list[str], seeds: list[int], *, overrides: list[str] | None = None,
          overlay: "str | list[str] | None" = None, data_root: str | None = None, progress: bool = True,
          folds: list[int] | None = None, launcher: str | None = None, retries: int | None = None) -> dict[str, list]:
    """Run every method x dataset x seed (x fold); finished runs with the same config are skipped, interrupted ones
    resumed. `launcher` (default: the config's ``launcher.name``, i.e. local) says where the runs go
    (bench.launchers); a failed run is tried again `retries` times (default ``launcher.retries``), resuming."""
    from .config import resolve_config
    from .launchers import SweepInterrupted, Task, launch
    from .runfiles import RunFiles
    from .runner import CONFIG_FILE, load_run_config, method_availability, read_status

    report: dict[str, list] = {"ran": [], "skipped": [], "resumed": [], "failed": [], "unavailable": []}
    overlays = [str(o) for o in ([overlay] if isinstance(overlay, (str, Path)) else list(overlay or []))]
    # a combination named twice is one run (one folder)
    axes = list(dict.fromkeys((d, m, seed, fold) for d in datasets for m in methods for seed in seeds
                              for fold in (folds or [None])))
    # every combination resolves before anything trains: a typo fails in seconds, not after the first runs
    plan = []
    for d, m, seed, fold in axes:
        # the user's overrides come last: `--set dataset.splits.kind=crossval` picks the rotating-test folds
        sets = ([] if fold is None else ["dataset.splits.kind=kfold", f"dataset.splits.fold={fold}"]) + list(
            overrides or [])
        plan.append((m, d, seed, fold, sets, resolve_config(m, d, overlay=overlays or None, overrides=sets,
                                                            seed=seed)))
    tasks, opts = [], None
    for m, d, seed, fold, sets, cfg in plan:
        opts = opts or cfg.launcher  # the launcher block of the sweep's config (the first combination's)
        rd = cfg.run_dir()
        key = f"{m}/{d}/seed{seed}" + ("" if fold is None else f"/fold{fold}")
        avail = method_availability(cfg)
        if avail != "ok":  # e.g. a pretrained model whose weights file is missing: say which, move on
            report["unavailable"].append((key, avail))
            log.warning("skip %s: %s", key, avail)
            continue
        if (rd / CONFIG_FILE).exists():
            same = load_run_config(rd).config_hash() == cfg.config_hash()
            if not same:
                report["failed"].append((key, f"{rd} holds a run with another config; use --tag"))
                continue
            if read_status(rd).get("state") == "finished" and RunFiles(rd).summary(cfg.eval.split).exists():
                report["skipped"].append(key)
                log.info("skip %s: finished in %s", key, rd)
                continue
        lc = cfg.launcher
        tasks.append(Task(key=key, method=m, dataset=d, seed=seed, overrides=sets, overlay=overlays,
                          data_root=data_root, run_dir=str(rd), cpus=lc.cpus, gpus=lc.gpus, memory_gb=lc.memory_gb))
    if opts is None:
        return report
    name = launcher or opts.name
    if name != "local":  # a worker may start in another folder (or machine): absolute paths
        for t in tasks:
            t.overrides.append(f"output_root={Path(plan[0][5].output_root).resolve()}")
            t.overlay = [str(Path(o).resolve()) for o in t.overlay]
            t.data_root = str(Path(t.data_root).resolve()) if t.data_root else None
    tries = 1 + (opts.retries if retries is None else retries)
    done_before = len(report["skipped"])
    for attempt in range(tries):
        try:
            results = launch(name, tasks, opts, output_root=plan[0][5].output_root, progress=progress)
        except SweepInterrupted as exc:
            done = done_before + exc.done + len(report["ran"]) + len(report["resumed"])
            raise KeyboardInterrupt(f"sweep stopped in {exc.key}; {done} of {len(plan)} runs finished") from None
        again = []
        for t, r in zip(tasks, results):
            if r["outcome"] != "failed":
                report[r["outcome"]].append(t.key)
            elif attempt + 1 < tries:
                log.warning("%s failed (%s); trying again (%d of %d)", t.key, r["error"], attempt + 2, tries)
                again.append(t)
            else:
                report["failed"].append((t.key, r["error"]))
        tasks = again
        if not tasks:
            break
    return report


# ------------------------------------------------------------------------------------------------
# statistics


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                 stat=np.mean) -> tuple[float, float]:
    """Percentile bootstrap CI of a statistic over images (resampled with replacement)."""
    values = np.asarray(values, float)
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    stats = stat(values[idx], axis=1)
    return float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (monotone, capped at 1)."""
    p = np.asarray(pvalues, float)
    order = np.argsort(p)
    m = len(p)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adj[i] = min(1.0, running)
    return adj.tolist()


def per_image_values(runs: list[FinishedRun], metric: str, cls: str = "") -> "dict[str, float]":
    """image -> value of one metric, averaged over the seeds (runs) that scored that image."""
    import pandas as pd

    frames = []
    for r in runs:
        t = r.table()
        t = t[(t["metric"] == metric) & (t["class"].astype(str) == cls)] if cls else t[t["metric"] == metric]
        if not cls and t["class"].astype(str).ne("").any():  # per-class metric: mean over classes per image
            t = t.groupby("image", as_index=False)["value"].mean()
        frames.append(t[["image", "value"]])
    if not frames:
        return {}
    return pd.concat(frames).groupby("image")["value"].mean().to_dict()
