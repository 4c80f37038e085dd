"""The one owner of a run folder's file names.

    config.yaml            resolved config (re-run with `bench run --config RUN_DIR/config.yaml`)
    environment.json       package versions, torch/CUDA/GPU, git commit
    status.json            running / finished / failed, MLflow run id, config hash
    splits.json            the image ids of each split used
    history.csv            per-epoch losses and validation metrics of the final training loop
    checkpoints/last.pt    written atomically after every epoch (resume point)
    checkpoints/best.pt    best epoch on the validation monitor
    checkpoints/<stage>/   the same for each named stage of a staged method
    stages/<stage>/        a stage's outputs, its history.csv and done.json
    calibration.json       post-processing chosen on the val split (bench/calibration.py); evaluation applies it
    metrics_per_image.csv  one row per image x metric x class (test split): the source of every summary
    summary.json           dataset-level metrics (test split)
    predictions/*.tif      predicted label images (test split)
    overlays/*.png         a few test images with predicted (magenta) and reference (green) outlines
    eval_<split>/          the same four for an evaluation of another split (the test results stay)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFiles:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits.json"

    def history(self, stage: str | None = None) -> Path:
        return self.stage_dir(stage) / "history.csv" if stage else self.root / "history.csv"

    def checkpoint(self, which: str = "last", stage: str | None = None) -> Path:
        folder = self.root / "checkpoints" / (stage or "")
        return folder / f"{which}.pt"

    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def _split_dir(self, split: str) -> Path:
        return self.root if split == "test" else self.root / f"eval_{split}"

    def table(self, split: str = "test") -> Path:
        return self._split_dir(split) / "metrics_per_image.csv"

    def summary(self, split: str = "test") -> Path:
        return self._split_dir(split) / "summary.json"

    def predictions(self, split: str = "test") -> Path:
        return self._split_dir(split) / "predictions"

    def overlays(self, split: str = "test") -> Path:
        return self._split_dir(split) / "overlays"


# names kept for code that imported them from the runner
CONFIG_FILE = "config.yaml"
STATUS_FILE = "status.json"
TABLE_FILE = "metrics_per_image.csv"
SUMMARY_FILE = "summary.json"
