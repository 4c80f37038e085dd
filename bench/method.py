"""The interface every method implements; the runner and the training loop only talk to this.

A method is registered with ``@register_method("impl_name")`` and selected by a card in ``methods/``
(``impl: impl_name``, plus ``params:`` validated by the class's ``Params`` schema). It knows no dataset by
name: it gets the dataset card (task, ndim, channels, classes, spacing) and builds itself for it.

Construction and data
- ``build()``: create ``self.networks`` (name -> nn.Module), usually with ``self.build_network(spec, out)``.
  Training-free methods set ``trainable = False``.
- ``make_targets(sample)``: per-pixel training targets from the label (``bench.targets.compute_target`` for
  registered ones), cached on disk per case by the core. Arrays share the image's spatial shape.
- ``target_transforms()``: how a vector-valued target changes under the flips / rotations of augmentation.
- ``normalize(image)``: input normalisation (default: the dataset card's ``normalize``); a method with a
  pretrained model's own normalisation overrides it.
- ``requires_labels``: False lets training cases without a label through (an unlabelled target domain).
- ``resolve_params(params, dataset)``: classmethod run when the config is resolved (network per ndim, defaults
  that depend on the data), so the saved config states what is built.
- ``availability(params)``: classmethod; None when the method can run, else why not ("needs weights: <path>").
- ``weights_files()`` / ``training_data()``: recorded in the run summary (sha256 of each file; where the model's
  knowledge came from).

Training (the default loop in ``bench.loop`` calls these, in this order)
- ``on_fit_start(ctx)`` once, ``on_epoch_start(epoch)`` every epoch, ``train_step(batch)`` per batch,
  ``after_optimizer_step(name)`` after each optimiser step (e.g. clamping an input-convex network's weights).
- ``optimizer_groups()``: optimiser name -> network names (default one optimiser over all), and
  ``optimizer_settings(name)``: per-optimiser overrides of the train config (lr, betas, weight decay,
  scheduler). Each optimiser gets its scheduler and gradient scaler.
- ``training_losses(batch)``: yields ``(optimizer_name, terms)`` pairs; the default step backpropagates
  ``terms["loss"]`` into that optimiser and steps it before asking for the next pair, so a GAN yields its
  generator terms, then its discriminator terms (computed after the generator step). The default yields one
  pair: ``loss(forward(image, meta), batch)``.
- ``loss(outputs, batch)``: dict of named terms; ``"loss"`` is what is optimised. It runs in float32 with
  autocast off, even under mixed precision, so physics terms (Laplacians, energies) keep their precision.
- ``fit(ctx)``: the whole training; the default is ``ctx.train_loop()``. Methods with several stages
  (simulate, translate, segment) override it and use ``ctx.stage(...)`` to checkpoint and resume per stage.

Inference
- ``forward(x, meta)``: meta holds ``spacing`` (B x ndim tensor) and ``id`` (list of str).
- ``predict_raw(image, meta=...)``: network output for a whole normalised image (sliding window when large).
- ``postprocess(raw)``: raw output -> label image (class map or instance labels). It reads its settings from
  ``self.params`` at call time; those named in ``postprocess_params`` may be calibrated on the val split.
- ``ideal_raw(sample)``: the raw output a perfect network would give (from the label); the representation's
  round-trip ceiling is ``postprocess`` of it (`bench ceiling`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import numpy as np
from pydantic import BaseModel

from .data import NoParams, Sample

if TYPE_CHECKING:
    import torch

    from .config import DatasetCard, TrainConfig
    from .loop import FitContext


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN/inf; the run stops and keeps its last good checkpoint."""


