"""physeg-bench: config-driven benchmarking of image segmentation with physics priors.

The Python API (docs/api.md) is loaded on first use, so ``import bench`` and the CLI stay fast:
``bench.run``, ``bench.evaluate``, ``bench.resolve_config``, ``bench.load_results``, ``bench.load_per_image``,
``bench.write_leaderboard``, ``bench.list_methods``, ``bench.list_datasets``.
"""

__version__ = "0.1.0"

_API = ("evaluate", "list_datasets", "list_methods", "load_per_image", "load_results", "resolve_config", "run",
        "write_leaderboard")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
