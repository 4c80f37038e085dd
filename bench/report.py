"""The results report: one self-contained, styled HTML page per dataset (`bench report`, the leaderboard's html).

It holds the leaderboard's markdown document (table in rank order with CIs, reported rows apart, the baseline pairing,
the budget and convergence verdicts, provenance, the note) rendered to HTML, its figures embedded, and a gallery per
measured row: the best, median and worst test images by the headline metric (per-image values averaged over the
seeds), each drawn from the first seed's saved prediction with the reference outlined just outside each object
(green) and the prediction just inside (magenta), so both stay visible where they coincide; methods that explain
themselves (`Method.explain`, e.g. a field method's predicted field beside its target) add those maps. Every image
is inlined (data URIs): the page can be mailed or attached to a paper as one file.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from html import escape
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.7em;border-bottom:2px solid #4C72B0;padding-bottom:.2em}h2{font-size:1.3em;margin-top:1.6em}
table{border-collapse:collapse;margin:1em 0;font-size:.88em}th,td{border:1px solid #ccc;padding:.35em .55em;
vertical-align:top}th{background:#eef2f8}tr:nth-child(even) td{background:#fafafa}code,pre{background:#f4f4f4;
padding:.1em .3em;border-radius:3px}pre{padding:.6em;overflow-x:auto}img{max-width:100%}
.gallery{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:12px}
figure{margin:0;border:1px solid #ddd;border-radius:4px;padding:6px;background:#fff}
figcaption{font-size:.82em;color:#444;margin-top:4px}.legend span{display:inline-block;width:1.2em;height:.8em;
margin:0 .3em 0 1em;vertical-align:middle}.swatch{display:inline-block;width:.9em;height:.9em;border-radius:2px;
margin-right:.3em;vertical-align:middle}
"""


def _png_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _colormap(a: np.ndarray) -> np.ndarray:
    """A 2D map as viridis RGB (middle slice in 3D), scaled by its 1-99.5 percentiles."""
    import matplotlib

    while a.ndim > 2:
        a = a[a.shape[0] // 2]
    lo, hi = np.percentile(a, [1, 99.5])
    x = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)
    return (matplotlib.colormaps["viridis"](x)[..., :3] * 255).astype(np.uint8)


