"""On-disk caches owned by the core: content-keyed arrays (targets) and per-case training samples.

Both live under ``$BENCH_CACHE_DIR`` (default ``~/.cache/physeg-bench``); every write goes to a temporary file
in the destination folder and is renamed into place, so a reader never sees a partial file and concurrent
writers are harmless.

- `cached_array`: an array computed from a label image, keyed by sha256 over (kind, version, params, dtype,
  shape, label bytes). Used for targets such as Poisson fields.
- `SampleCache`: one folder per training case holding the normalised image, the label and the method's targets
  as ``.npy`` files, read back memory-mapped one crop at a time, so training memory does not grow with the
  number of cases (nnU-Net's preprocessed folder, in spirit). Keyed by what determines the arrays (dataset,
  reader params, case id, normalisation, targets); source files named in the sample's metadata are
  fingerprinted (size, mtime) so an edited file rebuilds its case.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

CACHE_DIR_ENV = "BENCH_CACHE_DIR"
SAMPLE_CACHE_VERSION = "3"
# foreground voxels remembered per case for oversampling (nnU-Net keeps 10,000 per class)
FG_LOCATIONS = 10_000


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV, Path.home() / ".cache" / "physeg-bench"))


def canonical(obj: Any) -> Any:
    """JSON-able, order-independent form of params (for cache keys)."""
    if isinstance(obj, Mapping):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return canonical(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float):
        return float(repr(obj)) if obj == obj else "nan"
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "model_dump"):
        return canonical(obj.model_dump(mode="json"))
    raise TypeError(f"cannot use {type(obj).__name__} in a cache key")


def array_key(kind: str, labels: np.ndarray, params: Mapping[str, Any] | None = None, version: str = "") -> str:
    lab = np.ascontiguousarray(labels)
    meta = {"version": version, "kind": kind, "params": canonical(dict(params or {})),
            "dtype": lab.dtype.str, "shape": list(lab.shape)}
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    digest.update(b"\0")
    digest.update(lab.tobytes())
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` into a temporary file beside `path`, then rename it into place (atomic: a reader
    never sees a partial file; a failed or killed write leaves the previous file and no temporary behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.truncate(tmp, 0)  # frees the blocks now, even while a writer's handle is still open (disk full)
        except OSError:
            pass
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)

    atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def cached_array(kind: str, compute: Callable[[], np.ndarray], labels: np.ndarray,
                 params: Mapping[str, Any] | None, cache_dir: str | os.PathLike, version: str = "") -> np.ndarray:
    """``compute()`` stored as ``<cache_dir>/<kind>-<sha256>.npy``; an unreadable or mismatched file is a miss."""
    lab = np.asarray(labels)
    path = Path(cache_dir) / f"{kind}-{array_key(kind, lab, params, version)}.npy"
    if path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape[-lab.ndim:] == lab.shape:
                return arr
        except (OSError, ValueError):
            pass
    arr = compute()
    atomic_save_npy(path, arr)
    return arr


# ------------------------------------------------------------------------------------------------
# per-case training samples


def _fingerprint(meta: dict) -> dict[str, list]:
    """(size, mtime_ns) of every existing file or folder a sample's metadata names."""
    out = {}
    values = []
    for v in meta.values():
        values.extend(v if isinstance(v, (list, tuple)) else [v])
    for v in values:
        if isinstance(v, str) and len(v) < 4096 and os.path.sep in v:
            try:
                st = os.stat(v)
            except OSError:
                continue
            out[v] = [st.st_size, st.st_mtime_ns]
    return out


