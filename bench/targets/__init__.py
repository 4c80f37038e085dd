"""Training targets as registry entries: label image -> per-pixel target array, cached on disk by the core.

A target is a function ``(label, spacing=None, **params) -> np.ndarray`` registered with
``@register_target("name", version="1", description=...)``; the array's last axes are the label's spatial shape.
`compute_target` runs it through the core's content-keyed disk cache (`bench.cache.cached_array`: key =
name, version, params, label bytes), so every method that uses a target shares one cache and one definition.
Methods name targets in their cards (``params.field: poisson``); adding a representation is one module here
(or in a plugin, entry-point group ``physeg_bench.targets``) with no edit to the methods that can use it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..registry import TARGETS, register_target

__all__ = ["TARGETS", "register_target", "compute_target", "target_cache_dir", "target_names"]


def target_cache_dir():
    from ..cache import cache_root

    return cache_root() / "targets"


def target_names(pattern: str = "*") -> list[str]:
    return TARGETS.names(pattern)


def compute_target(name: str, label: np.ndarray, params: Mapping[str, Any] | None = None, spacing=None,
                   *, cache: bool = True) -> np.ndarray:
    """The registered target `name` of a label image (from the disk cache when it was computed before)."""
    from ..cache import cached_array

    entry = TARGETS.entry(name)  # unknown names list the registered ones
    fn = entry.obj
    kw = dict(params or {})
    if spacing is not None and entry.extra.get("uses_spacing", False):
        kw["spacing"] = [float(s) for s in spacing]
    lab = np.asarray(label)
    if not cache or not entry.extra.get("cacheable", True):
        return fn(lab, **kw)
    version = str(entry.extra.get("version", "1"))
    return cached_array(name, lambda: fn(lab, **kw), lab, kw, target_cache_dir(), version)
