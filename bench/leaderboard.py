"""Leaderboards built from the per-image tables of finished runs, and paired comparisons of two methods.

Every number traces to its runs: a row lists the run directories, MLflow run ids, git commits, config hashes
and hardware it came from. Rows that papers reported are read from a file, marked as reported and kept apart
from the measured rows (they never take part in the bold best).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .results import FinishedRun, bootstrap_ci, convergence, finished_runs, holm, image_set_hash, per_image_values

log = logging.getLogger(__name__)
METRICS_DOC = "docs/metrics.md"


def default_metrics(task: str) -> list[str]:
    """The headline metrics the registered metrics of a task declare (no list kept here)."""
    from .metrics import headline_metrics

    return headline_metrics(task)


def _higher_is_better(metric: str) -> bool:
    from .metrics import higher_is_better

    return higher_is_better(metric)


@dataclass
class Cell:
    mean: float  # over images (per-image values averaged over seeds first)
    ci: tuple[float, float]  # 95% bootstrap CI of that mean, resampling images
    seed_mean: float  # mean over seeds of each seed's per-image mean
    seed_sd: float  # sd over seeds (0 for one seed)
    deterministic: bool = False  # several seeds gave identical per-image values: "sd 0" would mislead


@dataclass
class Row:
    label: str
    cells: dict[str, Cell]
    n_images: int
    n_seeds: int
    provenance: dict = field(default_factory=dict)
    reported: bool = False
    citation: str = ""
    image_set: str = ""  # hash of the test image ids the row was scored on
    comparable: bool = True  # False: scored on another image set than the reference rows; never ranked
    partial: list[str] = field(default_factory=list)  # why the runs are smoke-sized (a subset of the budget)
    curves: list = field(default_factory=list)  # bench.results.Convergence per trained seed (empty: training-free)

    @property
    def under_trained(self) -> bool:
        """Some seed's validation curve was still rising at the end of its budget (computed from its history)."""
        return any(c.rising for c in self.curves)

    @property
    def failed(self) -> bool:
        """Some seed's validation monitor never moved from its first value (no learning signal reached it)."""
        return any(c.flat for c in self.curves)

    @property
    def flags(self) -> str:
        return ((" (smoke run)" if self.partial else "") + (" (under-trained)" if self.under_trained else "")
                + (" (failed: flat validation curve)" if self.failed else ""))


def _cv_union(groups: list[list[frozenset]]) -> int:
    """The number of folds when each seed's runs (given by their test image sets) are cross-validation folds: two
    or more runs per seed with disjoint test images whose union is the same for every seed; else 0."""
    if not any(len(g) > 1 for g in groups):
        return 0
    unions = set()
    for sets in groups:
        union = frozenset().union(*sets)
        if sum(map(len, sets)) != len(union):
            return 0
        unions.add(union)
    return max(map(len, groups)) if len(unions) == 1 else 0


