"""Cell Tracking Challenge training datasets (celltrackingchallenge.net), segmentation ground truth only.

Official layout of one dataset (e.g. ``DIC-C2DH-HeLa/``)::

    01/t000.tif ...                 frames of sequence 01 (t0000.tif for sequences of 1000+ frames)
    01_GT/SEG/man_seg000.tif        gold-truth instance masks, for some frames only
    01_GT/SEG/man_seg_000_042.tif   3D datasets: gold truth of z-slice 42 of frame 000
    01_GT/TRA/...                   tracking markers (not used)
    01_ST/SEG/man_seg000.tif        silver truth (computer-generated, most frames; CTC 2020+)
    02/, 02_GT/, 02_ST/             the second sequence

Only frames that have a SEG file are samples (ids ``<seq>_t<TTT>``, or ``<seq>_t<TTT>_z<ZZZ>`` for slice
annotations of 3D frames, read page by page so a slice does not load the whole frame). With a 2D card
(``ndim: 2``) a 3D dataset gives one sample per annotated slice; with a 3D card only full-volume SEG files
(``man_segTTT.tif`` of a 3D frame) are used.

Params: ``sequences`` (default both), ``use_silver_truth``: add frames that have only a silver-truth mask (gold
truth is used wherever it exists; ``silver_only: true`` uses ST masks everywhere). Gold SEG masks of most
datasets annotate only part of the cells of a frame. Where the tracking markers (``0X_GT/TRA``) show every
nucleus, a frame whose SEG mask misses one is marked partial (``meta["partial"]``: only the SEG measure is scored
there, instance metrics use the complete frames); ``complete_frames_only`` drops such frames, and
``ignore_unannotated`` keeps them with the missed nuclei (their markers dilated by ``ignore_margin`` pixels, minus
the annotated objects) as an ignore region that losses leave out, so a partial frame does not teach that nuclei
are background.

Splits: none official (test-set ground truth is withheld by the challenge); ``test_sequences: ["02"]`` makes
an explicit split by sequence (``val_fraction`` then holds out a val share of the other frames, complete and
partial frames drawn separately), else the core splits frames at random (seeded; frames of one sequence are
correlated, so prefer the sequence split when both sequences are labelled).
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..data import DataError, DatasetReader, Sample
from ..registry import register_dataset
from ._common import card_spacing, read_array, read_tiff_page, to_image, to_label

SEG_RE = re.compile(r"^man_seg_?(\d+)(?:_(\d+))?\.tiff?$")


class CTCParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sequences: list[str] = ["01", "02"]
    use_silver_truth: bool = False
    silver_only: bool = False
    test_sequences: list[str] | None = None
    # keep only frames whose gold SEG mask covers every tracked object (each TRA marker at least half inside
    # the SEG foreground); reads the TRA and SEG masks of every frame once when listing
    complete_frames_only: bool = False
    # partial frames: the TRA markers of nuclei the SEG mask misses, dilated, become an ignore region
    ignore_unannotated: bool = False
    # markers are smaller than their nuclei (GOWT1: ~1,650 px markers, ~2,900 px nuclei): grow them this much
    ignore_margin: int = Field(12, ge=0)
    # with test_sequences: the share of the other frames held out as val, drawn separately among the complete and
    # the partial frames (seeded by the card's splits.seed), so that early stopping and post-processing calibration
    # see fully annotated frames too (instance metrics exist on those only); 0: the core carves a random val
    val_fraction: float = Field(0.0, ge=0, lt=1)


@register_dataset("ctc", description="Cell Tracking Challenge (01/t000.tif, 01_GT/SEG/man_seg000.tif, ST)")
class CTC(DatasetReader):
    Params = CTCParams

    def _seg_files(self, seq: str, kind: str) -> dict[str, Path]:
        """sample id -> SEG file of one sequence, GT or ST."""
        folder = self.root / f"{seq}_{kind}" / "SEG"
        out: dict[str, Path] = {}
        if not folder.is_dir():
            return out
        for p in sorted(folder.iterdir()):
            m = SEG_RE.match(p.name)
            if not m:
                continue
            t, z = m.group(1), m.group(2)
            if z is not None and self.card.ndim == 3:
                continue  # slice annotations of a 3D frame cannot label a 3D sample
            sid = f"{seq}_t{t}" + (f"_z{z}" if z is not None else "")
            out[sid] = p
        return out

    @cached_property
    def _index(self) -> dict[str, tuple[str, Path]]:
        """sample id -> (sequence, SEG file); no pixel data read."""
        p = self.params
        out: dict[str, tuple[str, Path]] = {}
        found_seq = False
        for seq in p.sequences:
            if not (self.root / seq).is_dir():
                continue
            found_seq = True
            gold = {} if p.silver_only else self._seg_files(seq, "GT")
            silver = self._seg_files(seq, "ST") if (p.use_silver_truth or p.silver_only) else {}
            for sid, f in {**silver, **gold}.items():  # gold wins where both exist
                out[sid] = (seq, f)
        if not found_seq:
            raise DataError(f"ctc: none of the sequences {p.sequences} found under {self.root} "
                            f"(expected {self.root / p.sequences[0]}/t000.tif ...)")
        return dict(sorted(out.items()))

    def list_ids(self) -> list[str]:
        if self.params.complete_frames_only:
            return [sid for sid in self._index if self.is_complete(sid)]
        return list(self._index)

    def _tra_file(self, sample_id: str) -> Path | None:
        seq, seg = self._index[sample_id]
        t = SEG_RE.match(seg.name).group(1)
        folder = self.root / f"{seq}_GT" / "TRA"
        for digits in {len(t), 3, 4}:
            p = folder / f"man_track{int(t):0{digits}d}.tif"
            if p.exists():
                return p
        return None

    def is_complete(self, sample_id: str) -> bool:
        """True when the frame's SEG mask covers every nucleus its TRA markers show (>= half of each marker)."""
        if sample_id not in self._complete:
            tra_path = self._tra_file(sample_id)
            if tra_path is None:
                raise DataError(f"ctc: complete_frames_only needs the tracking markers of {sample_id}: expected "
                                f"{self.root / (sample_id.split('_')[0] + '_GT') / 'TRA'}/man_trackTTT.tif")
            tra = read_array(tra_path, "tracking markers")
            seg = read_array(self._index[sample_id][1], "label")
            self._complete[sample_id] = frame_complete(tra, seg, missed_markers(tra, seg))
        return self._complete[sample_id]

    @cached_property
    def _complete(self) -> dict[str, bool]:
        return {}

    def official_splits(self) -> dict[str, list[str]] | None:
        test_seq = self.params.test_sequences
        if not test_seq:
            return None
        ids = self.list_ids()
        out = {"train": [i for i in ids if i.split("_")[0] not in test_seq],
               "test": [i for i in ids if i.split("_")[0] in test_seq]}
        if self.params.val_fraction:
            out["train"], out["val"] = self._stratified_val(out["train"], self.params.val_fraction)
        return out

    def _stratified_val(self, ids: list[str], fraction: float) -> tuple[list[str], list[str]]:
        """A seeded val share of each group (complete frames, the rest), at least one frame of a group of two+."""
        import numpy as np

        rng = np.random.default_rng(self.card.splits.seed)
        complete = [i for i in ids if self._tra_file(i) is not None and self.is_complete(i)]
        val: list[str] = []
        for group in (complete, [i for i in ids if i not in set(complete)]):
            if len(group) < 2:
                continue
            order = list(group)
            rng.shuffle(order)
            val += order[: min(len(order) - 1, max(1, int(round(len(order) * fraction))))]  # train keeps some
        if not set(val) & set(complete):
            import logging

            logging.getLogger(__name__).warning(
                "ctc %s: no complete frame in the val split (%d complete training frames): instance metrics, and a "
                "calibration by them, have nothing to score on val", self.root, len(complete))
        return sorted(i for i in ids if i not in set(val)), sorted(val)

    def _frame(self, seq: str, t: str) -> Path:
        folder = self.root / seq
        for digits in {len(t), 3, 4}:
            p = folder / f"t{int(t):0{digits}d}.tif"
            if p.exists():
                return p
        raise DataError(f"ctc: missing frame for mask {seq}_t{t}: expected {folder / f't{t}.tif'}")

    def load(self, sample_id: str) -> Sample:
        if sample_id not in self._index:
            raise DataError(f"ctc: no annotated frame {sample_id!r} under {self.root}")
        seq, seg = self._index[sample_id]
        m = SEG_RE.match(seg.name)
        t, z = m.group(1), m.group(2)
        frame = self._frame(seq, t)
        if z is not None:  # one annotated slice of a 3D frame: read that page only
            raw = read_tiff_page(frame, int(z))
        else:
            raw = read_array(frame)
        lab = read_array(seg, "label")
        if z is None and self.card.ndim == 2 and raw.ndim == 3 and lab.ndim == 2 and raw.shape[-1] not in (3, 4):
            raise DataError(f"ctc: frame {frame} is 3D {raw.shape} but its mask {seg} is 2D: use a 3D card")
        spatial = raw.shape[: lab.ndim] if raw.ndim > lab.ndim and raw.shape[-1] in (3, 4) else raw.shape
        label = to_label(lab, seg, shape=tuple(spatial), image_path=frame)
        image = to_image(raw, frame, self.card.ndim, self.card.channels)
        meta = {"image_path": str(frame), "label_path": str(seg), "dtype": str(raw.dtype),
                "truth": seg.parent.parent.name.split("_")[-1]}
        ignore = None
        tra_path = self._tra_file(sample_id) if z is None and meta["truth"] == "GT" else None
        if tra_path is not None:
            tra = read_array(tra_path, "tracking markers")
            if tra.shape != label.shape:
                raise DataError(f"ctc: tracking markers {tra_path} have shape {tra.shape}, the mask {seg} "
                                f"{label.shape}")
            missed = missed_markers(tra, label)
            self._complete[sample_id] = frame_complete(tra, label, missed)
            meta["tra_path"] = str(tra_path)
            meta["partial"] = bool(len(missed))
            if len(missed) and self.params.ignore_unannotated:
                ignore = ignore_region(tra, missed, label, self.params.ignore_margin)
        return Sample(sample_id, image, label, card_spacing(self.card, self.card.ndim), meta, ignore)


def missed_markers(tra, seg):
    """Ids of the tracking markers that the SEG mask does not cover (less than half of the marker inside)."""
    import numpy as np

    ids, counts = np.unique(tra[tra > 0], return_counts=True)
    inside = np.bincount(tra[(tra > 0) & (seg > 0)].ravel(), minlength=int(ids.max(initial=0)) + 1)
    return ids[inside[ids] * 2 < counts]


def frame_complete(tra, seg, missed) -> bool:
    """Every tracked nucleus is annotated (a frame without markers counts when it annotates something)."""
    return not len(missed) and (bool(tra.any()) or bool(seg.any()))


def ignore_region(tra, missed, seg, margin: int):
    """The missed nuclei's markers grown by `margin` pixels (Euclidean), outside the annotated objects."""
    import numpy as np
    from scipy import ndimage as ndi

    marks = np.isin(tra, missed)
    if margin:
        marks = ndi.distance_transform_edt(~marks) <= margin
    return marks & (seg == 0)
