"""Multi-process training under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on CUDA).

    torchrun --nproc_per_node=2 -m bench run --method unet --dataset bbbc039

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; `bench run` then trains with every process and evaluates once.
The policy, in one place:

- rank 0 owns the run folder: it prepares it, writes config, splits, checkpoints, history, tables and the MLflow run;
  the other ranks read what it wrote (after a barrier) and write nothing;
- ``train.batch_size`` is the global batch: each rank takes ``batch_size / world_size`` items per step, through a
  `DistributedSampler` without shuffling, so the union of the ranks' batches is the single-process batch (patch
  items are fixed by (seed, epoch, index), `bench.pipeline.PatchDataset`) and DDP's gradient average equals the
  single-process gradient for losses that are means over the batch;
- validation, early stopping and best.pt are decided on rank 0 with the unwrapped networks (a DDP forward on one rank
  alone would wait for the others) and broadcast; evaluation after training runs on rank 0 only;
- each rank seeds its own random streams (dropout) with its rank; weights start equal (DDP broadcasts rank 0's).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    """True inside a torchrun launch with more than one process."""
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def init(device_name: str = "auto"):
    """Join the process group (once) and return this rank's device; without torchrun, nothing to join."""
    import torch
    import torch.distributed as dist

    from .envinfo import select_device

    device = select_device(device_name)
    if not is_distributed():
        return device
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
        device = torch.device("cuda", local_rank())
    if not is_main():  # one voice: rank 0 logs the epochs and shows the progress bars
        import logging

        logging.getLogger("bench").setLevel(logging.WARNING)
    if not dist.is_initialized():
        # rank 0 validates and evaluates while the others wait in a collective: allow for long validations
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=2))
    return device


def barrier() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's value of `obj` on every rank (any picklable object)."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device():
    """Where a collective's tensor must live: the rank's GPU under nccl (it serves CUDA tensors only), else CPU."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Per-key mean over the ranks (train-loss sums for the epoch log); keys must agree."""
    if not is_distributed() or not values:
        return values
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist())}


def all_ranks_agree(ok: bool) -> bool:
    """True when `ok` holds on every rank (one tiny all-reduce); `ok` itself in one process."""
    if not is_distributed():
        return ok
    import torch
    import torch.distributed as dist

    t = torch.tensor([0 if ok else 1], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(t)
    return int(t.item()) == 0


def wrap(net, device):
    """DDP around a network with trainable parameters (others pass through)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not is_distributed() or isinstance(net, DDP) or not any(p.requires_grad for p in net.parameters()):
        return net
    return DDP(net, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(net):
    """The network inside a DDP wrapper (state dicts, attributes such as ``size_divisor``); else the network."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return net.module if isinstance(net, DDP) else net


@contextlib.contextmanager
def wrapped_networks(method):
    """The method's networks in DDP wrappers for the block (training); the plain ones again afterwards."""
    if not is_distributed():
        yield
        return
    plain = dict(method.networks)
    method.networks = {k: wrap(v, method.device) for k, v in plain.items()}
    try:
        yield
    finally:
        method.networks = plain


@contextlib.contextmanager
def unwrapped_networks(method):
    """The plain networks for the block (rank-0 validation inside a wrapped loop)."""
    wrapped = dict(method.networks)
    method.networks = {k: unwrap(v) for k, v in wrapped.items()}
    try:
        yield
    finally:
        method.networks = wrapped


def local_batch_size(batch_size: int) -> int:
    w = world_size()
    if batch_size % w:
        from .config import ConfigError

        raise ConfigError(f"train.batch_size={batch_size} is the global batch and must be divisible by the "
                          f"{w} torchrun processes (each takes batch_size / {w})")
    return batch_size // w


def sampler(dataset):
    """Rank's share of the items, in order (rank r takes r, r + W, ...), or None in one process."""
    if not is_distributed():
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=False, drop_last=False)
