"""poisson / diffusion / classic_watershed through the runner (a few steps; the long training is a benchmark)."""

from __future__ import annotations


import numpy as np
import pytest

from bench.config import resolve_config
from bench.runner import run
from conftest import FAST_RUN, needs_data

pytestmark = needs_data("bbbc039")

SMALL_NET = ["method.params.network={name: monai_unet, options: {_delete_: true, channels: [8, 16, 32, 64], num_res_units: 1}}"]


@pytest.mark.parametrize("method", ["poisson", "diffusion"])
def test_field_method_trains_and_evaluates(method, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = resolve_config(method, "bbbc039", overrides=FAST_RUN + SMALL_NET + [
        f"output_root={tmp_path}", "tracking.enabled=false", "eval.max_images=2",
        "eval.calibrate=false"])  # calibration of a field method: tests/test_calibration.py
    res = run(cfg, progress=False)
    assert res.summary["n_images"] == 2 and "pq" in res.summary["metrics"]
    hist = (res.run_dir / "history.csv").read_text()
    assert "train/l1" in hist  # the loss is the plain L1 on the field
    # targets were cached on disk, keyed by label content and parameters
    assert len(list((tmp_path / "cache" / "targets").rglob("*.npy"))) == 4


def test_field_targets_match_the_fields_module(tmp_path, monkeypatch, data_root):
    from bench import fields
    from bench.registry import METHODS
    from bench.runner import build_method, open_dataset

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    for kind, fn in (("poisson", fields.poisson_field), ("diffusion", fields.diffusion_field)):
        cfg = resolve_config(kind, "bbbc039", overrides=SMALL_NET)
        m = build_method(cfg, __import__("torch").device("cpu"))
        s = open_dataset(cfg, str(data_root)).load(open_dataset(cfg, str(data_root)).list_ids()[0])
        t = m.make_targets(s)["field"]
        assert t.shape == (1, *s.label.shape) and t.dtype == np.float32
        np.testing.assert_allclose(t[0], fn(s.label), atol=1e-6)
        again = m.make_targets(s)["field"]  # from the cache
        np.testing.assert_array_equal(again, t)
    assert isinstance(METHODS.get("field_regression").Params().h, float)


def test_ground_truth_field_through_method_postprocess_recovers_instances(data_root):
    """The method's own post-processing (card eps/h) inverts the exact target."""
    from bench.metrics import MetricContext, evaluate_image
    from bench.runner import build_method, open_dataset

    for kind in ("poisson", "diffusion"):
        # min_size 0: the card's min_size (16 px) also drops the few tiny reference objects cut by the border
        cfg = resolve_config(kind, "bbbc039", overrides=SMALL_NET + ["method.params.min_size=0"])
        m = build_method(cfg, __import__("torch").device("cpu"))
        reader = open_dataset(cfg, str(data_root))
        s = reader.load(reader.official_splits()["test"][0])
        pred = m.postprocess(m.make_targets(s)["field"])
        f1 = next(r["value"] for r in evaluate_image(pred, s.label, MetricContext(task="instance"), ["f1@0.50"])
                  if r["metric"] == "f1@0.50")
        assert f1 >= 0.99, (kind, f1)


def test_field_methods_refuse_semantic_data():
    from bench.runner import build_method

    cfg = resolve_config("poisson", "bbbc039", overrides=SMALL_NET + ["dataset.task=semantic"])
    with pytest.raises(ValueError, match="need an instance dataset"):
        build_method(cfg, __import__("torch").device("cpu"))