def build_rows(output_root: str | Path, dataset: str, metrics: list[str] | None = None,
               methods: list[str] | None = None, n_boot: int = 2000) -> tuple[list[Row], list[str], str]:
    runs = finished_runs(output_root, dataset)
    if not runs:
        raise FileNotFoundError(f"no finished runs of {dataset!r} under {Path(output_root) / dataset}")
    task = runs[0].summary.get("task", "instance")
    metrics = metrics or default_metrics(task)
    by_label: dict[str, list[FinishedRun]] = {}
    for r in runs:
        by_label.setdefault(r.label, []).append(r)
    rows = []
    for label, rs in sorted(by_label.items()):
        if methods and label not in methods:
            continue
        # the runs of one seed: one run, or the folds of a cross-validation (disjoint test sets, pooled)
        by_seed: dict = {}
        for r in rs:
            by_seed.setdefault(r.summary.get("seed"), []).append(r)
        groups = list(by_seed.values())
        cells = {}
        for m in metrics:
            per_img = per_image_values(rs, m)
            if not per_img:
                continue
            vals = np.array(list(per_img.values()))
            per_seed = [per_image_values(g, m) for g in groups]
            seed_means = [np.mean(list(p.values())) for p in per_seed if p]
            same = len(groups) > 1 and all(p == per_seed[0] for p in per_seed[1:])
            cells[m] = Cell(float(vals.mean()), bootstrap_ci(vals, n_boot=n_boot),
                            float(np.mean(seed_means)), float(np.std(seed_means, ddof=1)) if len(seed_means) > 1
                            else 0.0, deterministic=same)
        scored = {id(r): frozenset(r.table()["image"].unique()) for r in rs}  # each run's test images, read once
        images = set().union(*scored.values())
        folds = _cv_union([[scored[id(r)] for r in g] for g in groups])
        prov = {
            "runs": [str(r.run_dir) for r in rs],
            "mlflow_run_ids": [r.summary.get("mlflow_run_id") for r in rs],
            "seeds": sorted(r.summary.get("seed") for r in rs),
            "git_commits": sorted({str(r.summary.get("git_commit")) for r in rs}),
            "config_hashes": sorted({str(r.summary.get("config_hash")) for r in rs}),
            "hardware": sorted({str(r.summary.get("hardware")) for r in rs}),
        }
        sets = {r.image_set for r in rs}
        if folds:  # cross-validation: every seed's folds cover the same images once; the row's set is their union
            prov["folds"] = folds
            sets = {image_set_hash(images)}
        if len(sets) > 1:
            log.warning("leaderboard %s: the seeds of %r were scored on %d different test image sets",
                        dataset, label, len(sets))
        prov["test_image_sets"] = sorted(sets)
        partial = _partial_budget(rs)
        if partial:
            log.warning("leaderboard %s: %r comes from smoke-sized runs (%s): not a published result",
                        dataset, label, "; ".join(partial))
        curves = [c for c in (convergence(r.run_dir) for r in rs) if c is not None]
        if any(c.rising for c in curves):
            log.warning("leaderboard %s: %r is under-trained: its validation %s was still rising at the end of "
                        "the budget", dataset, label, curves[0].monitor)
        # seeds on different image sets: the row mixes sets, and is never ranked
        rows.append(Row(label, cells, len(images), len(groups), prov,
                        image_set=next(iter(sets)) if len(sets) == 1 else "mixed:" + image_set_hash(sorted(sets)),
                        partial=partial, curves=curves))
    mark_comparable(rows, dataset)
    return rows, metrics, task


def _partial_budget(runs: list[FinishedRun]) -> list[str]:
    """Reasons a row's runs are smoke-sized: capped training images, capped test images, a quick preset."""
    from .runner import load_run_config

    why: set[str] = set()
    for r in runs:
        try:
            cfg = load_run_config(r.run_dir)
        except Exception:  # an old or hand-made run folder: nothing to judge from
            continue
        if cfg.train.max_train_images:
            why.add(f"train.max_train_images={cfg.train.max_train_images}")
        if cfg.eval.max_images:
            why.add(f"eval.max_images={cfg.eval.max_images}")
        if "quick" in (cfg.tag or ""):
            why.add(f"tag {cfg.tag!r}")
    return sorted(why)


def mark_comparable(rows: list[Row], dataset: str = "") -> str | None:
    """Rows are ranked against each other only on one image set: the one most measured rows were scored on
    (ties: the one with more images). Rows on any other set are marked not comparable, with a warning."""
    measured = [r for r in rows if not r.reported]
    if not measured:
        return None
    count: dict[str, int] = {}
    size: dict[str, int] = {}
    for r in measured:
        count[r.image_set] = count.get(r.image_set, 0) + 1
        size[r.image_set] = max(size.get(r.image_set, 0), r.n_images)
    candidates = [k for k in count if not k.startswith("mixed:")] or list(count)
    ref = max(candidates, key=lambda k: (count[k], size[k], k))
    for r in measured:
        r.comparable = r.image_set == ref
        if not r.comparable:
            log.warning("leaderboard %s: %r was scored on another set of test images (%d images, set %s; the "
                        "reference set %s has %d): shown apart and not ranked", dataset, r.label, r.n_images,
                        r.image_set, ref, size[ref])
    return ref


