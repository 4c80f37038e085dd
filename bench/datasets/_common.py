"""Helpers shared by the dataset readers: file names, label validation, lazy TIFF access, seeded subsets.

Every check raises a `DataError` that names the file, so a run that meets bad data stops with the file name.
Only numpy is imported at module level; image libraries are imported where they are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..data import DataError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".nii", ".nii.gz")
MULTI_SUFFIXES = (".nii.gz", ".ome.tiff", ".ome.tif")


def file_stem(path: str | Path) -> str:
    """File name without its image suffix; double suffixes (.nii.gz, .ome.tif) are removed whole."""
    name = Path(path).name
    low = name.lower()
    for s in MULTI_SUFFIXES:
        if low.endswith(s):
            return name[: -len(s)]
    return Path(name).stem


def is_image_file(path: Path) -> bool:
    low = path.name.lower()
    return path.is_file() and not path.name.startswith(".") and low.endswith(IMAGE_SUFFIXES)


def index_by_stem(folder: Path, pattern: str = "*", recursive: bool = False) -> dict[str, Path]:
    """stem -> image file in a folder (no pixel data is read). Hidden files (``._x`` from macOS) are skipped."""
    it = folder.rglob(pattern) if recursive else folder.glob(pattern)
    out: dict[str, Path] = {}
    for p in sorted(it):
        if is_image_file(p):
            out.setdefault(file_stem(p), p)
    return out


def card_spacing(card: Any, ndim: int) -> tuple[float, ...]:
    sp = getattr(card, "spacing", None)
    if sp and len(sp) == ndim:
        return tuple(float(s) for s in sp)
    return (1.0,) * ndim


# ------------------------------------------------------------------------------------------------
# reading


def read_array(path: Path, what: str = "image") -> np.ndarray:
    """Whole file as an array; a missing or unreadable file is a DataError that names it."""
    from ..imageio_utils import read_image

    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} file not found: {path}")
    arr = read_image(path)
    if arr.size == 0:
        raise DataError(f"cannot read {what} {path}: no pixel data (shape {arr.shape}); corrupt or truncated file?")
    return arr


def to_image(arr: np.ndarray, path: Path, ndim: int, channels: int) -> np.ndarray:
    """(C, *spatial) float32, or a DataError naming the file when the shape cannot be interpreted."""
    from ..imageio_utils import as_channels_first

    try:
        return as_channels_first(arr, ndim, channels)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def to_label(
    arr: np.ndarray,
    path: Path,
    *,
    num_classes: int | None = None,
    shape: tuple[int, ...] | None = None,
    image_path: Path | None = None,
) -> np.ndarray:
    """Validated int32 label image.

    Refused with the file name: non-integer values (a float image with fractions, e.g. an interpolated
    or JPEG-compressed mask), negative values, class indices >= `num_classes` (semantic data), and a shape
    other than the image's (`shape`, spatial only).
    """
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if shape is not None and arr.ndim == len(shape) + 1 and arr.shape[-1] in (3, 4) and \
            tuple(arr.shape[:-1]) == tuple(shape):
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            # one channel of a colour-coded mask would merge objects that differ in another: refuse, do not guess
            raise DataError(f"label {path}: an RGB(A) image with colours (shape {tuple(arr.shape)}); a label image "
                            "has one integer per pixel (instance id or class index): convert its colours to ids")
        arr = rgb[..., 0]  # a grey label saved as RGB(A)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"label {path}: dtype {arr.dtype} is not a label image (integers expected)")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise DataError(f"label {path}: holds NaN/inf values; labels must be non-negative integers")
        if np.any(arr != np.round(arr)):
            bad = arr[arr != np.round(arr)]
            raise DataError(
                f"label {path}: non-integer values (e.g. {float(bad.flat[0]):g}); labels must be integers "
                "(instance ids or class indices), not interpolated or compressed masks"
            )
    if arr.size and arr.min() < 0:
        raise DataError(f"label {path}: negative values (min {arr.min()}); labels must be >= 0")
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        raise DataError(f"label {path}: values above int32 range (max {arr.max()})")
    if num_classes is not None and arr.size and arr.max() >= num_classes:
        raise DataError(
            f"label {path}: class index {int(arr.max())} but the dataset card lists {num_classes} classes "
            f"(0..{num_classes - 1}); fix the card's `classes` or the label mapping"
        )
    if shape is not None and tuple(arr.shape) != tuple(shape):
        where = f" (image {image_path})" if image_path else ""
        raise DataError(f"label {path}: shape {tuple(arr.shape)} != image shape {tuple(shape)}{where}")
    return arr.astype(np.int32, copy=False)


def num_classes_of(card: Any) -> int | None:
    """Class count to check semantic labels against (None for instance data)."""
    return len(card.classes) if getattr(card, "task", None) == "semantic" else None


def read_tiff_page(path: Path, index: int, region: tuple[slice, ...] | None = None) -> np.ndarray:
    """One page of a (multi-page) TIFF without reading the others; uncompressed pages are memory-mapped so a
    crop (`region`) reads only its rows."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            n = len(tif.pages)
            if index >= n:
                raise DataError(f"{path}: page {index} requested, the file has {n} pages")
            page = tif.pages[index]
            if region is not None and getattr(page, "is_memmappable", False):
                mm = tifffile.memmap(path, page=index, mode="r")  # a view of the file: only the crop is read
                return np.array(mm[region])
            arr = page.asarray()
            return arr[region] if region is not None else arr
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


def tiff_page_count(path: Path) -> int:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return len(tif.pages)
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


def read_region(path: Path, region: tuple[slice, ...] | None = None, what: str = "image") -> np.ndarray:
    """A 2D file, or a crop of it. Uncompressed TIFFs are memory-mapped (only the crop is read)."""
    if region is not None and path.suffix.lower() in (".tif", ".tiff"):
        if not path.exists():
            raise DataError(f"{what} file not found: {path}")
        return read_tiff_page(path, 0, region)
    arr = read_array(path, what)
    return arr[region] if region is not None else arr


# ------------------------------------------------------------------------------------------------
# splits


def seeded_subset(ids: Sequence[str], *, fraction: float | None = None, count: int | None = None,
                  seed: int = 0) -> list[str]:
    """A seeded random subset (sorted) of `ids`: `count` images, or `fraction` of them (at least one)."""
    ids = sorted(ids)
    if fraction is None and count is None:
        return ids
    n = len(ids)
    k = count if count is not None else max(1, int(round(n * float(fraction))))
    if k > n:
        raise DataError(f"asked for {k} training images but the split has {n}")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(n)[:k]
    return sorted(ids[i] for i in pick)


def unique_in_order(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out
