"""`bench export --format bioimageio`: the package passes bioimageio.core's model test and states what it should."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import yaml

from bench.config import resolve_config
from bench.runner import run
from conftest import FAST_RUN, needs_data

pytestmark = needs_data("bbbc039")
pytest.importorskip("bioimageio.core")


def _trained(tmp_path, method: str, *extra: str):
    cfg = resolve_config(method, "bbbc039", overlay="configs/cpu_fields.yaml", overrides=[
        *FAST_RUN, "tracking.enabled=false", f"output_root={tmp_path / 'runs'}", "eval.calibrate=false",
        "eval.max_images=1", *extra])
    return run(cfg, progress=False).run_dir


def _rdf(package):
    with zipfile.ZipFile(package) as z:
        return yaml.safe_load(z.read("rdf.yaml")), set(z.namelist()), z


def test_unet_package_passes_the_bioimageio_test_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    run_dir = _trained(tmp_path, "unet", "train.channels_last=true")  # NHWC weights must export as well
    package = tmp_path / "unet.zip"
    out = CliRunner().invoke(app, ["export", str(run_dir), "-o", str(package), "--author", "A. Tester", "-q"])
    assert out.exit_code == 0, out.output
    assert "model test: passed" in out.output
    rdf, names, _ = _rdf(package)
    assert set(rdf["weights"]) == {"torchscript", "pytorch_state_dict"}  # MONAI's UNet: rebuildable from kwargs
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["import_from"] == "monai.networks.nets"
    pre = [p for p in rdf["inputs"][0]["preprocessing"] if p["id"] == "scale_range"][0]["kwargs"]
    assert (pre["min_percentile"], pre["max_percentile"]) == (1.0, 99.8)  # the dataset card's normalisation
    assert rdf["outputs"][0]["postprocessing"][0]["id"] == "softmax"
    assert [a["channel_names"] for a in rdf["outputs"][0]["axes"] if a["type"] == "channel"] == [
        ["background", "interior", "boundary"]]
    assert rdf["authors"] == [{"name": "A. Tester"}]
    assert {c.get("url") for c in rdf["cite"]} >= {"https://arxiv.org/abs/1505.04597",
                                                   "https://bbbc.broadinstitute.org/BBBC039"}
    assert {"README.md", "cover.png", "test_input.npy", "test_output.npy"} <= names
    with zipfile.ZipFile(package) as z:
        readme = z.read("README.md").decode()
    assert "min_size" in readme and "three_class_to_instances" in readme  # the post-processing is stated


def test_field_package_reproduces_its_test_output_and_refuses_training_free_runs(tmp_path):
    import torch
    from bioimageio.core import load_model_description, predict

    from bench.export import ExportError, export_bioimageio

    run_dir = _trained(tmp_path, "poisson")
    res = export_bioimageio(run_dir, tmp_path / "poisson.zip")
    assert res["test"] == "passed", res["details"]
    rdf, _, _ = _rdf(res["path"])
    assert rdf["outputs"][0]["postprocessing"] == [] or all(
        p["id"] == "ensure_dtype" for p in rdf["outputs"][0]["postprocessing"])  # the field is the raw output
    # a consumer's prediction (its own pre-processing) equals the harness's network on the harness's normalisation
    model = load_model_description(res["path"])
    with zipfile.ZipFile(res["path"]) as z:
        z.extract("test_input.npy", tmp_path)
        z.extract("test_output.npy", tmp_path)
    x, y = np.load(tmp_path / "test_input.npy"), np.load(tmp_path / "test_output.npy")
    sample = predict(model=model, inputs={"input": x})
    got = sample.members["output"].data.to_numpy()
    assert got.shape == y.shape and np.allclose(got, y, atol=1e-3)
    assert torch.from_numpy(y).abs().sum() > 0

    ws = run(resolve_config("classic_watershed", "bbbc039", overrides=[
        "eval.max_images=1", "tracking.enabled=false", f"output_root={tmp_path / 'runs'}"]), progress=False).run_dir
    with pytest.raises(ExportError, match="no trained network"):
        export_bioimageio(ws, tmp_path / "ws.zip")
    with pytest.raises(ExportError, match=r"\.zip"):
        export_bioimageio(run_dir, tmp_path / "poisson.tar")
