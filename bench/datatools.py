"""`bench data fetch` and `bench data check`: download a dataset from its card's sources, and validate one.

Fetch: every ``source.urls`` entry (``local name -> URL``) is downloaded with pooch into
``<cache dir>/downloads/<card name>/`` (cache dir: ``--cache-dir``, default the data root), verified against
``source.checksums`` where the card gives one (``sha256:...``/``md5:...``; a mismatch deletes the file and
names it, with the expected and the actual hash), then placed under ``<data root>/<card root>/``:
archives (zip, tar, tar.gz, tgz) are unpacked there, other files are copied. A local name with a folder part
(``stage1_train/stage1_train.zip``) unpacks / copies into that sub-folder. When an archive holds a single
top-level folder named like the dataset root (``DIC-C2DH-HeLa/`` for ``ctc/DIC-C2DH-HeLa``) or a GitHub
archive folder (``<repo>-master/``), its contents are moved up one level.
A download that fails (offline, unreachable host, HTTP error) fails at once (short timeout, no retries)
with the URL and the local path where a copy fetched by hand can be put.

Check: loads every image of every split (or one split, or the first ``max_images`` of each) through the
dataset's reader and reports counts per split, image sizes, dtypes, instances per image (instance data) or
class frequencies (semantic data), plus every problem found, each naming its file: image/label shape
mismatch, missing label, non-integer or negative labels, class indices outside the card's classes,
unreadable files, empty splits.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data import DataError, resolve_data_root

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
DEFAULT_TIMEOUT = 15.0  # seconds to connect / between bytes; a dead network fails fast


# ------------------------------------------------------------------------------------------------
# cards and readers


def load_dataset_card(name: str, overrides: list[str] | None = None):
    """A validated DatasetCard by name (or path to a YAML card), with optional ``key=value`` overrides
    relative to the card (``params.z_block=5``)."""
    from .config import DatasetCard, card_path, deep_merge, load_card_dict, parse_overrides, validate

    data = load_card_dict(card_path("datasets", name), "datasets")
    data = deep_merge(data, parse_overrides(overrides))
    return validate(DatasetCard, data, f"dataset card {data.get('name')!r}")


def open_reader(card, data_root: str | Path | None = None):
    """The reader of a card, as a run opens it (`bench.runner.open_reader`), without downloading."""
    from .runner import open_reader as _open

    return _open(card, str(data_root) if data_root else None, download=False)


def reader_splits(card, reader) -> dict[str, list[str]]:
    """The splits a run would use, computed by the one split policy (`bench.data.split_policy`), not persisted."""
    from .data import split_policy

    splits = split_policy(card, reader, None)
    order = {"train": 0, "val": 1, "test": 2}
    return dict(sorted(splits.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])))


# ------------------------------------------------------------------------------------------------
# fetch


def _hash_file(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path, expected: str | None) -> None:
    """`expected` is ``"sha256:<hex>"``/``"md5:<hex>"`` (bare hex = sha256). Mismatch: DataError + file deleted."""
    if not expected:
        return
    algo, _, want = expected.partition(":") if ":" in expected else ("sha256", "", expected)
    algo = algo.lower()
    if algo not in hashlib.algorithms_available:
        raise DataError(f"{path}: unknown checksum algorithm {algo!r} in {expected!r}")
    got = _hash_file(path, algo)
    if got.lower() != want.lower():
        bad = path.with_name(path.name + ".bad")
        path.replace(bad)
        raise DataError(
            f"checksum mismatch for {path.name}: expected {algo}:{want}, got {algo}:{got}. "
            f"The file is kept as {bad} for inspection; fetch again to re-download, or fix the card's "
            "source.checksums if the publisher changed the file."
        )


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _safe_members_tar(tf: tarfile.TarFile, dest: Path):
    for m in tf.getmembers():
        if not _inside(dest / m.name, dest):
            raise DataError(f"refusing to unpack {m.name!r}: it points outside {dest}")
        # A link member followed by a file written through it (or a hard link to an outside file) writes outside
        # the target however its name reads; datasets ship no links, so refuse them all.
        if m.issym() or m.islnk():
            raise DataError(f"refusing to unpack {m.name!r}: it is a {'symbolic' if m.issym() else 'hard'} link "
                            f"(to {m.linkname!r}); dataset archives must hold plain files")
        if not (m.isfile() or m.isdir()):
            raise DataError(f"refusing to unpack {m.name!r}: not a plain file or folder")
        if Path(m.name).name.startswith("._"):  # macOS resource forks shipped in some tarballs (MSD)
            continue
        yield m


def unpack(archive: Path, dest: Path, root_name: str) -> list[str]:
    """Unpack into `dest`; strip one top-level folder named `root_name` or ``*-master``/``*-main``."""
    tmp = dest / f".unpack-{archive.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for n in zf.namelist():
                    if not _inside(tmp / n, tmp):
                        raise DataError(f"refusing to unpack {n!r} from {archive}: it points outside {dest}")
                zf.extractall(tmp, [n for n in zf.namelist() if not Path(n).name.startswith("._")
                                    and not n.startswith("__MACOSX/")])
        else:
            with tarfile.open(archive) as tf:
                members = list(_safe_members_tar(tf, tmp))
                if hasattr(tarfile, "data_filter"):  # the standard library's own guard as well (3.11.4+)
                    tf.extractall(tmp, members=members, filter="data")
                else:
                    tf.extractall(tmp, members=members)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"cannot unpack {archive}: {type(exc).__name__}: {exc} (a partial download? delete it "
                        "and fetch again)") from exc
    top = [p for p in tmp.iterdir()]
    src = tmp
    if len(top) == 1 and top[0].is_dir() and (
        top[0].name == root_name or top[0].name.endswith(("-master", "-main"))
    ):
        src = top[0]
    moved = []
    for p in src.iterdir():
        target = dest / p.name
        if target.exists():
            if target.is_dir() and p.is_dir():
                shutil.copytree(p, target, dirs_exist_ok=True)
                moved.append(p.name)
                continue
            target.unlink() if target.is_file() else shutil.rmtree(target)
        shutil.move(str(p), target)
        moved.append(p.name)
    shutil.rmtree(tmp, ignore_errors=True)
    return moved


def download(url: str, dest: Path, *, timeout: float = DEFAULT_TIMEOUT, progress: bool = False,
             unpack_to: Path | None = None) -> Path:
    """One file with pooch (no retries), or a DataError with the URL and where to put a manual copy."""
    import pooch

    logging.getLogger("pooch").setLevel(logging.WARNING)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        return dest
    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=timeout) if url.startswith("http") else None
    try:
        got = pooch.retrieve(url, known_hash=None, fname=dest.name, path=dest.parent, downloader=downloader,
                             progressbar=progress if downloader is None else False)
    except Exception as exc:  # requests' ConnectionError / Timeout / HTTPError, ftp errors ...
        for partial in dest.parent.glob(f"tmp*{dest.name}*"):
            partial.unlink(missing_ok=True)
        reason = f"{type(exc).__name__}: {exc}"
        raise DataError(
            f"cannot download {url} ({reason[:300]}). If this machine is offline, download the file by hand and "
            f"put it at {dest}, then run the fetch again"
            + (f" (or unpack/copy it into {unpack_to} yourself)." if unpack_to else ".")
        ) from None
    return Path(got)


def fetch_dataset(
    name: str,
    *,
    data_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    force: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = False,
) -> dict[str, Any]:
    """Download, verify and unpack a dataset; returns {"root", "files": [{name, url, path, checksum}]}."""
    card = load_dataset_card(name)
    root = resolve_data_root(data_root) / card.root
    cache = Path(cache_dir).expanduser() if cache_dir else resolve_data_root(data_root)
    urls = card.source.urls
    if not urls:
        raise DataError(
            f"dataset {card.name!r} has no download URL in its card (source.urls); get it from "
            f"{card.source.homepage or 'its publisher'} and unpack it into {root}"
        )
    marker = root / ".fetched.json"
    if marker.exists() and not force:
        import json

        return {"root": str(root), "files": json.loads(marker.read_text()).get("files", []), "skipped": True}
    files = []
    for local, url in urls.items():
        rel = Path(local)
        if rel.is_absolute() or ".." in rel.parts or not _inside(root / rel, root):
            raise DataError(f"dataset card {card.name!r}: source.urls key {local!r} must be a relative file name "
                            f"inside the dataset folder (no '..', not absolute)")
        dl = cache / "downloads" / card.name / rel.name
        t0 = time.time()
        path = download(url, dl, timeout=timeout, progress=progress, unpack_to=root / rel.parent)
        expected = card.source.checksums.get(local) or card.source.checksums.get(rel.name)
        verify_checksum(path, expected)
        target_dir = root / rel.parent
        target_dir.mkdir(parents=True, exist_ok=True)
        if _is_archive(rel.name):
            unpack(path, target_dir, Path(card.root).name if rel.parent == Path(".") else rel.parent.name)
        else:
            shutil.copy2(path, target_dir / rel.name)
        files.append({"name": local, "url": url, "path": str(path), "checksum": expected,
                      "seconds": round(time.time() - t0, 2)})
    import json

    marker.write_text(json.dumps({"dataset": card.name, "files": files, "time": time.time()}, indent=1))
    return {"root": str(root), "files": files, "skipped": False}


# ------------------------------------------------------------------------------------------------
# check


def _shape_str(shape) -> str:
    return "x".join(str(s) for s in shape)


def check_dataset(
    name: str,
    *,
    data_root: str | Path | None = None,
    split: str | None = None,
    max_images: int | None = None,
    overrides: list[str] | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """Load every image of the dataset's splits and summarise; problems are collected in ``errors``.

    Returns ``{"dataset", "root", "task", "ndim", "classes", "splits": {name: count}, "summary":
    {split: {...}}, "errors": [...], "ok": bool}``. With `strict`, a DataError listing the problems is raised.
    """
    card = load_dataset_card(name, overrides)
    reader = open_reader(card, data_root)
    splits = reader_splits(card, reader)
    errors: list[str] = []
    for s, ids in splits.items():
        if not ids:
            errors.append(f"split {s!r} is empty ({sum(len(v) for v in splits.values())} images in all under "
                          f"{reader.root}; splits.kind={card.splits.kind})")
    if split is not None and split not in splits:
        raise DataError(f"dataset {card.name!r} has no split {split!r} (have {sorted(splits)})")
    names = [split] if split else list(splits)
    summary: dict[str, Any] = {}
    ncls = len(card.classes)
    for s in names:
        ids = splits[s][: max_images or None]
        shapes: Counter = Counter()
        dtypes: Counter = Counter()
        spacings: Counter = Counter()
        inst: list[int] = []
        class_px = np.zeros(ncls, np.int64)
        n_ok = 0
        for sid in ids:
            try:
                smp = reader.load(sid)
            except DataError as exc:
                errors.append(f"[{s}] {sid}: {exc}")
                continue
            except Exception as exc:  # a reader bug or an unforeseen file problem: report, keep going
                errors.append(f"[{s}] {sid}: {type(exc).__name__}: {exc}")
                continue
            where = smp.meta.get("image_path", sid)
            if smp.image.ndim != card.ndim + 1 or smp.image.shape[0] != card.channels:
                errors.append(f"[{s}] {where}: image shape {smp.image.shape}, the card says {card.channels} "
                              f"channel(s) and {card.ndim}D")
            bad_px = int(np.size(smp.image) - np.isfinite(smp.image).sum())
            if bad_px:  # normalisation and every loss would turn them into NaN
                errors.append(f"[{s}] {where}: {bad_px} NaN/inf pixel(s) in the image")
            if smp.label is None:
                errors.append(f"[{s}] {where}: missing label")
                continue
            if smp.label.shape != smp.image.shape[1:]:
                errors.append(f"[{s}] {smp.meta.get('label_path', where)}: label shape {smp.label.shape} != "
                              f"image shape {smp.image.shape[1:]}")
                continue
            shapes[_shape_str(smp.image.shape[1:])] += 1
            dtypes[smp.meta.get("dtype") or str(smp.image.dtype)] += 1
            spacings[tuple(round(float(v), 4) for v in smp.spacing)] += 1
            lab = smp.label
            if card.task == "instance":
                inst.append(int(len(np.unique(lab)) - (1 if (lab == 0).any() else 0)))
            else:
                counts = np.bincount(lab.ravel(), minlength=ncls)
                if counts.size > ncls:
                    errors.append(f"[{s}] {smp.meta.get('label_path', where)}: class index {counts.size - 1} "
                                  f">= {ncls} classes of the card")
                    continue
                class_px += counts
            n_ok += 1
        entry: dict[str, Any] = {
            "n_images": len(splits[s]), "checked": len(ids), "ok": n_ok,
            "sizes": dict(shapes.most_common()), "dtypes": dict(dtypes),
            "spacing": {"x".join(map(str, k)): v for k, v in spacings.items()},
        }
        if card.task == "instance":
            arr = np.asarray(inst or [0])
            entry["instances"] = {"total": int(arr.sum()), "min": int(arr.min()), "mean": round(float(arr.mean()), 2),
                                  "max": int(arr.max())}
        else:
            tot = max(int(class_px.sum()), 1)
            entry["class_frequency"] = {c: round(float(class_px[i]) / tot, 5) for i, c in enumerate(card.classes)}
            absent = [c for i, c in enumerate(card.classes) if class_px[i] == 0]
            if absent and n_ok:
                entry["absent_classes"] = absent
        summary[s] = entry
    report = {
        "dataset": card.name, "reader": card.reader, "root": str(reader.root), "task": card.task,
        "ndim": card.ndim, "channels": card.channels, "classes": list(card.classes),
        "split_kind": card.splits.kind, "splits": {k: len(v) for k, v in splits.items()},
        "summary": summary, "errors": errors, "ok": not errors,
    }
    if strict and errors:
        raise DataError(f"dataset {card.name!r}: {len(errors)} problem(s):\n" + "\n".join(errors))
    return report


def print_check(report: dict[str, Any], console=None) -> None:
    """The check report as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=160)
    console.print(f"[bold]{report['dataset']}[/bold] ({report['reader']}, {report['task']}, {report['ndim']}D, "
                  f"{report['channels']} channel(s)) at {report['root']}")
    console.print("splits (" + report["split_kind"] + "): " +
                  ", ".join(f"{k} {v}" for k, v in report["splits"].items()))
    table = Table("split", "images", "checked", "sizes", "dtype", "spacing",
                  "instances/image (min/mean/max, total)" if report["task"] == "instance" else "class frequency",
                  title="dataset check")
    for s, e in report["summary"].items():
        sizes = ", ".join(f"{k} ({v})" for k, v in list(e["sizes"].items())[:4]) + (" ..." if len(e["sizes"]) > 4 else "")
        if report["task"] == "instance":
            i = e["instances"]
            last = f"{i['min']} / {i['mean']} / {i['max']}, {i['total']}"
        else:
            last = ", ".join(f"{c} {v:.3f}" for c, v in e["class_frequency"].items())
        table.add_row(s, str(e["n_images"]), f"{e['ok']}/{e['checked']}", sizes, ", ".join(e["dtypes"]),
                      ", ".join(e["spacing"]), last)
    console.print(table)
    if report["errors"]:
        console.print(f"[red]{len(report['errors'])} problem(s):[/red]")
        for err in report["errors"]:
            console.print("  - " + err, markup=False, highlight=False)
    else:
        console.print("[green]no problems found[/green]")


