"""Export a trained run as a bioimage.io model package (model spec 0.5), testable with `bioimageio.core`.

What the package holds, all derived from the run folder:

- the network's weights as TorchScript (traced; what deepImageJ/Fiji and bioimageio.core load without this
  harness) and, when the network is a plain library class (MONAI, segmentation-models-pytorch), as a PyTorch
  state dict with that class named as the architecture;
- the input pre-processing of the dataset card in bioimage.io terms (percentile -> ``scale_range``, z-score ->
  ``zero_mean_unit_variance``), the output's activation (e.g. ``softmax``) as post-processing;
- a test input cropped from the first test image and the network's output on it (``bioimageio test`` reruns it);
- a cover (input | prediction), and a README that states what the spec cannot: the method's instance
  post-processing with the run's calibrated settings, the training recipe, and the run's test scores;
- the citations of the method's paper and of the dataset.

The method says how its network output is read (`Method.export_outputs`); a method that does not is refused.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SPACE_AXES = ("z", "y", "x")


class ExportError(ValueError):
    pass


def _space_ids(ndim: int) -> list[str]:
    return list(SPACE_AXES[-ndim:])


def test_crop(image: np.ndarray, ndim: int, divisor: int, size: int = 256) -> np.ndarray:
    """A centred crop of (C, *spatial) whose sides are multiples of the network's divisor (at most ``size``)."""
    out = image
    for ax in range(1, ndim + 1):
        n = image.shape[ax]
        side = min(n, max(size, divisor)) // divisor * divisor
        if side == 0:
            raise ExportError(f"the test image is {image.shape[1:]}: smaller than the network's size divisor "
                              f"{divisor}")
        start = (n - side) // 2
        out = np.take(out, np.arange(start, start + side), axis=ax)
    return np.ascontiguousarray(out, dtype=np.float32)


def preprocessing(normalize, ndim: int) -> list:
    """The dataset card's normalisation as bioimage.io pre-processing (per sample and channel)."""
    import bioimageio.spec.model.v0_5 as spec

    axes = [spec.AxisId(a) for a in _space_ids(ndim)]
    steps = [spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))]
    if normalize.kind == "percentile":
        # bench.pipeline.normalize: (x - p_low) / max(p_high - p_low, 1e-6) per channel
        steps.append(spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
            axes=axes, min_percentile=normalize.low, max_percentile=normalize.high, eps=1e-6)))
    elif normalize.kind == "zscore":
        steps.append(spec.ZeroMeanUnitVarianceDescr(kwargs=spec.ZeroMeanUnitVarianceKwargs(axes=axes, eps=1e-6)))
    return steps


def postprocessing(activation: str | None) -> list:
    import bioimageio.spec.model.v0_5 as spec

    if activation in (None, "none"):
        return []
    if activation == "softmax":
        return [spec.SoftmaxDescr(kwargs=spec.SoftmaxKwargs(axis=spec.AxisId("channel")))]
    if activation == "sigmoid":
        return [spec.SigmoidDescr()]
    raise ExportError(f"output activation {activation!r} has no bioimage.io post-processing (softmax, sigmoid)")


def apply_activation(y, activation: str | None):
    if activation == "softmax":
        return y.softmax(1)
    if activation == "sigmoid":
        return y.sigmoid()
    return y