class Method:
    Params: ClassVar[type[BaseModel]] = NoParams
    trainable: ClassVar[bool] = True
    requires_labels: ClassVar[bool] = True
    # validation summary key used to pick the best checkpoint when the config names none
    default_monitor: ClassVar[str | None] = None
    # the loss reads batch["ignore"] (`known_weights`); the loop refuses data with ignore regions otherwise
    handles_ignore: ClassVar[bool] = False
    # params that change only ``postprocess``: a card may calibrate them on the val split (bench.calibration)
    postprocess_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: BaseModel, dataset: "DatasetCard", device: "torch.device") -> None:
        self.params = params
        self.dataset = dataset
        self.device = device
        self.networks: dict[str, Any] = {}
        self.optimizers: dict[str, Any] = {}
        self.schedulers: dict[str, Any] = {}
        self.scalers: dict[str, Any] = {}
        self.train_cfg: "TrainConfig | None" = None
        self.extra_datasets: dict[str, "DatasetCard"] = {}
        self.stage: str | None = None  # the named training stage running (None: the final loop)

    # -- config-time hooks ----------------------------------------------------------------------
    @classmethod
    def resolve_params(cls, params: dict, dataset: "DatasetCard") -> dict:
        """Params as the run will use them. The default resolves every network spec to the data's ndim and
        checks that the network supports it, so the saved config and hash name the network actually built."""
        from .networks import NetworkSpec, check_spec

        model = cls.Params.model_validate(params)
        out = dict(params)
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, NetworkSpec):
                resolved = check_spec(value, dataset.ndim, f"method.params.{name}")
                if resolved != value:
                    out[name] = resolved.model_dump(mode="json", exclude={"per_ndim"})
        return out

    @classmethod
    def availability(cls, params: BaseModel) -> str | None:
        """None when the method can run with these params; else the reason (e.g. "needs weights: <path>")."""
        return None

    # -- construction ---------------------------------------------------------------------------
    def build(self) -> None:
        """Create ``self.networks``."""

    def build_network(self, spec, out_channels: int, in_channels: int | None = None, **extra):
        from .networks import NetworkContext, build_network

        tc = self.train_cfg
        ctx = NetworkContext(in_channels or self.dataset.channels, out_channels, self.ndim,
                             tuple(self.dataset.spacing) if self.dataset.spacing else None,
                             tuple(tc.patch_size) if tc else None, extra)
        return build_network(spec, ctx)

    def require_data(self, task: str, ndim: int | None = None) -> None:
        """Refuse, naming the dataset, data this method cannot segment (e.g. ``require_data("instance", 2)``)."""
        if self.dataset.task != task or (ndim is not None and self.dataset.ndim != ndim):
            want = f"{ndim}D {task}" if ndim is not None else task
            raise ValueError(f"{type(self).__name__} needs a {want} dataset; {self.dataset.name!r} is "
                             f"{self.dataset.ndim}D {self.dataset.task}")

    @property
    def ndim(self) -> int:
        return self.dataset.ndim

    @property
    def divisor(self) -> int:
        """Spatial sizes an input must be divisible by: the least common multiple over the networks."""
        from .networks import lcm

        from .distributed import unwrap

        return lcm(getattr(unwrap(n), "size_divisor", 1) for n in self.networks.values()) if self.networks else 1

    @property
    def monitor(self) -> str:
        if self.default_monitor:
            return self.default_monitor
        return "f1@0.50" if self.dataset.task == "instance" else "dice"

    def target_key(self) -> dict[str, Any]:
        """What determines the cached training arrays besides the data: part of the per-case cache key.
        Default: the method class, its params, and the version of every registered target (a changed target
        definition or a changed method rebuilds the cache). Override to leave out params that only change
        post-processing (so tuning them reuses the cache)."""
        from .registry import TARGETS

        return {"class": f"{type(self).__module__}.{type(self).__qualname__}",
                "version": getattr(type(self), "targets_version", "1"),
                "params": self.params.model_dump(mode="json"),
                "targets": {n: str(TARGETS.entry(n).extra.get("version", "1")) for n in TARGETS.names()}}

    def weights_files(self) -> dict[str, Path]:
        """Pretrained weight files this method loads (name -> path); their sha256 goes into the summary."""
        return {}

    def training_data(self) -> list[dict[str, Any]]:
        """Where the model's knowledge comes from, for the summary: entries with ``kind`` one of
        ``dataset`` (the run's training split), ``synthetic``, ``external_pretrained``, ``none``."""
        if not self.trainable:
            return [{"kind": "external_pretrained", "files": sorted(self.weights_files())}] \
                if self.weights_files() else [{"kind": "none"}]
        return [{"kind": "dataset", "name": self.dataset.name, "split": "train"}]

    # -- optimisation ---------------------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[str]]:
        """Optimiser name -> the networks it updates. Default: one optimiser ("main") over every network."""
        return {"main": list(self.networks)}

    def optimizer_settings(self, name: str) -> dict[str, Any]:
        """Overrides of the train config for one optimiser: lr, weight_decay, optimizer, betas, scheduler."""
        return {}

    def configure_optimizers(self, cfg: "TrainConfig", steps_total: int) -> None:
        import torch

        # a new loop (stage) gets new optimisers: nothing of the previous stage's may linger
        self.optimizers, self.schedulers, self.scalers = {}, {}, {}
        for name, nets in self.optimizer_groups().items():
            params = [p for n in nets for p in self.networks[n].parameters() if p.requires_grad]
            if not params:
                continue
            settings = self.optimizer_settings(name)
            self.optimizers[name] = make_optimizer(cfg, params, **settings)
            sched = make_scheduler(cfg, self.optimizers[name], steps_total, settings.get("scheduler"))
            if sched is not None:
                self.schedulers[name] = sched
            self.scalers[name] = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.device.type == "cuda")

    @property
    def use_amp(self) -> bool:
        tc = self.train_cfg
        if tc is None:
            return False
        if self.device.type == "cuda":
            return tc.amp
        return self.device.type == "cpu" and tc.cpu_bf16  # mps and others: float32

    @property
    def amp_dtype(self):
        import torch

        return torch.float16 if self.device.type == "cuda" else torch.bfloat16

    def autocast(self, inference: bool = False):
        """Mixed precision for network forwards (on when the config and the device allow it).

        ``inference``: predictions (validation, test, bench predict) stay float32 under the CPU's bfloat16: its 8
        mantissa bits quantise a regressed field into plateaus that the watershed's h-minima split or merge (a
        poisson network trained in bf16 scored test F1@0.5 0.860 predicted in bf16, 0.940 predicted in float32).
        """
        import torch

        enabled = self.use_amp and not (inference and self.amp_dtype == torch.bfloat16)
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled)

    @staticmethod
    def float32():
        """Autocast off: loss terms (physics residuals, energies) are computed in float32."""
        import torch

        return _autocast_off(torch)

    # -- training -------------------------------------------------------------------------------
    def fit(self, ctx: "FitContext") -> dict:
        """All of training. Default: the standard epoch loop. Staged methods override (see ``bench.loop``)."""
        return ctx.train_loop()

    def on_fit_start(self, ctx: "FitContext") -> None:
        """Once before the first epoch of a training loop (also when resuming)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before each epoch (0-based), e.g. a schedule of loss weights."""

    def after_optimizer_step(self, name: str) -> None:
        """After optimiser `name` stepped, e.g. clamp weights to keep a network input-convex."""

    def calibratable(self) -> tuple[str, ...]:
        """The post-processing params that matter for this dataset (default: all of ``postprocess_params``)."""
        return self.postprocess_params

    def make_targets(self, sample: Sample) -> dict[str, np.ndarray]:
        """Per-pixel targets; the default passes the label on."""
        return {"label": sample.label}

    def target_transforms(self) -> dict[str, Any]:
        """Target key -> ``fn(array, op, arg)`` that corrects a target's values after a flip or 90° rotation of
        the crop (vector components change sign, rays change places; `bench.pipeline.augment`). Module-level
        functions, so that data-loader workers can pickle them. Default: none (scalar targets)."""
        return {}

    def normalize(self, image: np.ndarray) -> np.ndarray:
        from .pipeline import normalize

        return normalize(image, self.dataset.normalize)

    def forward(self, x: "torch.Tensor", meta: dict | None = None) -> "torch.Tensor":
        return call_network(self.networks["net"], x, meta)

    def loss(self, outputs: "torch.Tensor", batch: dict[str, Any]) -> dict[str, "torch.Tensor"]:
        raise NotImplementedError(f"{type(self).__name__} must implement loss()")

    def training_losses(self, batch: dict[str, Any]) -> Iterator[tuple[str, dict[str, "torch.Tensor"]]]:
        with self.autocast():
            outputs = self.forward(batch["image"], batch_meta(batch))
        with self.float32():
            terms = self.loss(to_float32(outputs), batch)
        yield ("main" if "main" in self.optimizers else next(iter(self.optimizers))), terms

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        import torch

        logs: dict[str, float] = {}
        for name, terms in self.training_losses(batch):
            check_finite(terms, name)
            opt, scaler = self.optimizers[name], self.scalers[name]
            opt.zero_grad(set_to_none=True)  # also drops gradients an earlier term left in these networks
            scaler.scale(terms["loss"]).backward()
            if self.train_cfg and self.train_cfg.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                               self.train_cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            if name in self.schedulers:
                self.schedulers[name].step()
            self.after_optimizer_step(name)
            prefix = "" if len(self.optimizers) == 1 else f"{name}/"
            logs.update({f"{prefix}{k}": float(v.detach()) for k, v in terms.items()})
        if "loss" not in logs and logs:  # several optimisers: the total is what the loop shows
            logs["loss"] = sum(v for k, v in logs.items() if k.endswith("/loss"))
        return logs

    def train_mode(self, on: bool = True) -> None:
        for net in self.networks.values():
            net.train(on)

    # -- inference ------------------------------------------------------------------------------
    def predict_raw(self, image: np.ndarray, patch_size: list[int] | None = None, overlap: float = 0.25,
                    meta: dict | None = None) -> np.ndarray:
        """(C, *spatial) normalised image -> (K, *spatial) float output of ``forward``."""
        from .inference import infer_full_image

        return infer_full_image(self, image, patch_size=patch_size, overlap=overlap, meta=meta)

    def activation(self, raw: "torch.Tensor") -> "torch.Tensor":
        """Applied to the network output before stitching tiles (e.g. softmax)."""
        return raw

    def explain(self, sample: Sample, raw: np.ndarray) -> dict[str, np.ndarray]:
        """Named 2D/3D maps that show how this method reads an image (e.g. its predicted field beside the target),
        from the sample and its ``predict_raw`` output; drawn in the report's gallery. Default: none."""
        return {}

    def export_outputs(self) -> dict[str, Any]:
        """How the network's output is read, for `bench export`: ``channel_names``, ``description``,
        ``activation`` (none / softmax / sigmoid: what ``forward`` + ``activation`` add to the network),
        ``postprocess`` (text: the step from that output to the prediction), optionally ``network`` (its key)."""
        raise ValueError(f"{type(self).__name__} does not declare how its network output is read "
                         "(Method.export_outputs), so it cannot be exported")

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement postprocess()")

    def ideal_raw(self, sample: Sample) -> np.ndarray | None:
        """The ``predict_raw`` output of a perfect network for this sample, made from its label (e.g. the exact
        target field, one-hot classes); ``postprocess(ideal_raw(s))`` against the label is the ceiling of the
        method's representation (`bench ceiling`). None: the method has no such output (training-free ones)."""
        return None

    def predict(self, image: np.ndarray, patch_size: list[int] | None = None, overlap: float = 0.25,
                meta: dict | None = None) -> np.ndarray:
        return self.postprocess(self.predict_raw(image, patch_size, overlap, meta=meta))

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self, with_optim: bool = True) -> dict[str, Any]:
        from .distributed import unwrap

        state: dict[str, Any] = {"networks": {k: unwrap(v).state_dict() for k, v in self.networks.items()}}
        if with_optim:
            state["optimizers"] = {k: v.state_dict() for k, v in self.optimizers.items()}
            state["schedulers"] = {k: v.state_dict() for k, v in self.schedulers.items()}
            state["scalers"] = {k: v.state_dict() for k, v in self.scalers.items()}
        state["extra"] = self.extra_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from .distributed import unwrap

        for k, sd in state.get("networks", {}).items():
            if k not in self.networks:
                raise KeyError(f"checkpoint holds network {k!r}; this method builds {sorted(self.networks)}")
            unwrap(self.networks[k]).load_state_dict(sd)
        scalers = state.get("scalers") or ({"main": state["scaler"]} if state.get("scaler") else {})  # old key
        for target, saved in ((self.optimizers, state.get("optimizers", {})),
                              (self.schedulers, state.get("schedulers", {})), (self.scalers, scalers)):
            for k, sd in saved.items():
                if k in target and sd:  # a disabled scaler saves {}: nothing to restore
                    target[k].load_state_dict(sd)
        self.load_extra_state(state.get("extra") or {})

    def extra_state(self) -> dict[str, Any]:
        """Non-network state to checkpoint (an image pool, a learned threshold)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    @property
    def memory_format(self):
        """torch.channels_last when train.channels_last asks for it on 2D data, else None (contiguous)."""
        import torch

        return torch.channels_last if self.train_cfg and self.train_cfg.channels_last and self.ndim == 2 else None

    def to(self, device: "torch.device") -> "Method":
        self.device = device
        fmt = self.memory_format
        for net in self.networks.values():
            net.to(device) if fmt is None else net.to(device, memory_format=fmt)
        return self


# ------------------------------------------------------------------------------------------------
# helpers methods share


@contextlib.contextmanager
def _autocast_off(torch):
    with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
        yield


def to_float32(x):
    """Tensors (or dicts/tuples of them) as float32."""
    if isinstance(x, dict):
        return {k: to_float32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_float32(v) for v in x)
    if hasattr(x, "is_floating_point") and x.is_floating_point():
        return x.float()
    return x


def known_weights(batch: dict[str, Any], like: "torch.Tensor") -> "torch.Tensor | None":
    """Per-pixel loss weights (B, 1, *spatial): 0 in the batch's ignore region, 1 elsewhere; None without one.

    Losses multiply their per-pixel terms by it (`masked_mean`), so an unannotated object contributes no
    gradient instead of being taught as background (nnU-Net's ignore label).
    """
    ign = batch.get("ignore")
    if ign is None:
        return None
    w = (~ign.bool()).to(like.dtype)
    return w.reshape(w.shape[0], 1, *w.shape[1:])


def masked_mean(values: "torch.Tensor", weights: "torch.Tensor | None") -> "torch.Tensor":
    """Mean of per-pixel values (B, C, *spatial) over the known pixels (all when weights is None)."""
    if weights is None:
        return values.mean()
    w = weights.expand_as(values)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def batch_meta(batch: dict[str, Any]) -> dict[str, Any]:
    """The metadata part of a batch (what is not an array the network reads)."""
    return {k: batch[k] for k in ("spacing", "id") if k in batch}


def call_network(net, x, meta: dict | None = None):
    """``net(x, meta)`` for networks that take metadata (``accepts_meta``), else ``net(x)``."""
    from .distributed import unwrap

    if getattr(unwrap(net), "accepts_meta", False):  # a DDP wrapper passes both on
        return net(x, meta or {})
    return net(x)


def missing_package(module: str, extra: str) -> str | None:
    """None when `module` imports, else the availability message with the extra that installs it."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return f"needs the {module} package: pip install 'physeg-bench[{extra}]'"
    return None


def check_finite(terms: dict[str, Any], where: str = "") -> None:
    from . import distributed

    values = {k: float(v.detach()) if hasattr(v, "detach") else float(v) for k, v in terms.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    # under torchrun every rank stops together (the others would wait in DDP's gradient all-reduce)
    if not distributed.all_ranks_agree(not bad) and not bad:
        raise NonFiniteLossError(f"non-finite loss terms{f' ({where})' if where not in ('', 'main') else ''} on "
                                 "another torchrun rank")
    if bad:
        raise NonFiniteLossError(f"non-finite loss terms{f' ({where})' if where not in ('', 'main') else ''}: {bad}")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_optimizer(cfg: "TrainConfig", params, *, lr: float | None = None, weight_decay: float | None = None,
                   optimizer: str | None = None, betas: tuple[float, float] | None = None, **_: Any):
    import torch

    lr = cfg.lr if lr is None else lr
    wd = cfg.weight_decay if weight_decay is None else weight_decay
    kind = optimizer or cfg.optimizer
    extra = {"betas": tuple(betas)} if betas is not None else {}
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **extra)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **extra)
    return torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True, weight_decay=wd)


def make_scheduler(cfg: "TrainConfig", opt, steps_total: int, kind: str | None = None):
    import torch

    steps_total = max(1, steps_total)
    kind = kind or cfg.scheduler
    lr = opt.param_groups[0]["lr"]
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps_total, eta_min=lr * 0.01)
    if kind == "poly":  # nnU-Net's schedule
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - min(s, steps_total) / steps_total) ** 0.9)
    return None
