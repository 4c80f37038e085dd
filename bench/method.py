"""The interface every method implements; the runner only talks to this.

A method is registered with ``@register_method("impl_name")`` and selected by a card in ``methods/``
(``impl: impl_name``, plus ``params:`` validated by the class's ``Params`` schema). It knows no dataset by
name: it gets the dataset card (task, ndim, channels, classes) and builds itself for it.

Hooks, each with a default that fits a one-network supervised method:

- ``build()``: create ``self.networks`` (name -> nn.Module). Methods with no training set ``trainable = False``.
- ``make_targets(sample)``: per-pixel training targets from the label, computed once per training image
  (e.g. a Poisson field). Arrays share the image's spatial shape so crops and flips apply to them alike.
- ``loss(outputs, batch)``: dict of named terms; ``"loss"`` is what is optimised. Extra physics terms are
  more entries, logged separately.
- ``train_step(batch)``: one optimisation step. The default does forward, loss, backward and step with
  AMP and gradient clipping; methods with several networks and optimisers (a CycleGAN) override it.
- ``predict_raw(image)``: network output for a whole normalised image (sliding window when large).
- ``postprocess(raw)``: raw output -> label image (class map or instance labels).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel

from .data import NoParams, Sample

if TYPE_CHECKING:
    import torch

    from .config import DatasetCard, TrainConfig


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN/inf; the run stops and keeps its last good checkpoint."""


class Method:
    Params: ClassVar[type[BaseModel]] = NoParams
    trainable: ClassVar[bool] = True
    # validation summary key used to pick the best checkpoint when the config names none
    default_monitor: ClassVar[str | None] = None
    # spatial sizes a network input must be divisible by
    divisor: ClassVar[int] = 32

    def __init__(self, params: BaseModel, dataset: "DatasetCard", device: "torch.device") -> None:
        self.params = params
        self.dataset = dataset
        self.device = device
        self.networks: dict[str, Any] = {}
        self.optimizers: dict[str, Any] = {}
        self.schedulers: dict[str, Any] = {}
        self.scaler = None
        self.train_cfg: "TrainConfig | None" = None

    # -- construction ---------------------------------------------------------------------------
    def build(self) -> None:
        """Create ``self.networks``."""

    @property
    def ndim(self) -> int:
        return self.dataset.ndim

    @property
    def monitor(self) -> str:
        if self.default_monitor:
            return self.default_monitor
        return "f1@0.50" if self.dataset.task == "instance" else "dice"

    def configure_optimizers(self, cfg: "TrainConfig", steps_total: int) -> None:
        """One optimiser (and scheduler) over every network's parameters; override for several."""
        import torch

        params = [p for net in self.networks.values() for p in net.parameters() if p.requires_grad]
        if not params:
            return
        self.optimizers["main"] = make_optimizer(cfg, params)
        sched = make_scheduler(cfg, self.optimizers["main"], steps_total)
        if sched is not None:
            self.schedulers["main"] = sched
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    @property
    def use_amp(self) -> bool:
        return bool(self.train_cfg and self.train_cfg.amp and self.device.type == "cuda")

    # -- training -------------------------------------------------------------------------------
    def make_targets(self, sample: Sample) -> dict[str, np.ndarray]:
        """Per-pixel targets; the default passes the label on."""
        return {"label": sample.label}

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.networks["net"](x)

    def loss(self, outputs: "torch.Tensor", batch: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
        raise NotImplementedError(f"{type(self).__name__} must implement loss()")

    def train_step(self, batch: dict[str, "torch.Tensor"]) -> dict[str, float]:
        import torch

        opt = self.optimizers["main"]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            outputs = self.forward(batch["image"])
            terms = self.loss(outputs, batch)
        check_finite(terms)
        self.scaler.scale(terms["loss"]).backward()
        if self.train_cfg and self.train_cfg.grad_clip:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], self.train_cfg.grad_clip)
        self.scaler.step(opt)
        self.scaler.update()
        for s in self.schedulers.values():
            s.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def train_mode(self, on: bool = True) -> None:
        for net in self.networks.values():
            net.train(on)

    # -- inference ------------------------------------------------------------------------------
    def predict_raw(self, image: np.ndarray, patch_size: list[int] | None = None, overlap: float = 0.25) -> np.ndarray:
        """(C, *spatial) normalised image -> (K, *spatial) float output of ``forward``."""
        from .inference import infer_full_image

        return infer_full_image(self, image, patch_size=patch_size, overlap=overlap)

    def activation(self, raw: "torch.Tensor") -> "torch.Tensor":
        """Applied to the network output before stitching tiles (e.g. softmax)."""
        return raw

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement postprocess()")

    def predict(self, image: np.ndarray, patch_size: list[int] | None = None, overlap: float = 0.25) -> np.ndarray:
        return self.postprocess(self.predict_raw(image, patch_size, overlap))

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self, with_optim: bool = True) -> dict[str, Any]:
        state: dict[str, Any] = {"networks": {k: v.state_dict() for k, v in self.networks.items()}}
        if with_optim:
            state["optimizers"] = {k: v.state_dict() for k, v in self.optimizers.items()}
            state["schedulers"] = {k: v.state_dict() for k, v in self.schedulers.items()}
            if self.scaler is not None:
                state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, sd in state.get("networks", {}).items():
            self.networks[k].load_state_dict(sd)
        for k, sd in state.get("optimizers", {}).items():
            if k in self.optimizers:
                self.optimizers[k].load_state_dict(sd)
        for k, sd in state.get("schedulers", {}).items():
            if k in self.schedulers:
                self.schedulers[k].load_state_dict(sd)
        if "scaler" in state and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])

    def to(self, device: "torch.device") -> "Method":
        self.device = device
        for net in self.networks.values():
            net.to(device)
        return self


def check_finite(terms: dict[str, Any]) -> None:
    values = {k: float(v.detach()) if hasattr(v, "detach") else float(v) for k, v in terms.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteLossError(f"non-finite loss terms: {bad}")


def make_optimizer(cfg: "TrainConfig", params):
    import torch

    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.99, nesterov=True, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: "TrainConfig", opt, steps_total: int):
    import torch

    steps_total = max(1, steps_total)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps_total, eta_min=cfg.lr * 0.01)
    if cfg.scheduler == "poly":  # nnU-Net's schedule
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - min(s, steps_total) / steps_total) ** 0.9)
    return None
