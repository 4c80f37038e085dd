"""Toy plug-ins registered by the contract tests: a generated dataset (no files on disk) and its cards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from bench.data import DatasetReader, Sample
from bench.registry import DATASETS


class BlobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = 12
    size: int = 64
    labelled: bool = True
    # odd ids: the last disk is left out of the label and marked as an ignore region (a partial annotation)
    ignore: bool = False


class ToyBlobs(DatasetReader):
    """Disks on noise, made from the sample id: a generated dataset whose card has `root: null`."""

    Params = BlobParams

    def list_ids(self):
        return [f"b{i:03d}" for i in range(self.params.n)]

    def official_splits(self):
        ids = self.list_ids()
        return {"train": ids[: len(ids) // 2], "val": ids[len(ids) // 2 : -3], "test": ids[-3:]}

    def load(self, sid):
        rng = np.random.default_rng(int(sid[1:]))
        s = self.params.size
        yy, xx = np.mgrid[:s, :s]
        lab = np.zeros((s, s), np.int32)
        for k in range(1, 4):
            cy, cx, r = rng.integers(10, s - 10), rng.integers(10, s - 10), rng.integers(4, 9)
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        img = (lab * 1.0 + rng.normal(0, 0.2, lab.shape)).astype(np.float32)[None]
        ignore = None
        if self.params.ignore and int(sid[1:]) % 2:
            ignore = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 2) ** 2
            lab = np.where(ignore, 0, lab).astype(np.int32)
        return Sample(sid, img, lab if self.params.labelled else None, (1.0, 1.0), {}, ignore)


def register_toy_dataset() -> None:
    if "toy_blobs" not in DATASETS:
        DATASETS.register("toy_blobs", description="generated disks (tests)")(ToyBlobs)


TOY_DATASET_CARD = """
name: toy_blobs
reader: toy_blobs
description: generated disks (no files on disk)
task: semantic
ndim: 2
classes: [background, disk]
root: null
normalize: {kind: none}
params: {n: 12, size: 64}
train: {patch_size: [32, 32], batch_size: 2}
"""


def write_cards(folder: Path, methods: dict[str, str] | None = None) -> Path:
    (folder / "datasets").mkdir(parents=True, exist_ok=True)
    (folder / "methods").mkdir(parents=True, exist_ok=True)
    (folder / "datasets" / "toy_blobs.yaml").write_text(TOY_DATASET_CARD)
    for name, text in (methods or {}).items():
        (folder / "methods" / f"{name}.yaml").write_text(text)
    return folder
