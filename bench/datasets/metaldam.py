"""MetalDAM: SEM micrographs of additively manufactured steel (ArcelorMittal / DaSCI), semantic segmentation.

Official layout (the labelled release): ``images/micrographN.jpg`` (1024x768 or 1280x960 RGB renderings of
grey SEM images; the bottom rows are the microscope's information band) and ``labels/micrographN.png``
(1024x703 or 1280x895, a few 1024x702; one file is stored as RGB, its channel 0 is the label), classes
0 matrix, 1 austenite, 2 martensite/austenite, 3 precipitate, 4 defect.

Each image is cropped to its label's height, which drops the information band. The release ships no split:
``official_splits`` reads ``{train,val,test}.txt`` (one stem per line) when present, else the core makes a
seeded random split.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data import DataError, DatasetReader, Sample
from ..registry import register_dataset
from ._common import card_spacing, index_by_stem, num_classes_of, read_array, to_image, to_label

SPLIT_FILES = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}


N_RAW_CLASSES = 5


class MetalDAMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    class_map: list[int] | None = Field(
        None, min_length=N_RAW_CLASSES, max_length=N_RAW_CLASSES,
        description="new class of each of the 5 MetalDAM classes; None: the 5 classes as released "
                    "(metaldam_2phase merges them into the two phases a phase-field simulation models)")


@register_dataset("metaldam", description="MetalDAM SEM steel micrographs, 5 classes (images/*.jpg, labels/*.png)")
class MetalDAM(DatasetReader):
    Params = MetalDAMParams

    def _images(self) -> dict:
        return index_by_stem(self.require(self.root / "images", "image folder"))

    def list_ids(self) -> list[str]:
        return sorted(self._images())

    def official_splits(self) -> dict[str, list[str]] | None:
        files = {k: self.root / v for k, v in SPLIT_FILES.items()}
        if not files["train"].exists() or not files["test"].exists():
            return None
        return {k: [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
                for k, f in files.items() if f.exists()}

    def load(self, sample_id: str) -> Sample:
        img_path = self._images().get(sample_id)
        if img_path is None:
            raise DataError(f"metaldam: no image {sample_id!r} in {self.root / 'images'}")
        lab_path = self.root / "labels" / f"{sample_id}.png"
        if not lab_path.exists():
            raise DataError(f"metaldam: missing label for image {img_path}: expected {lab_path}")
        raw = read_array(img_path)
        lab = read_array(lab_path, "label")
        if lab.ndim == 3:  # one label is stored as RGB(A): channel 0 holds the class index
            lab = lab[..., 0]
        h, w = lab.shape
        if raw.shape[1] != w or raw.shape[0] < h:
            raise DataError(
                f"metaldam: label {lab_path} ({h}x{w}) does not fit image {img_path} "
                f"({raw.shape[0]}x{raw.shape[1]}): same width and at most the image's height expected"
            )
        raw = raw[:h]  # drop the information band below the labelled area
        cmap = self.params.class_map
        label = to_label(lab, lab_path, num_classes=N_RAW_CLASSES if cmap else num_classes_of(self.card),
                         shape=(h, w), image_path=img_path)
        if cmap:
            lut = np.asarray(cmap)
            if lut.min() < 0 or lut.max() >= len(self.card.classes):
                raise DataError(f"metaldam: class_map {cmap} must name classes 0..{len(self.card.classes) - 1} "
                                f"(the card's {self.card.classes})")
            label = lut[label].astype(np.int32)
        image = to_image(raw, img_path, 2, self.card.channels)
        return Sample(sample_id, image, label, card_spacing(self.card, 2),
                      {"image_path": str(img_path), "label_path": str(lab_path), "dtype": str(raw.dtype)})
