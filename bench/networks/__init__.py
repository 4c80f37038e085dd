"""Network builders: ``(in_channels, out_channels, ndim, **options) -> torch.nn.Module``.

Register with ``@register_network("name")``; methods pick one by name in their card
(``params.network: {name: ..., options: {...}}``).
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..registry import NETWORKS


class NetworkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "smp_unet"
    options: dict[str, Any] = Field(default_factory=dict)


def build_network(spec: NetworkSpec, in_channels: int, out_channels: int, ndim: int):
    builder = NETWORKS.get(spec.name)
    sig = inspect.signature(builder)
    unknown = [k for k in spec.options if k not in sig.parameters]
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        valid = [k for k in sig.parameters if k not in ("in_channels", "out_channels", "ndim")]
        raise ValueError(f"network {spec.name!r}: unknown option(s) {unknown}; valid: {valid}")
    return builder(in_channels=in_channels, out_channels=out_channels, ndim=ndim, **spec.options)
