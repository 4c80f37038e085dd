"""LIVECell (Edlund et al., Nature Methods 2021): phase-contrast images of 8 cell lines, COCO instance masks.

Official layout (after ``images.zip`` and the annotation files)::

    images/livecell_train_val_images/<CellType>/<CellType>_Phase_<Well>_<Loc>_<Time>_<Crop>.tif   704x520 uint8
    images/livecell_test_images/<CellType>/...
    annotations/LIVECell/livecell_coco_{train,val,test}.json               LIVECell-wide split
    annotations/LIVECell_single_cells/<celltype>/{train,val,test}.json      one cell type each
    annotations/LIVECell_dataset_size_split/<k>_train<P>percent.json        the paper's data-size subsets

Images are found by file name anywhere under ``images/`` (no pixel data read for that). The cell type comes
from the file name (``A172_Phase_A7_1_00d00h00m_1.tif`` -> A172); names are compared ignoring case and
dashes, so ``SH-SY5Y`` matches ``SHSY5Y``.

Annotations are COCO: ``segmentation`` as polygons (a list of [x0, y0, x1, y1, ...]) or RLE (``{"size": [h, w],
"counts": [...]}`` uncompressed, or the compressed string). LIVECell stores ``annotations`` as a dict keyed by
id; a list is accepted too. The instance label paints annotations in file order with ids 1, 2, ...; where
instances overlap, **later annotations win** (overwrite earlier ones), and an annotation left with no pixels is
dropped. ``iscrowd`` annotations are skipped. Decoding uses pycocotools when installed, else a built-in decoder
(RLE exact; polygons rasterised with scikit-image, which can differ from pycocotools on boundary pixels).

Splits are the official files. Protocols (reader params):

- ``cell_types``: keep only these cell types in every split (uses the combined files, or the single-cell-type
  files when the combined ones are absent);
- ``train_cell_types`` / ``test_cell_types``: train (and val) on some cell types and test on others, e.g.
  ``train_cell_types: [A172, BT474]``, ``test_cell_types: [SH-SY5Y]``;
- ``train_annotation``: another train file, e.g. the official
  ``annotations/LIVECell_dataset_size_split/0_train2percent.json``;
- ``train_fraction`` or ``train_count`` with ``seed``: a seeded random subset of the training images
  (low-data regimes); val and test stay whole.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..data import DataError, DatasetReader, Sample
from ..registry import register_dataset
from ._common import card_spacing, read_array, seeded_subset, to_image, to_label

SPLITS = ("train", "val", "test")


class LIVECellParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: str = "images"
    annotations: str = "annotations"
    cell_types: list[str] | None = None
    train_cell_types: list[str] | None = None
    test_cell_types: list[str] | None = None
    train_annotation: str | None = None
    train_fraction: float | None = Field(None, gt=0, le=1)
    train_count: int | None = Field(None, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _one_regime(self):
        if self.train_fraction is not None and self.train_count is not None:
            raise ValueError("set train_fraction or train_count, not both")
        return self


def norm_type(name: str) -> str:
    return name.replace("-", "").replace("_", "").upper()


def cell_type_of(file_name: str) -> str:
    """``A172_Phase_A7_1_00d00h00m_1.tif`` -> ``A172``."""
    stem = Path(file_name).name
    return stem.split("_Phase")[0] if "_Phase" in stem else stem.split("_")[0]


# ------------------------------------------------------------------------------------------------
# COCO masks


def rle_string_to_counts(s: str) -> list[int]:
    """COCO compressed RLE string -> run lengths (pycocotools' rleFrString)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def counts_to_rle_string(counts: list[int]) -> str:
    """Run lengths -> COCO compressed RLE string (pycocotools' rleToString)."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = not ((ch & 0x10) == 0 and x == 0 or (ch & 0x10) != 0 and x == -1)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """Boolean mask -> uncompressed COCO run lengths (column-major, starting with a run of zeros)."""
    flat = np.asarray(mask, bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return [int(r) for r in runs]


def decode_rle(rle: dict) -> np.ndarray:
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = rle_string_to_counts(counts.decode() if isinstance(counts, bytes) else counts)
    flat = np.zeros(h * w, bool)
    pos, val = 0, False
    for c in counts:
        if val:
            flat[pos : pos + c] = True
        pos += c
        val = not val
    if pos != h * w:
        raise ValueError(f"RLE counts sum to {pos}, the mask has {h * w} pixels")
    return flat.reshape((h, w), order="F")


def polygons_to_mask(polys: list, h: int, w: int) -> np.ndarray:
    from skimage.draw import polygon

    mask = np.zeros((h, w), bool)
    for poly in polys:
        xy = np.asarray(poly, float).reshape(-1, 2)
        if len(xy) < 3:
            continue
        rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, (h, w))  # COCO: pixel centres at +0.5
        mask[rr, cc] = True
    return mask


def annotation_mask(seg, h: int, w: int, use_pycocotools: bool = True) -> np.ndarray:
    """COCO `segmentation` (polygons, uncompressed or compressed RLE) -> boolean (h, w) mask."""
    if use_pycocotools:
        try:
            from pycocotools import mask as mask_utils
        except ImportError:
            mask_utils = None
        if mask_utils is not None:
            if isinstance(seg, list):
                rles = mask_utils.frPyObjects([p for p in seg if len(p) >= 6], h, w)
                if not rles:
                    return np.zeros((h, w), bool)
                rle = mask_utils.merge(rles)
            elif isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, *seg["size"])
            else:
                rle = dict(seg)
                if isinstance(rle["counts"], str):
                    rle["counts"] = rle["counts"].encode()
            import warnings

            with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                return mask_utils.decode(rle).astype(bool)
    if isinstance(seg, list):
        return polygons_to_mask(seg, h, w)
    return decode_rle(seg)


# ------------------------------------------------------------------------------------------------


@register_dataset("livecell", description="LIVECell phase-contrast cells, COCO JSON (polygons/RLE), 8 cell types")
class LIVECell(DatasetReader):
    Params = LIVECellParams

    # -- annotation files -----------------------------------------------------------------------
    def _types_wanted(self, split: str) -> list[str] | None:
        p = self.params
        if split == "test" and p.test_cell_types:
            return p.test_cell_types
        if split in ("train", "val") and p.train_cell_types:
            return p.train_cell_types
        return p.cell_types

    def _split_files(self, split: str) -> list[Path]:
        ann = self.require(self.root / self.params.annotations, "annotation folder")
        if split == "train" and self.params.train_annotation:
            return [self.require(self.root / self.params.train_annotation, "train annotation file")]
        combined = sorted(ann.rglob(f"livecell_coco_{split}.json"))
        if combined:
            return combined[:1]
        single = ann / "LIVECell_single_cells"
        if single.is_dir():
            wanted = self._types_wanted(split)
            dirs = sorted(d for d in single.iterdir() if d.is_dir())
            if wanted:
                keys = {norm_type(t) for t in wanted}
                dirs = [d for d in dirs if norm_type(d.name) in keys]
            files = [d / f"{split}.json" for d in dirs if (d / f"{split}.json").exists()]
            if files:
                return files
        return []

    @cached_property
    def _coco(self) -> dict[str, dict]:
        """split -> {"images": {file_name: image entry}, "anns": {image id: [annotations in order]}, files}."""
        out: dict[str, dict] = {}
        for split in SPLITS:
            images: dict[str, dict] = {}
            anns: dict = {}
            files = self._split_files(split)
            for f in files:
                try:
                    data = json.loads(f.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise DataError(f"livecell: annotation file {f} is not valid JSON: {exc}") from None
                if "images" not in data or "annotations" not in data:
                    raise DataError(f"livecell: {f} is not a COCO file (needs 'images' and 'annotations')")
                a = data["annotations"]
                a = list(a.values()) if isinstance(a, dict) else a
                by_id = {}
                for im in data["images"]:
                    key = Path(im["file_name"]).name
                    images[key] = {**im, "_file": str(f)}
                    by_id[im["id"]] = key
                for an in a:
                    key = by_id.get(an["image_id"])
                    if key is None:
                        raise DataError(f"livecell: {f}: annotation {an.get('id')} refers to unknown image "
                                        f"{an['image_id']}")
                    anns.setdefault(key, []).append(an)
            wanted = self._types_wanted(split)
            if wanted:
                keys = {norm_type(t) for t in wanted}
                images = {k: v for k, v in images.items() if norm_type(cell_type_of(k)) in keys}
            out[split] = {"images": images, "anns": anns, "files": [str(f) for f in files]}
        if not any(v["images"] for v in out.values()):
            raise DataError(
                f"livecell: no annotated images under {self.root / self.params.annotations} "
                f"(expected LIVECell/livecell_coco_{{train,val,test}}.json or LIVECell_single_cells/<type>/"
                f"{{train,val,test}}.json{'; cell types ' + str(self.params.cell_types) if self.params.cell_types else ''})"
            )
        return out

    @cached_property
    def _image_files(self) -> dict[str, Path]:
        folder = self.require(self.root / self.params.images, "image folder")
        out: dict[str, Path] = {}
        for p in folder.rglob("*.tif*"):
            if not p.name.startswith("."):
                out.setdefault(p.name, p)
        return out

    @staticmethod
    def _id(file_name: str) -> str:
        return Path(file_name).stem

    # -- reader interface -----------------------------------------------------------------------
    def official_splits(self) -> dict[str, list[str]] | None:
        p = self.params
        out = {s: sorted(self._id(k) for k in self._coco[s]["images"]) for s in SPLITS if self._coco[s]["images"]}
        if "train" in out and (p.train_fraction is not None or p.train_count is not None):
            out["train"] = seeded_subset(out["train"], fraction=p.train_fraction, count=p.train_count, seed=p.seed)
        return out

    def list_ids(self) -> list[str]:
        ids: set[str] = set()
        for ids_of_split in self.official_splits().values():
            ids.update(ids_of_split)
        return sorted(ids)

    def _entry(self, sample_id: str) -> tuple[str, dict, list]:
        for split in SPLITS:
            key = f"{sample_id}.tif"
            c = self._coco[split]
            if key in c["images"]:
                return key, c["images"][key], c["anns"].get(key, [])
            for k, v in c["images"].items():  # other suffixes (.tiff, .png)
                if self._id(k) == sample_id:
                    return k, v, c["anns"].get(k, [])
        raise DataError(f"livecell: image {sample_id!r} is in no annotation file")

    def load(self, sample_id: str) -> Sample:
        key, entry, anns = self._entry(sample_id)
        path = self._image_files.get(key)
        if path is None:
            raise DataError(f"livecell: image file {key} (listed in {entry['_file']}) not found under "
                            f"{self.root / self.params.images}")
        raw = read_array(path)
        if raw.ndim == 3 and raw.shape[-1] in (3, 4):
            raw = raw[..., 0]
        h, w = raw.shape[:2]
        if (entry.get("height"), entry.get("width")) not in ((h, w), (None, None)):
            raise DataError(f"livecell: image {path} is {h}x{w} but {entry['_file']} says "
                            f"{entry.get('height')}x{entry.get('width')}")
        label = np.zeros((h, w), np.int32)
        nxt = 0
        for an in anns:
            if an.get("iscrowd"):
                continue
            seg = an.get("segmentation")
            if not seg:
                continue
            try:
                m = annotation_mask(seg, h, w)
            except Exception as exc:
                raise DataError(f"livecell: {entry['_file']}: cannot decode annotation {an.get('id')} of {key}: "
                                f"{type(exc).__name__}: {exc}") from None
            if m.shape != (h, w):
                raise DataError(f"livecell: {entry['_file']}: annotation {an.get('id')} of {key} has mask size "
                                f"{m.shape}, the image is {h}x{w}")
            nxt += 1
            label[m] = nxt  # later annotations win where instances overlap
        if nxt:
            from skimage.segmentation import relabel_sequential

            label = relabel_sequential(label)[0]  # drop ids fully covered by later ones
        label = to_label(label, Path(entry["_file"]), shape=(h, w), image_path=path)
        return Sample(sample_id, to_image(raw, path, 2, self.card.channels), label, card_spacing(self.card, 2),
                      {"image_path": str(path), "label_path": entry["_file"], "dtype": str(raw.dtype),
                       "cell_type": cell_type_of(key)})
