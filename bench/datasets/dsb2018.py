"""2018 Data Science Bowl nuclei (stage 1), as distributed by Kaggle and mirrored as BBBC038.

Stage-1 layout: ``stage1_train/<id>/images/<id>.png`` (RGBA or grey PNG, sizes vary) and one binary PNG per
nucleus in ``stage1_train/<id>/masks/*.png``; the instance label is built by painting mask k (sorted file
names) with id k+1 (the rare overlaps: the later file wins). A root that directly holds ``<id>/images/`` is
read the same way.

The stage-1 test images (``stage1_test/<id>/images/<id>.png``) carry labels only in the later-released
``stage1_solution.csv`` (Kaggle run-length encoding: 1-based start/length pairs, column-major). When both are
present they form the official test split (train = stage1_train); otherwise there is no official split and
the core makes a seeded random split of the training images.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..data import DataError, DatasetReader, Sample
from ..registry import register_dataset
from ._common import card_spacing, read_array, to_image, to_label


class DSBParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train_dir: str = "stage1_train"
    test_dir: str = "stage1_test"
    solution_csv: str = "stage1_solution.csv"


def decode_kaggle_rle(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Kaggle DSB run-length string ("start length ..." 1-based, column-major) -> boolean mask."""
    vals = np.asarray(rle.split(), dtype=np.int64)
    if vals.size % 2:
        raise ValueError("odd number of values in a run-length string")
    flat = np.zeros(shape[0] * shape[1], bool)
    for s, n in zip(vals[0::2] - 1, vals[1::2]):
        flat[s : s + n] = True
    return flat.reshape(shape[1], shape[0]).T


def encode_kaggle_rle(mask: np.ndarray) -> str:
    """Inverse of `decode_kaggle_rle` (for fixtures and exports)."""
    pix = np.concatenate([[0], mask.T.ravel().astype(np.int8), [0]])
    runs = np.flatnonzero(pix[1:] != pix[:-1]) + 1
    runs[1::2] -= runs[0::2]
    return " ".join(str(x) for x in runs)


@register_dataset("dsb2018", description="2018 Data Science Bowl nuclei, stage 1 (<id>/images/<id>.png + <id>/masks/*.png)")
class DSB2018(DatasetReader):
    Params = DSBParams

    @cached_property
    def _train_dir(self) -> Path:
        d = self.root / self.params.train_dir
        if d.is_dir():
            return d
        if any((p / "images").is_dir() for p in self.root.iterdir() if p.is_dir()):
            return self.root  # the <id>/ folders directly under the root
        raise DataError(f"dsb2018: no {d}/ and no <id>/images/ folders under {self.root}")

    @cached_property
    def _solution(self) -> dict[str, list[tuple[str, int, int]]]:
        """image id -> [(rle, height, width)] from stage1_solution.csv (empty when absent)."""
        path = self.root / self.params.solution_csv
        if not path.exists() or not (self.root / self.params.test_dir).is_dir():
            return {}
        import csv

        out: dict[str, list] = {}
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                try:
                    out.setdefault(row["ImageId"], []).append(
                        (row["EncodedPixels"], int(row["Height"]), int(row["Width"])))
                except (KeyError, ValueError) as exc:
                    raise DataError(f"dsb2018: {path}: expected columns ImageId,EncodedPixels,Height,Width "
                                    f"({type(exc).__name__}: {exc})") from None
        return out

    def _case_dirs(self, folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "images").is_dir())

    def list_ids(self) -> list[str]:
        ids = self._case_dirs(self._train_dir)
        if self._solution:
            ids += [i for i in self._case_dirs(self.root / self.params.test_dir) if i in self._solution]
        return sorted(ids)

    def official_splits(self) -> dict[str, list[str]] | None:
        if not self._solution:
            return None
        test = sorted(i for i in self._case_dirs(self.root / self.params.test_dir) if i in self._solution)
        return {"train": self._case_dirs(self._train_dir), "test": test}

    def load(self, sample_id: str) -> Sample:
        case = self._train_dir / sample_id
        in_test = not case.is_dir() and sample_id in self._solution
        if in_test:
            case = self.root / self.params.test_dir / sample_id
        img_path = case / "images" / f"{sample_id}.png"
        if not img_path.exists():
            found = sorted((case / "images").glob("*.png")) if (case / "images").is_dir() else []
            if len(found) != 1:
                raise DataError(f"dsb2018: image not found: {img_path}")
            img_path = found[0]
        raw = read_array(img_path)
        shape = raw.shape[:2]
        label = np.zeros(shape, np.int32)
        if in_test:
            lab_path = self.root / self.params.solution_csv
            for k, (rle, h, w) in enumerate(self._solution[sample_id], start=1):
                if (h, w) != shape:
                    raise DataError(f"dsb2018: {lab_path}: {sample_id} mask size {h}x{w} != image {img_path} "
                                    f"size {shape[0]}x{shape[1]}")
                try:
                    label[decode_kaggle_rle(rle, shape)] = k
                except ValueError as exc:
                    raise DataError(f"dsb2018: {lab_path}: bad run-length for {sample_id}: {exc}") from None
        else:
            lab_path = case / "masks"
            masks = sorted(p for p in lab_path.glob("*.png") if not p.name.startswith(".")) if lab_path.is_dir() else []
            if not masks:
                raise DataError(f"dsb2018: missing label for image {img_path}: no masks in {lab_path}/")
            for k, mp in enumerate(masks, start=1):
                m = read_array(mp, "mask")
                if m.ndim == 3:
                    m = m[..., 0]
                if m.shape != shape:
                    raise DataError(f"dsb2018: mask {mp} shape {m.shape} != image {img_path} shape {shape}")
                label[m > 0] = k  # later masks win where two overlap
        label = to_label(label, lab_path, shape=shape)
        image = to_image(raw, img_path, 2, self.card.channels)
        return Sample(sample_id, image, label, card_spacing(self.card, 2),
                      {"image_path": str(img_path), "label_path": str(lab_path), "dtype": str(raw.dtype)})
