"""Protocol studies built on sweeps: the low-data learning curve and cross-domain evaluation (any method).

`learning_curve` trains every method at each training fraction (the seeded, nested subsets of
``train.fraction``) for every seed, optionally a cross-domain run per method (train here, score on
``eval.dataset``), and writes one document: per fraction and method the per-image mean of each metric with a 95%
bootstrap CI over test images and the mean +- sd over seeds (the stability figure), the paired per-image test of
two methods at each fraction (Wilcoxon, Holm over metrics), the cross-domain table, and a figure of metric
against fraction. Runs land in the usual run folders (tag ``<tag>-f<fraction>``), so finished ones are skipped
when the study is run again.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _tag(base: str, suffix: str) -> str:
    return f"{base}-{suffix}" if base else suffix


def learning_curve(methods: list[str], dataset: str, fractions: list[float], seeds: list[int], *,
                   overlay=None, overrides: list[str] | None = None, data_root: str | None = None,
                   extra_methods: list[str] | None = None, pair: tuple[str, str] | None = None,
                   cross_domain: str | None = None, cross_domain_seeds: list[int] | None = None, metrics: list[str] | None = None,
                   out_dir: str | Path = "leaderboards", name: str | None = None, note: str | None = None,
                   command: str | None = None, progress: bool = False, n_boot: int = 2000) -> dict[str, Path]:
    from .config import resolve_config
    from .leaderboard import build_rows, compare, default_metrics
    from .results import sweep

    overrides = list(overrides or [])
    fractions = sorted(fractions)
    base = resolve_config(methods[0], dataset, overlay=overlay, overrides=overrides)
    metrics = metrics or default_metrics(base.dataset.task)
    out_root = base.output_root
    failed = []
    plan = [(f, list(methods) + (list(extra_methods or []) if f == fractions[0] else [])) for f in fractions]
    for f, ms in plan:
        rep = sweep(ms, [dataset], seeds, overlay=overlay, data_root=data_root, progress=progress,
                    overrides=overrides + [f"train.fraction={f}", f"tag={_tag(base.tag, f'f{f:g}')}"])
        failed += rep["failed"] + rep["unavailable"]
    if cross_domain:
        rep = sweep(list(methods), [dataset], cross_domain_seeds or seeds[:1], overlay=overlay, data_root=data_root,
                    progress=progress, overrides=overrides + [f"eval.dataset={cross_domain}", "eval.split=all",
                                           f"tag={_tag(base.tag, 'xd-' + cross_domain)}"])
        failed += rep["failed"] + rep["unavailable"]
    if failed:
        raise ValueError("learning curve: runs failed: " + "; ".join(f"{k}: {why}" for k, why in failed))

    records, pairs = [], []
    for f, ms in plan:
        labels = {m: f"{m}-{_tag(base.tag, f'f{f:g}')}" for m in ms}
        rows, _, _ = build_rows(out_root, dataset, metrics, list(labels.values()), n_boot)
        by_label = {r.label: r for r in rows}
        for m, lab in labels.items():
            r = by_label.get(lab)
            if r is None:
                continue
            rec = {"fraction": f, "method": m, "n_images": r.n_images, "n_seeds": r.n_seeds,
                   "n_train": _n_train(r), "comparable": r.comparable}
            for k in metrics:
                c = r.cells.get(k)
                if c:
                    rec.update({k: c.mean, f"{k}_ci_low": c.ci[0], f"{k}_ci_high": c.ci[1],
                                f"{k}_seed_mean": c.seed_mean, f"{k}_seed_sd": c.seed_sd})
            records.append(rec)
        if pair and all(p in labels for p in pair):
            for res in compare(labels[pair[0]], labels[pair[1]], dataset, output_root=out_root, metrics=metrics,
                               n_boot=n_boot):
                pairs.append({"fraction": f, **res})
    xd = _cross_domain(out_root, dataset, methods, cross_domain, base.tag, metrics, n_boot) if cross_domain else []

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or f"lowdata_{dataset}"
    import pandas as pd

    written = {"csv": out_dir / f"{name}.csv", "pairs": out_dir / f"{name}_paired.csv"}
    pd.DataFrame(records).to_csv(written["csv"], index=False)
    pd.DataFrame(pairs).to_csv(written["pairs"], index=False)
    written["figure"] = _figure(records, metrics, out_dir / f"{name}.png", dataset)
    command = command or ("bench learning-curve " + shlex.join(
        ["--methods", ",".join(methods), "--dataset", dataset, "--fractions", ",".join(f"{f:g}" for f in fractions),
         "--seeds", ",".join(map(str, seeds))]))
    written["md"] = out_dir / f"{name}.md"
    written["md"].write_text(_markdown(records, pairs, xd, metrics, dataset, name, command, note, pair,
                                       cross_domain))
    (out_dir / f"{name}.provenance.json").write_text(json.dumps(
        {"records": records, "cross_domain": xd, "seeds": seeds, "fractions": fractions}, indent=1, default=str))
    return written


def _n_train(row) -> int | None:
    """Training images of a row's runs (from their saved splits and fraction)."""
    import math

    from .runner import load_run_config

    try:
        rd = Path(row.provenance["runs"][0])
        cfg = load_run_config(rd)
        n = len(json.loads((rd / "splits.json").read_text())["train"])
        n = max(1, math.ceil(cfg.train.fraction * n)) if cfg.train.fraction < 1 else n
        return min(n, cfg.train.max_train_images or n)
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _cross_domain(out_root, dataset: str, methods: list[str], target: str, base_tag: str, metrics: list[str],
                  n_boot: int) -> list[dict]:
    from .results import bootstrap_ci, finished_runs, per_image_values

    runs = finished_runs(out_root, dataset, split="all")
    out = []
    for m in methods:
        lab = f"{m}-{_tag(base_tag, 'xd-' + target)}"
        rs = [r for r in runs if r.label == lab]
        if not rs:
            continue
        rec = {"method": m, "trained_on": dataset, "scored_on": rs[0].summary.get("eval_dataset"),
               "n_images": rs[0].summary.get("n_images"), "n_seeds": len(rs)}
        for k in metrics:
            vals = np.array(list(per_image_values(rs, k).values()))
            if len(vals):
                seed_means = [np.mean(list(per_image_values([r], k).values())) for r in rs]
                rec.update({k: float(vals.mean()), f"{k}_ci": bootstrap_ci(vals, n_boot=n_boot),
                            f"{k}_seed_sd": float(np.std(seed_means, ddof=1)) if len(rs) > 1 else 0.0})
        out.append(rec)
    return out


