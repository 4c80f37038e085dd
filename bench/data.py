"""Dataset readers: the interface every dataset module implements, the data root, and splits.

A reader turns one dataset's official layout into `Sample`s. It knows nothing of methods.
Where the data lives: ``--data-root`` on the CLI, else the ``BENCH_DATA_ROOT`` environment variable,
else ``data_root`` in the run config, else ``~/.cache/physeg-bench/data`` (where ``bench data fetch`` puts
downloads). A dataset card's ``root`` is relative to it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

DATA_ROOT_ENV = "BENCH_DATA_ROOT"
DEFAULT_DATA_ROOT = Path.home() / ".cache" / "physeg-bench" / "data"


class DataError(RuntimeError):
    """Bad or missing data. The message names the file and what to do."""


def resolve_data_root(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_ROOT


@dataclass
class Sample:
    """One image with its label.

    image: float32 array (C, *spatial), raw intensities (normalisation is the pipeline's job).
    label: integer array (*spatial): instance ids (0 = background) or class indices; None if unlabelled.
    ignore: bool array (*spatial) or None: pixels whose truth is unknown (objects the annotators skipped, nnU-Net's
        "ignore label"); losses leave them out. ``meta["partial"]``: the label annotates only some objects, so
        only metrics valid on partial references (CTC SEG) are computed; an ignore region implies it.
    """

    id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    ignore: np.ndarray | None = None

    @property
    def partial(self) -> bool:
        return bool(self.meta.get("partial")) or (self.ignore is not None and bool(self.ignore.any()))

    @property
    def ndim(self) -> int:
        return self.image.ndim - 1


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetReader:
    """Base class of a dataset module. Subclass, set `Params` if the card takes reader options,
    and register with ``@register_dataset("name")``.

    Subclasses implement `list_ids` and `load`; `official_splits` when the dataset has one.
    """

    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, card: Any, root: Path, params: BaseModel | None = None) -> None:
        self.card = card
        self.root = Path(root) if root is not None else None  # None: a generated dataset (no files)
        self.params = params if params is not None else self.Params()

    # -- to implement ---------------------------------------------------------------------------
    def list_ids(self) -> list[str]:
        raise NotImplementedError

    def load(self, sample_id: str) -> Sample:
        raise NotImplementedError

    def official_splits(self) -> dict[str, list[str]] | None:
        """{'train': [...], 'val': [...], 'test': [...]} when the dataset ships one."""
        return None

    # -- shared helpers -------------------------------------------------------------------------
    def require(self, path: Path, what: str = "file") -> Path:
        """Path, or a DataError naming it and saying how to get the data."""
        if not path.exists():
            raise DataError(
                f"{self.card.name}: {what} not found: {path}. "
                f"Set the data root with --data-root or ${DATA_ROOT_ENV} (now {self.root.parent}), "
                f"or run `bench data fetch {self.card.name}`."
            )
        return path


# ------------------------------------------------------------------------------------------------
# splits


def content_hash(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def make_splits(
    ids: list[str],
    official: dict[str, list[str]] | None,
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> dict[str, list[str]]:
    """Official split when the dataset has one, else a seeded random split."""
    if official:
        out = {k: list(v) for k, v in official.items()}
        if "val" not in out and "train" in out:  # carve a validation set from train, seeded
            rng = np.random.default_rng(seed)
            train = list(out["train"])
            rng.shuffle(train)
            n_val = max(1, int(round(len(train) * val_fraction)))
            out["val"], out["train"] = sorted(train[:n_val]), sorted(train[n_val:])
        return out
    rng = np.random.default_rng(seed)
    order = sorted(ids)
    rng.shuffle(order)
    n = len(order)
    n_test = max(1, int(round(n * test_fraction))) if n >= 3 else 0
    n_val = max(1, int(round(n * val_fraction))) if n >= 3 else 0
    return {
        "test": sorted(order[:n_test]),
        "val": sorted(order[n_test : n_test + n_val]),
        "train": sorted(order[n_test + n_val :]),
    }


def official_hash(official: dict[str, list[str]] | None) -> str | None:
    """Hash of which image is in which official split (an edited split file changes it, the id list does not)."""
    if not official:
        return None
    canon = {k: sorted(v) for k, v in sorted(official.items())}
    return hashlib.sha256(json.dumps(canon).encode()).hexdigest()[:16]


def _check_saved(path: Path, saved: dict, digest: str, official, what: str = "splits") -> None:
    if saved.get("content_hash") != digest:
        raise DataError(f"{path}: {what} were made for other data (hash {saved.get('content_hash')} != {digest}); "
                        f"delete the file to make new {what}")
    want = official_hash(official)
    if saved.get("official_hash") and saved["official_hash"] != want:
        raise DataError(f"{path}: the dataset's official split changed since these {what} were made (an edited split "
                        "file?); the runs under this output root used the old one. Restore the split, or delete "
                        f"{path} to use the new one and rerun those runs")


def load_or_create_splits(path: Path, ids: list[str], official, *, seed: int = 0) -> dict[str, list[str]]:
    """Persisted splits (nnU-Net style): created once, then read back; changed data or an edited official split is
    refused."""
    digest = content_hash(ids)
    if path.exists():
        saved = json.loads(path.read_text())
        _check_saved(path, saved, digest, official)
        return saved["splits"]
    splits = make_splits(ids, official, seed=seed)
    from .cache import atomic_write_text

    # atomic: runs started at once on a fresh output root (a Ray / submitit sweep) must never read half a file
    atomic_write_text(path, json.dumps({"content_hash": digest, "official_hash": official_hash(official),
                                        "seed": seed, "splits": splits}, indent=1))
    return splits


def kfold_splits(ids: list[str], official, *, folds: int, fold: int, seed: int,
                 path: Path | None) -> dict[str, list[str]]:
    """Seeded k-fold cross-validation over the non-test images; the official test split stays the test split.

    All folds are persisted in one file (as nnU-Net's splits_final.json); `fold` picks one.
    """
    if fold >= folds:
        raise DataError(f"splits.fold={fold} but splits.folds={folds}")
    digest = content_hash(ids)
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        _check_saved(path, saved, digest, official, "folds")
        all_folds, test = saved["folds"], saved["test"]
    else:
        if official and official.get("test"):
            test = sorted(official["test"])
        else:
            test = make_splits(ids, None, seed=seed)["test"]
        pool = sorted(set(ids) - set(test))
        rng = np.random.default_rng(seed)
        rng.shuffle(pool)
        all_folds = [sorted(pool[k::folds]) for k in range(folds)]
        if path is None:
            val = all_folds[fold]
            return {"train": sorted(i for k, f in enumerate(all_folds) if k != fold for i in f), "val": val,
                    "test": test}
        from .cache import atomic_write_text

        atomic_write_text(path, json.dumps({"content_hash": digest, "official_hash": official_hash(official),
                                            "seed": seed, "test": test, "folds": all_folds}, indent=1))
    val = all_folds[fold]
    train = sorted(i for k, f in enumerate(all_folds) if k != fold for i in f)
    return {"train": train, "val": val, "test": test}


def crossval_splits(ids: list[str], *, folds: int, fold: int, seed: int, path: Path | None) -> dict[str, list[str]]:
    """Seeded cross-validation over every image: fold `fold` is the test set, the validation set is a share
    (1 / folds, at least one) of the others, drawn with the same seed, the rest trains. Over all folds every image
    is a test image exactly once, so a leaderboard pools the folds' per-image values (nnU-Net's 5-fold CV, for
    datasets too small to hold a test split apart). All folds are persisted in one file."""
    if fold >= folds:
        raise DataError(f"splits.fold={fold} but splits.folds={folds}")
    if len(ids) < folds + 1:
        raise DataError(f"splits.kind=crossval: {len(ids)} images cannot fill {folds} test folds and a val set")
    digest = content_hash(ids)
    if path is not None and path.exists():
        saved = json.loads(path.read_text())
        _check_saved(path, saved, digest, None, "folds")
        all_folds = saved["folds"]
    else:
        pool = sorted(ids)
        np.random.default_rng(seed).shuffle(pool)
        all_folds = [sorted(pool[k::folds]) for k in range(folds)]
        if path is not None:
            from .cache import atomic_write_text

            atomic_write_text(path, json.dumps({"content_hash": digest, "official_hash": official_hash(None),
                                                "seed": seed, "kind": "crossval", "folds": all_folds}, indent=1))
    test = all_folds[fold]
    rest = [i for k in range(1, folds) for i in all_folds[(fold + k) % folds]]  # a fixed order per fold
    n_val = max(1, len(rest) // folds)
    return {"train": sorted(rest[n_val:]), "val": sorted(rest[:n_val]), "test": test}


def split_policy(card, reader: "DatasetReader", persist_dir: Path | None) -> dict[str, list[str]]:
    """The splits a run uses: the official split when the dataset has one, else seeded random; k-fold
    cross-validation over the non-test images, keeping the official test split when there is one.

    With ``persist_dir`` the splits are stored there (nnU-Net style, keyed by the reader params and checked
    against the data's content hash); without it they are computed only (``bench data check``).
    """
    sc = card.splits
    ids = reader.list_ids()
    if not ids:
        raise DataError(f"dataset {card.name!r}: no images found under {reader.root}")
    official = reader.official_splits()
    # reader params (a LIVECell protocol, a block size) change the samples: their hash names the file
    sfx = ""
    if card.params:
        sfx = "_p" + hashlib.sha256(json.dumps(card.params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    if sc.kind == "kfold":
        path = persist_dir / f"splits_kfold{sc.folds}_seed{sc.seed}{sfx}.json" if persist_dir else None
        return kfold_splits(ids, official, folds=sc.folds, fold=sc.fold, seed=sc.seed, path=path)
    if sc.kind == "crossval":
        path = persist_dir / f"splits_crossval{sc.folds}_seed{sc.seed}{sfx}.json" if persist_dir else None
        return crossval_splits(ids, folds=sc.folds, fold=sc.fold, seed=sc.seed, path=path)
    use_official = official if sc.kind == "official" else None
    if persist_dir is None:
        return make_splits(ids, use_official, seed=sc.seed)
    name = f"splits_official{sfx}.json" if use_official else f"splits_random_seed{sc.seed}{sfx}.json"
    return load_or_create_splits(persist_dir / name, ids, use_official, seed=sc.seed)
