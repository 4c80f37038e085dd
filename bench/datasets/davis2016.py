"""DAVIS 2016: single-object video segmentation of natural video (Perazzi et al., CVPR 2016), per frame.

Official layout (480p release)::

    JPEGImages/480p/<sequence>/00000.jpg ...     RGB frames, 854 x 480
    Annotations/480p/<sequence>/00000.png ...    binary masks, 0 = background, 255 = the object

Samples are frames, ids ``<sequence>_<frame>`` (``camel_00042``; file-name safe); the task is semantic with classes
[background, object]. DAVIS splits by sequence (its train/val sets); shape-prior studies (the ISR poster) train a
deliberately weak predictor on a few frames of each sequence instead, so the split here is per sequence:
``train_frames`` evenly spaced frames for training, ``val_frames`` further evenly spaced ones for validation, and
the remaining frames for testing (every ``test_stride``-th of them). The split depends on the frame counts only (no seed). The release zip
(``DAVIS-data.zip``, what `bench data fetch davis2016` downloads) holds the layout in a ``DAVIS/`` folder: it is
read from there too.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data import DataError, DatasetReader, Sample
from ..registry import register_dataset
from ._common import card_spacing, read_array, to_image, to_label


class Davis2016Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resolution: str = Field("480p", description="subfolder of JPEGImages/ and Annotations/")
    sequences: list[str] | None = Field(None, description="sequences to use; None: every one on disk")
    train_frames: int = Field(4, ge=1, description="evenly spaced training frames per sequence")
    val_frames: int = Field(2, ge=0, description="evenly spaced validation frames per sequence (after train's)")
    test_stride: int = Field(1, ge=1, description="every k-th of the remaining frames is a test frame (neighbouring "
                                                  "frames of a video are nearly the same image)")


@register_dataset("davis2016", description="DAVIS 2016 single-object video frames (JPEGImages/480p, Annotations/480p)")
class Davis2016(DatasetReader):
    Params = Davis2016Params

    @property
    def base(self):
        nested = self.root / "DAVIS"  # the release zip's top folder
        return nested if not (self.root / "JPEGImages").exists() and (nested / "JPEGImages").exists() else self.root

    def _frames(self) -> dict[str, list[str]]:
        img_root = self.require(self.base / "JPEGImages" / self.params.resolution, "frame folder")
        on_disk = sorted(p.name for p in img_root.iterdir() if p.is_dir())
        wanted = self.params.sequences if self.params.sequences is not None else on_disk
        missing = sorted(set(wanted) - set(on_disk))
        if missing:
            raise DataError(f"davis2016: sequences {missing} not found in {img_root} (found: {on_disk})")
        return {s: sorted(p.stem for p in (img_root / s).glob("*.jpg")) for s in wanted}

    def list_ids(self) -> list[str]:
        return [f"{s}_{f}" for s, frames in self._frames().items() for f in frames]

    def official_splits(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        p = self.params
        for s, frames in self._frames().items():
            n = len(frames)
            if n < p.train_frames + p.val_frames + 1:
                raise DataError(f"davis2016: sequence {s} has {n} frames, fewer than train_frames + val_frames + 1")
            train = set(np.linspace(0, n - 1, p.train_frames).round().astype(int).tolist())
            rest = [i for i in range(n) if i not in train]
            # val frames evenly spaced among the others, away from the training frames' positions
            val = {rest[j] for j in np.linspace(0, len(rest) - 1, p.val_frames + 2)[1:-1].round().astype(int)}
            test = [i for i in range(n) if i not in train and i not in val][:: p.test_stride]
            for i, f in enumerate(frames):
                if i in train or i in val or i in test:
                    out["train" if i in train else "val" if i in val else "test"].append(f"{s}_{f}")
        return out

    def load(self, sample_id: str) -> Sample:
        seq, _, frame = sample_id.rpartition("_")
        res = self.params.resolution
        img_path = self.base / "JPEGImages" / res / seq / f"{frame}.jpg"
        lab_path = self.base / "Annotations" / res / seq / f"{frame}.png"
        if not img_path.exists():
            raise DataError(f"davis2016: no frame {sample_id!r}: expected {img_path}")
        if not lab_path.exists():
            raise DataError(f"davis2016: missing annotation for frame {img_path}: expected {lab_path}")
        raw = read_array(img_path)
        lab = read_array(lab_path, "label")
        if lab.ndim == 3:  # a palette or grey mask saved with channels
            lab = lab[..., 0]
        values = np.unique(lab)
        if not set(values.tolist()) <= {0, 255} and not set(values.tolist()) <= {0, 1}:
            raise DataError(f"davis2016: annotation {lab_path} is not binary (values {values[:8].tolist()}); "
                            "DAVIS 2016 masks hold 0 and 255 only")
        label = to_label((lab > 0).astype(np.int32), lab_path, num_classes=2, shape=raw.shape[:2], image_path=img_path)
        image = to_image(raw, img_path, 2, self.card.channels)
        return Sample(id=sample_id, image=image, label=label, spacing=card_spacing(self.card, 2),
                      meta={"sequence": seq, "frame": frame})
