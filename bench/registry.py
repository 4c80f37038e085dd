"""Registries for methods, datasets, metrics and networks.

One decorator per kind registers an implementation under a name (as timm's ``register_model``).
Built-in implementations are found by importing every module of their sub-package on first use;
third-party plugins are loaded from the entry-point groups below, so neither needs an edit to the core.

Entry-point groups (``[project.entry-points."<group>"]`` in the plugin's pyproject):

- ``physeg_bench.methods``, ``physeg_bench.datasets``, ``physeg_bench.metrics``,
  ``physeg_bench.networks``, ``physeg_bench.targets``: the value is a module (importing it runs its decorators) or an object.
- ``physeg_bench.cards``: the value is a module or package whose folder holds ``methods/`` and/or
  ``datasets/`` sub-folders of YAML cards.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import logging
import pkgutil
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

log = logging.getLogger(__name__)

ENTRY_POINT_PREFIX = "physeg_bench."


class RegistryError(KeyError):
    """Unknown or duplicate registry name. The message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


@dataclass
class Entry:
    """What a registry holds: the object and what `bench list` shows about it."""

    name: str
    obj: Any
    description: str = ""
    # python modules the implementation needs at run time; missing ones make it unavailable
    requires: tuple[str, ...] = ()
    # optional callable returning None when usable, else the reason (e.g. "needs weights")
    check: Callable[[], str | None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def availability(self) -> str:
        """'ok', or why it cannot run here. Architecture existing is kept apart from weights available."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return "missing " + ", ".join(missing)
        if self.check is not None:
            reason = self.check()
            if reason:
                return reason
        return "ok"


class Registry:
    def __init__(self, kind: str, builtin_package: str | None) -> None:
        self.kind = kind
        self.builtin_package = builtin_package
        self.group = ENTRY_POINT_PREFIX + kind
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    # -- registration ---------------------------------------------------------------------------
    def register(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        requires: tuple[str, ...] | list[str] = (),
        check: Callable[[], str | None] | None = None,
        **extra: Any,
    ) -> Callable[[Any], Any]:
        """Decorator: ``@METHODS.register("poisson", description=...)``. Duplicate names are an error."""

        def deco(obj: Any) -> Any:
            key = name or getattr(obj, "name", None) or obj.__name__
            if key in self._entries and self._entries[key].obj is not obj:
                prev = self._entries[key].obj
                raise RegistryError(
                    f"{self.kind[:-1]} {key!r} is already registered by "
                    f"{getattr(prev, '__module__', '?')}.{getattr(prev, '__qualname__', prev)}; "
                    "choose another name"
                )
            doc = description
            if doc is None:
                doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()[0:1]
                doc = doc[0] if doc else ""
            self._entries[key] = Entry(key, obj, doc, tuple(requires), check, dict(extra))
            return obj

        return deco

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    # -- discovery ------------------------------------------------------------------------------
    def load(self) -> None:
        """Import built-in modules and entry-point plugins once."""
        if self._loaded:
            return
        self._loaded = True
        if self.builtin_package:
            pkg = importlib.import_module(self.builtin_package)
            for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
                if not info.name.rsplit(".", 1)[-1].startswith("_"):
                    importlib.import_module(info.name)
        load_entry_points(self.group)

    def _ensure(self) -> None:
        if not self._loaded:
            self.load()

    # -- queries --------------------------------------------------------------------------------
    def names(self, pattern: str = "*") -> list[str]:
        """Registered names, optionally filtered with shell wildcards (``"*unet*"``)."""
        self._ensure()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entry(self, name: str) -> Entry:
        self._ensure()
        try:
            return self._entries[name]
        except KeyError:
            valid = self.names()
            raise RegistryError(
                f"unknown {self.kind[:-1]} {name!r}.{did_you_mean(name, valid)} "
                f"Valid {self.kind}: {', '.join(valid) or '(none)'}"
            ) from None

    def get(self, name: str) -> Any:
        return self.entry(name).obj

    def __contains__(self, name: str) -> bool:
        self._ensure()
        return name in self._entries

    def __iter__(self):
        self._ensure()
        return iter(sorted(self._entries))


_loaded_groups: set[str] = set()


def load_entry_points(group: str) -> list[Any]:
    """Load every entry point of a group (once). A broken plugin warns instead of breaking the CLI."""
    loaded = []
    if group in _loaded_groups:
        return loaded
    _loaded_groups.add(group)
    for ep in entry_points(group=group):
        try:
            loaded.append(ep.load())
        except Exception as exc:  # a plugin must not take the whole tool down
            log.warning("could not load plugin %s from entry point group %s: %s", ep.value, group, exc)
    return loaded


METHODS = Registry("methods", "bench.methods")
DATASETS = Registry("datasets", "bench.datasets")
METRICS = Registry("metrics", "bench.metrics")
NETWORKS = Registry("networks", "bench.networks")
TARGETS = Registry("targets", "bench.targets")

register_method = METHODS.register
register_dataset = DATASETS.register
register_metric = METRICS.register
register_network = NETWORKS.register
register_target = TARGETS.register
