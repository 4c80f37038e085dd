"""Tiny datasets in the official layouts of LIVECell, CTC, DSB2018, MSD/nnU-Net, ISBI (TIFF) and a plain folder,
all written from the real images of the shared data (BBBC039 nuclei, the StarDist 3D example, ISBI 2012)."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from conftest import DATA_ROOT

H, W = 128, 160  # crop of the 2D fixtures


def bbbc_crops(n: int, h: int = H, w: int = W) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(stem, uint16 image, int32 instance label) crops of the first `n` BBBC039 images with nuclei."""
    from skimage.segmentation import relabel_sequential

    from bench.datasets.bbbc039 import decode_bbbc039_mask

    out = []
    for p in sorted((DATA_ROOT / "bbbc039" / "images").glob("*.tif")):
        img = tifffile.imread(p)[:h, 100 : 100 + w]
        lab = decode_bbbc039_mask(iio.imread(DATA_ROOT / "bbbc039" / "masks" / f"{p.stem}.png"))[:h, 100 : 100 + w]
        lab = relabel_sequential(lab)[0].astype(np.int32)
        if lab.max() >= 3:
            out.append((p.stem, img, lab))
        if len(out) == n:
            break
    return out


def to_uint8(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [0.5, 99.8])
    return (np.clip((img - lo) / max(hi - lo, 1), 0, 1) * 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# LIVECell


def _polygon(mask: np.ndarray) -> list[list[float]]:
    from skimage.measure import find_contours

    cs = find_contours(np.pad(mask, 1).astype(float), 0.5)
    c = max(cs, key=len) - 1  # undo the pad; (row, col)
    return [[float(v) for xy in c[:, ::-1] + 0.5 for v in xy]]  # COCO: x, y with pixel centres at +0.5


def _coco_segmentation(mask: np.ndarray, kind: str):
    from bench.datasets.livecell import counts_to_rle_string, mask_to_counts

    if kind == "polygon":
        return _polygon(mask)
    counts = mask_to_counts(mask)
    h, w = mask.shape
    return {"size": [h, w], "counts": counts if kind == "rle" else counts_to_rle_string(counts)}


LIVECELL_PLAN = {  # split -> cell types of its images
    "train": ["A172", "A172", "BT474", "BT474", "SHSY5Y"],
    "val": ["A172", "BT474"],
    "test": ["SHSY5Y", "A172"],
}


def make_livecell(root: Path, *, single_cells: bool = False) -> dict[str, list[str]]:
    """LIVECell layout from BBBC039 crops; returns split -> image stems. Annotations alternate polygons,
    uncompressed and compressed RLE; train stores them LIVECell-style as a dict keyed by id."""
    n = sum(len(v) for v in LIVECELL_PLAN.values())
    crops = bbbc_crops(n)
    out: dict[str, list[str]] = {}
    k = 0
    per_type: dict[tuple[str, str], dict] = {}
    for split, types in LIVECELL_PLAN.items():
        coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
        folder = "livecell_test_images" if split == "test" else "livecell_train_val_images"
        for j, ct in enumerate(types):
            _, img, lab = crops[k]
            k += 1
            name = f"{ct}_Phase_A{j + 1}_{k}_00d0{j}h00m_{k}.tif"
            d = root / "images" / folder / ct
            d.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(d / name, to_uint8(img))
            im = {"id": 1000 + k, "file_name": name, "height": H, "width": W}
            anns = []
            for i in range(1, lab.max() + 1):
                m = lab == i
                if not m.any():
                    continue
                kind = ("polygon", "rle", "rle_string")[i % 3]
                anns.append({"id": 10000 * k + i, "image_id": im["id"], "category_id": 1, "iscrowd": 0,
                             "segmentation": _coco_segmentation(m, kind), "area": int(m.sum()),
                             "bbox": [0, 0, 1, 1]})
            coco["images"].append(im)
            coco["annotations"] += anns
            pt = per_type.setdefault((ct, split), {"images": [], "annotations": [], "categories": coco["categories"]})
            pt["images"].append(im)
            pt["annotations"] += anns
            out.setdefault(split, []).append(Path(name).stem)
        if split == "train":
            coco["annotations"] = {str(a["id"]): a for a in coco["annotations"]}
        if not single_cells:
            d = root / "annotations" / "LIVECell"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"livecell_coco_{split}.json").write_text(json.dumps(coco))
    if single_cells:
        for (ct, split), coco in per_type.items():
            d = root / "annotations" / "LIVECell_single_cells" / ct.lower()
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{split}.json").write_text(json.dumps(coco))
    return out


