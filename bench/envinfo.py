"""Environment record and seeding: what a run needs to be reproduced."""

from __future__ import annotations

import os
import platform
import random
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = [
    "physeg-bench", "torch", "torchvision", "numpy", "scipy", "scikit-image", "segmentation-models-pytorch",
    "monai", "mlflow", "optuna", "pandas", "pydantic", "tifffile", "cellpose",
]


def git_commit(path: Path | None = None) -> str | None:
    where = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True,
            timeout=5,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except Exception:
        return None


def environment_record() -> dict:
    import torch

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = version(p)
        except PackageNotFoundError:
            pass
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "git_commit": git_commit(),
    }


def hardware_summary(env: dict) -> str:
    return env.get("gpu") or f"cpu x{env.get('cpu_count')}"


def seed_everything(seed: int, deterministic: bool = True) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: derive python/numpy seeds from torch's per-worker seed."""
    import numpy as np
    import torch

    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def select_device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return dev


def training_resources(networks: dict, device) -> dict:
    """What a run's training cost, for the leaderboards' cost table: trainable parameters of its networks, the
    process's peak resident memory so far (ru_maxrss: data, caches and the CPU-side model included) and, on CUDA,
    torch's peak allocated device memory."""
    import resource

    import torch

    from .distributed import unwrap

    params = sum(p.numel() for n in networks.values() for p in unwrap(n).parameters() if p.requires_grad)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out = {"parameters": int(params), "peak_rss_mib": round(rss_kib / 1024, 1)}
    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out
