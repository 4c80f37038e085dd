"""`bench run` (the runner, in process) on every dataset reader: the shared data and fixtures in each layout.

Tiny settings: one epoch of one step, one validation and one test image, tracking off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from _dataset_fixtures import make_ctc, make_dsb, make_livecell, make_msd
from bench.config import resolve_config
from bench.runner import run
from conftest import DATA_ROOT, FAST_RUN

TINY = ["train.epochs=1", "train.steps_per_epoch=1", "train.val_max_images=1", "eval.max_images=1",
        "eval.overlays=1", "tracking.enabled=false",
        # a small MONAI UNet (2D and 3D): the readers are under test here, not the network
        "method.params.network.name=monai_unet",
        "method.params.network.options={_delete_: true, channels: [8, 16, 32, 64, 64], num_res_units: 0}"]


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layouts")
    make_livecell(root / "livecell")
    make_ctc(root / "ctc" / "DIC-C2DH-HeLa")
    make_dsb(root / "dsb2018")
    make_msd(root / "msd" / "Task03_Liver")
    make_msd(root / "msd" / "Task01_BrainTumour", brats=True)
    return root


CASES = [
    # card, data root ("shared" or "fixture"), extra overrides
    ("bbbc039", "shared", []),
    ("metaldam", "shared", []),
    ("isbi2012", "shared", []),
    ("drosophila_vnc", "shared", ["train.patch_size=[16,64,64]", "dataset.params.yx_block=128",
                                  "train.max_train_images=2"]),
    ("livecell", "fixture", []),
    ("ctc_dic_c2dh_hela", "fixture", []),
    ("dsb2018", "fixture", []),
    ("lits", "fixture", ["train.patch_size=[16,32,32]"]),
    ("brats", "fixture", ["train.patch_size=[16,32,32]"]),
]


@pytest.mark.parametrize("card,where,extra", CASES, ids=[c[0] for c in CASES])
def test_bench_run_on_dataset(card, where, extra, tmp_path, request):
    if where == "shared" and not (DATA_ROOT / card).exists():
        pytest.skip(f"{DATA_ROOT / card} not present")
    if where == "fixture" and not (DATA_ROOT / "bbbc039").exists():
        pytest.skip("fixtures are made from the shared BBBC039 / StarDist data")
    root = DATA_ROOT if where == "shared" else request.getfixturevalue("fixture_root")
    cfg = resolve_config("unet", card, overrides=[*FAST_RUN, *TINY, f"output_root={tmp_path}", *extra])
    res = run(cfg, data_root=str(root), progress=False)
    s = res.summary
    assert s["n_images"] == 1 and s["dataset"] == card
    m = s["metrics"]
    if cfg.dataset.task == "semantic":
        last = list(cfg.eval.regions)[-1] if cfg.eval.regions else cfg.dataset.classes[-1]  # BraTS: ET region
        assert {f"dice/{last}", f"iou/{last}", f"hd95/{last}", f"bf1/{last}"} <= set(m), sorted(m)
    else:
        assert "f1@0.50" in m and "pq" in m, sorted(m)
    pred = tifffile.imread(next((res.run_dir / "predictions").glob("*.tif")))
    assert pred.ndim == cfg.dataset.ndim
    assert np.isfinite([v for v in m.values() if isinstance(v, float)]).any()