def pick_images(values: dict[str, float], higher_is_better: bool = True) -> list[tuple[str, str, float]]:
    """(role, image id, value) of the best, median and worst image (ties broken by image id)."""
    if not values:
        return []
    order = sorted(values, key=lambda i: (values[i], i), reverse=higher_is_better)
    picks = [("best", order[0]), ("median", order[len(order) // 2]), ("worst", order[-1])]
    return [(role, i, values[i]) for role, i in picks]


def gallery_section(rows, metric: str, dataset: str, output_root: str | Path, data_root: str | None,
                    colours: dict[str, str]) -> list[str]:
    """HTML of the per-method galleries."""
    from .leaderboard import _higher_is_better
    from .results import finished_runs, per_image_values
    from .runner import load_run_config, open_reader

    runs = finished_runs(output_root, dataset)
    html = ["<h2>Gallery: best, median and worst test images</h2>",
            f"<p>By per-image <code>{escape(metric)}</code> (mean over the row's seeds), drawn from the first "
            "seed's saved prediction.</p>",
            "<p class='legend'>Outlines:<span style='background:#00dc00'></span>reference (just outside each "
            "object)<span style='background:#ff00ff'></span>prediction (just inside)</p>"]
    readers = {}
    for r in rows:
        if r.reported or not r.comparable:
            continue
        rs = sorted((x for x in runs if x.label == r.label), key=lambda x: x.summary.get("seed", 0))
        if not rs:
            continue
        picks = pick_images(per_image_values(rs, metric), _higher_is_better(metric))
        first = rs[0]
        cfg = load_run_config(first.run_dir)
        key = cfg.dataset.name
        if key not in readers:
            readers[key] = open_reader(cfg.dataset, data_root or cfg.data_root, download=False)
        explainer = _explainer(first.run_dir, cfg, data_root)
        figs = []
        for role, sid, value in picks:
            sample = readers[key].load(sid)
            pred_path = first.run_dir / "predictions" / f"{sid}.tif"
            pred = _read_label(pred_path) if pred_path.exists() else None
            caption = f"{role}: {escape(sid)}<br>{escape(metric)} = {value:.3f}"
            if pred is None:
                caption += " (prediction not saved: eval.save_predictions=false)"
            figs.append(f"<figure><img alt='{escape(r.label)} {role} {escape(sid)}' "
                        f"src='{_png_uri(_overlay(sample, pred))}'><figcaption>{caption}</figcaption></figure>")
            k = _stride(sample.image.shape)
            for name, m in (explainer(sample) if explainer else {}).items():
                rgb = _colormap(m[..., ::k, ::k])
                figs.append(f"<figure><img alt='{escape(r.label)} {role} {escape(name)}' src='{_png_uri(rgb)}'>"
                            f"<figcaption>{role}: {escape(name)}</figcaption></figure>")
        swatch = f"<span class='swatch' style='background:{colours.get(r.label, '#888')}'></span>"
        html += [f"<h3>{swatch}{escape(r.label)}</h3>", "<div class='gallery'>", *figs, "</div>"]
    return html


def _read_label(path: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


MAX_SIDE = 720  # gallery images larger than this are subsampled (labels by nearest pixel) before outlining


def _stride(shape) -> int:
    return max(1, -(-max(shape[-2:]) // MAX_SIDE))


def _overlay(sample, pred):
    from .imageio_utils import overlay_rgb

    k = _stride(sample.image.shape)
    sub = (Ellipsis, slice(None, None, k), slice(None, None, k))  # outlines drawn after, so they stay 1 px sharp
    return overlay_rgb(sample.image[sub], pred[sub] if pred is not None else None,
                       sample.label[sub] if sample.label is not None else None)


def _explainer(run_dir: Path, cfg, data_root: str | None):
    """sample -> named maps of the run's method, or None when the method shows nothing beyond its labels."""
    from .method import Method
    from .registry import METHODS

    if METHODS.get(cfg.method.impl).explain is Method.explain:
        return None
    from .runner import load_trained

    _, method = load_trained(run_dir, data_root=data_root, device="cpu")

    def explain(sample):
        raw = method.predict_raw(method.normalize(sample.image), cfg.train.patch_size, cfg.eval.tile_overlap)
        return method.explain(sample, raw)

    return explain


def _inline_images(html: str, out_dir: Path) -> str:
    """<img src='x.png'> of PNG files inside the output folder -> data URIs (anything else is dropped: a note's
    markdown image must not inline a file from elsewhere); links keep only web, mail, in-page and existing
    relative targets inside the output's parent (the repository's docs), else become plain text."""
    root = out_dir.resolve()

    def inside(p: Path, top: Path) -> bool:
        try:
            p.resolve().relative_to(top)
            return True
        except ValueError:
            return False

    def img(m):
        src = m.group(2)
        if src.startswith("data:image/png;base64,"):
            return m.group(0)
        p = out_dir / src
        ok = not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", src) and p.suffix == ".png" and p.is_file() and inside(p, root)
        return m.group(1) + (_file_uri(p) if ok else "") + m.group(3)

    html = re.sub(r"(<img\b[^>]*\bsrc=\")([^\"]*)(\")", img, html)

    def link(m):
        href, text = m.group(1), m.group(2)
        if re.match(r"^(https?:|mailto:|#)", href):
            return m.group(0)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", href):  # javascript:, data:, file: ...
            return text
        p = out_dir / href
        if p.suffix == ".png" and p.is_file() and inside(p, root):  # a figure: shown inline instead of linked
            return f"<a href=\"#fig-{escape(p.stem)}\">{text}</a>"
        return m.group(0) if p.exists() and inside(p, root.parent) else text

    return re.sub(r"<a\b[^>]*?\bhref=\"([^\"]*)\"[^>]*>(.*?)</a>", link, html, flags=re.S)


def write_report(md_text: str, rows, metrics: list[str], dataset: str, out_dir: Path, figures: list[Path],
                 output_root: str | Path, data_root: str | None = None, colours: dict[str, str] | None = None,
                 stem: str | None = None) -> Path:
    """leaderboards/<dataset>.html: the markdown document, its figures and the galleries in one file."""
    import markdown

    # markdown passes raw HTML through: a label or note holding a tag must show as text, never run
    safe = md_text.replace("<", "&lt;").replace(">", "&gt;")
    body = markdown.markdown(safe, extensions=["tables", "fenced_code"])
    figs = "".join(f"<figure id='fig-{escape(p.stem)}'><img alt='{escape(p.stem)}' src='{_file_uri(p)}'>"
                   f"<figcaption>{escape(p.stem.replace('_', ' '))}</figcaption></figure>"
                   for p in figures if p is not None and p.exists())
    parts = [body, "<h2>Figures</h2>", figs]
    if metrics:
        try:
            parts += gallery_section(rows, metrics[0], dataset, output_root, data_root, colours or {})
        except Exception as exc:  # the data (or a run) is not readable here: the report says so, the table stays
            log.warning("report %s: no gallery (%s)", dataset, exc)
            parts.append(f"<h2>Gallery</h2><p>Not drawn: {escape(str(exc))}</p>")
    html = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{escape(dataset)} results"
            f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    p = out_dir / f"{stem or dataset}.html"
    p.write_text(_inline_images(html, out_dir))
    return p