def _figure(records: list[dict], metrics: list[str], path: Path, dataset: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.3), squeeze=False)
    methods = sorted({r["method"] for r in records})
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, k in zip(axes[0], metrics):
        for m in methods:
            rs = sorted((r for r in records if r["method"] == m and k in r), key=lambda r: r["fraction"])
            if not rs:
                continue
            x = [r["fraction"] for r in rs]
            ax.plot(x, [r[k] for r in rs], "o-", color=colours[m], label=m, ms=4)
            ax.fill_between(x, [r[f"{k}_ci_low"] for r in rs], [r[f"{k}_ci_high"] for r in rs], color=colours[m],
                            alpha=0.15)
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["fraction"] for r in records}), [f"{f:g}" for f in sorted({r['fraction'] for r in records})])
        ax.set_xlabel("training fraction")
        ax.set_title(k)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{dataset}: mean over test images (95% bootstrap CI)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cell(r: dict, k: str) -> str:
    if k not in r:
        return "–"
    return (f"{r[k]:.3f} [{r[f'{k}_ci_low']:.3f}, {r[f'{k}_ci_high']:.3f}] "
            f"({r[f'{k}_seed_mean']:.3f} ± {r[f'{k}_seed_sd']:.3f})")


def _markdown(records, pairs, xd, metrics, dataset, name, command, note, pair, cross_domain) -> str:
    from .metrics import higher_is_better

    lines = [f"# Low-data study: {dataset}", "",
             "Each cell: mean over the test images (per-image values averaged over seeds), its 95% bootstrap CI over "
             "images, and (mean ± sd over seeds: the stability figure). The test images are the same in every row. "
             "Training subsets are seeded and nested (each smaller set lies inside the larger ones). Regenerate "
             "with:", "", f"    {command}", ""]
    if note:
        lines += [note.strip(), ""]
    lines += [f"![metric against training fraction]({name}.png)", "",
              "| fraction | method | train images | " + " | ".join(metrics) + " | seeds |",
              "|---|---|---|" + "---|" * len(metrics) + "---|"]
    for f in sorted({r["fraction"] for r in records}):
        rs = [r for r in records if r["fraction"] == f]
        for r in rs:
            lines.append(f"| {f:g} | {r['method']} | {r['n_train']} | " + " | ".join(_cell(r, k) for k in metrics)
                         + f" | {r['n_seeds']} |")
    if pairs:
        a, b = pair
        lines += ["", f"## Paired per-image test: {a} vs {b}", "",
                  "Per fraction and metric: the median per-image difference A - B with its 95% bootstrap CI, "
                  "wins/ties/losses of A (a win is better in the metric's own direction), Wilcoxon signed-rank "
                  "p-value, Holm-corrected over the metrics of that fraction.", "",
                  "| fraction | metric | mean A | mean B | median A-B [95% CI] | W/T/L | p | p (Holm) |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in pairs:
            sig = " **" if p["p_holm"] < 0.05 else ""
            lines.append(f"| {p['fraction']:g} | {p['metric']}{'' if higher_is_better(p['metric']) else ' (lower is better)'} "
                         f"| {p['mean_a']:.4f} | {p['mean_b']:.4f} | {p['median_diff']:+.4f} [{p['ci_low']:+.4f}, "
                         f"{p['ci_high']:+.4f}] | {p['wins']}/{p['ties']}/{p['losses']} | {p['p']:.3g} | "
                         f"{p['p_holm']:.3g}{sig} |")
    if xd:
        lines += ["", f"## Cross-domain: trained on {dataset} (all training images), scored on {cross_domain}", "",
                  "| method | scored on | images | " + " | ".join(metrics) + " | seeds |",
                  "|---|---|---|" + "---|" * len(metrics) + "---|"]
        for r in xd:
            cells = [f"{r[k]:.3f} [{r[f'{k}_ci'][0]:.3f}, {r[f'{k}_ci'][1]:.3f}] (sd {r[f'{k}_seed_sd']:.3f})"
                     if k in r else "–" for k in metrics]
            lines.append(f"| {r['method']} | {r['scored_on']} | {r['n_images']} | " + " | ".join(cells)
                         + f" | {r['n_seeds']} |")
    return "\n".join(lines) + "\n"