# ------------------------------------------------------------------------------------------------
# Cell Tracking Challenge


def make_ctc(root: Path) -> dict[str, Path]:
    """A 2D CTC dataset: sequence 01 (6 frames; GT for 1, 3, 4; ST for all), sequence 02 (3 frames, GT for 1)."""
    crops = bbbc_crops(9)
    k = 0
    for seq, n, gt in (("01", 6, (1, 3, 4)), ("02", 3, (1,))):
        (root / seq).mkdir(parents=True, exist_ok=True)
        (root / f"{seq}_GT" / "SEG").mkdir(parents=True, exist_ok=True)
        (root / f"{seq}_GT" / "TRA").mkdir(parents=True, exist_ok=True)
        (root / f"{seq}_ST" / "SEG").mkdir(parents=True, exist_ok=True)
        for t in range(n):
            _, img, lab = crops[k]
            k += 1
            tifffile.imwrite(root / seq / f"t{t:03d}.tif", img)
            tifffile.imwrite(root / f"{seq}_ST" / "SEG" / f"man_seg{t:03d}.tif", lab.astype(np.uint16))
            if t in gt:
                tifffile.imwrite(root / f"{seq}_GT" / "SEG" / f"man_seg{t:03d}.tif", lab.astype(np.uint16))
            tifffile.imwrite(root / f"{seq}_GT" / "TRA" / f"man_track{t:03d}.tif", lab.astype(np.uint16))
    return {"root": root}


def stardist3d() -> tuple[np.ndarray, np.ndarray]:
    img = tifffile.imread(DATA_ROOT / "stardist" / "img3d.tif")
    lab = tifffile.imread(DATA_ROOT / "stardist" / "mask3d.tif").astype(np.int32)
    return img, lab


def make_ctc_3d_slices(root: Path) -> None:
    """A 3D CTC dataset whose gold truth annotates single z-slices (man_seg_TTT_ZZZ.tif)."""
    img, lab = stardist3d()
    (root / "01").mkdir(parents=True, exist_ok=True)
    (root / "01_GT" / "SEG").mkdir(parents=True, exist_ok=True)
    for t in range(3):
        tifffile.imwrite(root / "01" / f"t{t:03d}.tif", np.roll(img, t, axis=2))
    for t, z in ((0, 10), (1, 15), (2, 20), (2, 5)):
        tifffile.imwrite(root / "01_GT" / "SEG" / f"man_seg_{t:03d}_{z:03d}.tif",
                         np.roll(lab, t, axis=2)[z].astype(np.uint16))


# ------------------------------------------------------------------------------------------------
# DSB 2018


def make_dsb(root: Path, *, with_test: bool = False) -> list[str]:
    """stage1_train/<id>/images/<id>.png (RGBA) + one PNG per nucleus; optionally stage1_test + solution CSV."""
    from bench.datasets.dsb2018 import encode_kaggle_rle

    crops = bbbc_crops(6)
    sd_img = tifffile.imread(DATA_ROOT / "stardist" / "img2d.tif")[:H, :W]  # a real DSB2018 image
    sd_lab = tifffile.imread(DATA_ROOT / "stardist" / "mask2d.tif")[:H, :W]
    items = [(f"{i:064x}"[-64:], img, lab) for i, (_, img, lab) in enumerate(crops[:4], start=7)]
    items.append(("d" * 64, sd_img, sd_lab))
    ids = []
    for cid, img, lab in items:
        case = root / "stage1_train" / cid
        (case / "images").mkdir(parents=True, exist_ok=True)
        (case / "masks").mkdir(parents=True, exist_ok=True)
        g = to_uint8(img)
        iio.imwrite(case / "images" / f"{cid}.png", np.stack([g, g, g, np.full_like(g, 255)], -1))
        for i in np.unique(lab)[1:]:
            iio.imwrite(case / "masks" / f"m{int(i):04d}.png", ((lab == i) * 255).astype(np.uint8))
        ids.append(cid)
    if with_test:
        rows = ["ImageId,EncodedPixels,Height,Width,Usage"]
        for j, (_, img, lab) in enumerate(crops[4:6]):
            cid = f"{'e' * 63}{j}"
            (root / "stage1_test" / cid / "images").mkdir(parents=True, exist_ok=True)
            iio.imwrite(root / "stage1_test" / cid / "images" / f"{cid}.png", to_uint8(img))
            for i in np.unique(lab)[1:]:
                rows.append(f"{cid},{encode_kaggle_rle(lab == i)},{H},{W},Public")
        (root / "stage1_solution.csv").write_text("\n".join(rows) + "\n")
    return ids


