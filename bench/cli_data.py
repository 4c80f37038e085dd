"""`bench data fetch|check`: mounted by bench/cli.py as ``app.add_typer(data_app, name="data")``.

Heavy imports (pooch, numpy readers, rich) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

data_app = typer.Typer(help="Fetch and check datasets.", no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False)

_DataRoot = typer.Option(None, "--data-root", help="Folder holding the datasets (else $BENCH_DATA_ROOT).")


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _guard(fn):
    from .config import ConfigError
    from .data import DataError
    from .registry import RegistryError

    try:
        return fn()
    except (ConfigError, DataError, RegistryError, FileNotFoundError) as exc:
        _fail(str(exc))


@data_app.command("fetch")
def fetch(
    name: str = typer.Argument(..., help="Dataset card name (see `bench list datasets`) or a card YAML path."),
    data_root: Optional[Path] = _DataRoot,
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where downloads are kept (default: the data root)."),
    force: bool = typer.Option(False, "--force", help="Fetch and unpack again even if already fetched."),
    timeout: float = typer.Option(15.0, "--timeout", help="Network timeout in seconds (no retries)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Download a dataset, verify its checksums and unpack it into <data root>/<card root>."""

    def body():
        from .datatools import fetch_dataset

        res = fetch_dataset(name, data_root=data_root, cache_dir=cache_dir, force=force, timeout=timeout,
                            progress=not quiet)
        if res.get("skipped"):
            typer.echo(f"{name}: already fetched into {res['root']} (use --force to fetch again)")
            return
        for f in res["files"]:
            ok = "checksum ok" if f["checksum"] else "no checksum in the card"
            typer.echo(f"  {f['name']}: {f['url']} -> {f['path']} ({ok})")
        typer.echo(f"{name}: ready at {res['root']}")

    _guard(body)


@data_app.command("check")
def check(
    name: str = typer.Argument(..., help="Dataset card name or a card YAML path."),
    data_root: Optional[Path] = _DataRoot,
    split: Optional[str] = typer.Option(None, "--split", help="Check one split only (train, val, test)."),
    max_images: Optional[int] = typer.Option(None, "--max-images", min=1, help="Check at most N images per split."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a card key: --set params.z_block=5."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Load every image through the reader: counts, sizes, dtypes, instances or class frequencies, problems."""

    def body():
        from .datatools import check_dataset, print_check

        report = check_dataset(name, data_root=data_root, split=split, max_images=max_images, overrides=sets)
        if as_json:
            import json

            typer.echo(json.dumps(report, indent=1))
        else:
            print_check(report)
        if not report["ok"]:
            raise typer.Exit(1)

    _guard(body)


if __name__ == "__main__":  # python -m bench.cli_data
    data_app()
