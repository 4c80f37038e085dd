"""Shared test set-up: offline MLflow/HF, the data root, and fast CLI settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BENCH_DATA_ROOT", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
# absolute, so that CLI subprocesses started in temporary folders find it too
os.environ["BENCH_DATA_ROOT"] = str(Path(os.environ["BENCH_DATA_ROOT"]).resolve())

DATA_ROOT = Path(os.environ["BENCH_DATA_ROOT"])

# a few steps on small crops: enough to exercise every code path of a run
FAST_RUN = [
    "train.epochs=2", "train.steps_per_epoch=2", "train.batch_size=2", "train.patch_size=[128,128]",
    "train.max_train_images=4", "train.val_max_images=2", "eval.max_images=3", "eval.overlays=2",
]


def needs_data(name: str):
    return pytest.mark.skipif(not (DATA_ROOT / name).exists(), reason=f"{DATA_ROOT / name} not present")


@pytest.fixture
def data_root() -> Path:
    return DATA_ROOT