def reported_rows(path: str | Path, metrics: list[str]) -> list[Row]:
    """Rows from a YAML file: [{method, citation, n_images?, metrics: {name: value}}]."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or []
    rows = []
    for i, item in enumerate(data):
        if "method" not in item or "metrics" not in item or not item.get("citation"):
            raise ValueError(f"{path}: entry {i} needs 'method', 'citation' and 'metrics'")
        cells = {m: Cell(float(v), (float("nan"), float("nan")), float(v), float("nan"))
                 for m, v in item["metrics"].items() if m in metrics}
        rows.append(Row(item["method"], cells, int(item.get("n_images", 0)), 0, {}, True, item["citation"]))
    return rows


def best_labels(rows: list[Row], metrics: list[str]) -> dict[str, set[str]]:
    """Per metric, the measured row(s) with the best mean (ties all bold)."""
    out = {}
    for m in metrics:
        vals = {r.label: r.cells[m].mean for r in rows if not r.reported and r.comparable and m in r.cells}
        if vals:
            target = max(vals.values()) if _higher_is_better(m) else min(vals.values())
            out[m] = {k for k, v in vals.items() if np.isclose(v, target, rtol=0, atol=1e-12)}
        else:
            out[m] = set()
    return out


def ranked(rows: list[Row], metric: str) -> list[Row]:
    """Rows best first by one metric's mean (its registered direction); rows without it last, by label."""
    sign = 1 if _higher_is_better(metric) else -1
    return sorted(rows, key=lambda r: (metric not in r.cells, -sign * r.cells[metric].mean if metric in r.cells
                                       else 0.0, r.label))


