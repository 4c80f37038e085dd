"""`bench report`: the self-contained results page, rendered in headless Chromium (images resolve, no broken links)."""

from __future__ import annotations

import shutil

import pytest

from bench.config import resolve_config
from bench.runner import run
from conftest import FAST_RUN, needs_data

pytestmark = needs_data("bbbc039")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Real runs of a training-free method (2 seeds) and a field method on 3 test images, and their report."""
    from typer.testing import CliRunner

    from bench.cli import app

    root = tmp_path_factory.mktemp("report")
    common = ["tracking.enabled=false", f"output_root={root / 'runs'}", "eval.max_images=3"]
    for seed in (0, 1):
        run(resolve_config("classic_watershed", "bbbc039", overrides=common, seed=seed), progress=False)
    run(resolve_config("poisson", "bbbc039", overlay="configs/cpu_fields.yaml",
                       overrides=[*FAST_RUN, *common, "eval.calibrate=false"]), progress=False)
    out = CliRunner().invoke(app, ["report", "-d", "bbbc039", "--output-root", str(root / "runs"),
                                   "--out", str(root / "site"), "--note", "two methods <script>x</script>"])
    assert out.exit_code == 0, out.output
    return root / "site" / "bbbc039.html"


def test_report_is_one_file_with_ranked_table_figures_and_galleries(report):
    html = report.read_text()
    assert "<th>rank</th>" in html and "<script>x" not in html and "&lt;script&gt;x" in html
    assert html.count("data:image/png;base64,") >= 3 + 3 + 9  # 3 figures, 3 picks x (1 + 2 field maps) ...
    for role in ("best:", "median:", "worst:"):
        assert html.count(role) >= 2  # ... for each method
    assert "predicted poisson field" in html and "target poisson field" in html
    assert "reference (just outside each object)" in html
    assert 'src="' not in html.replace('src="data:', "")  # nothing is loaded from elsewhere


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (README: apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_every_image_and_link(report):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        failed, errors = [], []
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        links = page.evaluate("Array.from(document.links).map(a => a.getAttribute('href'))")
        anchors = set(page.evaluate("Array.from(document.querySelectorAll('[id]')).map(e => e.id)"))
        ranks = page.evaluate("Array.from(document.querySelectorAll('table')[0].rows).slice(1)"
                              ".map(r => r.cells[1].innerText)")
        browser.close()
    assert not failed and not errors
    assert len(images) >= 15 and all(ok for _, ok in images), [a for a, ok in images if not ok]
    for href in links:  # in-page anchors exist; relative links point at files next to the page
        if href.startswith("#"):
            assert href[1:] in anchors, href
        elif not href.startswith(("http:", "https:", "mailto:")):
            assert (report.parent / href).exists(), href
    assert ranks == ["1", "2"]


def test_picks_are_best_median_worst_in_the_metric_direction():
    from bench.report import pick_images

    vals = {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.7, "e": 0.3}
    assert [i for _, i, _ in pick_images(vals)] == ["a", "c", "b"]
    assert [i for _, i, _ in pick_images(vals, higher_is_better=False)] == ["b", "c", "a"]
    assert pick_images({}) == []


def test_user_markdown_cannot_inline_other_files_or_keep_script_links(tmp_path):
    from bench.report import _inline_images

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not for the page")
    out = tmp_path / "site"
    out.mkdir()
    (out / "fig.png").write_bytes(b"\x89PNG figure")
    html = (f'<img alt="a" src="{secret}"><img alt="b" src="../secret.png"><img alt="c" src="fig.png">'
            '<a href="javascript:alert(1)" title="t">x</a><a href="https://ok.org">y</a><a href="fig.png">z</a>'
            '<a href="../../etc/passwd">w</a>')
    got = _inline_images(html, out)
    assert got.count("data:image/png;base64,") == 1 and 'src=""' in got  # only the page's own figure
    assert "javascript:" not in got and ">x<" in got and 'href="https://ok.org"' in got
    assert 'href="#fig-fig"' in got and "passwd" not in got


def test_exported_smp_architecture_never_downloads_pretrained_weights():
    from bench.registry import NETWORKS

    import bench.networks  # noqa: F401  (registers the builders)

    module, cls, kwargs = NETWORKS.entry("smp_unet").extra["library"](
        in_channels=1, out_channels=3, ndim=2, encoder_weights="imagenet")
    assert (module, cls) == ("segmentation_models_pytorch", "Unet") and kwargs["encoder_weights"] is None


def test_overlay_without_prediction_or_reference_is_the_grey_image():
    import numpy as np

    from bench.imageio_utils import overlay_rgb

    rgb = overlay_rgb(np.random.default_rng(0).random((1, 20, 30)), None, None)
    assert rgb.shape == (20, 30, 3) and (rgb[..., 0] == rgb[..., 1]).all()
