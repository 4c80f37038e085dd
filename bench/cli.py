"""`bench` command line. Heavy libraries are imported inside the commands so that `bench --help` is instant."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

app = typer.Typer(
    help="physeg-bench: train, evaluate, tune and compare segmentation methods with physics priors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

from .cli_data import data_app  # noqa: E402  (light: typer only)

app.add_typer(data_app, name="data")

DataRootOpt = typer.Option(None, "--data-root", help="Folder holding the datasets (else $BENCH_DATA_ROOT).")
SetOpt = typer.Option(None, "--set", help="Override a config key: --set train.epochs=2 (repeatable).")
ConfigOpt = typer.Option(None, "--config", help="YAML overlay (tuned parameters, a preset, a run's config.yaml); "
                         "repeatable, later files win.")


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _guard(fn, *args, **kwargs):
    """Run a command body; known user errors become one clear line instead of a traceback."""
    from .config import ConfigError
    from .data import DataError
    from .registry import RegistryError

    try:
        return fn(*args, **kwargs)
    except (ConfigError, DataError, RegistryError, FileNotFoundError, FileExistsError, ValueError) as exc:
        _fail(str(exc))
    except FloatingPointError as exc:  # NonFiniteLossError
        _fail(str(exc), code=3)
    except OSError as exc:  # disk full, permissions, a folder that vanished: say which file, keep the traceback out
        import errno

        where = f" ({exc.filename})" if exc.filename else ""
        hint = ""
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            hint = (". The disk is full: the last complete checkpoint and every finished result are kept; free space "
                    "(or set output_root elsewhere) and run the same command again (bench run: with --resume)")
        _fail(f"{exc.strerror or exc}{where}{hint}", code=4)
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, what is kept, how to go on; the shell's code for SIGINT
        _fail(f"interrupted{f' ({exc})' if str(exc) else ''}. Finished runs, checkpoints and finished trials are kept: "
              "the same command continues (bench run: add --resume; sweeps skip finished runs and resume the "
              "interrupted one; a study counts only its finished trials).", code=130)


@app.command("list")
def list_cmd(
    kind: str = typer.Argument(..., help="methods | datasets | metrics | networks | targets"),
    pattern: str = typer.Argument("*", help="Shell wildcard filter, e.g. '*unet*'."),
    data_root: Optional[Path] = DataRootOpt,
) -> None:
    """List registered methods, datasets, metrics or networks with their availability."""

    def body():
        from rich.console import Console
        from rich.table import Table

        from .catalog import list_rows

        rows, columns = list_rows(kind, pattern, data_root)
        table = Table(*columns, title=f"{kind} ({len(rows)})")
        for r in rows:
            table.add_row(*[str(x) for x in r])
        Console(width=160).print(table)

    _guard(body)


@config_app.command("show")
def config_show(
    method: Optional[str] = typer.Option(None, "--method", "-m"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d"),
    sets: Optional[list[str]] = SetOpt,
    config: Optional[list[Path]] = ConfigOpt,
    seed: Optional[int] = typer.Option(None, "--seed"),
) -> None:
    """Print the fully resolved config of a method on a dataset."""

    def body():
        from .config import dump_config, resolve_config

        cfg = resolve_config(method, dataset, overlay=config, overrides=sets, seed=seed)
        typer.echo(dump_config(cfg), nl=False)

    _guard(body)


@app.command()
def run(
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Method card (see `bench list methods`)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Dataset card (see `bench list datasets`)."),
    sets: Optional[list[str]] = SetOpt,
    config: Optional[list[Path]] = ConfigOpt,
    seed: Optional[int] = typer.Option(None, "--seed"),
    tag: Optional[str] = typer.Option(None, "--tag", help="Name variant runs: RUNS/<dataset>/<method>-<tag>/seedN."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Where to write (default RUNS/<dataset>/<method>/seedN)."),
    output_root: Optional[Path] = typer.Option(None, "--output-root", help="Root of run folders and the MLflow store (default ./runs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    data_root: Optional[Path] = DataRootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train (if needed) and evaluate a method on a dataset."""

    def body():
        from .config import resolve_config
        from .runner import run as run_fn

        extra = list(sets or [])
        if tag:
            extra.append(f"tag={tag}")
        if output_root:
            extra.append(f"output_root={output_root}")
        cfg = resolve_config(method, dataset, overlay=config, overrides=extra, seed=seed)
        result = run_fn(cfg, run_dir=run_dir, resume=resume, overwrite=overwrite,
                        data_root=str(data_root) if data_root else None, progress=not quiet)
        if result.summary:  # a torchrun rank other than 0 trains only; rank 0 reports
            _print_summary(result.summary, result.run_dir)

    _setup_logging(quiet)
    _guard(body)


