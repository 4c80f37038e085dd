"""BraTS 2015 training cases in the layout of the DeepMedic examples (Kamnitsas et al.).

Layout (``examples/dataForExamples/brats2015TrainingData`` of github.com/deepmedic/deepmedic)::

    train/<case>/Flair_subtrMeanDivStd.nii.gz      z-scored inside the brain mask, 240x240x155, 1 mm
    train/<case>/T1c_subtrMeanDivStd.nii.gz
    train/<case>/brainmask.nii.gz
    train/<case>/OTMultiClass.nii.gz               0 background, 1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing
    validation/<case>/...   test/<case>/...        DeepMedic's split (the official split here)

Images are (C, Z, Y, X) with spacing from the headers, read as every NIfTI reader of this package reads them
(`bench.datasets.msd.read_nifti`). ``crop_to_brain`` crops each case to the bounding box of its brain mask (as
nnU-Net crops to the non-zero region), which shrinks a case about 2.5x with no label lost outside the brain.

Labels (``regions: true``, default): nested classes so that the BraTS evaluation regions are unions of classes:
0 background, 1 edema (whole tumour only), 2 necrosis + non-enhancing tumour (core, not enhancing), 3 enhancing;
whole tumour WT = {1,2,3}, tumour core TC = {2,3}, enhancing ET = {3} (BraTS 2015: TC = labels 1, 3, 4).
``regions: false``: the five raw labels.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data import DataError, DatasetReader, Sample
from ..registry import register_dataset
from ._common import to_label
from .msd import read_nifti

SPLIT_FOLDERS = {"train": "train", "val": "validation", "test": "test"}
# raw BraTS 2015 label -> nested class (WT = >= 1, TC = >= 2, ET = 3)
NESTED_2015 = {0: 0, 2: 1, 1: 2, 3: 2, 4: 3}


def brats2015_regions(label: np.ndarray) -> dict[str, np.ndarray]:
    """Whole tumour / tumour core / enhancing tumour masks from a nested label (``regions: true``)."""
    return {"WT": label >= 1, "TC": label >= 2, "ET": label == 3}


class BraTS2015Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modalities: list[str] = Field(default_factory=lambda: ["Flair", "T1c"])
    image_suffix: str = "_subtrMeanDivStd.nii.gz"
    label_file: str = "OTMultiClass.nii.gz"
    brain_mask: str | None = "brainmask.nii.gz"
    crop_to_brain: bool = True
    regions: bool = True


@register_dataset("brats2015", description="BraTS 2015 cases in DeepMedic's layout (train/validation/test/<case>/)",
                  requires=("nibabel",))
class BraTS2015(DatasetReader):
    Params = BraTS2015Params

    @cached_property
    def _cases(self) -> dict[str, tuple[str, object]]:
        out = {}
        for split, folder in SPLIT_FOLDERS.items():
            d = self.root / folder
            if not d.is_dir():
                continue
            for case in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
                out[case.name] = (split, case)
        if not out:
            raise DataError(f"brats2015: no case folders under {self.root}/{{train,validation,test}}/")
        return out

    def list_ids(self) -> list[str]:
        return sorted(self._cases)

    def official_splits(self) -> dict[str, list[str]] | None:
        splits: dict[str, list[str]] = {}
        for cid, (split, _) in sorted(self._cases.items()):
            splits.setdefault(split, []).append(cid)
        return splits if "test" in splits else None

    def load(self, sample_id: str) -> Sample:
        if sample_id not in self._cases:
            raise DataError(f"brats2015: no case {sample_id!r} under {self.root}")
        folder = self._cases[sample_id][1]
        p = self.params
        if len(p.modalities) != self.card.channels:
            raise DataError(f"brats2015: dataset.params.modalities {p.modalities} gives {len(p.modalities)} channels, "
                            f"the dataset card says {self.card.channels}")
        chans, spacing = [], None
        for m in p.modalities:
            arr, sp = read_nifti(self.require(folder / f"{m}{p.image_suffix}", f"{m} image"))
            spacing = spacing or sp
            if chans and arr.shape != chans[0].shape:
                raise DataError(f"brats2015: {folder / (m + p.image_suffix)} has shape {arr.shape}, "
                                f"{p.modalities[0]} has {chans[0].shape}")
            chans.append(arr.astype(np.float32))
        image = np.stack(chans)
        lab_path = self.require(folder / p.label_file, "label")
        raw, _ = read_nifti(lab_path, "label")
        raw = to_label(raw, lab_path, shape=image.shape[1:], image_path=folder / f"{p.modalities[0]}{p.image_suffix}")
        unknown = sorted(set(np.unique(raw).tolist()) - set(NESTED_2015))
        if unknown:
            raise DataError(f"brats2015: label {lab_path} holds values {unknown}; BraTS 2015 labels are 0-4")
        if p.regions:
            lut = np.zeros(5, np.int32)
            for k, v in NESTED_2015.items():
                lut[k] = v
            raw = lut[raw]
        label = to_label(raw, lab_path, num_classes=len(self.card.classes))
        box = None
        if p.crop_to_brain and p.brain_mask:
            mask, _ = read_nifti(self.require(folder / p.brain_mask, "brain mask"), "brain mask")
            nz = np.argwhere((mask > 0.5) | (label > 0))
            if len(nz):
                lo, hi = nz.min(0), nz.max(0) + 1
                box = [[int(a), int(b)] for a, b in zip(lo, hi)]
                sl = tuple(slice(a, b) for a, b in box)
                image, label = np.ascontiguousarray(image[(slice(None), *sl)]), np.ascontiguousarray(label[sl])
        return Sample(sample_id, image, label, spacing,
                      {"image_path": str(folder / f"{p.modalities[0]}{p.image_suffix}"),
                       "label_path": str(lab_path), "crop": box,
                       "sources": [str(folder / f"{m}{p.image_suffix}") for m in p.modalities]
                       + ([str(folder / p.brain_mask)] if p.crop_to_brain and p.brain_mask else [])})