def method_colours(labels: list[str]) -> dict[str, str]:
    """One colour per row label (tab10 in label order), shared by every figure and the report's gallery."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {lbl: matplotlib.colors.to_hex(cmap(i % 10)) for i, lbl in enumerate(sorted(labels))}


def _fmt(c: Cell | None, digits: int = 3) -> tuple[str, str]:
    if c is None:
        return "–", "–"
    main = f"{c.mean:.{digits}f}"
    if np.isnan(c.ci[0]):
        return main, ""
    spread = "deterministic" if c.deterministic else f"{c.seed_mean:.{digits}f} ± {c.seed_sd:.{digits}f}"
    return main, f"[{c.ci[0]:.{digits}f}, {c.ci[1]:.{digits}f}] ({spread})"


def render(rows: list[Row], metrics: list[str], dataset: str, fmt: str, command: str, task: str,
           note: str | None = None, sections: list[str] | None = None, stem: str | None = None) -> str:
    """One table format; `sections` (markdown lines, e.g. the baseline pairing) go after the tables."""
    best = best_labels(rows, metrics)
    measured = [r for r in rows if not r.reported and r.comparable]
    apart = [r for r in rows if not r.reported and not r.comparable]  # other test images: never ranked
    reported = [r for r in rows if r.reported]
    if fmt == "csv":
        import pandas as pd

        recs = []
        for r in rows:
            kind = "reported" if r.reported else "measured" if r.comparable else "measured_other_images"
            rec = {"method": r.label, "kind": kind, "n_images": r.n_images, "n_seeds": r.n_seeds,
                   "image_set": r.image_set, "under_trained": r.under_trained,
                   "budget_steps": r.curves[0].budget["steps"] if r.curves else None}
            for m in metrics:
                c = r.cells.get(m)
                rec.update({m: c.mean if c else None, f"{m}_ci_low": c.ci[0] if c else None,
                            f"{m}_ci_high": c.ci[1] if c else None, f"{m}_seed_mean": c.seed_mean if c else None,
                            f"{m}_seed_sd": c.seed_sd if c else None, f"{m}_best": r.label in best[m]})
            rec.update({"citation": r.citation, "runs": ";".join(r.provenance.get("runs", [])),
                        "mlflow_run_ids": ";".join(map(str, r.provenance.get("mlflow_run_ids", []))),
                        "git_commits": ";".join(r.provenance.get("git_commits", [])),
                        "config_hashes": ";".join(r.provenance.get("config_hashes", [])),
                        "hardware": ";".join(r.provenance.get("hardware", []))})
            recs.append(rec)
        return pd.DataFrame(recs).to_csv(index=False)
    if fmt == "md":
        title = dataset if (stem or dataset) == dataset else f"{stem} ({dataset})"
        lines = [f"# Leaderboard: {title} ({task})", "",
                 f"Each cell: mean over test images (per-image values averaged over seeds), its 95% bootstrap "
                 f"confidence interval over images, and (mean ± sd over seeds). Best measured value per column in "
                 f"bold. Metric definitions: [{METRICS_DOC}](../{METRICS_DOC}). Regenerate with:", "",
                 f"    {command}", "", *([note, ""] if note else []),
                 f"Rows in rank order by {metrics[0]} (the headline metric).", "",
                 "| method | rank | " + " | ".join(metrics) + " | images | seeds |",
                 "|---|---|" + "---|" * len(metrics) + "---|---|"]
        for rank, r in enumerate(ranked(measured, metrics[0]), 1):
            cells = []
            for m in metrics:
                main, rest = _fmt(r.cells.get(m))
                cells.append((f"**{main}**" if r.label in best[m] else main) + (f" {rest}" if rest else ""))
            lines.append(f"| {r.label}{r.flags} | {rank} | " + " | ".join(cells) + f" | {r.n_images} | {r.n_seeds} |")
        smoke = [r for r in measured + apart if r.partial]
        if smoke:
            lines += ["", "**Warning:** smoke-sized runs (not results to publish): " + "; ".join(
                f"{r.label}: {', '.join(r.partial)}" for r in smoke)]
        if apart:
            lines += ["", "**Warning:** scored on a different set of test images than the rows above, so not "
                      "comparable with them and not ranked:", "",
                      "| method | " + " | ".join(metrics) + " | images | seeds |",
                      "|---|" + "---|" * len(metrics) + "---|---|"]
            for r in apart:
                cells = [" ".join(x for x in _fmt(r.cells.get(m)) if x) for m in metrics]
                lines.append(f"| {r.label} (other images) | " + " | ".join(cells) + f" | {r.n_images} | {r.n_seeds} |")
        if reported:
            lines += ["", "Reported by papers (not measured here; not ranked):", "",
                      "| method | " + " | ".join(metrics) + " | citation |", "|---|" + "---|" * len(metrics) + "---|"]
            for r in reported:
                lines.append(f"| {r.label} (reported) | " + " | ".join(_fmt(r.cells.get(m))[0] for m in metrics)
                             + f" | {r.citation} |")
        lines += (sections or []) + budget_section(measured + apart, stem or dataset)
        lines += ["", "## Provenance", ""]
        for r in measured + apart:
            p = r.provenance
            lines.append(f"- **{r.label}**: seeds {p['seeds']}; commits {', '.join(p['git_commits'])}; "
                         f"config hashes {', '.join(p['config_hashes'])}; hardware {', '.join(p['hardware'])}; "
                         f"MLflow runs {', '.join(map(str, p['mlflow_run_ids']))}; run folders "
                         f"{', '.join(p['runs'])}")
        return "\n".join(lines) + "\n"
    if fmt == "tex":
        cols = "l" + "c" * len(metrics) + "rr"
        lines = [r"\begin{tabular}{" + cols + "}", r"\toprule",
                 "Method & " + " & ".join(m.replace("@", r"@").replace("_", r"\_") for m in metrics)
                 + r" & images & seeds \\", r"\midrule"]
        for r in measured + reported:
            cells = []
            for m in metrics:
                c = r.cells.get(m)
                if c is None:
                    cells.append("--")
                    continue
                v = f"{c.mean:.3f}"
                cells.append((rf"\textbf{{{v}}}" if (not r.reported and r.label in best[m]) else v)
                             + ("" if r.reported else rf" \scriptsize{{[{c.ci[0]:.3f}, {c.ci[1]:.3f}]}}"))
            name = r.label.replace("_", r"\_") + (r"$^\dagger$" if r.reported else "") + (
                r"$^\ast$" if r.under_trained else "")
            lines.append(f"{name} & " + " & ".join(cells) + f" & {r.n_images} & {r.n_seeds} " + r"\\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        if reported:
            lines.append(r"% \dagger: reported by the cited papers, not measured here")
        if any(r.under_trained for r in measured):
            lines.append(r"% \ast: under-trained, the validation curve was still rising at the end of the budget")
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown format {fmt!r}: choose md, csv, tex (html: the report, bench.report)")


def budget_section(rows: list[Row], stem: str) -> list[str]:
    """The budget of every trained row and its convergence verdict, computed from the runs' histories."""
    from .results import RISING_TAIL, RISING_TOL

    trained = [r for r in rows if r.curves]
    if not trained:
        return []
    lines = ["", "## Budget and convergence", "",
             f"Validation curves of every trained row: [{stem}_curves.png]({stem}_curves.png). A row is marked "
             f"under-trained when, for some seed, the best validation score in the last {RISING_TAIL:.0%} of its "
             f"budget beats the best before it by more than {RISING_TOL:.0%} (relative), i.e. its curve had not "
             "flattened.", "",
             "| method | budget (steps x batch x crop) | pixels seen | monitor | last-quarter gain per seed | verdict |",
             "|---|---|---|---|---|---|"]
    budgets = set()
    for r in trained:
        b = r.curves[0].budget
        budgets.add((b["steps"], b["batch_size"], tuple(b["patch_size"])))
        gains = ", ".join("n/a" if c.gain is None else f"{c.gain:+.1%}" for c in r.curves)
        verdict = "failed: the monitor never moved" if r.failed else "under-trained" if r.under_trained else (
            "flattened" if all(c.gain is not None for c in r.curves) else "not judged (too few validations)")
        lines.append(f"| {r.label} | {b['steps']} x {b['batch_size']} x {'x'.join(map(str, b['patch_size']))} | "
                     f"{b['pixels'] / 1e6:.0f} M | {r.curves[0].monitor} | {gains} | {verdict} |")
    untrained = [r.label for r in rows if not r.curves]
    lines += ["", ("Every trained row had the same budget." if len(budgets) == 1 else
                   "**Warning:** the trained rows had different budgets.")
              + (f" Training-free: {', '.join(untrained)}." if untrained else "")]
    return lines