# ------------------------------------------------------------------------------------------------
# MSD / nnU-Net


ZOOMS_XYZ = (0.8, 0.9, 2.5)  # NIfTI pixdim order; the reader must return spacing (2.5, 0.9, 0.8)


def _nifti(path: Path, zyx_or_czyx: np.ndarray) -> None:
    import nibabel as nib

    a = zyx_or_czyx
    a = a.transpose(2, 1, 0) if a.ndim == 3 else a.transpose(3, 2, 1, 0)
    img = nib.Nifti1Image(np.ascontiguousarray(a), np.diag([*ZOOMS_XYZ, 1.0]))
    img.header.set_zooms(ZOOMS_XYZ + ((1.0,) if a.ndim == 4 else ()))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def msd_cases(n: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """(Z, Y, X) image / instance-label pairs from the StarDist 3D example (rolled copies)."""
    img, lab = stardist3d()
    return [(np.roll(img, 7 * k, axis=2).astype(np.int16), np.roll(lab, 7 * k, axis=2)) for k in range(n)]


def make_msd(root: Path, *, brats: bool = False, nnunet: bool = False, n: int = 4) -> list[str]:
    """A Decathlon task folder: 4D images (MSD) or per-modality files (nnU-Net), labels, dataset.json.

    Liver-like labels: 0 background, 1 every object ("liver"), 2 objects with an id divisible by 3 ("tumour").
    BraTS-like: 4 modalities and labels 1/2/3 by object id modulo 3 (MSD convention).
    """
    cases = []
    for k, (img, inst) in enumerate(msd_cases(n)):
        case = f"{'BRATS' if brats else 'liver'}_{k:03d}"
        if brats:
            lab = np.where(inst > 0, inst % 3 + 1, 0).astype(np.uint8)
            chans = np.stack([img, img // 2 + 10, np.sqrt(np.maximum(img, 0)).astype(np.int16), (img.max() - img).astype(np.int16)])
            if nnunet:
                for c in range(4):
                    _nifti(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", chans[c])
            else:
                _nifti(root / "imagesTr" / f"{case}.nii.gz", chans)
        else:
            lab = ((inst > 0).astype(np.uint8) + ((inst > 0) & (inst % 3 == 0))).astype(np.uint8)
            _nifti(root / "imagesTr" / (f"{case}_0000.nii.gz" if nnunet else f"{case}.nii.gz"), img)
        _nifti(root / "labelsTr" / f"{case}.nii.gz", lab)
        cases.append(case)
    (root / "imagesTr" / f"._{cases[0]}.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    meta = {"name": "fixture", "tensorImageSize": "4D" if brats else "3D",
            "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"} if brats else {"0": "CT"},
            "labels": ({"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
                       if brats else {"0": "background", "1": "liver", "2": "cancer"}),
            "numTraining": len(cases),
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
            "test": []}
    if not nnunet:
        (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return cases


# ------------------------------------------------------------------------------------------------
# ISBI 2012 as official TIFF volumes, and a plain folder


def make_isbi_tiff(root: Path, n: int = 5) -> None:
    imgs = [iio.imread(DATA_ROOT / "isbi2012" / "image" / f"{i}.png")[:H, :W] for i in range(n)]
    labs = [iio.imread(DATA_ROOT / "isbi2012" / "label" / f"{i}.png")[:H, :W] for i in range(n)]
    root.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / "train-volume.tif", np.stack(imgs))
    tifffile.imwrite(root / "train-labels.tif", np.stack(labs))


def make_folder(root: Path, n: int = 4, *, images: str = "images", labels: str = "labels") -> list[str]:
    stems = []
    for stem, img, lab in bbbc_crops(n):
        (root / images).mkdir(parents=True, exist_ok=True)
        (root / labels).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / images / f"{stem}.tif", img)
        iio.imwrite(root / labels / f"{stem}.png", lab.astype(np.uint16))
        stems.append(stem)
    return stems


def folder_card(path: Path, root: str, **kw) -> Path:
    """Write a user's dataset card for the `folder` reader; returns its path."""
    import yaml

    card = {"name": path.stem, "reader": "folder", "task": "instance", "ndim": 2, "channels": 1,
            "classes": ["background", "cell"], "root": root, "splits": {"kind": "random", "seed": 0},
            "params": {"images": "images", "labels": "labels", "pattern": "*"}}
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(card.get(k), dict):
            card[k] = {**card[k], **v}
        else:
            card[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path