@app.command("eval")
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to evaluate (default: the config's, test)."),
    data_root: Optional[Path] = DataRootOpt,
    from_predictions: bool = typer.Option(
        False, "--from-predictions",
        help="Score the run's saved predictions again (new metric code) instead of predicting; keeps their timings."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Re-evaluate a finished run (best checkpoint) on its test split."""

    def body():
        from .runner import evaluate_run

        summary = evaluate_run(run_dir, split=split, data_root=str(data_root) if data_root else None,
                               progress=not quiet, from_predictions=from_predictions)
        _print_summary(summary, run_dir)

    _setup_logging(quiet)
    _guard(body)


@app.command()
def ceiling(
    method: str = typer.Option(..., "--method", "-m", help="Method card whose representation is measured."),
    dataset: str = typer.Option(..., "--dataset", "-d"),
    sets: Optional[list[str]] = SetOpt,
    config: Optional[list[Path]] = ConfigOpt,
    split: str = typer.Option("test", "--split", help="Split whose labels are round-tripped."),
    output_root: Optional[Path] = typer.Option(None, "--output-root", help="Root of the run folders (default ./runs)."),
    data_root: Optional[Path] = DataRootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Round-trip ceiling of a representation: label -> perfect output -> post-processing -> metrics (no training);
    written to RUNS/<dataset>/<method>/ceiling/ and shown by `bench leaderboard`."""

    def body():
        from .ceiling import ceiling_dir, representation_ceiling
        from .config import resolve_config

        extra = list(sets or []) + ([f"output_root={output_root}"] if output_root else [])
        cfg = resolve_config(method, dataset, overlay=config, overrides=extra)
        summary = representation_ceiling(cfg, split=split, data_root=str(data_root) if data_root else None,
                                         progress=not quiet)
        m = summary["metrics"]
        keys = [k for k in ("ap@0.50", "f1@0.50", "pq", "map", "dice", "iou") if k in m]
        typer.echo(f"{method} on {dataset} ({summary['n_images']} {split} images): "
                   + ", ".join(f"{k} {m[k]:.4f}" for k in keys)
                   + f"; post-processing {summary['seconds_per_image']['postprocess']:.2f} s/image")
        typer.echo(f"wrote {ceiling_dir(cfg)}")

    _setup_logging(quiet)
    _guard(body)


@app.command()
def calibrate(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    data_root: Optional[Path] = DataRootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Choose a finished run's post-processing (its card's `calibrate:` grid) on the val split; `bench eval` and
    `bench predict` then use it. `bench run` does this by itself before scoring the test split."""

    def body():
        from .runner import calibrate_finished_run

        rec = calibrate_finished_run(run_dir, data_root=str(data_root) if data_root else None, progress=not quiet)
        if rec is None:
            _fail(f"{run_dir}: nothing calibrated: no val split, none of the grid's parameters applies to this data "
                  "(e.g. a semantic UNet's argmax), or no val image gives the monitored metric")
        d = rec["default"]
        typer.echo(f"{rec['monitor']} on {rec['images']} val images: card's values {d['params']} -> {d['value']:.4f}; "
                   f"chosen {rec['chosen']['params']} -> {rec['chosen']['value']:.4f} (written to "
                   f"{Path(run_dir) / 'calibration.json'}; `bench eval {run_dir}` scores the test split with it)")

    _setup_logging(quiet)
    _guard(body)


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A trained run directory."),
    input: Path = typer.Option(..., "--input", "-i", help="A folder of images (any size) or one image file."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the label images (.tif)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Segment new images with a trained run (tiled sliding window when large)."""

    def body():
        from .runner import predict_folder

        files = predict_folder(run_dir, input, output, progress=not quiet)
        typer.echo(f"wrote {len(files)} label image(s) to {output}")

    _setup_logging(quiet)
    _guard(body)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    output: Path = typer.Option(..., "--output", "-o", help="The package to write (.zip)."),
    fmt: str = typer.Option("bioimageio", "--format", help="Package format: bioimageio (model spec 0.5)."),
    authors: Optional[list[str]] = typer.Option(None, "--author", help="Author name (repeatable)."),
    license: str = typer.Option("CC-BY-4.0", "--license", help="SPDX licence of the weights."),
    test: bool = typer.Option(True, "--test/--no-test", help="Run bioimageio.core's model test on the package."),
    data_root: Optional[Path] = DataRootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Export a trained run's network as a bioimage.io model package (TorchScript + state dict, test tensors,
    cover, README with the post-processing), loadable in napari, Fiji/deepImageJ and bioimageio.core."""

    def body():
        if fmt != "bioimageio":
            _fail(f"--format {fmt!r}: only 'bioimageio' is supported")
        from .export import export_bioimageio

        res = export_bioimageio(run_dir, output, data_root=str(data_root) if data_root else None, authors=authors,
                                license=license, test=test)
        typer.echo(f"wrote {res['path']} (weights: {', '.join(res['weights'])})")
        if res["test"] is not None:
            typer.echo(f"bioimageio.core model test: {res['test']}")
            if res["test"] != "passed":
                for d in res["details"]:
                    typer.secho(f"  {d}", fg=typer.colors.RED, err=True)
                raise typer.Exit(1)

    _setup_logging(quiet)
    _guard(body)


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@app.command()
def sweep(
    methods: str = typer.Option(..., "--methods", help="Comma-separated method cards."),
    datasets: str = typer.Option(..., "--datasets", help="Comma-separated dataset cards."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Comma-separated k-fold indices, e.g. 0,1,2,3,4: "
                                        "each fold is a run (dataset.splits.kind=kfold, folder seedN_foldK)."),
    launcher: Optional[str] = typer.Option(None, "--launcher", help="local (default), ray or submitit; options in "
                                           "the config's launcher: block (resources per task, cluster address)."),
    retries: Optional[int] = typer.Option(None, "--retries", min=0, help="Run a failed task again this many times "
                                          "(it resumes from its checkpoints); default launcher.retries (0)."),
    sets: Optional[list[str]] = SetOpt,
    config: Optional[list[Path]] = ConfigOpt,
    data_root: Optional[Path] = DataRootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Run every method x dataset x seed (x fold), one MLflow run each, here or on Ray / SLURM; finished runs are
    skipped, interrupted ones resumed."""

    def body():
        from .results import sweep as sweep_fn

        rep = sweep_fn(_csv(methods), _csv(datasets), [int(s) for s in _csv(seeds)], overrides=sets,
                       overlay=config, data_root=str(data_root) if data_root else None, progress=not quiet,
                       folds=[int(f) for f in _csv(folds)] if folds else None, launcher=launcher, retries=retries)
        typer.echo(f"ran {len(rep['ran'])}, resumed {len(rep['resumed'])}, skipped {len(rep['skipped'])} "
                   f"(finished), unavailable {len(rep['unavailable'])}, failed {len(rep['failed'])}")
        for key, why in rep["unavailable"]:
            typer.secho(f"  skipped {key}: {why}", fg=typer.colors.YELLOW, err=True)
        for key, why in rep["failed"]:
            typer.secho(f"  failed {key}: {why}", fg=typer.colors.RED, err=True)
        if rep["failed"]:
            raise typer.Exit(1)

    _setup_logging(quiet)
    _guard(body)


@app.command("learning-curve")
def learning_curve_cmd(
    methods: str = typer.Option(..., "--methods", help="Comma-separated method cards, run at every fraction."),
    dataset: str = typer.Option(..., "--dataset", "-d"),
    fractions: str = typer.Option("0.1,0.25,0.5,1", "--fractions", help="Training fractions (nested subsets)."),
    seeds: str = typer.Option("0,1,2", "--seeds"),
    extra_methods: Optional[str] = typer.Option(None, "--extra-methods", help="Run at the smallest fraction only."),
    pair: Optional[str] = typer.Option(None, "--pair", help="A,B: paired per-image test at each fraction."),
    cross_domain: Optional[str] = typer.Option(None, "--cross-domain", help="Also train on all images and score "
                                               "on this dataset card (same classes)."),
    metrics: Optional[str] = typer.Option(None, "--metrics"),
    sets: Optional[list[str]] = SetOpt,
    config: Optional[list[Path]] = ConfigOpt,
    out: Path = typer.Option(Path("leaderboards"), "--out"),
    name: Optional[str] = typer.Option(None, "--name", help="Document name (default lowdata_<dataset>)."),
    note: Optional[Path] = typer.Option(None, "--note", help="A markdown file: the reading of the results."),
    data_root: Optional[Path] = DataRootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Low-data study: every method at nested training fractions x seeds (+ cross-domain), table + figure."""

    def body():
        import shlex

        from .studies import learning_curve

        p = _csv(pair)
        if pair and len(p) != 2:
            raise ValueError(f"--pair takes two methods A,B, got {pair!r}")
        written = learning_curve(
            _csv(methods), dataset, [float(f) for f in _csv(fractions)], [int(s) for s in _csv(seeds)],
            overlay=[str(c) for c in config or []], overrides=sets, data_root=str(data_root) if data_root else None,
            extra_methods=_csv(extra_methods), pair=tuple(p) if p else None, cross_domain=cross_domain,
            metrics=_csv(metrics) or None, out_dir=out, name=name, note=note.read_text() if note else None,
            command="bench " + shlex.join(sys.argv[1:]), progress=not quiet)
        for p_ in written.values():
            typer.echo(f"wrote {p_}")

    _setup_logging(quiet)
    _guard(body)


@app.command("leaderboard")
def leaderboard_cmd(
    dataset: str = typer.Option(..., "--dataset", "-d"),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated (default: by the dataset's task)."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Only these rows (comma-separated)."),
    formats: str = typer.Option("md,csv", "--format", help="Comma-separated: md, csv, html, tex."),
    out: Path = typer.Option(Path("leaderboards"), "--out"),
    output_root: Path = typer.Option(Path("runs"), "--output-root", help="Where the runs are."),
    reported: Optional[Path] = typer.Option(None, "--reported", help="YAML of rows reported by papers (with citation)."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log the tables and figures to MLflow."),
    note: Optional[str] = typer.Option(None, "--note", help="A line for the markdown header (e.g. how the runs were made)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Pair every row with this one (verdict per metric)."),
    name: Optional[str] = typer.Option(None, "--name", help="File stem of the tables (default: the dataset name)."),
    data_root: Optional[Path] = DataRootOpt,
) -> None:
    """Leaderboard of every method's finished runs: mean, 95% bootstrap CI, mean ± sd over seeds, provenance
    (html: the results report of `bench report`)."""

    def body():
        from .leaderboard import leaderboard

        import shlex

        command = "bench leaderboard " + shlex.join(sys.argv[2:]) if len(sys.argv) > 2 else None
        written = leaderboard(dataset, output_root=output_root, out_dir=out, formats=_csv(formats),
                              metrics=_csv(metrics) or None, methods=_csv(methods) or None, reported=reported,
                              command=command, log_mlflow=not no_mlflow, note=note, baseline=baseline,
                              data_root=str(data_root) if data_root else None, name=name)
        for p in written.values():
            typer.echo(f"wrote {p}")
        if "md" in written:
            typer.echo(written["md"].read_text())

    _setup_logging(True)
    _guard(body)


@app.command("report")
def report_cmd(
    dataset: str = typer.Option(..., "--dataset", "-d"),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated; the first is the headline."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Only these rows (comma-separated)."),
    out: Path = typer.Option(Path("leaderboards"), "--out"),
    output_root: Path = typer.Option(Path("runs"), "--output-root", help="Where the runs are."),
    reported: Optional[Path] = typer.Option(None, "--reported", help="YAML of rows reported by papers (with citation)."),
    note: Optional[str] = typer.Option(None, "--note", help="A line for the header (e.g. how the runs were made)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Pair every row with this one (verdict per metric)."),
    data_root: Optional[Path] = DataRootOpt,
) -> None:
    """One self-contained HTML page of a dataset's results: ranked table with CIs, figures, training curves,
    provenance, and per method a gallery of its best, median and worst test images (<out>/<dataset>.html)."""

    def body():
        from .leaderboard import leaderboard

        import shlex

        command = "bench report " + shlex.join(sys.argv[2:]) if len(sys.argv) > 2 else None
        written = leaderboard(dataset, output_root=output_root, out_dir=out, formats=["html"],
                              metrics=_csv(metrics) or None, methods=_csv(methods) or None, reported=reported,
                              command=command, log_mlflow=False, note=note, baseline=baseline,
                              data_root=str(data_root) if data_root else None)
        typer.echo(f"wrote {written['html']}")

    _setup_logging(True)
    _guard(body)


@app.command()
def compare(
    a: str = typer.Argument(..., help="Method (leaderboard row) A."),
    b: str = typer.Argument(..., help="Method (leaderboard row) B."),
    dataset: str = typer.Option(..., "--dataset", "-d"),
    metrics: Optional[str] = typer.Option(None, "--metrics"),
    output_root: Path = typer.Option(Path("runs"), "--output-root"),
) -> None:
    """Paired per-image comparison A vs B: Wilcoxon + Holm, median difference with bootstrap CI, wins/ties/losses."""

    def body():
        from rich.console import Console
        from rich.table import Table

        from .leaderboard import compare as compare_fn

        res = compare_fn(a, b, dataset, output_root=output_root, metrics=_csv(metrics) or None)
        t = Table("metric", "images", f"mean {a}", f"mean {b}", "median A-B [95% CI]", "W/T/L", "p", "p (Holm)",
                  title=f"{a} vs {b} on {dataset}")
        for r in res:
            t.add_row(r["metric"], str(r["n_images"]), f"{r['mean_a']:.4f}", f"{r['mean_b']:.4f}",
                      f"{r['median_diff']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]",
                      f"{r['wins']}/{r['ties']}/{r['losses']}", f"{r['p']:.3g}", f"{r['p_holm']:.3g}")
        Console(width=160).print(t)

    _guard(body)


@app.command()
def tune(
    method: str = typer.Option(..., "--method", "-m"),
    dataset: str = typer.Option(..., "--dataset", "-d"),
    trials: int = typer.Option(..., "--trials", min=1, help="Finished (complete or pruned) trials the study should hold."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage: an SQLAlchemy URL (postgresql+psycopg://user@host/db) or journal:///path/file.log "
                                         "(shared file system); default sqlite under the runs."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes sharing the storage."),
    sets: Optional[list[str]] = SetOpt,
    config: Optional[list[Path]] = ConfigOpt,
    seed: int = typer.Option(0, "--seed"),
    keep_checkpoints: str = typer.Option("best", "--keep-checkpoints", help="Checkpoints of finished trials to "
                                         "keep: best (the best complete trial's), none, all."),
    data_root: Optional[Path] = DataRootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Tune a method's `tune:` search space on the validation split (Optuna, median pruner, resumable)."""

    def body():
        from .tuning import tune as tune_fn

        study = tune_fn(method, dataset, trials, workers=workers, storage=storage, overrides=sets,
                        overlay=[str(c) for c in config or []], data_root=str(data_root) if data_root else None,
                        seed=seed, keep_checkpoints=keep_checkpoints)
        typer.echo(f"study {study.study_name} in {study.storage_url}\nbest parameters: {study.best_overlay_path()}")

    _setup_logging(quiet)
    _guard(body)


def _setup_logging(quiet: bool) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _print_summary(summary: dict, run_dir) -> None:
    from .metrics import headline_metrics

    m = summary.get("metrics", {})
    keys = [k for k in headline_metrics(summary.get("task", "instance")) if k in m]
    shown = ", ".join(f"{k}={m[k]:.4f}" for k in keys)
    typer.echo(f"{summary['method']} on {summary['dataset']} ({summary['split']}, {summary['n_images']} images): "
               f"{shown}\nrun directory: {run_dir}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
