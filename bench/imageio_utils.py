"""Reading images, writing label images and overlay PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import DataError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".nii", ".nii.gz")


def read_image(path: str | Path, with_spacing: bool = False):
    """Any 2D/3D image file as an array (and its spacing when the format stores one, else None);
    unreadable files raise a DataError naming them. NIfTI is read as the readers read it: (C,) Z, Y, X."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"image file not found: {path}")
    spacing = None
    if path.name.lower().endswith((".nii", ".nii.gz")):
        from .datasets.msd import read_nifti

        arr, spacing = read_nifti(path)  # raises DataError naming the file
        return (arr, spacing) if with_spacing else arr
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            arr = iio.imread(path)
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    return (arr, spacing) if with_spacing else arr


def as_channels_first(img: np.ndarray, ndim: int, channels: int) -> np.ndarray:
    """(H,W) / (H,W,C) / (C,H,W) / (D,H,W) ... -> (C, *spatial) float32."""
    if img.ndim == ndim:
        img = img[None]
    elif img.ndim == ndim + 1 and img.shape[-1] == channels and img.shape[0] != channels:
        img = np.moveaxis(img, -1, 0)
    elif img.ndim == ndim + 1 and img.shape[-1] in (3, 4) and channels == 1:
        img = img[..., :3].mean(-1)[None]  # RGB(A) rendering of a grey image
    if img.ndim != ndim + 1:
        raise DataError(f"cannot interpret an image of shape {img.shape} as {ndim}D with {channels} channel(s)")
    if img.shape[0] != channels:
        raise DataError(f"image has {img.shape[0]} channel(s), the dataset card says {channels}")
    return img.astype(np.float32, copy=False)


def write_label(path: Path, label: np.ndarray) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if label.max(initial=0) < 65536 else np.uint32
    tifffile.imwrite(path, label.astype(dtype), compression="zlib")


def read_label(path: Path) -> np.ndarray:
    """A label image written by write_label (a run's saved prediction); an unreadable file names itself."""
    import tifffile

    try:
        return np.asarray(tifffile.imread(path))
    except Exception as exc:
        raise DataError(f"{path}: cannot read the label image ({type(exc).__name__}: {exc})") from None


def overlay_rgb(image: np.ndarray, pred: np.ndarray | None, gt: np.ndarray | None) -> np.ndarray:
    """Grey image with reference outlines in green just outside each object and predicted outlines in magenta
    just inside, so both stay visible where they coincide (middle slice in 3D). Returns (H, W, 3) uint8."""
    from skimage.segmentation import find_boundaries

    ref = pred if pred is not None else gt
    if ref is None:  # nothing to outline: the grey image
        ref = np.zeros(image.shape[1:], np.int32)  # (C, *spatial)
    img = image[0] if image.ndim == ref.ndim + 1 else image
    if ref.ndim == 3:
        z = ref.shape[0] // 2
        img = img[z]
        pred = pred[z] if pred is not None else None
        gt = gt[z] if gt is not None else None
    lo, hi = np.percentile(img, [1, 99.5])
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
    if gt is not None:
        rgb[find_boundaries(gt, mode="outer")] = (0, 220, 0)
    if pred is not None:
        rgb[find_boundaries(pred, mode="inner")] = (255, 0, 255)
    return rgb


def overlay_png(path: Path, image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None) -> None:
    """:func:`overlay_rgb` written as a PNG."""
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, overlay_rgb(image, pred, gt))
