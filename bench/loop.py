"""Training: the fit context a method trains through, and the standard epoch loop with its hook sequence.

``Method.fit(ctx)`` owns training; the default calls ``ctx.train_loop()``. The loop, per run or per stage:

    configure_optimizers -> [resume from last.pt] -> on_fit_start(ctx)
    for each epoch: on_epoch_start(epoch) -> train_step(batch) for each batch
                    (-> after_optimizer_step(name) after every optimiser step)
                    -> validation (ctx.score) -> best.pt on the monitor -> last.pt -> history -> tracker
                    -> early stopping

Staged methods (simulate data, train a translator, then a segmenter) override ``fit`` and use
``ctx.stage(name)`` for a folder and a done-marker per stage, and ``ctx.train_loop(stage=name, ...)`` for a
resumable loop with its own checkpoints (``checkpoints/<stage>/``) and history (``stages/<stage>/history.csv``).
A stage that finished is not run again on resume; an interrupted one continues from its last epoch. The final
(unnamed) loop writes ``checkpoints/{last,best}.pt``, which evaluation reads.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import distributed
from .cache import SampleCache, cache_root

if TYPE_CHECKING:
    from .config import RunConfig, TrainConfig
    from .data import DatasetReader
    from .method import Method
    from .runfiles import RunFiles

log = logging.getLogger(__name__)


RESUME_ONLY_KEYS = ("optimizers", "schedulers", "scalers")  # what only a resume needs (AdamW: 2x the weights)


def slim_finished_checkpoint(path: Path) -> None:
    """Once a run has finished, its last.pt keeps the weights and the loop state (what `bench eval`,
    eval.checkpoint=last and the completeness check read) but drops the optimiser state, which only a resume
    needs: a third of the size (nnU-Net keeps a final checkpoint likewise)."""
    import torch

    if not path.exists():
        return
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    method_state = ckpt.get("method") or {}
    if not any(k in method_state for k in RESUME_ONLY_KEYS):
        return
    for k in RESUME_ONLY_KEYS:
        method_state.pop(k, None)
    atomic_torch_save(ckpt, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """A kill during the save leaves the previous checkpoint intact (`bench.cache.atomic_write`)."""
    import torch

    from .cache import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # our handle, closed even when torch.save fails half-way (disk full)
            torch.save(obj, fh)

    try:
        atomic_write(path, write)
    except RuntimeError as exc:  # torch's zip writer reports a full disk as "unexpected pos"; say what it is
        import errno

        cause = exc
        while cause is not None and not (isinstance(cause, OSError) and cause.errno == errno.ENOSPC):
            cause = cause.__context__
        if cause is None:
            raise
        raise OSError(errno.ENOSPC, "No space left on device", str(path)) from exc


def progress_bar(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True)


@dataclass
class Stage:
    """One stage of a staged method: a folder for its outputs and a done-marker with its result."""

    name: str
    dir: Path
    opened: float = field(default_factory=time.time)  # when this process took the stage up

    @property
    def done(self) -> bool:
        return (self.dir / "done.json").is_file()

    @property
    def info(self) -> dict:
        p = self.dir / "done.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    def finish(self, info: dict | None = None) -> None:
        from .cache import atomic_write_text

        # seconds: this process's time on the stage (a stage without a loop restarts whole, so it is the stage's
        # time); a loop stage's own history.csv holds its time across resumes (bench.leaderboard reads both)
        now = time.time()
        atomic_write_text(self.dir / "done.json", json.dumps({"finished": now, "seconds": now - self.opened,
                                                              **(info or {})}, default=str))


class FitContext:
    """What a method's ``fit`` gets: data (readers, splits, cached cases), tracker, checkpoints, scoring."""

    def __init__(self, cfg: "RunConfig", method: "Method", reader: "DatasetReader", splits: dict[str, list[str]],
                 files: "RunFiles", tracker, *, resuming: bool, progress: bool = True,
                 on_epoch: Callable[[int, float], None] | None = None,
                 readers: dict[str, "DatasetReader"] | None = None) -> None:
        self.cfg, self.method, self.reader, self.splits = cfg, method, reader, splits
        self.files, self.tracker = files, tracker
        self.resuming, self.progress, self.on_epoch = resuming, progress, on_epoch
        self.readers = dict(readers or {})  # role -> reader of the method's extra datasets
        self._caches: dict[int, SampleCache] = {}
        self._cache_root = cache_root() / "samples"

    # -- data -----------------------------------------------------------------------------------
    def sample_cache(self, reader: "DatasetReader | None" = None, noisy: bool = False):
        reader = reader or self.reader
        if (id(reader), noisy) not in self._caches:
            card = reader.card
            # what changes the arrays: the data (card without splits/schedules, reader class, root) and the
            # method's targets (`Method.target_key`); not the split, the seed or the training schedule
            key = {"dataset": card.model_dump(mode="json", exclude={"train", "eval", "description", "citation",
                                                                    "license", "source", "splits"}),
                   "reader": f"{type(reader).__module__}.{type(reader).__qualname__}",
                   "root": str(Path(reader.root).resolve()) if reader.root else None,
                   "method": self.method.target_key()}
            if noisy:  # the perturbed training labels are other arrays
                key["label_noise"] = self.cfg.train.label_noise.model_dump(mode="json")
            self._caches[(id(reader), noisy)] = SampleCache(self._cache_root / card.name, key)
        return self._caches[(id(reader), noisy)]

    def train_ids(self) -> list[str]:
        from .data import DataError

        ids = self.splits.get("train") or []
        if not ids:
            raise DataError(f"dataset {self.cfg.dataset.name!r}: the train split is empty")
        tc = self.cfg.train
        if tc.fraction < 1:  # nested: one seeded order, the first ceil(f * n) of it
            import math

            import numpy as np

            order = sorted(ids)
            np.random.default_rng(tc.fraction_seed).shuffle(order)
            keep = set(order[: max(1, math.ceil(tc.fraction * len(order)))])
            ids = [i for i in ids if i in keep]
        n = tc.max_train_images
        return ids[:n] if n else ids

    def val_ids(self) -> list[str]:
        return (self.splits.get("val") or [])[: self.cfg.train.val_max_images or None]

    def cases(self, ids: list[str], *, reader: "DatasetReader | None" = None, with_targets: bool = True) -> list:
        """Cached cases (normalised image, label, the method's targets), built on first use."""
        from .pipeline import cache_cases

        reader = reader or self.reader
        what = "caching training cases" if with_targets else "caching evaluation cases"
        noise = self.cfg.train.label_noise
        # noisy-annotation protocol: the training labels of the run's dataset only (never val / test: those are
        # evaluation cases, read without targets)
        noisy = with_targets and noise.rate > 0 and reader is self.reader
        perturb = None
        if noisy:
            from .datatools import perturb_labels

            def perturb(label, sid):
                return perturb_labels(label, task=reader.card.task, rate=noise.rate, kinds=noise.kinds,
                                      radius=noise.radius, seed=noise.seed, sample_id=sid)
        return cache_cases(reader, ids, self.method, self.sample_cache(reader, noisy), with_targets=with_targets,
                           progress=(lambda it: progress_bar(it, self.progress, what)) if self.progress else None,
                           perturb=perturb)

    def patch_dataset(self, ids: list[str] | None = None, *, reader: "DatasetReader | None" = None,
                      tc: "TrainConfig | None" = None, keys: list[str] | None = None):
        from .pipeline import PatchDataset

        tc = tc or self.cfg.train
        cases = self.cases(self.train_ids() if ids is None else ids, reader=reader)
        n_items = (tc.steps_per_epoch or max(1, -(-len(cases) // tc.batch_size))) * tc.batch_size
        return PatchDataset(cases, tc.patch_size, n_items, tc.augment, (reader or self.reader).card.ndim,
                            self.cfg.seed, tc.sampling.foreground_fraction, keys, self.method.target_transforms())

    # -- scoring --------------------------------------------------------------------------------
    def score(self, ids: list[str] | None = None, *, reader: "DatasetReader | None" = None) -> dict[str, float]:
        """Dataset-level summary of the method's predictions on labelled cases (default: the val split)."""
        import pandas as pd

        from .metrics import evaluate_image, summarize
        from .runner import metric_context

        rows = []
        for case in self.cases(self.val_ids() if ids is None else ids, reader=reader, with_targets=False):
            label = case.array("label", mmap=False)
            pred = self.method.predict(case.array("image", mmap=False), self.cfg.train.patch_size,
                                       self.cfg.eval.tile_overlap, meta={"spacing": case.spacing, "id": case.id})
            for r in evaluate_image(pred, label, metric_context(self.cfg, case.spacing, case.partial),
                                    self.cfg.eval.metrics):
                rows.append({"image": case.id, **r})
        return summarize(pd.DataFrame(rows))

    # -- stages and checkpoints -------------------------------------------------------------------
    def stage(self, name: str) -> Stage:
        from .config import check_name

        check_name(name, "stage name")
        d = self.files.stage_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        return Stage(name, d)

    def save(self, obj: Any, name: str, stage: str | None = None) -> Path:
        """Save any object atomically under the run's checkpoints (per stage when given)."""
        path = self.files.checkpoint(name, stage)
        atomic_torch_save(obj, path)
        return path

    def load(self, name: str, stage: str | None = None) -> Any | None:
        import torch

        path = self.files.checkpoint(name, stage)
        return torch.load(path, map_location=self.method.device, weights_only=False) if path.exists() else None

    # -- the standard loop ----------------------------------------------------------------------
    def train_loop(self, *, stage: str | None = None, dataset=None, train: dict[str, Any] | None = None,
                   validate: bool = True) -> dict:
        """The standard epoch loop (see the module docstring); returns its state (best value, history).

        ``stage``: a named, separately checkpointed and resumable loop. ``dataset``: a torch-style dataset of
        batches' items to train on (default: patches of the train split). ``train``: overrides of the train
        config for this loop (``{"lr": 1e-5, "epochs": 50}``). ``validate``: score the val split each
        ``val_every`` epochs and keep ``best.pt`` on the monitor.
        """
        import torch

        from .config import TrainConfig, deep_merge
        from .config import validate as validate_schema  # not `validate`: that is this loop's argument

        method, cfg = self.method, self.cfg
        tc = validate_schema(TrainConfig, deep_merge(cfg.train.model_dump(), train),
                             "train_loop(train=...) overrides", "train.") if train else cfg.train
        st = self.stage(stage) if stage else None
        method.stage = stage
        method.train_cfg = tc
        if dataset is None:
            div = method.divisor
            bad = [p for p in tc.patch_size if p % div]
            if bad:
                raise ValueError(f"train.patch_size {list(tc.patch_size)}: every axis must be a multiple of {div}, "
                                 f"the size divisor of {cfg.method.name}'s network(s) (e.g. "
                                 f"{[max(div, p // div * div) for p in tc.patch_size]})")
        ds = dataset if dataset is not None else self.patch_dataset(tc=tc)
        if getattr(ds, "with_ignore", False) and not method.handles_ignore:
            raise ValueError(f"dataset {cfg.dataset.name!r} marks ignore regions (unannotated objects), but "
                             f"{type(method).__name__}.loss does not read batch['ignore']: it would learn them as "
                             "background. Set handles_ignore = True once the loss masks them (bench.method."
                             "masked_mean), or turn the reader's ignore option off")
        steps_per_epoch = max(1, -(-len(ds) // tc.batch_size))
        method.configure_optimizers(tc, steps_per_epoch * tc.epochs)

        val_ids = self.val_ids() if validate else []
        monitor = tc.monitor or (method.monitor if val_ids else "train/loss")
        if tc.monitor_mode:
            mode = tc.monitor_mode
        else:  # the metric's registered direction (hd95, losses: lower is better)
            from .metrics import higher_is_better

            mode = "max" if higher_is_better(monitor) else "min"
        last_path, best_path = self.files.checkpoint("last", stage), self.files.checkpoint("best", stage)
        history_path = self.files.history(stage)
        state: dict[str, Any] = {"epoch": 0, "best_value": None, "best_epoch": None, "bad_epochs": 0,
                                 "history": [], "stage": stage}
        if (self.resuming or (st and st.done)) and last_path.exists():
            ck = torch.load(last_path, map_location=method.device, weights_only=False)
            method.load_state_dict(ck["method"])
            state = ck["state"]
            log.info("resuming %s%s from epoch %d", self.files.root, f" stage {stage}" if stage else "",
                     state["epoch"])
        if st and st.done:
            return state
        if state.get("stopped_early"):
            if st and distributed.is_main():  # killed between the last checkpoint and the done marker
                st.finish({"epochs": state["epoch"], "best_value": state["best_value"]})
            return state
        method.on_fit_start(self)
        with distributed.wrapped_networks(method):
            return self._epochs(method, cfg, tc, ds, st, stage, state, val_ids, monitor, mode, last_path,
                                best_path, history_path)

    def _epochs(self, method, cfg, tc, ds, st, stage, state, val_ids, monitor, mode, last_path, best_path,
                history_path) -> dict:
        import pandas as pd
        import torch
        from torch.utils.data import DataLoader

        from .envinfo import seed_worker
        from .method import NonFiniteLossError

        main = distributed.is_main()  # rank 0 writes; in one process always
        label = f"{stage} " if stage else ""
        for epoch in range(state["epoch"], tc.epochs):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)
            # dropout etc.: same per epoch whether resumed or not, its own stream per torchrun rank
            torch.manual_seed(cfg.seed * 100003 + epoch + 7919 * distributed.rank())
            g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
            loader = DataLoader(ds, batch_size=distributed.local_batch_size(tc.batch_size), shuffle=False,
                                sampler=distributed.sampler(ds), num_workers=tc.num_workers,
                                worker_init_fn=seed_worker, generator=g, drop_last=False, persistent_workers=False)
            method.train_mode(True)
            method.on_epoch_start(epoch)
            sums: dict[str, float] = {}
            n = 0
            step_losses: list[tuple[int, float]] = []  # (optimiser step, loss): MLflow's per-step curve
            steps_per_epoch = len(loader)
            bar = progress_bar(loader, self.progress, f"{label}epoch {epoch + 1}/{tc.epochs}")
            t0 = time.time()
            for step, batch in enumerate(bar):
                batch = to_device(batch, method.device, method.memory_format)
                try:
                    logs = method.train_step(batch)
                except NonFiniteLossError as exc:
                    kept = (f"The last good checkpoint ({last_path}, epoch {state['epoch']}) is kept."
                            if last_path.exists() else
                            "No checkpoint was written yet (it failed in the first epoch): check the inputs with "
                            f"`bench data check {cfg.dataset.name}`.")
                    raise NonFiniteLossError(
                        f"{exc} at {label}epoch {epoch + 1}, step {step + 1}; the run stopped. {kept} Run it again "
                        "with a lower train.lr or with train.grad_clip (e.g. --set train.grad_clip=1.0); a changed "
                        "config is a new run, so add --overwrite (the failed run is kept until the new one has "
                        "results) or --tag NAME."
                    ) from None
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
                if "loss" in logs:
                    step_losses.append((epoch * steps_per_epoch + n, logs["loss"]))
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}")
            row: dict[str, Any] = {"epoch": epoch + 1, "steps": n, "seconds": round(time.time() - t0, 2)}
            if stage:
                row["stage"] = stage
            row.update({f"train/{k}": v / max(n, 1) for k, v in distributed.mean_over_ranks(sums).items()})
            row["lr"] = next(iter(method.optimizers.values())).param_groups[0]["lr"] if method.optimizers else None
            validated = bool(val_ids) and ((epoch + 1) % tc.val_every == 0 or epoch + 1 == tc.epochs)
            if validated and main:
                t_val = time.time()
                with distributed.unwrapped_networks(method):
                    row.update({f"val/{k}": v for k, v in self.score(val_ids).items()})
                row["val_seconds"] = round(time.time() - t_val, 2)
            row = distributed.broadcast(row)  # every rank takes rank 0's validation (and so its decisions)
            value = row.get(monitor if monitor.startswith("train/") else f"val/{monitor}")
            if value is None and validated and not monitor.startswith("train/"):
                raise KeyError(f"train.monitor {monitor!r} is not a validation metric; have: "
                               f"{sorted(k[4:] for k in row if k.startswith('val/'))}")
            improved = value is not None and (
                state["best_value"] is None
                or (value > state["best_value"] if mode == "max" else value < state["best_value"]))
            if improved:
                state.update(best_value=float(value), best_epoch=epoch + 1, bad_epochs=0)
                if main:
                    atomic_torch_save({"method": method.state_dict(with_optim=False), "epoch": epoch + 1,
                                       "monitor": monitor, "value": float(value), "stage": stage}, best_path)
            elif value is not None:
                state["bad_epochs"] += 1
            state["epoch"] = epoch + 1
            state["planned_epochs"] = tc.epochs  # what "complete" means for this loop (bench eval reads it)
            state["history"].append(row)
            stop = bool(tc.early_stopping_patience and state["bad_epochs"] >= tc.early_stopping_patience)
            state["stopped_early"] = stop
            if main:
                atomic_torch_save({"method": method.state_dict(), "state": state, "stage": stage}, last_path)
                history_path.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(state["history"]).to_csv(history_path, index=False)
            prefix = f"{stage}/" if stage else ""
            self.tracker.log_metrics({f"{prefix}{k}": v for k, v in row.items()
                                      if k not in ("epoch", "steps", "stage") and v is not None}, step=epoch + 1)
            self.tracker.log_series(f"{prefix}train_step/loss", step_losses)
            shown = {k: round(v, 4) for k, v in row.items()
                     if (k.startswith("train/") or k in (f"val/{monitor}", "seconds")) and v is not None}
            log.info("%sepoch %d/%d: %s", label, epoch + 1, tc.epochs, shown)
            if self.on_epoch is not None and value is not None and stage is None:
                self.on_epoch(epoch + 1, float(value))
            if stop:
                log.info("early stopping: %s did not improve for %d epochs", monitor, tc.early_stopping_patience)
                break
        if main and not best_path.exists():  # no validation: the last epoch is the best we know
            atomic_torch_save({"method": method.state_dict(with_optim=False), "epoch": state["epoch"],
                               "monitor": None, "value": None, "stage": stage}, best_path)
        if st and main:
            st.finish({"epochs": state["epoch"], "best_value": state["best_value"]})
        distributed.barrier()  # the other ranks read these files next (a later stage, evaluation)
        return state


def to_device(batch: dict[str, Any], device, memory_format=None) -> dict[str, Any]:
    out = {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}
    if memory_format is not None and getattr(out.get("image"), "ndim", 0) == 4:
        out["image"] = out["image"].contiguous(memory_format=memory_format)
    return out