def _cover(path: Path, image: np.ndarray, labels: np.ndarray) -> None:
    """input | instance labels side by side (2:1, as bioimage.io asks), middle slice for 3D."""
    from PIL import Image

    img, lab = image[0], labels
    while img.ndim > 2:
        img, lab = img[img.shape[0] // 2], lab[lab.shape[0] // 2]
    lo, hi = np.percentile(img, [1, 99.8])
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    left = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
    rng = np.random.default_rng(0)
    colours = rng.integers(60, 256, size=(int(lab.max()) + 1, 3)).astype(np.uint8)
    colours[0] = 0
    right = np.where(lab[..., None] > 0, colours[lab], (left * 0.4).astype(np.uint8))
    pair = np.concatenate([left, right], axis=1)
    Image.fromarray(pair).resize((512, 256), Image.NEAREST).save(path)


def _readme(cfg, method, summary: dict, outputs: dict, weights: list[str]) -> str:
    m, d = cfg.method, cfg.dataset
    tc = cfg.train
    pp = {k: getattr(method.params, k) for k in method.postprocess_params if hasattr(method.params, k)}
    metrics = summary.get("metrics", {})
    shown = {k: v for k, v in metrics.items() if k in ("f1@0.50", "ap@0.50", "map", "pq", "sq", "rq", "seg", "dice",
                                                       "iou", "hd95")}
    lines = [
        f"# {m.name} on {d.name}", "",
        f"{m.description or m.name}. Trained by physeg-bench (`bench run --method {m.name} --dataset {d.name}`) "
        f"and exported with `bench export`.", "",
        "## Input", "",
        f"{d.channels} channel(s), {d.ndim}D, axes `batch, channel, {', '.join(_space_ids(d.ndim))}`; "
        f"sides multiples of {method.divisor}. Pre-processing (stated in rdf.yaml, applied by bioimage.io "
        f"consumers): {d.normalize.kind} normalisation per image and channel"
        + (f" (percentiles {d.normalize.low} / {d.normalize.high})" if d.normalize.kind == "percentile" else "")
        + ".", "",
        "## Output", "",
        f"{outputs['description']} Channels: {', '.join(outputs['channel_names'])}.", "",
        "## Post-processing (not expressible in the bioimage.io spec)", "",
        outputs.get("postprocess", "none"), "",
        f"Settings of this run ({'chosen on the val split by `bench calibrate`' if summary.get('postprocess') else 'the card values'}): "
        f"`{json.dumps(pp)}`.", "",
        "## Training", "",
        f"{tc.epochs} epochs x {tc.steps_per_epoch or 'one pass'} steps, batch {tc.batch_size}, patches "
        f"{list(tc.patch_size)}, lr {tc.lr} ({tc.optimizer}, {tc.scheduler}), seed {cfg.seed}; "
        f"checkpoint: {cfg.eval.checkpoint}.", "",
        "## Test scores of this run", "",
        f"Split `{summary.get('split', 'test')}`, {summary.get('n_images', '?')} images: "
        + (", ".join(f"{k} {v:.4f}" for k, v in shown.items()) if shown else "see the run's summary.json") + ".", "",
        "## Use", "",
        "- Python: `bioimageio.core.predict(model='<this zip>', inputs=image)` gives the output above; apply the "
        "post-processing for instances.",
        "- napari: the bioimage.io model manager (`napari-bioimageio`) or the run's harness: "
        "`bench predict RUN_DIR -i images/ -o labels/` (the full pipeline, post-processing included).",
        "- Fiji: deepImageJ opens the zip (torchscript weights)." if "torchscript" in weights else "", "",
        "## Citation", "",
        f"- Method: {m.paper or m.name}" + (f" ({m.paper_url})" if m.paper_url else ""),
        f"- Data: {d.citation.strip() or d.name}" + (f" ({d.source.homepage})" if d.source.homepage else ""), "",
    ]
    return "\n".join(lines)


def export_bioimageio(run_dir: str | Path, output: str | Path, *, data_root: str | None = None,
                      authors: list[str] | None = None, license: str = "CC-BY-4.0",
                      test: bool = True) -> dict[str, Any]:
    """Write ``output`` (a .zip bioimage.io package) from a finished run; with ``test``, run bioimageio.core's
    model test on it. Returns {"path", "weights", "test": status or None, "details": failed checks}."""
    import torch

    from ._compat import ensure_torchvision
    from .runfiles import RunFiles
    from .runner import load_trained, open_dataset

    ensure_torchvision()  # smp architectures are imported by bioimageio.core's test
    try:
        import bioimageio.spec.model.v0_5 as spec
        from bioimageio.spec import save_bioimageio_package
    except ImportError as exc:
        raise ExportError("bioimage.io export needs bioimageio.core: pip install 'physeg-bench[export]'") from exc

    run_dir, output = Path(run_dir), Path(output)
    files = RunFiles(run_dir)
    if not files.summary().exists():
        raise ExportError(f"{run_dir}: not a finished run (no {files.summary().name}); export needs a trained, "
                          "evaluated run")
    if output.suffix != ".zip":
        raise ExportError(f"{output}: the package is a .zip file")
    cfg, method = load_trained(run_dir, data_root=data_root, device="cpu")
    if not method.trainable or not method.networks:
        raise ExportError(f"{run_dir}: method {cfg.method.name!r} has no trained network to export")
    outputs = method.export_outputs()  # raises for methods that do not declare their output
    net = method.networks[outputs.get("network", "net")].to("cpu", memory_format=torch.contiguous_format).eval()
    if getattr(net, "accepts_meta", False):
        raise ExportError(f"{cfg.method.name}: its network takes metadata besides the image; bioimage.io models "
                          "take tensors only")
    from .method import Method

    if type(method).normalize is not Method.normalize:
        raise ExportError(f"{cfg.method.name}: it normalises its input its own way, which rdf.yaml cannot state")
    ds = cfg.dataset
    summary = json.loads(files.summary().read_text())
    splits = json.loads(files.splits.read_text())
    ids = splits.get("test") or splits.get("val") or splits.get("train")
    reader = open_dataset(cfg, data_root)
    sample = reader.load(ids[0])
    raw = test_crop(sample.image, ds.ndim, method.divisor)
    x = method.normalize(raw)
    with torch.no_grad():
        y = apply_activation(net(torch.from_numpy(x[None])), outputs.get("activation")).numpy().astype(np.float32)
    labels = method.postprocess(y[0])

    space = _space_ids(ds.ndim)
    spacing = list(ds.spacing) if ds.spacing else [1.0] * ds.ndim
    authors = [spec.Author(name=a) for a in (authors or ["physeg-bench"])]
    cite = []  # bioimage.io cites with a DOI or URL: the paper and the data's homepage, when the cards give them
    if cfg.method.paper_url:
        cite.append(spec.CiteEntry(text=cfg.method.paper or cfg.method.name, url=cfg.method.paper_url))
    if ds.source.homepage:
        cite.append(spec.CiteEntry(text=ds.citation.strip() or ds.name, url=ds.source.homepage))
    if not cite:
        raise ExportError(f"bioimage.io needs a citation with a URL: add `paper_url` to method card "
                          f"{cfg.method.name!r} or `source.homepage` to dataset card {ds.name!r}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "test_input.npy", raw[None])
        np.save(tmp / "test_output.npy", y)
        _cover(tmp / "cover.png", raw, labels)
        pt_version = spec.Version(torch.__version__.split("+")[0])
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; deepImageJ and bioimage.io still load it
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(net, torch.from_numpy(x[None]), check_trace=False)
        traced.save(str(tmp / "weights_torchscript.pt"))
        weights = {"torchscript": spec.TorchscriptWeightsDescr(source=tmp / "weights_torchscript.pt",
                                                                pytorch_version=pt_version)}
        arch = library_architecture(net)
        if arch is not None:
            torch.save(net.state_dict(), tmp / "weights_state_dict.pt")
            weights["pytorch_state_dict"] = spec.PytorchStateDictWeightsDescr(
                source=tmp / "weights_state_dict.pt", pytorch_version=pt_version,
                architecture=spec.ArchitectureFromLibraryDescr(import_from=arch[0], callable=arch[1],
                                                               kwargs=arch[2]))
        (tmp / "README.md").write_text(_readme(cfg, method, summary, outputs, list(weights)))
        in_axes = [spec.BatchAxis(), spec.ChannelAxis(channel_names=[f"channel{c}" for c in range(ds.channels)])]
        in_axes += [spec.SpaceInputAxis(id=spec.AxisId(a), size=spec.ParameterizedSize(min=method.divisor,
                                                                                          step=method.divisor),
                                        scale=float(s)) for a, s in zip(space, spacing)]
        out_axes = [spec.BatchAxis(), spec.ChannelAxis(channel_names=list(outputs["channel_names"]))]
        out_axes += [spec.SpaceOutputAxis(id=spec.AxisId(a), size=spec.SizeReference(
            tensor_id=spec.TensorId("input"), axis_id=spec.AxisId(a)), scale=float(s)) for a, s in zip(space, spacing)]
        descr = spec.ModelDescr(
            name=f"physeg-bench {cfg.method.name} {ds.name}",
            description=(cfg.method.description or cfg.method.name)[:1000],
            covers=[spec.FileDescr(source=tmp / "cover.png")],
            authors=authors,
            cite=cite,
            license=spec.LicenseId(license),
            documentation=spec.FileDescr(source=tmp / "README.md"),
            tags=["physeg-bench", cfg.method.name, ds.name, f"{ds.ndim}d", f"{ds.task}-segmentation", "pytorch"],
            inputs=[spec.InputTensorDescr(id=spec.TensorId("input"), axes=in_axes, test_tensor=spec.FileDescr(
                source=tmp / "test_input.npy"), preprocessing=preprocessing(ds.normalize, ds.ndim))],
            outputs=[spec.OutputTensorDescr(id=spec.TensorId("output"), axes=out_axes,
                                            description=outputs["description"],
                                            test_tensor=spec.FileDescr(source=tmp / "test_output.npy"),
                                            postprocessing=postprocessing(outputs.get("activation")))],
            weights=spec.WeightsDescr(**weights),
            config={"physeg_bench": {"run_dir": str(run_dir), "method": cfg.method.name, "dataset": ds.name,
                                     "seed": cfg.seed, "postprocess": summary.get("postprocess")}},
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        save_bioimageio_package(descr, output_path=output)
    result: dict[str, Any] = {"path": output, "weights": list(weights), "test": None, "details": []}
    if test:
        from bioimageio.core import test_model

        rep = test_model(output)
        result["test"] = rep.status
        result["details"] = [f"{d.name}: {d.errors}" for d in rep.details if d.status != "passed"]
    return result


def library_architecture(net) -> tuple[str, str, dict] | None:
    """(import_from, callable, kwargs) that rebuild ``net`` without this harness, or None (TorchScript only)."""
    from .registry import NETWORKS

    built = getattr(net, "built_from", None)
    if built is None:
        return None
    name, args = built
    fn = NETWORKS.entry(name).extra.get("library")
    return fn(**args) if fn else None