def _training_minutes(run_dir: str | Path) -> float | None:
    """Wall time of a run's training: its loop's history (per-epoch seconds, validation included) plus, for a
    staged method, each stage's time (a loop stage's history, else the seconds its done-marker recorded)."""
    import pandas as pd

    from .runfiles import RunFiles

    def loop_seconds(path: Path) -> float | None:
        if not path.is_file():
            return None
        h = pd.read_csv(path)
        cols = [c for c in ("seconds", "val_seconds") if c in h]
        return float(h[cols].fillna(0).to_numpy().sum()) if cols else None

    files = RunFiles(Path(run_dir))
    total = loop_seconds(files.history())
    stages = files.root / "stages"
    for d in sorted(stages.iterdir()) if stages.is_dir() else []:
        secs = loop_seconds(files.history(d.name))
        if secs is None and (d / "done.json").is_file():
            secs = json.loads((d / "done.json").read_text()).get("seconds")
        if secs is not None:
            total = (total or 0.0) + float(secs)
    return None if total is None else total / 60


def ceiling_section(rows: list[Row], metrics: list[str], dataset: str, output_root: str | Path) -> list[str]:
    """Each measured row next to its representation's round-trip ceiling (`bench ceiling`), with times."""
    from .ceiling import read_ceiling

    measured = [r for r in rows if not r.reported]
    ceilings = {r.label: read_ceiling(output_root, dataset, r.label) for r in measured}
    if not any(ceilings.values()):
        return []
    summaries = {}
    for run in finished_runs(output_root, dataset):
        summaries.setdefault(run.label, []).append(run.summary)
    lines = ["", "## Representation ceilings and time", "",
             "Ceiling: the method's post-processing applied to the output a perfect network would give (its exact "
             "target, from the label), scored with the same metric code on the same test images "
             "(`bench ceiling`); the trained value is the row above. Times on the runs' machine: training (wall "
             "minutes per run, validation included), prediction per test image (network + post-processing), and "
             "post-processing alone per image (from the ceiling).", "",
             "| method | " + " | ".join(f"{m} ceiling / trained" for m in metrics)
             + " | training min/run | predict s/image | post-process s/image |",
             "|---|" + "---|" * len(metrics) + "---|---|---|"]
    for r in measured:
        c = ceilings[r.label]
        cells = []
        for m in metrics:
            top = (c or {}).get("metrics", {}).get(m)
            got = r.cells.get(m)
            cells.append(f"{'—' if top is None else f'{top:.3f}'} / {'—' if got is None else f'{got.mean:.3f}'}")
        if c and c.get("test_ids_hash") and r.image_set and c["test_ids_hash"] != r.image_set:
            cells = [x + " (other images)" for x in cells]
        mins = [t for t in (_training_minutes(d) for d in r.provenance.get("runs", [])) if t is not None]
        pred = [s["seconds_per_image"] for s in summaries.get(r.label, []) if s.get("seconds_per_image") is not None]
        post = (c or {}).get("seconds_per_image", {}).get("postprocess")
        times = [f"{np.mean(mins):.1f}" if mins else "—", f"{np.mean(pred):.2f}" if pred else "—",
                 "—" if post is None else f"{post:.2f}"]
        lines.append(f"| {r.label} | " + " | ".join(cells + times) + " |")
    return lines


