"""Bring your own data: a folder of images and a folder of label images, matched by file name stem.

No code is needed, only a short dataset card (see docs/datasets.md)::

    name: my_cells
    reader: folder
    task: instance            # or semantic (labels are class indices 0..len(classes)-1)
    ndim: 2                   # 3 for (Z, Y, X) TIFF stacks or NIfTI volumes
    channels: 1
    classes: [background, cell]
    root: my_cells            # relative to the data root
    splits: {kind: random, seed: 0}
    params: {images: images, labels: masks, pattern: "*.tif"}

Images: PNG/TIFF/JPEG (2D), multi-page TIFF or NIfTI (3D). Labels: integer PNG/TIFF/NIfTI with the image's
spatial shape. ``labels/<stem>.<any suffix>`` labels ``images/<stem>.<suffix>``; ``label_suffix: _mask``
matches ``<stem>_mask.*`` instead. NIfTI spacing comes from the header (reversed to (z, y, x), as the
``msd`` reader does); otherwise the card's ``spacing``.

Splits: ``split_file`` (JSON ``{"train": [stems], "val": [...], "test": [...]}``, relative to the root) is
the official split; without it the core makes a seeded random split.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ..data import DataError, DatasetReader, Sample
from ..registry import register_dataset
from ._common import card_spacing, file_stem, index_by_stem, num_classes_of, read_array, to_image, to_label


class FolderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: str = "images"
    labels: str = "labels"
    pattern: str = "*"
    label_suffix: str = ""
    recursive: bool = False
    split_file: str | None = None


def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith((".nii", ".nii.gz"))


@register_dataset("folder", description="your own data: images/ and labels/ folders matched by file stem (2D or 3D)")
class Folder(DatasetReader):
    Params = FolderParams

    @cached_property
    def _images(self) -> dict[str, Path]:
        folder = self.require(self.root / self.params.images, "image folder")
        return index_by_stem(folder, self.params.pattern, self.params.recursive)

    @cached_property
    def _labels(self) -> dict[str, Path]:
        folder = self.root / self.params.labels
        if not folder.is_dir():
            return {}
        found = index_by_stem(folder, "*", self.params.recursive)
        sfx = self.params.label_suffix
        if sfx:
            found = {k[: -len(sfx)]: v for k, v in found.items() if k.endswith(sfx)}
        return found

    def list_ids(self) -> list[str]:
        return sorted(self._images)

    def official_splits(self) -> dict[str, list[str]] | None:
        if not self.params.split_file:
            return None
        f = self.require(self.root / self.params.split_file, "split file")
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"folder: split file {f} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise DataError(f"folder: split file {f} must map split names to lists of image stems")
        known = set(self._images)
        for split, ids in data.items():
            unknown = [i for i in ids if file_stem(i) not in known]
            if unknown:
                raise DataError(f"folder: split file {f}: split {split!r} names images not in "
                                f"{self.root / self.params.images}: {unknown[:5]}")
        return {k: [file_stem(i) for i in v] for k, v in data.items()}

    def _read(self, path: Path, what: str):
        if _is_nifti(path):
            from .msd import read_nifti

            return read_nifti(path, what)
        return read_array(path, what), None

    def load(self, sample_id: str) -> Sample:
        img_path = self._images.get(sample_id)
        if img_path is None:
            raise DataError(f"folder: no image {sample_id!r} in {self.root / self.params.images}")
        lab_path = self._labels.get(sample_id)
        if lab_path is None:
            raise DataError(f"folder: missing label for image {img_path}: expected "
                            f"{self.root / self.params.labels}/{sample_id}{self.params.label_suffix}.<png|tif|nii.gz>")
        ndim, channels = self.card.ndim, self.card.channels
        raw, spacing = self._read(img_path, "image")
        lab, _ = self._read(lab_path, "label")
        image = to_image(raw, img_path, ndim, channels)
        label = to_label(lab, lab_path, num_classes=num_classes_of(self.card), shape=image.shape[1:],
                         image_path=img_path)
        return Sample(sample_id, image, label, spacing or card_spacing(self.card, ndim),
                      {"image_path": str(img_path), "label_path": str(lab_path), "dtype": str(raw.dtype)})
