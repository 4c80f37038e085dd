"""Network builders and what a method tells them.

A builder is registered with ``@register_network("name", ndims=(2, 3), divisor=...)`` and called as
``builder(in_channels=..., out_channels=..., ndim=..., **options)``; a builder that also names a ``ctx``
parameter receives the whole `NetworkContext` (spacing, patch size). Methods pick one by name in their card
(``params.network: {name: ..., options: {...}}``), optionally per dimensionality
(``per_ndim: {3: {name: monai_unet}}``, used when ``name`` does not support the data's ndim). The spec is resolved when the config is resolved, so the saved config
and its hash name the network that is built; a network that does not support the data's ndim is an error
there, never a silent swap.

``divisor`` is the size every spatial input must be a multiple of: an int, or ``divisor(ctx, options) -> int``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..registry import NETWORKS


class NetworkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "smp_unet"
    options: dict[str, Any] = Field(default_factory=dict)
    # the network for data of a dimensionality that `name` does not support (smp's 2D UNet -> a 3D UNet);
    # resolved away in the run config
    per_ndim: dict[int, "NetworkSpec"] = Field(default_factory=dict)

    def for_ndim(self, ndim: int) -> "NetworkSpec":
        """`name`/`options` when that network takes `ndim`-D data, else the `per_ndim` entry (if any)."""
        spec = self.per_ndim.get(ndim) if ndim not in supported_ndims(self.name) else None
        if spec is None:
            return NetworkSpec(name=self.name, options=dict(self.options))
        return NetworkSpec(name=spec.name, options=dict(spec.options))


@dataclass
class NetworkContext:
    """What a builder may use besides its options."""

    in_channels: int
    out_channels: int
    ndim: int
    spacing: tuple[float, ...] | None = None
    patch_size: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def supported_ndims(name: str) -> tuple[int, ...]:
    return tuple(NETWORKS.entry(name).extra.get("ndims", (2, 3)))


def check_spec(spec: NetworkSpec, ndim: int, where: str = "method.params.network") -> NetworkSpec:
    """The spec for `ndim`, or a ValueError naming the key when that network cannot take such data."""
    resolved = spec.for_ndim(ndim)
    dims = supported_ndims(resolved.name)
    if ndim not in dims:
        others = [n for n in NETWORKS.names() if ndim in supported_ndims(n)]
        raise ValueError(
            f"{where}.name: network {resolved.name!r} is {'/'.join(f'{d}D' for d in dims)} only, the dataset is "
            f"{ndim}D. Name a {ndim}D network in the method card ({', '.join(others)}), e.g. "
            f"`per_ndim: {{{ndim}: {{name: {others[0] if others else '...'}}}}}` under params.network.")
    return resolved


def network_divisor(name: str, ctx: NetworkContext, options: dict[str, Any]) -> int:
    div = NETWORKS.entry(name).extra.get("divisor", 1)
    return int(div(ctx, options) if callable(div) else div)


def build_network(spec: NetworkSpec, in_channels: int | NetworkContext, out_channels: int | None = None,
                  ndim: int | None = None):
    """Build a registered network; ``build_network(spec, ctx)`` or ``build_network(spec, in, out, ndim)``.

    The module gets ``size_divisor`` (inputs must be multiples of it) and ``accepts_meta`` (forward takes
    ``(x, meta)``) attributes that the method and the inference read.
    """
    ctx = in_channels if isinstance(in_channels, NetworkContext) else NetworkContext(in_channels, out_channels, ndim)
    spec = check_spec(spec, ctx.ndim)
    builder = NETWORKS.get(spec.name)
    sig = inspect.signature(builder)
    reserved = ("in_channels", "out_channels", "ndim", "ctx")
    unknown = [k for k in spec.options if k not in sig.parameters or k in reserved]
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        valid = [k for k in sig.parameters if k not in reserved]
        raise ValueError(f"network {spec.name!r}: unknown option(s) {unknown}; valid: {valid}")
    kwargs: dict[str, Any] = dict(spec.options)
    if "ctx" in sig.parameters:
        kwargs["ctx"] = ctx
    net = builder(in_channels=ctx.in_channels, out_channels=ctx.out_channels, ndim=ctx.ndim, **kwargs)
    net.size_divisor = network_divisor(spec.name, ctx, spec.options)
    if "ctx" not in kwargs:  # rebuildable from these arguments alone (bench.export names the library class)
        net.built_from = (spec.name, dict(in_channels=ctx.in_channels, out_channels=ctx.out_channels, ndim=ctx.ndim,
                                          **spec.options))
    if not hasattr(net, "accepts_meta"):
        net.accepts_meta = False
    return net


def lcm(values) -> int:
    out = 1
    for v in values:
        out = out * int(v) // math.gcd(out, int(v))
    return out