# ------------------------------------------------------------------------------------------------
# noisy-annotation protocol (train.label_noise)


def perturb_labels(label: np.ndarray, *, task: str, rate: float, kinds: Sequence[str], radius: int,
                   seed: int, sample_id: str) -> np.ndarray:
    """A copy of `label` with a seeded share `rate` of its objects eroded, dilated (into background only) or dropped
    (set to background), one kind drawn per perturbed object. Objects: the instances of instance data, the connected
    components of each class otherwise. The draw depends on (seed, sample id) only, so it is the same in every run."""
    from scipy import ndimage as ndi

    out = label.copy()
    if rate <= 0:
        return out
    digest = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, digest])
    ball = ndi.iterate_structure(ndi.generate_binary_structure(label.ndim, 1), radius)
    if task == "instance":
        objects = [(label == k, k) for k in np.unique(label) if k != 0]
    else:
        objects = []
        for c in np.unique(label):
            if c == 0:
                continue
            comps, n = ndi.label(label == c)
            objects += [(comps == k, c) for k in range(1, n + 1)]
    for mask, value in objects:
        if rng.random() >= rate:
            continue
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "drop":
            out[mask] = 0
        elif kind == "erode":
            out[mask & ~ndi.binary_erosion(mask, ball)] = 0
        else:
            out[ndi.binary_dilation(mask, ball) & (out == 0)] = value
    return out