def cost_section(rows: list[Row], dataset: str, output_root: str | Path) -> list[str]:
    """What each row cost (means over its runs): parameters, training wall time, peak memory of the training,
    prediction time per test image and, where the runner timed it apart, the post-processing alone (an ISR fit, a
    watershed). Shown when some run recorded its training resources or a post-processing time."""
    summaries: dict[str, list[dict]] = {}
    for run in finished_runs(output_root, dataset):
        summaries.setdefault(run.label, []).append(run.summary)

    def recorded(s: dict) -> bool:
        return bool(s.get("training_resources")) or s.get("postprocess_seconds_per_image") is not None

    measured = [r for r in rows if not r.reported and any(recorded(s) for s in summaries.get(r.label, []))]
    if not measured:
        return []
    lines = ["", "## Cost", "",
             "Means over each row's runs, on the runs' machine: trainable parameters, training wall time "
             "(validation included; every stage of a staged method), peak memory of the training (the process's "
             "resident memory, and torch's allocated GPU memory on CUDA), prediction time per test image (whole "
             "image, post-processing included) and the post-processing alone (an ISR fit, a watershed).", "",
             "| method | parameters | training min/run | peak RSS MiB | peak GPU MiB | predict s/image | "
             "post-process s/image | machine |",
             "|---|---|---|---|---|---|---|---|"]
    for r in measured:
        ss = summaries[r.label]
        res = [s["training_resources"] for s in ss if s.get("training_resources")]
        mins = [t for t in (_training_minutes(d) for d in r.provenance.get("runs", [])) if t is not None]

        def mean(values, fmt):
            values = [v for v in values if v is not None]
            return fmt.format(np.mean(values)) if values else "—"

        cells = [mean([x.get("parameters") for x in res], "{:,.0f}"), mean(mins, "{:.1f}"),
                 mean([x.get("peak_rss_mib") for x in res], "{:,.0f}"),
                 mean([x.get("peak_cuda_mib") for x in res], "{:,.0f}"),
                 mean([s.get("seconds_per_image") for s in ss], "{:.2f}"),
                 mean([s.get("postprocess_seconds_per_image") for s in ss], "{:.2f}"),
                 ", ".join(r.provenance.get("hardware", []))]
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    return lines


