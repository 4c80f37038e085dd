"""Segmented anisotropic ssTEM dataset of the Drosophila larva VNC (Gerhard et al. 2013): one 3D stack.

Official layout (github.com/unidesign/groundtruth-drosophila-vnc): ``stack1/raw/NN.tif`` (20 sections,
1024x1024 uint8), binary per-section masks in ``stack1/membranes/NN.png``, ``stack1/mitochondria/NN.png``
(anti-aliased grey: thresholded at 128), ``stack1/synapses/NN.png``, and merged labels
``stack1/labels/labels000000NN.png`` (grey values: 0/32/64/96/128 membrane, 159 glia/extracellular,
191 mitochondria, 223 synapse, 255 intracellular). Voxel size 50 x 4.6 x 4.6 nm (z, y, x).

``target`` picks the labels: ``membranes`` / ``mitochondria`` / ``synapses`` give two classes
(background, target); ``labels`` gives five (membrane, glia, mitochondria, synapse, intracellular).

Splits: one stack is one image, so a split needs sub-volumes. ``z_block: K`` cuts the stack into blocks of K
sections along z (the last one may be shorter), and ``yx_block: B`` optionally cuts each block into BxB tiles
in plane. ``test_z_blocks`` / ``val_z_blocks`` (block indices) make an explicit split: every tile of those
z-blocks goes to test / val, the rest to train, so test data never shares a section with training data. With no
explicit blocks the core splits the sub-volumes at random (seeded), which lets neighbouring tiles of one
section fall into different splits. ``z_block: null`` gives the whole stack as a single sample (no split
possible: use it with an external test set).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data import DataError, DatasetReader, Sample
from ..registry import register_dataset
from ._common import card_spacing, read_region, to_label

MERGED_CLASSES = {0: 0, 32: 0, 64: 0, 96: 0, 128: 0, 159: 1, 191: 2, 223: 3, 255: 4}


class DrosophilaParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stack: str = "stack1"
    target: Literal["membranes", "mitochondria", "synapses", "labels"] = "membranes"
    z_block: int | None = Field(10, ge=1, description="sections per sub-volume; null: the whole stack")
    yx_block: int | None = Field(None, ge=16, description="in-plane tile size of the sub-volumes; null: whole sections")
    test_z_blocks: list[int] | None = None
    val_z_blocks: list[int] | None = None


@register_dataset("drosophila_vnc", description="Drosophila VNC ssTEM 3D stack (stack1/raw/NN.tif), z-block sub-volumes")
class DrosophilaVNC(DatasetReader):
    Params = DrosophilaParams

    def _sections(self) -> list:
        raw = self.require(self.root / self.params.stack / "raw", "raw section folder")
        files = sorted(p for p in raw.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png")
                       and not p.name.startswith("."))
        if not files:
            raise DataError(f"drosophila_vnc: no sections (*.tif, *.png) in {raw}")
        return files

    def _label_file(self, z: int, raw_file: Path) -> Path:
        base = self.root / self.params.stack
        if self.params.target == "labels":
            cands = sorted((base / "labels").glob(f"*{z:08d}.*")) or sorted((base / "labels").glob(f"*{raw_file.stem}.*"))
            if not cands:
                raise DataError(f"drosophila_vnc: missing merged label for section {raw_file}: "
                                f"expected {base / 'labels'}/labels{z:08d}.png")
            return cands[0]
        folder = base / self.params.target
        for suffix in (".png", ".tif", ".tiff"):
            p = folder / f"{raw_file.stem}{suffix}"
            if p.exists():
                return p
        raise DataError(f"drosophila_vnc: missing label for section {raw_file}: expected {folder / raw_file.stem}.png")

    def _section_shape(self) -> tuple[int, int]:
        import tifffile

        f = self._sections()[0]
        if f.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(f) as tif:  # header only
                return tuple(tif.pages[0].shape[:2])
        from ._common import read_array

        return read_array(f).shape[:2]

    def _blocks(self) -> list[tuple[int, int]]:
        n = len(self._sections())
        k = self.params.z_block or n
        return [(z0, min(z0 + k, n)) for z0 in range(0, n, k)]

    def _tiles(self) -> list[tuple[int, int, int, int] | None]:
        if not self.params.yx_block:
            return [None]
        h, w = self._section_shape()
        b = self.params.yx_block
        return [(y, min(y + b, h), x, min(x + b, w)) for y in range(0, h, b) for x in range(0, w, b)]

    @staticmethod
    def _id(zb: tuple[int, int], tile) -> str:
        s = f"z{zb[0]:02d}-{zb[1] - 1:02d}"
        return s if tile is None else f"{s}_y{tile[0]:04d}_x{tile[2]:04d}"

    def list_ids(self) -> list[str]:
        if not self.params.z_block and not self.params.yx_block:
            return [self.params.stack]
        return [self._id(zb, t) for zb in self._blocks() for t in self._tiles()]

    def official_splits(self) -> dict[str, list[str]] | None:
        p = self.params
        if p.test_z_blocks is None and p.val_z_blocks is None:
            return None
        blocks = self._blocks()
        for name, idx in (("test_z_blocks", p.test_z_blocks), ("val_z_blocks", p.val_z_blocks)):
            bad = [i for i in (idx or []) if not 0 <= i < len(blocks)]
            if bad:
                raise DataError(f"drosophila_vnc: params.{name} {bad} out of range: z_block={p.z_block} gives "
                                f"{len(blocks)} blocks (0..{len(blocks) - 1})")
        out: dict[str, list[str]] = {"train": [], "test": []}
        if p.val_z_blocks is not None:
            out["val"] = []
        for i, zb in enumerate(blocks):
            split = "test" if i in (p.test_z_blocks or []) else "val" if i in (p.val_z_blocks or []) else "train"
            out[split] += [self._id(zb, t) for t in self._tiles()]
        return out

    def _parse(self, sample_id: str):
        if sample_id == self.params.stack:
            return (0, len(self._sections())), None
        try:
            parts = sample_id.split("_")
            z0, z1 = (int(v) for v in parts[0][1:].split("-"))
            if len(parts) == 1:
                return (z0, z1 + 1), None
            y, x = int(parts[1][1:]), int(parts[2][1:])
        except (ValueError, IndexError):
            raise DataError(f"drosophila_vnc: bad sample id {sample_id!r}") from None
        b = self.params.yx_block
        if not b:
            raise DataError(f"drosophila_vnc: sample id {sample_id!r} has a tile but params.yx_block is null")
        h, w = self._section_shape()
        return (z0, z1 + 1), (y, min(y + b, h), x, min(x + b, w))

    def load(self, sample_id: str) -> Sample:
        (z0, z1), tile = self._parse(sample_id)
        sections = self._sections()
        if z1 > len(sections):
            raise DataError(f"drosophila_vnc: sample {sample_id!r} needs sections up to {z1 - 1}, "
                            f"the stack has {len(sections)}")
        region = None if tile is None else (slice(tile[0], tile[1]), slice(tile[2], tile[3]))
        imgs, labs = [], []
        dtype = None
        for z in range(z0, z1):
            f = sections[z]
            raw = read_region(f, region)
            if raw.ndim == 3:
                raw = raw[..., 0]
            dtype = raw.dtype
            lf = self._label_file(z, f)
            lab = read_region(lf, region, "label")
            if lab.ndim == 3:
                lab = lab[..., 0]
            if lab.shape != raw.shape:
                raise DataError(f"drosophila_vnc: label {lf} shape {lab.shape} != section {f} shape {raw.shape}")
            if self.params.target == "labels":
                lut = np.full(256, 255, np.int32)
                for v, c in MERGED_CLASSES.items():
                    lut[v] = c
                mapped = lut[lab.astype(np.uint8)]
                if (mapped == 255).any():
                    bad = np.unique(lab[mapped == 255])[:5].tolist()
                    raise DataError(f"drosophila_vnc: label {lf} holds unknown grey values {bad}")
                lab = mapped
            else:
                lab = (lab > 127) if lab.dtype != bool else lab
            imgs.append(raw)
            labs.append(to_label(lab, lf, num_classes=len(self.card.classes)))
        image = np.stack(imgs)[None].astype(np.float32)
        label = np.stack(labs)
        return Sample(sample_id, image, label, card_spacing(self.card, 3),
                      {"image_path": str(sections[z0].parent), "sections": [z0, z1], "tile": tile,
                       "dtype": str(dtype)})