class CaseEntry:
    """One cached case: arrays opened memory-mapped on demand (nothing held between crops)."""

    def __init__(self, folder: Path, info: dict) -> None:
        self.folder = folder
        self.info = info
        self.id: str = info["id"]
        self.shape: tuple[int, ...] = tuple(info["shape"])
        self.spacing: tuple[float, ...] = tuple(info["spacing"])
        self.keys: list[str] = list(info["arrays"])
        self.has_label: bool = bool(info["has_label"])
        self.partial: bool = bool(info.get("partial", False))  # the label annotates only some objects
        self._headers: dict[str, tuple] = {}  # name -> (shape, dtype, fortran, offset): parsed once

    def array(self, name: str, mmap: bool = True) -> np.ndarray:
        path = self.folder / f"{name}.npy"
        if not mmap:
            return np.load(path, allow_pickle=False)
        if name not in self._headers:  # parsing an .npy header costs more than mapping the file
            with open(path, "rb") as fh:
                fmt = np.lib.format
                version = fmt.read_magic(fh)
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, dtype = read(fh)
                self._headers[name] = (shape, dtype, fortran, fh.tell())
        shape, dtype, fortran, offset = self._headers[name]
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")

    def foreground(self) -> np.ndarray:
        p = self.folder / "_fg_locations.npy"
        return np.load(p, allow_pickle=False) if p.exists() else np.zeros((0, len(self.shape)), np.int64)


class SampleCache:
    """Per-case folders of normalised image + label + targets, built once and read crop by crop."""

    def __init__(self, root: Path, key_parts: dict[str, Any]) -> None:
        self.key_parts = canonical(key_parts)
        self.root = Path(root)

    def folder(self, sample_id: str) -> Path:
        digest = hashlib.sha256(json.dumps({**self.key_parts, "id": sample_id, "v": SAMPLE_CACHE_VERSION},
                                           sort_keys=True).encode()).hexdigest()[:24]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id)[:60]
        return self.root / f"{safe}-{digest}"

    def lookup(self, sample_id: str) -> CaseEntry | None:
        folder = self.folder(sample_id)
        info_path = folder / "case.json"
        if not info_path.is_file():
            return None
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            return None
        if info.get("fingerprint") and _fingerprint({k: k for k in info["fingerprint"]}) != info["fingerprint"]:
            return None  # a source file changed
        if not all((folder / f"{k}.npy").is_file() for k in info.get("arrays", [])):
            return None
        return CaseEntry(folder, info)

    def build(self, sample, image: np.ndarray, targets: dict[str, np.ndarray], with_targets: bool = True
              ) -> CaseEntry:
        """Write one case (the sample's arrays are released by the caller afterwards)."""
        folder = self.folder(sample.id)
        arrays = {"image": np.ascontiguousarray(image, dtype=np.float32)}
        if sample.label is not None:
            arrays["label"] = np.ascontiguousarray(sample.label)
        for k, v in targets.items():
            if k in arrays or k == "ignore" or k.startswith("_"):
                raise ValueError(f"make_targets returned the reserved name {k!r} (image, label, ignore and names "
                                 "starting with '_' belong to the cache)")
            arrays[k] = np.ascontiguousarray(v)
        if sample.label is not None and sample.ignore is not None and sample.ignore.any():
            arrays["ignore"] = np.ascontiguousarray(sample.ignore, dtype=bool)
        spatial = arrays["image"].shape[1:]
        for k, v in arrays.items():
            if tuple(v.shape[-len(spatial):]) != tuple(spatial):
                raise ValueError(f"target {k!r} of {sample.id!r} has shape {v.shape}; its last axes must be the "
                                 f"image's spatial shape {spatial}")
            atomic_save_npy(folder / f"{k}.npy", v)
        if sample.label is not None:
            fg = np.argwhere(np.asarray(sample.label) > 0)
            if len(fg) > FG_LOCATIONS:
                rng = np.random.default_rng(0)
                fg = fg[np.sort(rng.choice(len(fg), FG_LOCATIONS, replace=False))]
            atomic_save_npy(folder / "_fg_locations.npy", fg.astype(np.int64))
        info = {"id": sample.id, "shape": list(spatial), "spacing": [float(s) for s in sample.spacing],
                "arrays": list(arrays), "has_label": sample.label is not None, "targets": list(targets),
                "with_targets": bool(with_targets), "partial": sample.partial,
                "fingerprint": _fingerprint(sample.meta or {})}
        atomic_write_text(folder / "case.json", json.dumps(info))
        return CaseEntry(folder, info)