def curves_figure(rows: list[Row], stem: str, out_dir: Path) -> Path | None:
    """Validation curve (monitor against optimiser steps) of every seed of every trained row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [r for r in rows if r.curves and not r.reported]
    if not trained:
        return None
    fig, axes = plt.subplots(1, len(trained), figsize=(3.4 * len(trained), 3.0), squeeze=False, sharex=True)
    for ax, r in zip(axes[0], trained):
        for k, c in enumerate(r.curves):
            ax.plot(c.steps, c.values, marker=".", lw=1, label=f"seed {k}" if len(r.curves) > 1 else None)
        ax.set_title(r.label + (" (failed)" if r.failed else " (under-trained)" if r.under_trained else ""), fontsize=9)
        ax.set_xlabel("optimiser steps")
        ax.set_ylabel(f"val {r.curves[0].monitor}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    p = out_dir / f"{stem}_curves.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def figures(rows: list[Row], metrics: list[str], dataset: str, out_dir: Path, output_root: str | Path,
            stem: str | None = None) -> list[Path]:
    """Bar chart of the means with their CIs, and the per-image distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = ranked([r for r in rows if not r.reported], metrics[0])  # every panel in the headline's rank order
    colours = method_colours([r.label for r in measured])
    paths = []
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        rs = [r for r in measured if m in r.cells]
        means = [r.cells[m].mean for r in rs]
        err = np.array([[r.cells[m].mean - r.cells[m].ci[0], r.cells[m].ci[1] - r.cells[m].mean] for r in rs]).T
        ax.bar(range(len(rs)), means, yerr=err if len(rs) else None, capsize=3,
               color=[colours[r.label] for r in rs])
        ax.set_xticks(range(len(rs)), [r.label for r in rs], rotation=45, ha="right", fontsize=9)
        ax.set_title(f"{m} (mean, 95% CI)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    p = out_dir / f"{stem or dataset}_bars.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    runs = finished_runs(output_root, dataset)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        data, labels = [], []
        for r in measured:
            vals = list(per_image_values([x for x in runs if x.label == r.label], m).values())
            if vals:
                data.append(vals)
                labels.append(r.label)
        if data:
            box = ax.boxplot(data, showmeans=True, patch_artist=True)
            for patch, lbl in zip(box["boxes"], labels):
                patch.set_facecolor(colours[lbl])
                patch.set_alpha(0.6)
            ax.set_xticks(range(1, len(labels) + 1), labels, rotation=45, ha="right", fontsize=9)
        ax.set_title(f"{m} per test image", fontsize=10)
    fig.tight_layout()
    p = out_dir / f"{stem or dataset}_per_image.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def baseline_section(rows: list[Row], metrics: list[str], dataset: str, baseline: str, output_root: str | Path,
                     n_boot: int = 2000) -> list[str]:
    """Every other measured row paired with the baseline over the same test images (``compare``), and a verdict
    per metric computed from the test, so a table where nothing beats the baseline says so in words."""
    labels = [r.label for r in rows if not r.reported and r.comparable]
    if baseline not in labels:
        raise ValueError(f"baseline {baseline!r} has no comparable measured row on {dataset!r}; rows: "
                         f"{', '.join(labels) or 'none'}")
    lines = ["", f"## Against the baseline ({baseline})", "",
             "Paired over the same test images (per-image values averaged over seeds): median difference "
             "(row - baseline) with its 95% bootstrap CI, wins/ties/losses, and the Wilcoxon signed-rank p, "
             "Holm-corrected over the metrics of the row. *better*/*worse*: p_holm < 0.05; otherwise no difference "
             "shown.", "", "| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    verdicts = {}
    for label in labels:
        if label == baseline:
            continue
        res = {r["metric"]: r for r in compare(label, baseline, dataset, output_root=output_root, metrics=metrics,
                                               n_boot=n_boot)}
        cells = []
        for m in metrics:
            r = res.get(m)
            if r is None:
                cells.append("-")
                continue
            sign = 1 if _higher_is_better(m) else -1
            v = ("better" if sign * r["median_diff"] > 0 or (r["median_diff"] == 0 and r["wins"] > r["losses"])
                 else "worse") if r["p_holm"] < 0.05 else "no difference"
            verdicts.setdefault(label, {})[m] = v
            cells.append(f"{r['median_diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] "
                         f"{r['wins']}/{r['ties']}/{r['losses']} p={r['p_holm']:.2g} *{v}*")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    beat = sorted(lbl for lbl, v in verdicts.items() if "better" in v.values())
    never = sorted(lbl for lbl, v in verdicts.items() if "better" not in v.values())
    lines += [""]
    if never:
        lines.append(f"**Reading:** {', '.join(never)} {'does' if len(never) == 1 else 'do'} not beat {baseline} "
                     f"on any of these metrics here.")
    for lbl in beat:
        won = [m for m, v in verdicts[lbl].items() if v == "better"]
        lost = [m for m, v in verdicts[lbl].items() if v == "worse"]
        lines.append(f"**Reading:** {lbl} beats {baseline} on {', '.join(won)}"
                     + (f" and loses on {', '.join(lost)}." if lost else "."))
    return lines


def leaderboard(dataset: str, *, output_root: str | Path = "runs", out_dir: str | Path = "leaderboards",
                formats: list[str] = ("md",), metrics: list[str] | None = None, methods: list[str] | None = None,
                reported: str | Path | None = None, command: str | None = None, log_mlflow: bool = True,
                n_boot: int = 2000, note: str | None = None, baseline: str | None = None,
                data_root: str | None = None, name: str | None = None) -> dict[str, Path]:
    """The leaderboard files of `dataset` in `out_dir`, named ``<name or dataset>.<format>`` (a second table of
    one dataset, e.g. ``representations_bbbc039``, gets a name of its own)."""
    from .config import ConfigError, check_name

    try:  # the dataset names the output files: no separators, no '..'
        check_name(dataset, "dataset name")
        stem = check_name(name, "leaderboard name") if name else dataset
        for m in methods or []:
            check_name(m, "method name")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    rows, metrics, task = build_rows(output_root, dataset, metrics, methods, n_boot)
    if reported:
        rows += reported_rows(reported, metrics)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = command or f"bench leaderboard --dataset {dataset} --out {out_dir}"
    extra = baseline_section(rows, metrics, dataset, baseline, output_root, n_boot) if baseline else []
    extra += ceiling_section(rows, metrics, dataset, output_root)
    extra += cost_section(rows, dataset, output_root)
    written = {}
    for fmt in formats:
        if fmt == "html":
            continue  # the report, below: it embeds the figures
        p = out_dir / f"{stem}.{fmt}"
        p.write_text(render(rows, metrics, dataset, fmt, command, task, note, sections=extra, stem=stem))
        written[fmt] = p
    figs = [f for f in figures(rows, metrics, dataset, out_dir, output_root, stem) + [curves_figure(rows, stem, out_dir)]
            if f is not None]
    for f in figs:
        written[f.stem] = f
    if "html" in formats:
        from .report import write_report

        md = render(rows, metrics, dataset, "md", command, task, note, sections=extra, stem=stem)
        written["html"] = write_report(md, rows, metrics, dataset, out_dir, figs, output_root, data_root,
                                       method_colours([r.label for r in rows if not r.reported]), stem=stem)
    (out_dir / f"{stem}.provenance.json").write_text(json.dumps(
        {r.label: r.provenance for r in rows if not r.reported}, indent=1))
    if log_mlflow:
        from .tracking import Tracker

        tr = Tracker(True, None, dataset, output_root)
        tr.start(f"leaderboard/{dataset}", tags={"kind": "leaderboard"})
        for p in written.values():
            tr.log_artifact(p, "leaderboard")
        tr.end()
    return written


# ------------------------------------------------------------------------------------------------
# paired comparison


def compare(a: str, b: str, dataset: str, *, output_root: str | Path = "runs", metrics: list[str] | None = None,
            n_boot: int = 2000) -> list[dict]:
    """Paired per-image comparison A - B: Wilcoxon signed-rank (Holm-corrected over metrics), the median
    difference with a bootstrap CI, and wins/ties/losses (a win is A better, whatever the metric's direction)."""
    from scipy.stats import wilcoxon

    runs = finished_runs(output_root, dataset)
    ra = [r for r in runs if r.label == a]
    rb = [r for r in runs if r.label == b]
    for name, rs in ((a, ra), (b, rb)):
        if not rs:
            have = sorted({r.label for r in runs})
            raise FileNotFoundError(f"no finished runs of {name!r} on {dataset!r}; have: {', '.join(have) or 'none'}")
    task = ra[0].summary.get("task", "instance")
    metrics = metrics or default_metrics(task)
    sets_a, sets_b = {r.image_set for r in ra}, {r.image_set for r in rb}
    if sets_a != sets_b:
        log.warning("compare %s vs %s: scored on different test image sets; only the images both share are paired",
                    a, b)
    out = []
    for m in metrics:
        va, vb = per_image_values(ra, m), per_image_values(rb, m)
        common = sorted(set(va) & set(vb))
        if not common:
            continue
        d = np.array([va[i] - vb[i] for i in common])
        sign = 1 if _higher_is_better(m) else -1
        wins = int(np.sum(sign * d > 1e-12))
        losses = int(np.sum(sign * d < -1e-12))
        ties = len(d) - wins - losses
        nonzero = d[np.abs(d) > 1e-12]
        p = float(wilcoxon(nonzero).pvalue) if len(nonzero) >= 1 else 1.0
        lo, hi = bootstrap_ci(d, n_boot=n_boot, stat=np.median)
        out.append({"metric": m, "n_images": len(d), "mean_a": float(np.mean([va[i] for i in common])),
                    "mean_b": float(np.mean([vb[i] for i in common])), "median_diff": float(np.median(d)),
                    "ci_low": lo, "ci_high": hi, "wins": wins, "ties": ties, "losses": losses, "p": p})
    for rec, padj in zip(out, holm([r["p"] for r in out])):
        rec["p_holm"] = padj
    return out
