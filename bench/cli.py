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

DataRootOpt = typer.Option(None, "--data-root", help="Folder holding the datasets (else $BENCH_DATA_ROOT).")
SetOpt = typer.Option(None, "--set", help="Override a config key: --set train.epochs=2 (repeatable).")
ConfigOpt = typer.Option(None, "--config", help="YAML overlay (e.g. tuned parameters, or a run's config.yaml).")


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


@app.command("list")
def list_cmd(
    kind: str = typer.Argument(..., help="methods | datasets | metrics | networks"),
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
    config: Optional[Path] = ConfigOpt,
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
    config: Optional[Path] = ConfigOpt,
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
        _print_summary(result.summary, result.run_dir)

    _setup_logging(quiet)
    _guard(body)


@app.command("eval")
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to evaluate (default: the config's, test)."),
    data_root: Optional[Path] = DataRootOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Re-evaluate a finished run (best checkpoint) on its test split."""

    def body():
        from .runner import evaluate_run

        summary = evaluate_run(run_dir, split=split, data_root=str(data_root) if data_root else None,
                               progress=not quiet)
        _print_summary(summary, run_dir)

    _setup_logging(quiet)
    _guard(body)


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A trained run directory."),
    input: Path = typer.Option(..., "--input", "-i", help="Folder of images (any size)."),
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


def _setup_logging(quiet: bool) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _print_summary(summary: dict, run_dir) -> None:
    m = summary.get("metrics", {})
    keys = [k for k in ("f1@0.50", "ap@0.50", "map", "pq", "sq", "rq", "dice", "iou", "hd95", "bf1") if k in m]
    shown = ", ".join(f"{k}={m[k]:.4f}" for k in keys)
    typer.echo(f"{summary['method']} on {summary['dataset']} ({summary['split']}, {summary['n_images']} images): "
               f"{shown}\nrun directory: {run_dir}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
