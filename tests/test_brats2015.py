"""The BraTS 2015 reader (DeepMedic layout) on the real cases in ../shared/data, and a 3D run on it."""

from __future__ import annotations

import numpy as np
import pytest

from bench.config import resolve_config
from bench.datasets.brats2015 import NESTED_2015, brats2015_regions
from bench.datasets.msd import read_nifti
from conftest import DATA_ROOT, needs_data

pytestmark = needs_data("brats2015")


def _reader(**params):
    from bench.runner import open_dataset

    sets = [f"dataset.params.{k}={v}" for k, v in params.items()]
    return open_dataset(resolve_config("unet", "brats2015", overrides=sets))


def test_official_split_and_case_layout():
    r = _reader()
    assert r.official_splits() == {"train": ["brats_2013_pat0005_1", "brats_2013_pat0006_1"],
                                   "val": ["brats_2013_pat0003_1", "brats_2013_pat0004_1"],
                                   "test": ["brats_2013_pat0001_1", "brats_2013_pat0002_1"]}


def test_case_is_cropped_to_the_brain_with_nested_regions():
    case = "brats_2013_pat0005_1"
    folder = DATA_ROOT / "brats2015" / "train" / case
    raw, sp = read_nifti(folder / "OTMultiClass.nii.gz")
    full = _reader(crop_to_brain=False).load(case)
    s = _reader().load(case)
    assert full.image.shape == (2, 155, 240, 240) and s.spacing == sp == (1.0, 1.0, 1.0)
    assert s.image.shape[0] == 2 and np.prod(s.image.shape[1:]) < 0.6 * np.prod(full.image.shape[1:])
    # no tumour voxel is lost by the crop, and the classes nest as the BraTS regions
    assert (s.label > 0).sum() == (raw > 0).sum()
    reg = brats2015_regions(s.label)
    assert reg["WT"].sum() == (raw > 0).sum()
    assert reg["TC"].sum() == np.isin(raw, [1, 3, 4]).sum()
    assert reg["ET"].sum() == (raw == 4).sum()
    assert set(np.unique(s.label)) <= set(NESTED_2015.values())
    # FLAIR is channel 0, read in the same axis order as the label
    flair, _ = read_nifti(folder / "Flair_subtrMeanDivStd.nii.gz")
    box = s.meta["crop"]
    np.testing.assert_array_equal(s.image[0], flair[tuple(slice(a, b) for a, b in box)])


def test_missing_modality_names_the_file(tmp_path):
    import shutil

    from bench.data import DataError
    from bench.runner import open_reader

    src = DATA_ROOT / "brats2015" / "test" / "brats_2013_pat0001_1"
    dst = tmp_path / "brats2015" / "test" / "brats_2013_pat0001_1"
    dst.mkdir(parents=True)
    for f in ("Flair_subtrMeanDivStd.nii.gz", "OTMultiClass.nii.gz", "brainmask.nii.gz"):
        shutil.copy(src / f, dst / f)
    cfg = resolve_config("unet", "brats2015")
    r = open_reader(cfg.dataset, str(tmp_path))
    with pytest.raises(DataError, match=r"T1c image not found: .*T1c_subtrMeanDivStd.nii.gz"):
        r.load("brats_2013_pat0001_1")


def test_3d_run_on_brats2015_from_the_disk_cache(tmp_path, monkeypatch):
    from bench.runner import run

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = resolve_config("unet", "brats2015", overrides=[
        "train.epochs=1", "train.steps_per_epoch=2", "train.patch_size=[16,32,32]", "train.val_max_images=1",
        "eval.max_images=1", "eval.overlays=1", "tracking.enabled=false", f"output_root={tmp_path / 'runs'}",
        "method.params.network.name=monai_unet",
        "method.params.network.options={_delete_: true, channels: [8, 16, 32], num_res_units: 1}"])
    assert cfg.method.params["network"] == {"name": "monai_unet",
                                            "options": {"channels": [8, 16, 32], "num_res_units": 1}}
    res = run(cfg, progress=False)
    m = res.summary["metrics"]
    # scored on the BraTS regions (the card's eval.regions), not on the nested classes
    assert res.summary["n_images"] == 1 and {"dice/WT", "dice/TC", "dice/ET", "hd95/WT"} <= set(m)
    assert not any(k.endswith("edema_wt_only") for k in m)
    # training read its cases from the per-case cache (one folder per case: image, label, target, fg)
    cases = sorted((tmp_path / "cache" / "samples" / "brats2015").iterdir())
    assert len(cases) == 3  # 2 training cases + 1 validation case
    assert {p.name for p in cases[0].iterdir()} >= {"image.npy", "label.npy", "case.json", "_fg_locations.npy"}
