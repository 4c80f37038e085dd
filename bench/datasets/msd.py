"""3D medical volumes in the Medical Segmentation Decathlon / nnU-Net raw layout (NIfTI).

Layout (one task folder, e.g. ``Task01_BrainTumour/``)::

    dataset.json                  optional: "training": [{"image": ..., "label": ...}], "labels", "modality"
    imagesTr/<case>.nii.gz        MSD: one file, 3D or 4D (x, y, z, modality)
    imagesTr/<case>_0000.nii.gz   nnU-Net: one 3D file per modality (_0000, _0001, ...)
    labelsTr/<case>.nii.gz        integer labels

Arrays are returned in (Z, Y, X) order with spacing (sz, sy, sx) read from each case's header (NIfTI stores
(x, y, z) and ``pixdim`` in that order; both are reversed together). Images are (C, Z, Y, X). Voxels are read
when a case is loaded, one case at a time; ``list_ids`` reads dataset.json or file names only. macOS ``._*``
files shipped in the MSD tarballs are ignored.

``label_map`` maps raw label values to class indices (values not listed keep their value). There is no
official labelled test set (imagesTs has no labels): the core makes a seeded random split.

The ``brats`` reader adds the BraTS label conventions (see `BraTS`).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..data import DataError, DatasetReader, Sample
from ..registry import register_dataset
from ._common import file_stem, num_classes_of, to_label


class MSDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: str = "imagesTr"
    labels: str = "labelsTr"
    label_map: dict[int, int] | None = None


def read_nifti(path: Path, what: str = "image") -> tuple[np.ndarray, tuple[float, ...]]:
    """NIfTI file -> (array in (Z, Y, X[, C]) order... see below, spacing (sz, sy, sx)).

    A 3D file (x, y, z) becomes (z, y, x); a 4D file (x, y, z, c) becomes (c, z, y, x).
    """
    if not path.exists():
        raise DataError(f"{what} file not found: {path}")
    try:
        import nibabel
    except ImportError:
        raise DataError("reading NIfTI needs nibabel: pip install nibabel") from None
    try:
        img = nibabel.load(str(path))
        arr = np.asanyarray(img.dataobj)
        zooms = tuple(round(float(z), 6) for z in img.header.get_zooms()[:3])  # float32 in the header
    except Exception as exc:
        raise DataError(f"cannot read {what} {path}: {type(exc).__name__}: {exc}") from exc
    if arr.ndim == 3:
        arr = arr.transpose(2, 1, 0)
    elif arr.ndim == 4:
        arr = arr.transpose(3, 2, 1, 0)
    else:
        raise DataError(f"{what} {path}: expected a 3D or 4D volume, got shape {arr.shape}")
    spacing = tuple(reversed(zooms)) if len(zooms) == 3 else (1.0, 1.0, 1.0)
    return np.ascontiguousarray(arr), spacing


def _strip(p: str) -> str:
    return p[2:] if p.startswith("./") else p


@register_dataset("msd", description="Medical Segmentation Decathlon / nnU-Net raw NIfTI (imagesTr, labelsTr)",
                  requires=("nibabel",))
class MSD(DatasetReader):
    Params = MSDParams

    @cached_property
    def meta(self) -> dict:
        f = self.root / "dataset.json"
        if not f.exists():
            return {}
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"msd: {f} is not valid JSON: {exc}") from None

    @cached_property
    def _cases(self) -> dict[str, tuple[list[Path], Path]]:
        """case id -> (image files (one 4D file or one per modality), label file). No voxels read."""
        img_dir = self.require(self.root / self.params.images, "image folder")
        lab_dir = self.root / self.params.labels
        out: dict[str, tuple[list[Path], Path]] = {}
        entries = self.meta.get("training") if self.params.images == "imagesTr" else None
        if entries and all(isinstance(e, dict) and "label" in e for e in entries):
            names = [file_stem(_strip(e["label"])) for e in entries]
        else:
            if not lab_dir.is_dir():
                raise DataError(f"msd: label folder not found: {lab_dir}")
            names = [file_stem(p) for p in sorted(lab_dir.glob("*.nii*")) if not p.name.startswith(".")]
        for case in names:
            label = lab_dir / f"{case}.nii.gz"
            if not label.exists() and (lab_dir / f"{case}.nii").exists():
                label = lab_dir / f"{case}.nii"
            single = [img_dir / f"{case}.nii.gz", img_dir / f"{case}.nii"]
            single = [p for p in single if p.exists()]
            if single:
                images = single[:1]
            else:
                images = sorted(p for p in img_dir.glob(f"{case}_[0-9][0-9][0-9][0-9].nii*")
                                if not p.name.startswith("."))
            out[case] = (images, label)
        return out

    def list_ids(self) -> list[str]:
        return sorted(self._cases)

    def class_map(self, label: np.ndarray, path: Path) -> np.ndarray:
        if self.params.label_map:
            lut_max = max(int(label.max(initial=0)), max(self.params.label_map)) + 1
            lut = np.arange(lut_max, dtype=np.int64)
            for k, v in self.params.label_map.items():
                lut[k] = v
            label = lut[label]
        return label

    def load(self, sample_id: str) -> Sample:
        if sample_id not in self._cases:
            raise DataError(f"msd: no case {sample_id!r} under {self.root}")
        images, lab_path = self._cases[sample_id]
        if not images:
            raise DataError(f"msd: no image for case {sample_id}: expected {self.root / self.params.images}/"
                            f"{sample_id}.nii.gz or {sample_id}_0000.nii.gz")
        if not lab_path.exists():
            raise DataError(f"msd: missing label for image {images[0]}: expected {lab_path}")
        chans, spacing, dtype = [], None, None
        for f in images:
            arr, sp = read_nifti(f)
            dtype = arr.dtype
            spacing = spacing or sp
            chans.extend(list(arr) if arr.ndim == 4 else [arr])
        image = np.stack(chans).astype(np.float32)
        if image.shape[0] != self.card.channels:
            raise DataError(f"msd: case {sample_id} has {image.shape[0]} channel(s) ({', '.join(f.name for f in images)}), "
                            f"the dataset card says {self.card.channels}")
        raw_lab, lsp = read_nifti(lab_path, "label")
        if raw_lab.ndim != 3:
            raise DataError(f"msd: label {lab_path} is {raw_lab.ndim}D {raw_lab.shape}; a 3D label volume expected")
        raw_lab = to_label(raw_lab, lab_path, shape=image.shape[1:], image_path=images[0])
        label = to_label(self.class_map(raw_lab, lab_path), lab_path, num_classes=num_classes_of(self.card))
        return Sample(sample_id, image, label, spacing,
                      {"image_path": str(images[0]), "label_path": str(lab_path), "dtype": str(dtype)})


# ------------------------------------------------------------------------------------------------
# BraTS


class BraTSParams(MSDParams):
    convention: Literal["msd", "brats"] = "msd"
    regions: bool = True


# raw label -> nested class (1 = whole tumour only / edema, 2 = tumour core, not enhancing, 3 = enhancing)
NESTED = {"msd": {0: 0, 1: 1, 2: 2, 3: 3}, "brats": {0: 0, 1: 2, 2: 1, 4: 3, 3: 3}}
# raw label -> consecutive class, keeping the convention's own order
PLAIN = {"msd": {0: 0, 1: 1, 2: 2, 3: 3}, "brats": {0: 0, 1: 1, 2: 2, 4: 3, 3: 3}}


def brats_regions(label: np.ndarray) -> dict[str, np.ndarray]:
    """The three BraTS evaluation regions from a nested label (``regions: true``):
    whole tumour = class >= 1, tumour core = class >= 2, enhancing tumour = class == 3."""
    return {"WT": label >= 1, "TC": label >= 2, "ET": label == 3}


@register_dataset("brats", description="BraTS brain tumours (MSD Task01 or nnU-Net layout), 4 MRI modalities",
                  requires=("nibabel",))
class BraTS(MSD):
    """BraTS labels with a single-label semantic pipeline.

    Raw conventions: ``msd`` (Task01_BrainTumour: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour) and
    ``brats`` (challenge files: 1 necrotic/non-enhancing core, 2 edema, 4 enhancing; 3 is read as 4).

    ``regions: true`` (default): nested classes, so that the BraTS regions are unions of classes,
    0 background, 1 whole-tumour-only (edema), 2 tumour-core-only (necrotic / non-enhancing), 3 enhancing;
    WT = {1,2,3}, TC = {2,3}, ET = {3} (`brats_regions`). Per-class scores are then scores of the
    disjoint sub-regions, not of WT/TC/ET; region scores are the Dice of those unions.
    ``regions: false``: the raw labels of the convention made consecutive ({0,1,2,4} -> {0,1,2,3} for
    ``brats``). For the ``msd`` convention both give the same array (its labels are already nested).
    """

    Params = BraTSParams

    def class_map(self, label: np.ndarray, path: Path) -> np.ndarray:
        table = (NESTED if self.params.regions else PLAIN)[self.params.convention]
        vals = np.unique(label)
        unknown = sorted(set(vals.tolist()) - set(table))
        if unknown:
            raise DataError(f"brats: label {path} holds values {unknown} not in the {self.params.convention!r} "
                            f"convention ({sorted(table)}); set dataset.params.convention")
        lut = np.zeros(max(table) + 1, np.int64)
        for k, v in table.items():
            lut[k] = v
        return lut[label]
